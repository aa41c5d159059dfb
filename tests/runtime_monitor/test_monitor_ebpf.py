"""End to end, as root: the eBPF source with the project's rules, real actions, real alerts.

One monitor (one bpftrace) serves the whole module; each test runs a real action and waits for
its alert. Skipped only where eBPF is unavailable (not root, no bpftrace, kernel refuses).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from monitor_session import BACKENDS, Collect, MonitorSession, live_session, skip_unless_backend

from webhook.runtime import monitor
from webhook.runtime.engine import Engine
from webhook.runtime.sources import ebpf, ringbuf

pytestmark = [pytest.mark.root, pytest.mark.ebpf, pytest.mark.slow]

RULES = Path(__file__).resolve().parents[2] / "rules" / "portcullis_rules.yaml"


@pytest.fixture(scope="module", params=BACKENDS)
def session(request: pytest.FixtureRequest) -> Iterator[MonitorSession]:
    with live_session(RULES, start_timeout=180, backend=request.param) as s:
        yield s
    assert s.snapshot["errors"] == 0, s.monitor.last_errors
    assert s.stopped_by_test, f"the monitor stopped early: {s.snapshot} {s.monitor.source._stderr!r}"


def _run(*argv: str, **kw: Any) -> tuple[int, int]:
    t0 = time.time_ns()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
    return t0, time.time_ns()


def test_reading_etc_shadow_raises_an_alert_with_the_reader(session: MonitorSession, tmp_path: Path) -> None:
    marker = tmp_path / "marker"  # makes the command line ours alone on a shared machine
    marker.touch()
    t0, t1 = _run("cat", "/etc/shadow", str(marker))
    a = session.wait_for(lambda a: a["rule"] == "Read of shadow password file" and str(marker) in a["output"])
    f = a["output_fields"]
    assert f["fd.name"] == "/etc/shadow"
    assert f["proc.name"] == "cat"
    assert f["proc.cmdline"] == f"cat /etc/shadow {marker}"
    assert f["user.name"] == "root"
    assert a["priority"] == "Warning"
    assert t0 <= f["evt.time"] <= t1


def test_shell_spawned_by_a_process_named_like_a_web_server(session: MonitorSession, tmp_path: Path) -> None:
    nginx = tmp_path / "nginx"
    shutil.copy("/bin/bash", nginx)
    marker = uuid.uuid4().hex[:8]
    _run(str(nginx), "-c", f"sh -c 'true {marker}'; true")
    a = session.wait_for(lambda a: a["rule"] == "Shell spawned by a web or model server" and marker in a["output"])
    f = a["output_fields"]
    assert (f["proc.name"], f["proc.pname"]) == ("sh", "nginx")
    assert f["proc.aname[2]"] == Path("/proc/self/comm").read_text().strip()  # this test process
    assert a["priority"] == "Critical"


def test_connect_to_a_mining_pool_port_on_loopback(session: MonitorSession) -> None:
    code = "import socket; s = socket.socket(); s.connect_ex(('127.0.0.1', 14444)); s.close()"
    _run(sys.executable, "-c", code)
    a = session.wait_for(lambda a: a["rule"] == "Outbound connection to a crypto-mining pool port")
    f = a["output_fields"]
    assert f["fd.sport"] == 14444
    assert f["fd.name"].endswith("->127.0.0.1:14444")


def test_write_below_usr_bin_in_a_private_mount_namespace(session: MonitorSession) -> None:
    """tmpfs over /usr/bin in `unshare -m`: the host's /usr/bin is never touched."""
    name = f"/usr/bin/portcullis-e2e-{uuid.uuid4().hex[:8]}"
    script = f"mount -t tmpfs none /usr/bin && echo x > {name}"
    _run("unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script)
    a = session.wait_for(lambda a: a["rule"] == "Write below binary directory" and name in a["output"])
    assert a["output_fields"]["fd.name"] == name
    assert a["output_fields"]["proc.name"] == "sh"


def test_model_weights_read_by_cat(session: MonitorSession, tmp_path: Path) -> None:
    weights = tmp_path / "model-00001-of-00002.safetensors"
    weights.write_bytes(b"\0" * 64)
    _run("cat", str(weights))
    a = session.wait_for(
        lambda a: a["rule"] == "Model weights read by unexpected process" and str(weights) in a["output"]
    )
    assert a["output_fields"]["fd.name"] == str(weights)


def test_a_program_executed_from_a_memfd(session: MonitorSession) -> None:
    marker = uuid.uuid4().hex[:8]
    code = (
        "import os\n"
        "fd = os.memfd_create('payload', 0)\n"
        "os.write(fd, open('/bin/true', 'rb').read())\n"
        f"os.execv(f'/proc/self/fd/{{fd}}', ['true', {marker!r}])\n"
    )
    _run(sys.executable, "-c", code)
    a = session.wait_for(lambda a: a["rule"] == "Fileless execution via memfd" and marker in a["output"])
    f = a["output_fields"]
    assert f["proc.exepath"] == "memfd:payload"  # named as libsinsp names a memfd executable
    assert f["proc.cmdline"].endswith(marker)


def test_ptrace_attach_is_seen(session: MonitorSession) -> None:
    code = (
        "import ctypes, os, subprocess, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "child = subprocess.Popen(['sleep', '5'])\n"
        "assert libc.ptrace(16, child.pid, 0, 0) == 0, ctypes.get_errno()\n"
        "os.waitpid(child.pid, 0)\n"
        "libc.ptrace(17, child.pid, 0, 0)\n"
        "child.kill(); child.wait()\n"
    )
    _run(sys.executable, "-c", code)
    a = session.wait_for(lambda a: a["rule"] == "Process attached with ptrace" and "proc=python" in a["output"])
    assert a["output_fields"]["evt.arg.request"] == "PTRACE_ATTACH"


def test_package_manager_in_a_docker_layout_cgroup(session: MonitorSession) -> None:
    """A real cgroup named as Docker names them (pids hierarchy): container.id comes from it."""
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    if (Path("/sys/fs/cgroup/pids") / "cgroup.procs").exists():  # cgroup v1: /docker/<id>
        group = Path("/sys/fs/cgroup/pids") / "docker" / cid
    elif (Path("/sys/fs/cgroup") / "cgroup.controllers").exists():  # cgroup v2: docker-<id>.scope
        group = Path("/sys/fs/cgroup") / f"docker-{cid}.scope"
    else:
        pytest.skip("no writable cgroup hierarchy to create a container-like cgroup in")
    group.mkdir(parents=True)
    try:
        script = f"echo $$ > {group}/cgroup.procs; exec sh -c 'sleep 0.3; apt-get --version; sleep 0.3'"
        _run("sh", "-c", script)
    finally:
        group.rmdir()
        if group.parent.name == "docker":  # ours unless a real Docker uses it (then not empty)
            with contextlib.suppress(OSError):
                group.parent.rmdir()
    a = session.wait_for(lambda a: a["rule"] == "Package manager run in a container" and cid[:12] in a["output"])
    assert a["output_fields"]["container.id"] == cid[:12]
    assert a["output_fields"]["proc.name"] == "apt-get"


def test_metrics_count_events_and_no_drops_at_test_load(session: MonitorSession) -> None:
    snap = session.monitor.snapshot()
    assert snap["events"] > 0
    assert snap["source"]["kernel_lost"] == 0
    assert snap["alerts_by_rule"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_supported_event_type_compiles_and_attaches(backend: str) -> None:
    """The program for all types (what a rules set with `evt.type != x` needs) loads in this kernel."""
    skip_unless_backend(backend)
    source = ebpf.EbpfSource(None) if backend == "bpftrace" else ringbuf.RingbufSource(None)
    try:
        await source.start()
    except ebpf.EbpfUnavailable as exc:
        if "did not start" in str(exc) and ("ERROR" in str(exc) or "loader" in str(exc)):
            raise  # bpftrace or the loader ran and the kernel rejected the program: ours is wrong
        pytest.skip(f"eBPF unavailable here: {exc}")
    finally:
        await source.close()
    assert source.decoder.ready
    assert set(source.program.missing) <= {"init_module", "finit_module"}  # kernels built without modules


RUNNER = "import sys; from webhook.runtime import monitor_commands as m; sys.exit(m.main(sys.argv[1:]))"


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_stops_the_command_gracefully_and_flushes_alerts(tmp_path: Path, backend: str) -> None:
    """`portcullis monitor` as a process: metrics served, real alert written, SIGTERM → exit 0."""
    import signal
    import socket
    import urllib.request

    skip_unless_backend(backend)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "alerts.jsonl"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, "--output", f"file:{out}", "--metrics-listen", f"127.0.0.1:{port}",
         "--ebpf-backend", backend],
        cwd=root, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:  # ready once events flow through the pipeline
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
                if "portcullis_monitor_events_total 0\n" not in text:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        marker = tmp_path / "m"
        marker.touch()
        _run("cat", "/etc/shadow", str(marker))
        time.sleep(0.5)  # not an assertion: lets the read reach the pipeline before we stop it
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["events"] > 0
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    assert any(a["rule"] == "Read of shadow password file" and str(marker) in a["output"] for a in alerts)


BPF_LOAD = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
insns = struct.pack("<BBhiBBhi", 0xB7, 0, 0, 0, 0x95, 0, 0, 0)  # r0 = 0; exit
buf = ctypes.create_string_buffer(insns)
lic = ctypes.create_string_buffer(b"GPL")
attr = struct.pack("<IIQQ", 1, 2, ctypes.addressof(buf), ctypes.addressof(lic)) + bytes(96)  # SOCKET_FILTER
a = ctypes.create_string_buffer(attr)
fd = libc.syscall(321, 5, a, len(attr))  # bpf(BPF_PROG_LOAD)
assert fd >= 0, ctypes.get_errno()
"""


def test_a_bpf_program_loaded_by_another_process(session: MonitorSession, tmp_path: Path) -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("the loader uses the x86_64 bpf syscall number")
    tool = tmp_path / f"ld{uuid.uuid4().hex[:6]}"
    shutil.copy(sys.executable, tool)
    _run(str(tool), "-c", BPF_LOAD)
    a = session.wait_for(lambda a: a["rule"] == "BPF program loaded by unexpected process" and tool.name in a["output"])
    assert a["output_fields"]["proc.name"] == tool.name


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_backend_dying_on_its_own_is_an_error_not_a_quiet_end(backend: str) -> None:
    skip_unless_backend(backend)
    engine = Engine.load([RULES])
    source: Any = ebpf.EbpfSource({"openat"}) if backend == "bpftrace" else ringbuf.RingbufSource({"openat"})
    mon = monitor.Monitor(source, engine, [], restart_backoff=None)  # restarts: tests/faults
    task = asyncio.create_task(mon.run())
    await mon.ready.wait()
    assert source._proc is not None
    source._proc.kill()
    with pytest.raises(ebpf.EbpfUnavailable, match="exited unexpectedly"):
        await task


DROP_RULE = "Falco internal: syscall event drop"


async def test_events_the_kernel_could_not_deliver_raise_an_alert_and_a_log(caplog: pytest.LogCaptureFixture) -> None:
    """A flood that overflows the kernel's buffer hides what happens during it (an attacker's
    cover): the loss must not be only a counter. A one-page ring and a burst of directory opens
    (which every open filter passes) overflow it; the monitor says so as Falco does, with an alert
    of Falco's internal drop rule (its fields) and a log line, and the run's counters agree."""
    skip_unless_backend("ringbuf")
    engine = Engine.load([RULES])
    source = ringbuf.RingbufSource.for_engine(engine, ring_bytes=4096, poll_ms=50)
    sink = Collect()
    mon = monitor.Monitor(source, engine, [sink], restart_backoff=None)
    stop = asyncio.Event()
    task = asyncio.create_task(mon.run(stop=stop))
    await mon.ready.wait()
    code = "import os\nfor _ in range(20000):\n    os.close(os.open('/', os.O_RDONLY | os.O_DIRECTORY))\n"
    flood = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    assert await flood.wait() == 0
    for _ in range(200):  # the loader reports the kernel's count once a second
        if source.stats()["kernel_lost"]:
            break
        await asyncio.sleep(0.05)
    stop.set()
    snap = await task
    assert snap["source"]["kernel_lost"] > 0
    drops = [a for a in sink.alerts if a["rule"] == DROP_RULE]
    assert drops, sorted({a["rule"] for a in sink.alerts})
    assert sum(int(a["output_fields"]["n_drops"]) for a in drops) == snap["source"]["kernel_lost"] + snap["drops"]
    assert drops[0]["priority"] == "Debug"  # as Falco's
    assert drops[0]["output"].startswith(DROP_RULE + ".")
    assert any(DROP_RULE in r.getMessage() for r in caplog.records)
