"""The kernel-side open filter (rules/kernelfilter.py → bpftrace_program._gate_body) and the
program's heartbeat.

The analysis is checked on conditions; the kernel side end to end, with real bpftrace and real
processes: every spelling of a path a loaded rule reads (``..``, ``//``, ``.``, relative after
``cd``, a directory fd, long paths, a symlink named like the target) still reaches the rule when
the filter is on, as the plain action does; and reads no rule can match are not delivered.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from monitor_session import BACKENDS, Collect, MonitorSession, filter_on, live_session, live_source

from webhook.runtime import monitor
from webhook.runtime.engine import Engine
from webhook.runtime.rules import kernelfilter, parser
from webhook.runtime.sources import bpftrace_program

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules" / "portcullis_rules.yaml"
UPSTREAM = ROOT / ".." / "shared" / "conformance" / "falco" / "rules" / "falco_rules.yaml"
ALL = kernelfilter.ALL_ACCESS


def gate_of(cond: str) -> kernelfilter.Gate:
    return kernelfilter.gate(parser.parse(cond))


def test_names_suffixes_and_access_modes_are_kept() -> None:
    g = gate_of("evt.is_open_read=true and fd.name in (/etc/shadow, /etc/gshadow)")
    assert g == (kernelfilter.Alt(frozenset({0, 2}), frozenset({"shadow", "gshadow"}), any_name=False),)
    g = gate_of("evt.is_open_write=true and fd.name endswith .pt")
    assert g == (kernelfilter.Alt(frozenset({1, 2}), suffixes=frozenset({".pt"}), any_name=False),)
    # a suffix with a '/' fixes the whole last component
    assert gate_of("fd.name endswith /id_rsa") == (kernelfilter.Alt(ALL, frozenset({"id_rsa"}), any_name=False),)
    assert gate_of("evt.is_open_read=false") == (kernelfilter.Alt(frozenset({1, 3})),)


@pytest.mark.parametrize(
    "cond",
    [
        "fd.name startswith /etc",  # a prefix says nothing about the last component
        "fd.name contains shadow",
        "fd.name glob '*/shadow'",
        "fd.name icontains SHADOW",
        "not fd.name in (/etc/shadow)",
        "fd.name in (/etc/, /etc/shadow)",  # a directory's own name is not a last component
        "fd.name in (/etc/shadow, '/tmp/a b')",  # odd bytes: not compared in the kernel
        "fd.directory = /etc",
        "proc.name = cat",
        "fd.name[1] = x",
        "fd.name = val(fd.nameraw)",
        "evt.is_open_read=true or fd.name startswith /x",
    ],
)
def test_anything_else_is_unconstrained(cond: str) -> None:
    assert gate_of(cond) == kernelfilter.TOP


def test_and_keeps_either_side_and_or_keeps_both() -> None:
    g = gate_of("(fd.name = /a/x or fd.name endswith .y) and evt.is_open_read=true")
    assert set(g) == {
        kernelfilter.Alt(frozenset({0, 2}), frozenset({"x"}), any_name=False),
        kernelfilter.Alt(frozenset({0, 2}), suffixes=frozenset({".y"}), any_name=False),
    }
    assert gate_of("evt.is_open_read=true and evt.is_open_write=true") == (kernelfilter.Alt(frozenset({2})),)
    assert gate_of("evt.is_open_read=true and evt.is_open_read=false") == ()


def test_filters_come_only_from_rules_that_can_all_be_decided() -> None:
    engine = Engine.load([RULES])
    assert set(engine.open_filters) == {"open", "openat", "openat2", "creat"}
    # upstream rules read directories and prefixes of opened files: nothing is filtered
    assert Engine.load([UPSTREAM]).open_filters == {}


def test_tail_comparison_constants() -> None:
    assert bpftrace_program._tail_test(".pt", exact=False) == "($e - $sl >= 3 && (($t1 >> 0) & 0xffffff) == 0x2e7074)"
    t = bpftrace_program._tail_test(".safetensors", exact=False)
    assert t is not None
    assert "0x2e736166" in t
    assert "$t2" in t
    assert bpftrace_program._tail_test("x" * 17, exact=True) is None


# -- end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def session(request: pytest.FixtureRequest) -> Iterator[MonitorSession]:
    with live_session(RULES, backend=request.param) as s:
        yield s


READ = "import os, sys\n{setup}\ntry:\n    os.close(os.open({path!r}, os.{mode}{dirfd}))\nexcept OSError:\n    pass\n"
SHADOW = "Read of shadow password file"
WEIGHTS = "Model weights read by unexpected process"


def _read(setup: str, path: str, marker: str, *, mode: str = "O_RDONLY", dirfd: str = "") -> None:
    code = READ.format(setup=setup, path=path, mode=mode, dirfd=dirfd)
    # the marker is an argument, so it shows in the alert's cmdline
    subprocess.run([sys.executable, "-c", code, marker], check=False, stdout=subprocess.DEVNULL)


@pytest.mark.root
@pytest.mark.ebpf
@pytest.mark.slow
@pytest.mark.parametrize(
    ("setup", "path", "kw"),
    [
        ("", "/etc/shadow", {}),
        ("", "/etc/../etc/shadow", {}),
        ("", "//etc//shadow", {}),
        ("", "/etc/./shadow", {}),
        ("", "/etc/" + "./" * 150 + "shadow", {}),  # longer than the kernel scan: passed
        ("", "/" + "/" * 120 + "etc/shadow", {}),
        ("os.chdir('/etc')", "shadow", {}),
        ("os.chdir('/tmp')", "../etc/shadow", {}),
        ("os.fchdir(os.open('/etc', os.O_RDONLY))", "shadow", {}),  # the directory open must pass
        ("d = os.open('/etc', os.O_RDONLY)", "shadow", {"dirfd": ", dir_fd=d"}),  # openat on a dirfd
        ("", "/etc/shadow", {"mode": "O_RDWR"}),
    ],
    ids=["plain", "dotdot", "slashes", "dot", "long-dots", "long-slashes", "cd", "cd-dotdot", "fchdir", "dirfd",
         "rdwr"],
)  # fmt: skip
def test_every_spelling_of_a_filtered_name_still_alerts(
    session: MonitorSession, setup: str, path: str, kw: dict[str, str]
) -> None:
    assert filter_on(session.source)  # the filter is on for this rule set
    m = "m" + uuid.uuid4().hex[:10]
    _read(setup, path, m, **kw)
    a = session.wait_for_rule(SHADOW, m)
    assert a["output_fields"]["fd.name"] == "/etc/shadow"


@pytest.mark.root
@pytest.mark.ebpf
@pytest.mark.slow
def test_suffix_rules_see_relative_long_and_symlinked_names(session: MonitorSession, tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w")
    (tmp_path / "link.gguf").symlink_to("/etc/hostname")  # Falco's fd.name is the link's name
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    (deep / "w.onnx").write_bytes(b"w")
    # cat, not python: python is one of the rule's model readers
    cases = [
        (tmp_path, "model.safetensors", "/model.safetensors"),
        (None, str(tmp_path / "link.gguf"), "/link.gguf"),
        (None, str(deep / "w.onnx"), "/w.onnx"),
        (deep, "../" + "d" * 100 + "/./w.onnx", "/w.onnx"),
    ]
    for cwd, path, tail in cases:
        m = "m" + uuid.uuid4().hex[:10]
        subprocess.run(["cat", path, f"/nonexistent-{m}"], cwd=cwd, check=False, capture_output=True)
        a = session.wait_for_rule(WEIGHTS, m)
        assert a["output_fields"]["fd.name"].endswith(tail)


@pytest.mark.root
@pytest.mark.ebpf
@pytest.mark.slow
def test_heartbeat_makes_a_quiet_node_ready(session: MonitorSession) -> None:
    """Readiness with no traced event: the kernel timer's heartbeat alone. (Other processes on the
    test box make events the test cannot stop, so the events' clock is cleared here; the
    heartbeats are the real program's.)"""
    source, mon = session.source, session.monitor
    end = time.monotonic() + 30
    while source.decoder.heartbeats < 2 and time.monotonic() < end:
        time.sleep(0.1)
    assert source.decoder.heartbeats >= 2  # it keeps coming, not once
    assert source.last_heartbeat is not None
    mon.last_batch = None
    ok, why = monitor.readiness(mon, 30)
    assert ok, why
    assert mon.snapshot()["source"]["heartbeats"] >= 2


