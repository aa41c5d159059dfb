"""End to end, as root: upstream Falco stable rules against real actions and their evasion variants.

One monitor (one bpftrace, the upstream ``falco_rules.yaml`` as shipped) serves the module. Each
test runs a real process that does the plain action or a variant meant to slip past a naive
monitor (``..``/``//``/``.`` in paths, relative paths after ``cd``, arguments and paths longer
than one bpftrace string, tabs and newlines in names and arguments, a container process that is
gone before userspace could look at it, a tty acquired after fork) and waits for the same
upstream rule to fire, keyed by a marker unique to the action. Waiting polls the collected
alerts; no sleep stands in for an ordering the test relies on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from monitor_session import BACKENDS, MonitorSession, live_session

pytestmark = [pytest.mark.root, pytest.mark.ebpf, pytest.mark.slow]

UPSTREAM = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "falco" / "rules" / "falco_rules.yaml"
)


@pytest.fixture(scope="module", params=BACKENDS)
def session(request: pytest.FixtureRequest) -> Iterator[MonitorSession]:
    with live_session(UPSTREAM, backend=request.param) as s:
        yield s
    assert s.snapshot["errors"] == 0, s.monitor.last_errors
    assert s.snapshot["source"]["malformed_lines"] == 0


def marker() -> str:
    return "m" + uuid.uuid4().hex[:10]


def python(code: str, *args: str, exe: str = sys.executable, **kw: Any) -> None:
    subprocess.run([exe, "-c", code, *args], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


READ = "import os, sys\n{setup}\ntry:\n    open({path!r}).close()\nexcept OSError:\n    pass\n"

SENSITIVE = "Read sensitive file untrusted"


@pytest.mark.parametrize(
    ("setup", "path"),
    [
        ("", "/etc/shadow"),  # the plain action
        ("", "/etc/../etc/shadow"),
        ("", "//etc//shadow"),
        ("", "/etc/./shadow"),
        ("", "/etc/" + "./" * 150 + "shadow"),  # longer than one bpftrace string
        ("", "/" + "/" * 300 + "etc/shadow"),
        ("os.chdir('/etc')", "shadow"),  # relative after cd
        ("os.chdir('/'); os.chdir('etc')", "./shadow"),  # relative cd, then relative path
        ("os.chdir('/tmp')", "../etc/shadow"),
        ("os.fchdir(os.open('/etc', os.O_RDONLY))", "shadow"),  # fchdir
        ("d = os.open('/etc', os.O_RDONLY); os.dup2(d, 77); os.fchdir(77)", "shadow"),  # dup'd dir fd
    ],
    ids=[
        "plain",
        "dotdot",
        "slashes",
        "dot",
        "long-dots",
        "long-slashes",
        "cd",
        "cd-relative",
        "cd-dotdot",
        "fchdir",
        "dup-fchdir",
    ],
)
def test_a_sensitive_file_read_is_caught_however_the_path_is_spelled(
    session: MonitorSession, setup: str, path: str
) -> None:
    m = marker()
    python(READ.format(setup=setup, path=path), m)
    a = session.wait_for_rule(SENSITIVE, m)
    assert a["output_fields"]["fd.name"] == "/etc/shadow"


def test_a_sensitive_read_by_a_process_with_a_tab_and_newline_in_its_name(
    session: MonitorSession, tmp_path: Path
) -> None:
    m = marker()
    exe = tmp_path / f"py\tth\non-{m}"
    exe.symlink_to(os.path.realpath(sys.executable))
    python(READ.format(setup="", path="/etc/shadow"), m, exe=str(exe))
    a = session.wait_for_rule(SENSITIVE, m)
    assert a["output_fields"]["proc.name"] == f"py\tth\non-{m}"[:15]


def test_directory_traversal_read_and_failed_read(session: MonitorSession) -> None:
    m = marker()
    python(READ.format(setup="", path="/tmp/../tmp/../etc/passwd"), m)
    a = session.wait_for_rule("Directory traversal monitored file read", m)
    assert (a["output_fields"]["fd.name"], a["output_fields"]["fd.nameraw"]) == (
        "/etc/passwd",
        "/tmp/../tmp/../etc/passwd",
    )
    m = marker()
    python(READ.format(setup="os.chdir('/tmp')", path=f"../tmp/../etc/{m}-absent"), m)
    a = session.wait_for_rule("Directory traversal monitored file read", m)
    assert a["output_fields"]["fd.name"] == f"/etc/{m}-absent"


GREP = "BEGIN RSA PRIVATE"


@pytest.mark.parametrize(
    "argv",
    [
        ["grep", "-r", GREP, "/nonexistent-{m}"],  # plain
        ["grep", "-e", "x" * 400, "-r", GREP, "/nonexistent-{m}"],  # long dummy argument first
        ["grep", "-e", "a\tb\nc", "-r", GREP, "/nonexistent-{m}"],  # tab and newline in an argument
    ],
    ids=["plain", "long-first-argument", "tab-newline-argument"],
)
def test_private_key_search_with_grep(session: MonitorSession, argv: list[str]) -> None:
    m = marker()
    subprocess.run([a.format(m=m) for a in argv], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a = session.wait_for_rule("Search Private Keys or Passwords", m)
    assert GREP in a["output_fields"]["proc.cmdline"]


def test_fileless_execution_via_memfd_create(session: MonitorSession) -> None:
    m = marker()
    code = (
        "import os, sys\n"
        "fd = os.memfd_create('payload', 0)\n"
        "os.write(fd, open('/bin/true', 'rb').read())\n"
        "os.execve(fd, ['true', sys.argv[1]], {})\n"  # execveat(fd, "", AT_EMPTY_PATH)
    )
    python(code, m)
    a = session.wait_for_rule("Fileless execution via memfd_create", m)
    assert a["output_fields"]["proc.cmdline"].endswith(m)


def test_execution_from_dev_shm(session: MonitorSession) -> None:
    m = marker()
    target = Path("/dev/shm") / f"run-{m}"
    shutil.copy("/bin/true", target)
    try:
        subprocess.run([str(target), m], check=True)
        session.wait_for_rule("Execution from /dev/shm", m)
        subprocess.run(["./" + target.name, m + "rel"], check=True, cwd="/dev/shm")  # relative, cwd in /dev/shm
        session.wait_for_rule("Execution from /dev/shm", m + "rel")
    finally:
        target.unlink()
    deep = Path("/dev/shm") / ("d" * 200) / ("e" * 100)  # an executable path longer than one string
    deep.mkdir(parents=True)
    try:
        shutil.copy("/bin/true", deep / f"run-{m}")
        subprocess.run([str(deep / f"run-{m}"), m + "deep"], check=True)
        a = session.wait_for_rule("Execution from /dev/shm", m + "deep")
        assert a["output_fields"]["proc.exepath"] == str(deep / f"run-{m}")
    finally:
        shutil.rmtree(Path("/dev/shm") / ("d" * 200))


def test_ptrace_attach(session: MonitorSession) -> None:
    m = marker()
    code = (
        "import ctypes, os, subprocess, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "child = subprocess.Popen(['sleep', '5'])\n"
        "assert libc.ptrace(16, child.pid, 0, 0) == 0, ctypes.get_errno()\n"
        "os.waitpid(child.pid, 0)\n"
        "libc.ptrace(5, child.pid, ctypes.c_void_p(0x1000), ctypes.c_void_p(0))\n"  # POKEDATA
        "libc.ptrace(17, child.pid, 0, 0)\n"
        "child.kill(); child.wait()\n"
    )
    python(code, m)
    session.wait_for_rule("PTRACE attached to process", m)


def test_clear_log_activity_by_truncation(session: MonitorSession) -> None:
    m = marker()
    log = Path("/var/log") / f"portcullis-test-{m}.log"
    log.write_text("evidence\n")
    try:
        python(f"open({str(log)!r}, 'w').close()", m)
        a = session.wait_for_rule("Clear Log Activities", m)
        assert a["output_fields"]["fd.name"] == str(log)
        # the same through a relative path after cd, with a tab in the file name
        tabbed = Path("/var/log") / f"tab\t{m}.log"
        tabbed.write_text("evidence\n")
        try:
            python(f"import os; os.chdir('/var'); open('log/./tab\\t{m}.log', 'w').close()", m + "t")
            a = session.wait_for_rule("Clear Log Activities", m + "t")
            assert a["output_fields"]["fd.name"] == str(tabbed)
        finally:
            tabbed.unlink()
    finally:
        log.unlink()


def test_symlink_over_a_sensitive_file(session: MonitorSession, tmp_path: Path) -> None:
    m = marker()
    python("import os, sys; os.symlink('/etc/shadow', sys.argv[2])", m, str(tmp_path / f"link\t{m}"))
    a = session.wait_for_rule("Create Symlink Over Sensitive Files", m)
    assert a["output_fields"]["evt.arg.target"] == "/etc/shadow"


def test_hardlink_over_a_sensitive_file(session: MonitorSession, tmp_path: Path) -> None:
    m = marker()
    python("import os, sys; os.link('/etc/shadow', sys.argv[2])", m, str(tmp_path / f"hard-{m}"))
    session.wait_for_rule("Create Hardlink Over Sensitive Files", m)


# -- containers: a cgroup made the way Docker names them, on the unified (v2) hierarchy -----------


def _v2_root() -> Path:
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (root / "cgroup.controllers").exists():
            return root
    pytest.skip("no cgroup v2 hierarchy to create a container-like cgroup in")
    raise AssertionError  # unreachable


@contextlib.contextmanager
def container_cgroup() -> Iterator[tuple[str, Path]]:
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    group = _v2_root() / f"docker-{cid}.scope"
    group.mkdir()
    try:
        yield cid, group
    finally:
        for _ in range(100):  # the members are gone once waited for; rmdir fails while not
            with contextlib.suppress(OSError):
                group.rmdir()
                break
            time.sleep(0.01)


JOIN = "open({procs!r}, 'w').write(str(os.getpid()))\n"


@pytest.mark.parametrize("short", [False, True], ids=["lingering", "short-lived"])
def test_packet_socket_created_in_a_container(session: MonitorSession, short: bool) -> None:
    m = marker()
    with container_cgroup() as (cid, group):
        code = (
            "import os, socket, sys, time\n"
            f"{JOIN.format(procs=str(group / 'cgroup.procs'))}"
            "os.execv(sys.executable, [sys.executable, '-c', "
            "'import socket, sys, time; socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close();"
            f" time.sleep({0 if short else 1})', sys.argv[1]])\n"
        )
        python(code, m)
    session.wait_for_rule("Packet socket created in container", m)  # the rule needs container.id != host
    del cid


def test_a_tty_acquired_after_fork_is_seen_at_exec(session: MonitorSession, tmp_path: Path) -> None:
    """Terminal shell in container: a runc-named parent forks a child that takes a controlling
    terminal only after the fork, joins the container cgroup, then execs a shell."""
    m = marker()
    runc = tmp_path / "runc"
    runc.symlink_to(os.path.realpath(sys.executable))
    with container_cgroup() as (_cid, group):
        code = (
            "import fcntl, os, sys, termios\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.setsid()\n"
            "    master, slave = os.openpty()\n"
            "    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)\n"
            f"    {JOIN.format(procs=str(group / 'cgroup.procs'))}"
            "    os.execv('/bin/sh', ['sh', '-c', 'exit 0', sys.argv[1]])\n"
            "os.waitpid(pid, 0)\n"
        )
        python(code, m, exe=str(runc))
    a = session.wait_for_rule("Terminal shell in container", m)
    assert a["output_fields"]["proc.tty"] != 0


def test_every_record_decodes(session: MonitorSession) -> None:
    """Whatever the processes on this machine did so far (names, paths, arguments), no record of
    bpftrace's was malformed: strings never break the framing. (A read of ours first, so the
    test also holds when it runs alone, right after the source is ready.)"""
    m = marker()
    python(READ.format(setup="", path="/etc/shadow"), m)
    session.wait_for_rule(SENSITIVE, m)
    snap = session.monitor.snapshot()
    assert snap["events"] > 0
    assert snap["source"]["malformed_lines"] == 0


def test_drop_and_execute_a_new_binary_in_a_container(session: MonitorSession, tmp_path: Path) -> None:
    """A binary written into the container's overlay (so it lands in the upper layer) and run
    from there. The container is a chroot into an overlay over / in a private mount namespace,
    in a Docker-named cgroup. The upper-layer lookup reads /proc while the process lives, so the
    binary here lingers a moment (a limit: see docs/monitor.md)."""
    if shutil.which("unshare") is None or shutil.which("chroot") is None:
        pytest.skip("needs unshare and chroot (util-linux, coreutils)")
    m = marker()
    for d in ("upper", "work", "merged"):
        (tmp_path / d).mkdir()
    merged = tmp_path / "merged"
    with container_cgroup() as (_cid, group):
        script = (
            f"mount -t overlay overlay -o lowerdir=/,upperdir={tmp_path}/upper,workdir={tmp_path}/work {merged}"
            f" && cp /bin/sleep {merged}/tmp/dropped-{m} && echo $$ > {group}/cgroup.procs"
            f" && exec chroot {merged} /tmp/dropped-{m} 0.5"
        )
        subprocess.run(["unshare", "-m", "sh", "-c", script], check=True)
    a = session.wait_for_rule("Drop and execute new binary in container", m)
    assert a["output_fields"]["proc.exe"] == f"/tmp/dropped-{m}"


def test_stdout_redirected_to_a_network_connection_in_a_container(session: MonitorSession) -> None:
    """A reverse-shell shape: a container process connects out and dup2s the socket onto stdout."""
    import socket

    m = marker()
    with socket.create_server(("127.0.0.1", 0)) as server, container_cgroup() as (_cid, group):
        port = server.getsockname()[1]
        inner = f"import os, socket; s = socket.create_connection(('127.0.0.1', {port})); os.dup2(s.fileno(), 1)"
        code = (  # join the container, then exec (a process's container is set at exec, as in Falco)
            "import os, sys\n"
            f"{JOIN.format(procs=str(group / 'cgroup.procs'))}"
            f"os.execv(sys.executable, [sys.executable, '-c', {inner!r}, sys.argv[1]])\n"
        )
        python(code, m)
    a = session.wait_for_rule("Redirect STDOUT/STDIN to Network Connection in Container", m)
    assert a["output_fields"]["fd.name"].endswith(f"->127.0.0.1:{port}")
