"""The ring-buffer eBPF backend: its record decoder (records packed here exactly as
``bpf/portcullis.bpf.c`` writes them), its configuration of the kernel side, the backend choice,
and — with root, the toolchain and a real kernel — a differential test: the same real actions,
traced at once through bpftrace and through the ring buffer, make the same ``RawEvent``s.
"""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from monitor_session import collect_family, skip_unless_backend

from webhook.runtime.engine import Engine
from webhook.runtime.sources import bpf_build, bpftrace_program, ebpf, kernel, ringbuf
from webhook.runtime.sources.base import RawEvent

RULES = Path(__file__).resolve().parents[2] / "rules" / "portcullis_rules.yaml"
HDR = struct.Struct("<IHHQIIIIqQ")
IDS = {p.evt: i for i, p in enumerate(bpftrace_program.PROBES)}


def formats() -> dict[str, list[str] | None]:
    """Syscall argument names as the kernel's tracepoint formats give them (fixed here: the
    decoder tests need no kernel)."""
    return {
        "openat": ["dfd", "filename", "flags", "mode"],
        "rename": ["oldname", "newname"],
        "setuid": ["uid"],
    }


def record(kind: int, *, pid: int = 10, tid: int = 11, uid: int = 0, ret: int = 3, flags: int = 0,
           args: tuple[int, ...] = (0,) * 8, strings: tuple[bytes, ...] = (), aux: int = 0) -> bytes:  # fmt: skip
    body = struct.pack("<8Q", *args) + b"".join(struct.pack("<H", len(s)) + s for s in strings)
    size = HDR.size + len(body)
    return HDR.pack(size, kind, flags, 1_000, pid, tid, uid, aux, ret, 77) + body


def decoder(**kw: Any) -> ringbuf.RecordDecoder:
    return ringbuf.RecordDecoder(formats(), clock_offset=0, **kw)


def test_an_openat_record_decodes_as_the_bpftrace_decoder_makes_it() -> None:
    dirfd = (1 << 64) - 100  # the raw register of AT_FDCWD, as the tracepoint carries it
    rec = record(10 + IDS["openat"], args=(dirfd, 0x7FFF0000, 0o1101, 0o644, 0, 0, 0, 0), strings=(b"a\tb\nc",))
    events, used = decoder().decode(rec)
    assert used == len(rec)
    (ev,) = events
    assert (ev.type, ev.pid, ev.tid, ev.res, ev.ts) == ("openat", 10, 11, 3, 1_000)
    assert ev.params == {"flags": 0o1101, "mode": 0o644, "dirfd": -100, "name": "a\tb\nc", "cgroup": 77}


def test_strings_are_bytes_and_cut_ones_are_flagged() -> None:
    d = decoder()
    raw = b"/tmp/\xff\xfe" + b"x" * 10
    (ev,) = d.decode(record(10 + IDS["rename"], flags=1, strings=(raw, b"/old")))[0]
    assert ev.params["newpath"].encode("utf-8", "surrogateescape") == raw  # what the process passed
    assert ev.params["oldpath"] == "/old"
    assert ev.params["truncated"] is True
    assert d.truncated == 1


def test_a_record_split_across_reads_waits_for_its_rest() -> None:
    rec = record(10 + IDS["setuid"], args=(0xFFFFFFFF,) + (0,) * 7)
    d = decoder()
    events, used = d.decode(rec + rec[:20])
    assert len(events) == 1
    assert used == len(rec)
    events, used = d.decode((rec + rec)[used:])
    assert [e.params["uid"] for e in events] == [0xFFFFFFFF]


def test_a_record_whose_strings_overrun_it_is_counted_not_decoded() -> None:
    rec = bytearray(record(10 + IDS["openat"], strings=(b"/etc/shadow",)))
    struct.pack_into("<H", rec, HDR.size + 64, 4000)  # the string's length runs past the record
    d = decoder()
    events, _used = d.decode(bytes(rec) + record(10 + IDS["setuid"]))
    assert [e.type for e in events] == ["setuid"]  # the next record is still read
    assert d.malformed == 1


def test_a_length_below_the_header_is_a_stream_error() -> None:
    with pytest.raises(ValueError, match="out of sync"):
        decoder().decode(struct.pack("<IHH", 4, 11, 0) + bytes(60))


