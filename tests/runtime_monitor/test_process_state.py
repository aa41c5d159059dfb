"""The process/fd tables and the Falco fields built from them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from webhook.runtime import events, state
from webhook.runtime.sources.base import RawEvent

CID = "3f2b" + "a1" * 30


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        (f"12:pids:/docker/{CID}\n", CID),
        (f"0::/system.slice/docker-{CID}.scope\n", CID),
        (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-pod1.slice/cri-containerd-{CID}.scope\n", CID),
        (f"11:memory:/kubepods/burstable/pod5c1a/{CID}\n", CID),
        (f"0::/kubepods.slice/kubepods-pod1.slice/crio-{CID}.scope\n", CID),
        (f"0::/machine.slice/libpod-{CID}.scope/container\n", CID),
        (f"0::/kubepods.slice/crio-conmon-{CID}.scope\n", ""),
        ("0::/user.slice/user-1000.slice/session-2.scope\n", ""),
    ],
)
def test_container_id_from_each_runtime_layout(cgroup: str, expected: str) -> None:
    assert state.container_id(cgroup) == expected


def fake_proc(root: Path, pid: int, ppid: int, comm: str, argv: list[str], cgroup: str = "0::/\n") -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    fields = ["S", str(ppid), "0", "0", "34816"] + ["0"] * 14 + ["500"]
    (d / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    (d / "cmdline").write_text("\x00".join(argv) + "\x00")
    (d / "status").write_text("Name:\tx\nUid:\t1000\t0\t0\t0\n")
    (d / "cgroup").write_text(cgroup)
    (d / "loginuid").write_text("4294967295")
    os.symlink("/srv/app", d / "cwd")
    os.symlink(argv[0], d / "exe")


@pytest.fixture
def table(tmp_path: Path) -> state.ProcessTable:
    (tmp_path / "stat").write_text("btime 1700000000\n")
    fake_proc(tmp_path, 1, 0, "systemd", ["/sbin/init"])
    fake_proc(tmp_path, 100, 1, "containerd-shim", ["/usr/bin/containerd-shim", "-id", "x"])
    fake_proc(tmp_path, 200, 100, "nginx", ["/usr/sbin/nginx", "-g", "daemon off;"], f"0::/docker/{CID}\n")
    t = state.ProcessTable(tmp_path)
    assert t.seed() == 3
    return t


def ev(kind: str, pid: int, res: int = 0, comm: str = "x", **params: Any) -> RawEvent:
    return RawEvent(kind, 10**18, pid, pid, 0, comm, res, params)


def test_seed_reads_name_args_cwd_uid_tty_and_container(table: state.ProcessTable) -> None:
    p = table.procs[200]
    assert (p.name, p.exe, p.args, p.cwd, p.uid, p.tty, p.loginuid) == (
        "nginx", "/usr/sbin/nginx", ["-g", "daemon off;"], "/srv/app", 0, 34816, -1,
    )  # fmt: skip
    assert p.container == CID
    assert p.start_ns == 1700000000 * 10**9 + 5 * 10**9


def test_fork_then_exec_gives_the_shell_its_parent_chain(table: state.ProcessTable) -> None:
    b = events.EventBuilder(table, ["proc.name", "proc.pname", "proc.aname[2]", "proc.cmdline", "container.id"])
    assert b.build(RawEvent("F", 1, 300, 300, 0, "nginx", 0, {"ppid": 200})) is None
    out = b.build(ev("execve", 300, comm="sh", ppid=200, loginuid=-1, filename="/bin/sh", argv=["sh", "-c", "id"]))
    assert out == {
        "evt.num": 1, "proc.name": "sh", "proc.pname": "nginx", "proc.aname[2]": "containerd-shim",
        "proc.cmdline": "sh -c id", "container.id": CID[:12],
    }  # fmt: skip


def test_only_required_fields_are_built(table: state.ProcessTable) -> None:
    b = events.EventBuilder(table, ["evt.type", "fd.name"])
    out = b.build(ev("openat", 200, res=5, flags=0, mode=0, dirfd=-100, name="conf/nginx.conf"))
    assert out == {"evt.num": 1, "evt.type": "openat", "fd.name": "/srv/app/conf/nginx.conf"}


def test_open_fields_follow_falco(table: state.ProcessTable) -> None:
    req = ["evt.is_open_read", "evt.is_open_write", "evt.arg.flags", "evt.res", "fd.typechar", "fd.directory",
           "fd.filename", "fd.num", "user.name"]  # fmt: skip
    b = events.EventBuilder(table, req)
    out = b.build(ev("openat", 200, res=-13, flags=0o1101, mode=0o644, dirfd=-100, name="/usr/bin/x"))
    assert out is not None
    assert out["evt.arg.flags"] == "O_TRUNC|O_CREAT|O_WRONLY"
    assert (out["evt.is_open_read"], out["evt.is_open_write"], out["evt.res"]) == (False, True, "EACCES")
    assert (out["fd.typechar"], out["fd.directory"], out["fd.filename"], out["fd.num"]) == ("f", "/usr/bin", "x", -1)
    assert out["user.name"] == "root"


def test_openat_relative_to_a_directory_fd(table: state.ProcessTable) -> None:
    b = events.EventBuilder(table, ["fd.name"])
    b.build(ev("openat", 200, res=7, flags=0o200000, mode=0, dirfd=-100, name="/etc/ssl"))
    out = b.build(ev("openat", 200, res=8, flags=0, mode=0, dirfd=7, name="certs/ca.pem"))
    assert out is not None
    assert out["fd.name"] == "/etc/ssl/certs/ca.pem"


def net(kind: str, fd: int, lip: str, lport: int, rip: str, rport: int, res: int = 0) -> RawEvent:
    params = {"fd": fd, "family": 2, "proto": 6, "lip": lip, "lport": lport, "rip": rip, "rport": rport}
    return ev(kind, 200, res=res, **params)


def test_connect_is_the_client_side_and_accept_the_server_side(table: state.ProcessTable) -> None:
    b = events.EventBuilder(table, ["fd.name", "fd.cip", "fd.cport", "fd.sip", "fd.sport", "fd.l4proto", "fd.ip"])
    out = b.build(net("connect", 4, "10.0.0.2", 40000, "10.0.0.9", 443, res=-115))
    assert out is not None
    assert out["fd.name"] == "10.0.0.2:40000->10.0.0.9:443"
    assert (out["fd.sip"], out["fd.sport"], out["fd.l4proto"], out["fd.type"]) == ("10.0.0.9", 443, "tcp", "ipv4")
    out = b.build(net("accept4", 5, "10.0.0.2", 80, "192.0.2.7", 5555))
    assert out is not None
    assert (out["fd.cip"], out["fd.cport"], out["fd.sip"], out["fd.sport"]) == ("192.0.2.7", 5555, "10.0.0.2", 80)


def test_aname_without_index_gives_the_whole_chain() -> None:
    fields = events.expand_required(["proc.aname", "fd.port"])
    assert fields is not None
    assert {"proc.aname[1]", f"proc.aname[{events.MAX_DEPTH}]", "fd.cport", "fd.sport", "fd.type"} <= fields


def test_exited_processes_stay_for_late_events_then_go(table: state.ProcessTable) -> None:
    table.apply(RawEvent("procexit", 1, 200, 200, 0, "nginx", 0, {"status": 0}))
    assert 200 in table.procs
    table.apply(RawEvent("procexit", 20 * 10**9, 1, 1, 0, "systemd", 0, {"status": 0}))
    assert 200 not in table.procs


@pytest.mark.parametrize(
    ("flags", "text"),
    [(0o2000000, "O_RDONLY|O_CLOEXEC"), (0o2204000, "O_DIRECTORY|O_NONBLOCK|O_RDONLY|O_CLOEXEC"), (0, "O_RDONLY")],
)
def test_open_flags_render_as_falco_does(flags: int, text: str) -> None:
    assert events.open_flags(flags) == text


def test_a_successful_setuid_changes_the_user_of_later_events(table: state.ProcessTable) -> None:
    b = events.EventBuilder(table, ["user.uid"])
    assert b.build(ev("setuid", 200, res=0, uid=33)) == {"evt.num": 1, "user.uid": 33}
    assert b.build(ev("setuid", 200, res=-1, uid=0)) == {"evt.num": 2, "user.uid": 33}
