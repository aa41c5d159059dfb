"""Falco path semantics, the fields the live source adds, and the one table of what it produces.

No kernel: events are built as the eBPF decoder makes them (see test_ebpf_decoder.py) and fed to
the process table and event builder over a fake /proc.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from webhook.runtime import events, state
from webhook.runtime.engine import Engine
from webhook.runtime.rules import compiler, fields
from webhook.runtime.sources import bpftrace_program
from webhook.runtime.sources.base import RawEvent

UPSTREAM = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "falco" / "rules"
CID = "3f2b" + "a1" * 30


# libsinsp's concatenate_paths cases (falcosecurity/libs userspace/libsinsp/test/sinsp_utils.ut.cpp),
# with the base given as libsinsp keeps a cwd (trailing "/") or as a directory fd's name.
@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("", "", ""),
        ("/", "../", "/"),
        ("/foo/", "..//a", "/a"),
        ("", "/foo", "/foo"),
        ("/", "dir/term", "/dir/term"),
        ("", "///dir/term", "/dir/term"),
        ("", "//dir/term", "/dir/term"),
        ("", "./dir/term", "dir/term"),
        ("/", "//dir//////term", "/dir/term"),
        ("../.../", "/app/custom/dir/././././../../.../term/", "/app/.../term"),
        ("/", "/app/custom/dir/././././../../term/", "/app/term"),
        ("/root/", "../😀", "/😀"),
        ("/srv/app", "conf/../../etc/shadow", "/srv/etc/shadow"),
        ("/srv/app/", "../../../../etc//shadow", "/etc/shadow"),
        ("/etc", ".", "/etc"),
    ],
)
def test_paths_resolve_as_libsinsp_does(base: str, path: str, expected: str) -> None:
    assert state.resolve_path(base, path) == expected


def fake_proc(root: Path, pid: int, ppid: int, comm: str, argv: list[str], cwd: str = "/srv/app") -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    stat = ["S", str(ppid), "0", "0", "0"] + ["0"] * 14 + ["500"]
    (d / "stat").write_text(f"{pid} ({comm}) {' '.join(stat)}\n")
    (d / "cmdline").write_text("\x00".join(argv) + "\x00")
    (d / "status").write_text("Uid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n")
    (d / "cgroup").write_text("0::/\n")
    (d / "loginuid").write_text("4294967295")
    (d / "fd").mkdir()
    os.symlink(cwd, d / "cwd")
    os.symlink(argv[0], d / "exe")


@pytest.fixture
def table(tmp_path: Path) -> state.ProcessTable:
    (tmp_path / "stat").write_text("btime 1700000000\n")
    fake_proc(tmp_path, 1, 0, "systemd", ["/sbin/init"], "/")
    fake_proc(tmp_path, 200, 1, "python3", ["python3", "x.py"])
    t = state.ProcessTable(tmp_path)
    t.seed()
    return t


def ev(kind: str, pid: int = 200, res: int = 0, ts: int = 10**18, **params: Any) -> RawEvent:
    return RawEvent(kind, ts, pid, pid, 0, "", res, {"cgroup": 1, **params})


def openat(name: str, res: int = 3, dirfd: int = -100, flags: int = 0) -> RawEvent:
    return ev("openat", res=res, flags=flags, mode=0, dirfd=dirfd, name=name)


def test_fd_name_is_normalized_and_fd_nameraw_is_what_the_process_passed(table: state.ProcessTable) -> None:
    b = events.EventBuilder(table, ["fd.name", "fd.nameraw", "fd.directory", "fd.filename"])
    out = b.build(openat("../../etc/./shadow"))
    assert out is not None
    assert (out["fd.name"], out["fd.nameraw"]) == ("/etc/shadow", "../../etc/./shadow")
    assert (out["fd.directory"], out["fd.filename"]) == ("/etc", "shadow")


def test_chdir_fchdir_and_dup_keep_the_cwd_true(table: state.ProcessTable) -> None:
    b = events.EventBuilder(table, ["fd.name", "proc.cwd"])
    b.build(ev("chdir", path="../../etc"))
    out = b.build(openat("shadow"))
    assert out is not None
    assert (out["fd.name"], out["proc.cwd"]) == ("/etc/shadow", "/etc/")
    b.build(ev("chdir", res=-2, path="/nonexistent"))  # a failed chdir changes nothing
    b.build(openat("/var/log", res=5, flags=0o200000))
    b.build(ev("dup2", res=9, oldfd=5, newfd=9))
    b.build(ev("fchdir", fd=9))
    out = b.build(openat("syslog", res=6))
    assert out is not None
    assert out["fd.name"] == "/var/log/syslog"


def test_a_directory_fd_never_seen_opened_is_read_from_proc(table: state.ProcessTable, tmp_path: Path) -> None:
    os.symlink("/etc/ssl", tmp_path / "200" / "fd" / "7")
    b = events.EventBuilder(table, ["fd.name"])
    out = b.build(openat("../shadow", dirfd=7))
    assert out is not None
    assert out["fd.name"] == "/etc/shadow"


def test_a_failed_open_has_fd_num_minus_one_and_its_name(table: state.ProcessTable) -> None:
    b = events.EventBuilder(table, ["fd.num", "fd.name", "evt.rawres"])
    out = b.build(openat("/etc/nope", res=-2))
    assert out == {"evt.num": 1, "fd.num": -1, "fd.name": "/etc/nope", "evt.rawres": -2}


def exec_ev(pid: int = 200, **over: Any) -> RawEvent:
    params: dict[str, Any] = {
        "filename": "/usr/bin/sh", "argv": ["sh", "-c", "id"], "ppid": 1, "loginuid": -1, "tty": 34816,
        "cgroup": 42, "cgroup_names": [f"system.slice/docker-{CID}.scope"], "comm": "sh",
        "cap_effective": (1 << 21) | 1, "cap_bounding": (1 << 41) - 1, "exe_nlink": 1,
        "exe_fs_magic": 0xEF53, "exe_name": "sh", "cwd_name": "app",
    }  # fmt: skip
    params.update(over)
    return RawEvent("execve", 10**18, pid, pid, 0, params["comm"], 0, params)


def test_exec_takes_tty_caps_and_container_from_the_task(table: state.ProcessTable) -> None:
    req = ["proc.tty", "thread.cap_effective", "container.id", "container.privileged", "proc.is_exe_from_memfd"]
    b = events.EventBuilder(table, req)
    out = b.build(exec_ev())
    assert out is not None
    assert out["proc.tty"] == 34816
    assert out["thread.cap_effective"] == "CAP_CHOWN CAP_SYS_ADMIN"
    assert out["container.id"] == CID[:12]
    assert out["container.privileged"] is (events._FULL_CAPS & ((1 << 41) - 1) == events._FULL_CAPS)
    assert out["proc.is_exe_from_memfd"] is False


def test_a_container_process_gone_before_we_look_is_still_in_its_container(table: state.ProcessTable) -> None:
    b = events.EventBuilder(table, ["container.id"])
    out = b.build(exec_ev(pid=999))  # no /proc/999: only the names the probe read from the task
    assert out is not None
    assert out["container.id"] == CID[:12]


def test_an_unprivileged_container_is_not_privileged(table: state.ProcessTable) -> None:
    b = events.EventBuilder(table, ["container.privileged"])
    out = b.build(exec_ev(cap_bounding=0xA80425FB))  # Docker's default bounding set
    assert out is not None
    assert out["container.privileged"] is False


def test_memfd_executable(table: state.ProcessTable) -> None:
    b = events.EventBuilder(table, ["proc.is_exe_from_memfd", "proc.exepath"])
    out = b.build(exec_ev(filename="/dev/fd/3", exe_nlink=0, exe_name="memfd:payload", exe_fs_magic=0x01021994))
    assert out is not None
    assert (out["proc.is_exe_from_memfd"], out["proc.exepath"]) == (True, "memfd:payload")


def test_upper_layer_executable_is_found_under_the_overlay_upperdir(table: state.ProcessTable, tmp_path: Path) -> None:
    upper = tmp_path / "1" / "root" / "var" / "lib" / "overlay" / "upper"
    (upper / "tmp").mkdir(parents=True)
    (upper / "tmp" / "dropped").write_text("")
    (tmp_path / "200" / "mountinfo").write_text(
        "600 500 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/var/lib/overlay/upper,workdir=/w\n"
    )
    b = events.EventBuilder(table, ["proc.is_exe_upper_layer"])
    out = b.build(exec_ev(filename="/tmp/dropped", exe_fs_magic=0x794C7630))
    assert out is not None
    assert out["proc.is_exe_upper_layer"] is True
    out = b.build(exec_ev(filename="/usr/bin/sh", exe_fs_magic=0x794C7630))
    assert out is not None
    assert out["proc.is_exe_upper_layer"] is False


def test_duration_socket_domain_and_name_changed(table: state.ProcessTable) -> None:
    b = events.EventBuilder(table, ["proc.duration", "evt.arg.domain", "fd.name_changed", "fd.sip"])
    b.build(RawEvent("F", 10**18, 300, 300, 0, "", 0, {"ppid": 200, "cgroup": 1}))
    out = b.build(RawEvent("socket", 10**18 + 5_000, 300, 300, 0, "", 4, {"domain": 17, "type": 3, "proto": 0}))
    assert out is not None
    assert (out["proc.duration"], out["evt.arg.domain"]) == (5_000, "AF_PACKET")
    net = {"fd": 4, "family": 2, "proto": 17, "lport": 5000, "rport": 53, "lip": "10.0.0.2", "rip": "10.0.0.9"}
    send = RawEvent("sendto", 10**18 + 6_000, 300, 300, 0, "", 10, net)
    first, again = b.build(send), b.build(send)
    assert first is not None
    assert again is not None
    assert (first["fd.name_changed"], again["fd.name_changed"]) == (True, False)


def test_fd_sip_name_is_the_name_that_resolved_to_the_server_address(table: state.ProcessTable) -> None:
    resolver = events.NameResolver(["localhost"])
    resolver.resolve_once()
    b = events.EventBuilder(table, ["fd.sip.name"], resolver=resolver)
    net = {"fd": 4, "family": 2, "proto": 6, "lport": 5000, "rport": 443, "lip": "127.0.0.1", "rip": "127.0.0.1"}
    out = b.build(RawEvent("connect", 10**18, 200, 200, 0, "", 0, net))
    assert out is not None
    assert out["fd.sip.name"] == "localhost"


def test_the_rules_name_the_hosts_the_resolver_looks_up() -> None:
    engine = Engine.load([UPSTREAM / "falco_rules.yaml"])
    assert "kubernetes.default.svc.cluster.local" in engine.sip_names


def test_every_field_the_upstream_stable_rules_read_is_produced_live() -> None:
    """Item 3 of issue 21: no enabled upstream stable rule is dead for want of a field."""
    engine = Engine.load([UPSTREAM / "falco_rules.yaml"])
    for rule in engine.rules:
        missing = sorted(f for f in compiler.referenced_fields(rule.condition) if not fields.live_can_produce(f))
        assert missing == [], rule.name
        assert rule.event_types.neg or rule.event_types.names <= bpftrace_program.SUPPORTED_TYPES, rule.name


def test_live_fields_is_what_the_event_builder_makes() -> None:
    """``rules.fields.LIVE_FIELDS`` (read by the rules report) and the builder agree both ways."""
    for name in fields.LIVE_FIELDS - fields.DERIVED:
        key = f"{name}[1]" if name in fields.ANCESTOR_FIELDS else name
        assert events.producible(key), name
    args = {n for p in bpftrace_program.PROBES for n in p.params} | {"res", "tuple"}
    assert args <= fields.LIVE_ARGS | {"cgroup"}
    for name in ("proc.env", "proc.sname", "group.gid", "proc.exe_ino.ctime", "container.start_ts"):
        assert not fields.live_can_produce(name), name


def test_failed_calls_are_dropped_in_the_kernel_only_where_no_rule_reads_them() -> None:
    upstream = Engine.load([UPSTREAM / "falco_rules.yaml"])
    assert "openat" not in upstream.success_only_types  # directory traversal reads failed opens
    ours = Engine.load([Path(__file__).resolve().parents[2] / "rules" / "portcullis_rules.yaml"])
    assert "openat" in ours.success_only_types
    assert "connect" not in ours.success_only_types  # EINPROGRESS connects count
    text = bpftrace_program.generate({"openat", "connect"}, self_pid=1, success_only={"openat"}).text
    assert "sys_exit_openat /@s" in text
    assert next(ln for ln in text.splitlines() if "sys_exit_openat /" in ln).endswith("&& args->ret >= 0/ {")
    assert not any("args->ret >= 0" in ln for ln in text.splitlines() if "sys_exit_connect /" in ln)


def test_derived_fields_and_ancestor_depth_have_one_definition() -> None:
    """Issue 17: the compiler, the event builder and the engine read one table and one depth."""
    from webhook.runtime.rules import parser

    for name, reads in fields.DERIVED_FROM.items():
        expanded = events.expand_required([name])
        assert expanded == frozenset(reads), name
        cond = parser.parse(f"{name} = 10.0.0.1" if "net" not in name else f"{name} = 10.0.0.0/8")
        assert set(reads) <= compiler.referenced_fields(cond), name
    assert events.MAX_DEPTH == fields.MAX_ANCESTORS
    expanded = events.expand_required(["proc.aname"])
    assert expanded is not None
    assert f"proc.aname[{fields.MAX_ANCESTORS}]" in expanded
    assert f"proc.aname[{fields.MAX_ANCESTORS + 1}]" not in expanded


CHILD_OPEN = {"flags": 0, "mode": 0, "dirfd": -100, "name": "/y"}


def test_a_parent_exec_refreshes_its_childrens_parent_fields_and_a_fresh_exec_does_not(
    table: state.ProcessTable,
) -> None:
    b = events.EventBuilder(table, ["proc.pname"])
    b.build(RawEvent("F", 10**18, 300, 300, 0, "", 0, {"ppid": 200, "cgroup": 1}))
    out = b.build(openat("/x"))  # pid 200's own event; then its child's
    child = b.build(
        RawEvent("openat", 10**18, 300, 300, 0, "", 3, {"flags": 0, "mode": 0, "dirfd": -100, "name": "/y"})
    )
    assert out is not None
    assert child is not None
    assert child["proc.pname"] == "python3"
    gen = table.generation
    b.build(exec_ev(pid=400, ppid=1))  # a process with no children execs: no cache goes stale
    assert table.generation == gen
    b.build(exec_ev(pid=200, comm="nginx"))  # the parent execs
    child = b.build(
        RawEvent("openat", 10**18, 300, 300, 0, "", 3, {"flags": 0, "mode": 0, "dirfd": -100, "name": "/y"})
    )
    assert child is not None
    assert child["proc.pname"] == "nginx"