def test_process_records_and_the_monitors_own_events() -> None:
    d = decoder(ignore_pids=(99,))
    recs = (
        HDR.pack(48, ringbuf.R_FORK, 0, 5, 20, 20, 1000, 10, 0, 7)
        + HDR.pack(48, ringbuf.R_EXIT, 0, 6, 20, 20, 0, (1 << 32) - 1, 0, 7)
        + HDR.pack(48, ringbuf.R_EXIT, 0, 6, 99, 99, 0, 0, 0, 7)
        + HDR.pack(48, ringbuf.R_HEARTBEAT, 0, 6, 0, 0, 0, 0, 0, 0)
        + struct.pack("<IHHQ", 16, ringbuf.R_LOST, 0, 12)
    )
    events, _ = d.decode(recs)
    assert [(e.type, e.pid, e.params) for e in events] == [
        ("F", 20, {"ppid": 10, "cgroup": 7}),
        ("procexit", 20, {"status": -1}),
    ]
    assert (d.ignored, d.heartbeats, d.lost) == (1, 1, 12)


def test_exec_record() -> None:
    fixed = struct.pack("<IIQQQQIIQ", 1, 1000, 0x8801, 12, 0x1FF, 0x1FF, 1, 0, 0x794C7630)
    strings = [b"/usr/bin/cat", b"cat\x00/etc/shadow\x00", b"cat", b"cri-abc.scope", b"kubepods", b"",
               b"", b"", b"cat", b"etc"]  # fmt: skip
    body = fixed + b"".join(struct.pack("<H", len(s)) + s for s in strings)
    rec = HDR.pack(HDR.size + len(body), ringbuf.R_EXEC, 0, 9, 30, 30, 0, 0, 0, 5) + body
    (ev,) = decoder().decode(rec)[0]
    assert ev.type == "execve"
    assert ev.comm == "cat"
    assert ev.params["argv"] == ["cat", "/etc/shadow"]
    assert ev.params["cgroup_names"] == ["kubepods/cri-abc.scope"]
    assert ev.params["tty"] == 0x8801
    assert ev.params["exe_name"] == "cat"
    assert ev.params["cwd_name"] == "etc"
    assert "truncated" not in ev.params


def test_the_open_filter_goes_to_the_kernel_as_map_entries() -> None:
    engine = Engine.load([RULES])
    assert engine.open_filters
    src = ringbuf.RingbufSource.for_engine(engine, exists=lambda _s: True)
    cfg = src.config(1234)
    assert "map gate " in cfg
    assert src.unfiltered == []
    # a name longer than the kernel's key: that type goes unfiltered (every open passes), never wrong
    alt = type("Alt", (), {"access": frozenset({0}), "names": frozenset({"x" * 64}), "suffixes": frozenset(),
                           "any_name": False})()  # fmt: skip
    src = ringbuf.RingbufSource({"openat"}, success_only={"openat"}, open_filters={"openat": [alt]},
                                exists=lambda _s: True)  # fmt: skip
    assert "map gate " not in src.config(1)
    assert src.unfiltered == ["openat"]


def test_auto_falls_back_to_bpftrace_when_the_ring_buffer_cannot_be_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no clang, no bpftool
    engine = Engine.load([RULES])
    src = kernel.for_engine(engine, "auto", cache=tmp_path / "cache")
    assert isinstance(src, ebpf.EbpfSource)
    assert "missing clang, bpftool" in capsys.readouterr().err
    with pytest.raises(bpf_build.BuildUnavailable, match="missing clang, bpftool"):
        bpf_build.build(tmp_path / "cache")


def test_a_cache_others_can_write_to_is_refused(tmp_path: Path) -> None:
    """The loader built in the cache runs as root: a world-writable cache would let anyone
    replace it."""
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(bpf_build.BuildUnavailable, match="not a private directory"):
        bpf_build.build(cache)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(bpf_build.BuildUnavailable, match="not a private directory"):
        bpf_build.build(link)


# -- differential, real kernel ---------------------------------------------------------------------

