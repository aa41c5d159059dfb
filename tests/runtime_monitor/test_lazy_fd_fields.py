"""The per-field fd getters (only the fd.* fields the rules read are computed) against the full
``_fd_fields`` mapping they replace: same keys present, same values, for every fd kind."""

from __future__ import annotations

import itertools

import pytest

from webhook.runtime import events, state
from webhook.runtime.events import _FD_FIELDS, _FD_GETTERS, _fd_fields, _wanted_fd_fields
from webhook.runtime.sources.base import RawEvent
from webhook.runtime.state import Fd

FDS = [
    Fd(num=3, type="file", name="/etc/shadow", nameraw="../etc/shadow"),
    Fd(num=4, type="file", name="/top"),
    Fd(num=5, type="directory", name="/etc"),
    Fd(num=6, type="memfd", name="memfd:x"),
    Fd(num=7, type="unix", name="/run/docker.sock"),
    *(
        Fd(
            num=8,
            type=t,
            name="n",
            l4proto="tcp",
            cip=c,
            cport=1234 if c else 0,
            sip=s,
            sport=443 if s else 0,
            is_server=srv,
            connected=con,
        )
        for t, c, s, srv, con in itertools.product(
            ("ipv4", "ipv6"), ("", "10.0.0.1"), ("", "10.0.0.2"), (False, True), (False, True)
        )
    ),
]


def test_getters_cover_every_fd_field() -> None:
    assert set(_FD_GETTERS) == set(_FD_FIELDS)


@pytest.mark.parametrize("fd", FDS, ids=lambda fd: f"{fd.type}-{fd.cip}-{fd.sip}-{fd.is_server}")
def test_every_subset_matches_the_full_mapping(fd: Fd) -> None:
    full = _fd_fields(fd)
    every = tuple(sorted(_FD_GETTERS.items()))
    assert _wanted_fd_fields(fd, every) == full
    for key, get in every:  # one field alone: present exactly when the full mapping has it
        assert _wanted_fd_fields(fd, ((key, get),)) == ({key: full[key]} if key in full else {})


def test_builder_gives_only_the_wanted_fd_fields() -> None:
    table = state.ProcessTable()
    builder = events.EventBuilder(table, {"evt.type", "fd.name", "fd.filename"})
    ev = RawEvent(type="openat", ts=1, pid=1, tid=1, uid=0, comm="x", res=3,
                  params={"name": "/etc/../etc/shadow", "dirfd": -100, "flags": 0, "mode": 0})  # fmt: skip
    out = builder.build(ev)
    assert out is not None
    assert {k: v for k, v in out.items() if k.startswith("fd.")} == {"fd.name": "/etc/shadow", "fd.filename": "shadow"}


_FILE_KEYS = ("fd.num", "fd.type", "fd.typechar", "fd.name", "fd.nameraw", "fd.directory", "fd.filename")


@pytest.mark.parametrize("fd", FDS, ids=lambda fd: f"{fd.type}-{fd.cip}-{fd.sip}-{fd.is_server}")
def test_compiled_fd_fields_match_the_getters(fd: Fd) -> None:
    """The generated per-plan function (straight-line for files) gives what the getters give: for
    every subset of the file fields plus one socket field, each field alone, and all of them."""
    every = tuple(sorted(_FD_GETTERS.items()))
    subsets = [every, *(((k, g),) for k, g in every)]
    for n in range(len(_FILE_KEYS) + 1):
        for combo in itertools.combinations(_FILE_KEYS, n):
            subsets.append(tuple(sorted((k, _FD_GETTERS[k]) for k in (*combo, "fd.sip"))))
    for getters in subsets:
        assert events.compile_fd_fields(getters)(fd) == _wanted_fd_fields(fd, getters), getters


def test_builder_makes_each_type_only_the_fields_its_rules_read() -> None:
    """With ``by_type``, an open gets the fields its rules read, and a later event of another type
    on the same fd (fchmod) still gets its own fd fields, not the open's cached subset."""
    table = state.ProcessTable()
    wanted = {"evt.type": {"evt.type", "fd.name"}, "fchmod": {"evt.type", "fd.filename", "fd.directory"}}
    builder = events.EventBuilder(
        table,
        {"evt.type", "fd.name", "fd.filename", "fd.directory"},
        by_type=lambda t: wanted.get(t, wanted["evt.type"]),
    )
    opened = builder.build(
        RawEvent(
            type="openat",
            ts=1,
            pid=1,
            tid=1,
            uid=0,
            comm="x",
            res=3,
            params={"name": "/etc/shadow", "dirfd": -100, "flags": 0, "mode": 0},
        )
    )
    assert opened is not None
    assert {k: v for k, v in opened.items() if k.startswith("fd.")} == {"fd.name": "/etc/shadow"}
    chmod = builder.build(
        RawEvent(type="fchmod", ts=2, pid=1, tid=1, uid=0, comm="x", res=0, params={"fd": 3, "mode": 0o777})
    )
    assert chmod is not None
    assert {k: v for k, v in chmod.items() if k.startswith("fd.")} == {"fd.filename": "shadow", "fd.directory": "/etc"}


def _raw(kind: str, res: int, flags: int = 0, mode: int = 0) -> RawEvent:
    params = {"name": "/x", "dirfd": -100, "flags": flags, "mode": mode} if kind in events._OPEN_TYPES else {}
    return RawEvent(type=kind, ts=5, pid=1, tid=1, uid=0, comm="x", res=res, params=params)


def test_compiled_evt_fields_match_the_getters() -> None:
    """Every evt.* field, generated for any type and for one known type, gives what its getter
    gives, over opens of every access mode with and without O_CREAT and exec bits, failed and not."""
    every = tuple(sorted(events._EVT_GETTERS.items()))
    raws = [
        _raw(k, res, flags, mode)
        for k in ("openat", "open", "openat2", "creat", "execve", "connect")
        for res in (3, 0, -2)
        for flags in (0, 1, 2, 3, 0o100, 0o102, 0o200000)
        for mode in (0, 0o644, 0o755)
    ]
    for ev in raws:
        want = {k: v for k, g in every if (v := g(ev)) is not None}
        for evtype in (None, ev.type):
            for getters in (every, *(((k, g),) for k, g in every)):
                out: dict[str, object] = {}
                events.compile_evt_fields(getters, evtype)(ev, out)
                assert out == {k: want[k] for k, _ in getters if k in want}, (ev, evtype, getters)