def test_no_filter_when_a_rule_reads_fds_from_the_table(tmp_path: Path) -> None:
    """A dropped open leaves a stale table entry for its fd number: a dup rule reading fd fields
    would see the old file (or socket) instead of the one actually duplicated."""
    rules = tmp_path / "r.yaml"
    base = RULES.read_text()
    rules.write_text(
        base + "\n- rule: Dup of a socket\n  desc: d\n  condition: evt.type=dup2 and fd.type=ipv4\n"
        "  output: x %fd.name\n  priority: WARNING\n"
    )
    assert Engine.load([rules]).open_filters == {}
    assert Engine.load([RULES]).open_filters != {}


LONG_RULES = """
- rule: Long name read
  desc: names and suffixes longer than the kernel's numeric compare (16 bytes)
  condition: >
    evt.type in (open, openat, openat2) and evt.is_open_read=true and fd.num >= 0 and
    (fd.name in (DIR/a-very-long-file-name.conf) or fd.name endswith .a-very-long-suffix)
  output: "long (file=%fd.name cmdline=%proc.cmdline)"
  priority: WARNING
"""


@pytest.mark.root
@pytest.mark.ebpf
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
async def test_names_longer_than_the_numeric_compare(tmp_path: Path, backend: str) -> None:
    rules = tmp_path / "long.yaml"
    rules.write_text(LONG_RULES.replace("DIR", str(tmp_path / "x")))
    engine = Engine.load([rules])
    assert engine.open_filters
    sink = Collect()
    source = live_source(backend, engine)
    assert filter_on(source)
    mon = monitor.Monitor(source, engine, [sink])
    stop = asyncio.Event()
    task = asyncio.create_task(mon.run(stop=stop))
    ready = asyncio.create_task(mon.ready.wait())
    await asyncio.wait([task, ready], timeout=120, return_when=asyncio.FIRST_COMPLETED)
    assert not task.done(), task.exception() if task.done() else None
    (tmp_path / "x").mkdir()
    for name in ("a-very-long-file-name.conf", "m.a-very-long-suffix", "other-long-file-name.conf"):
        (tmp_path / "x" / name).write_text("x")
    m = "m" + uuid.uuid4().hex[:10]
    for name in ("a-very-long-file-name.conf", "m.a-very-long-suffix", "other-long-file-name.conf"):
        await asyncio.to_thread(
            subprocess.run, ["cat", str(tmp_path / "x" / name), f"/nonexistent-{m}"], check=False, capture_output=True
        )
    seen: set[str] = set()
    for _ in range(600):
        with sink.lock:
            seen = {a["output_fields"]["fd.name"].rsplit("/", 1)[-1] for a in sink.alerts if m in a["output"]}
        if len(seen) >= 2:
            break
        await asyncio.sleep(0.05)
    # 20000 reads of a name no rule can match: dropped in the kernel, not delivered. The count is
    # read once a later matching read has alerted (events reach the engine in time order).
    before = mon.metrics.events
    other = str(tmp_path / "x" / "other-long-file-name.conf")
    code = "import os, sys\nfor _ in range(20000):\n    os.close(os.open(sys.argv[1], os.O_RDONLY))\n"
    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code, other], check=True)
    m2 = "m" + uuid.uuid4().hex[:10]
    suffixed = str(tmp_path / "x" / "m.a-very-long-suffix")
    await asyncio.to_thread(subprocess.run, ["cat", suffixed, f"/nonexistent-{m2}"], check=False, capture_output=True)
    for _ in range(600):
        with sink.lock:
            if any(m2 in a["output"] for a in sink.alerts):
                break
        await asyncio.sleep(0.05)
    delivered = mon.metrics.events - before
    stop.set()
    await task
    assert seen == {"a-very-long-file-name.conf", "m.a-very-long-suffix"}
    assert delivered < 10000, delivered  # the machine's other events are far fewer than 20000