ACTIONS = r"""
import os, socket, sys, tempfile
d = tempfile.mkdtemp()
os.chdir(d)
open("plain", "w").close()
open("tab\tand\nnewline", "w").close()
os.close(os.open("./" * 100 + "plain", os.O_RDONLY))
dfd = os.open(d, os.O_RDONLY)
os.close(os.open("plain", os.O_RDONLY, dir_fd=dfd))
os.dup2(dfd, 77); os.fchdir(77); os.chdir("/"); os.chdir(d)
os.mkdir("sub"); os.rename("sub", "sub2"); os.rmdir("sub2")
os.symlink("plain", "ln"); os.link("plain", "hard"); os.unlink("ln"); os.chmod("hard", 0o600)
try:
    open("/nonexistent/x").close()
except OSError:
    pass
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
c = socket.socket()
try:
    c.connect(("127.0.0.1", 1))
except OSError:
    pass
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    u.sendto(b"x", "/nonexistent.sock")
except OSError:
    pass
os.setuid(0)
os.memfd_create("m" + sys.argv[1])
os.spawnv(os.P_WAIT, "/bin/true", ["true", "x" * 300, sys.argv[1]])
"""


def _strip(ev: RawEvent) -> tuple[Any, ...]:
    # the directories the ring buffer's kernel side names (bpftrace's events have none)
    params = {k: v for k, v in ev.params.items() if k not in ("base", "cwd")}
    return (ev.type, ev.pid, ev.tid, ev.uid, ev.comm, ev.res, params)


@pytest.mark.root
@pytest.mark.ebpf
@pytest.mark.slow
async def test_both_backends_make_the_same_raw_events() -> None:
    """The same real actions (relative, dirfd, fchdir, tab/newline names, long paths, failures,
    sockets, setuid, memfd, an exec with a long argument) traced by both backends at once."""
    skip_unless_backend("bpftrace")
    skip_unless_backend("ringbuf")
    sources = [ebpf.EbpfSource(None), ringbuf.RingbufSource(None)]
    for s in sources:
        await s.start()
    outs: list[list[RawEvent]] = [[], []]
    dones = [asyncio.Event(), asyncio.Event()]
    pids: list[set[int]] = [set(), set()]
    tasks = [
        asyncio.create_task(collect_family(s, o, d, p)) for s, o, d, p in zip(sources, outs, dones, pids, strict=True)
    ]
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", ACTIONS, "mark" + str(time.time_ns()))
        for p in pids:
            p.add(proc.pid)
        assert await proc.wait() == 0
        await asyncio.wait_for(asyncio.gather(*(d.wait() for d in dones)), 60)
    finally:
        for s in sources:
            s.interrupt()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in sources:
            await s.close()
    bt, rb = ([_strip(e) for e in o] for o in outs)
    assert len(rb) > 50
    assert rb == bt
    assert any(e[0] == "execve" and e[6]["argv"][1] == "x" * 300 for e in rb)
    # what the ring buffer names in the kernel: the cwd after each chdir/fchdir, the start
    # directory of each relative open (of the cwd, or of the directory fd), none for absolute ones
    temp = next(e.params["path"] for e in outs[1] if e.type == "chdir")
    cwds = [e.params.get("cwd") for e in outs[1] if e.type in ("chdir", "fchdir")]
    assert cwds == [temp, temp, "/", temp]
    opens = [e.params for e in outs[1] if e.type in ("open", "openat", "openat2") and e.pid == min(pids[1])]
    assert {p.get("base") for p in opens if p["name"][:1] not in ("/", "")} == {temp}
    assert all("base" not in p for p in opens if p["name"][:1] == "/")


def test_the_differential_actions_run_without_the_monitor() -> None:
    """The action script itself is sound (so a failure above is the backends', not the script's)."""
    if os.geteuid() != 0:
        pytest.skip("setuid(0) needs root")
    subprocess.run([sys.executable, "-c", ACTIONS, "m"], check=True)


def test_the_in_flight_table_size_is_checked_and_sent_to_the_loader() -> None:
    src = ringbuf.RingbufSource({"openat"}, inflight_slots=128, exists=lambda _s: True)
    assert "inflight 128\n" in src.config(1)
    with pytest.raises(ValueError, match="inflight_slots"):
        ringbuf.RingbufSource({"openat"}, inflight_slots=0, exists=lambda _s: True)
