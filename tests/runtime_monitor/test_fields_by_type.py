"""Per-event-type fields: the event builder makes each event only the fields the rules that can
see its type read (``Engine.fields_for_type``). Differential tests that this changes no alert and
no output field: over the Falco conformance events (events restricted to their type's fields vs
whole, upstream rules all enabled) and over a live ring-buffer stream of real actions (a builder
with ``by_type`` vs one making every required field, on identical process tables).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from monitor_session import collect_family, skip_unless_backend

from webhook.runtime import events, rules, state
from webhook.runtime.engine import Engine
from webhook.runtime.sources import ringbuf
from webhook.runtime.sources.base import RawEvent

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "falco"
RULE_FILES = [
    DATA / "rules" / n for n in ("falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml")
]
PROJECT_RULES = Path(__file__).resolve().parents[2] / "rules" / "portcullis_rules.yaml"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="conformance data not present")


def _engine(paths: list[Path], *, every_rule: bool) -> Engine:
    names = {r.name for r in rules.load(paths).rules} if every_rule else None
    return Engine.load(paths, enabled_rules=names, clock=lambda: 0)


def _alerts(engine: Engine, evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a.to_falco_json("node") for e in evs for a in engine.process(e)]


def _condition_rules(tmp: Path) -> Path:
    """The conformance data's single conditions, each as a rule printing a few fields."""
    out = []
    for line in (DATA / "conditions.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            cid, text = line.split(None, 1)
            out.append(
                f"- rule: c{cid}\n  desc: c\n  condition: {json.dumps(text.strip())}\n"
                '  output: "%evt.type %proc.name %fd.name %fd.sip %user.name %proc.pname"\n  priority: INFO\n'
            )
    path = tmp / "conditions.yaml"
    path.write_text("".join(out), encoding="utf-8")
    return path


@pytest.mark.parametrize("which", ["enabled", "every-rule", "conditions"])
def test_conformance_events_cut_to_their_types_fields_alert_the_same(which: str, tmp_path: Path) -> None:
    if which == "conditions":
        engine = _engine([_condition_rules(tmp_path)], every_rule=True)
    else:
        engine = _engine(RULE_FILES, every_rule=which == "every-rule")
    whole: list[dict[str, Any]] = []
    for path in sorted((DATA / "events").glob("*.jsonl")):
        whole += [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    cut = []
    for e in whole:
        t = e.get("evt.type")
        # as the builder reads them: proc.aname → proc.aname[1..], derived fields → their sources
        keep = events.expand_required(engine.fields_for_type(t)) if isinstance(t, str) else None
        cut.append(e if keep is None else {k: v for k, v in e.items() if k in keep})
    expected = _alerts(engine, whole)
    assert len(expected) >= {"enabled": 2, "every-rule": 4, "conditions": 100}[which]  # the data fires rules
    assert _alerts(engine, cut) == expected
    assert sum(len(c) for c in cut) < sum(len(e) for e in whole)  # and fields were left out


def test_fields_for_type_keeps_what_dispatch_and_alerts_read() -> None:
    engine = _engine(RULE_FILES, every_rule=False)
    assert {"evt.num", "evt.time", "evt.type"} <= engine.fields_for_type("no-rule-uses-this-type")
    opens = engine.fields_for_type("openat")
    for r in engine.rules:
        if "openat" in r.event_types:
            assert r.fields <= opens, r.name


def _build(engine: Engine, raw: list[RawEvent], *, by_type: bool, root: Path) -> list[dict[str, Any]]:
    table = state.ProcessTable(proc_root=root)  # nothing read from /proc: both runs see the same
    builder = events.EventBuilder(
        table, engine.required_fields, "node", by_type=engine.fields_for_type if by_type else None
    )
    built = [e for ev in raw if (e := builder.build(ev)) is not None]
    return _alerts(engine, built)


ACTIONS = r"""
import os, socket, subprocess, sys, tempfile
d = tempfile.mkdtemp()
os.chdir(d)
open("plain", "w").close()
open("tab\tand\nnewline", "w").close()
dfd = os.open(d, os.O_RDONLY)
os.close(os.open("plain", os.O_RDONLY, dir_fd=dfd))
os.dup2(dfd, 77); os.fchdir(77); os.chdir(d)
os.symlink("plain", "ln"); os.link("plain", "hard"); os.unlink("ln"); os.chmod("hard", 0o600)
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
c = socket.socket()
try:
    c.connect(("127.0.0.1", 1))
except OSError:
    pass
os.setuid(0)
os.memfd_create("m" + sys.argv[1])
os.spawnv(os.P_WAIT, "/bin/true", ["true", "x" * 300, sys.argv[1]])
for p in ("/etc/shadow", "/etc/sudoers", "/root/.ssh/authorized_keys", "/etc/passwd"):
    try:
        os.close(os.open(p, os.O_RDONLY))
    except OSError:
        pass
os.chdir("/etc"); os.close(os.open("../etc/./shadow", os.O_RDONLY))
subprocess.run(["grep", "-r", "BEGIN RSA PRIVATE", "/nonexistent"], check=False, stderr=subprocess.DEVNULL)
subprocess.run(["sh", "-c", "true"], check=False)
"""


@pytest.mark.root
@pytest.mark.ebpf
@pytest.mark.slow
async def test_a_live_stream_alerts_the_same_with_fields_by_type(tmp_path: Path) -> None:
    """Real actions (files, relative and dirfd paths, fchdir, links, sockets, setuid, memfd,
    reads of sensitive files, a traversal, a private-key grep and execs), captured once from the
    ring buffer, built both ways."""
    skip_unless_backend("ringbuf")
    source = ringbuf.RingbufSource(None)
    await source.start()
    raw: list[RawEvent] = []
    done, pids = asyncio.Event(), set[int]()
    task = asyncio.create_task(collect_family(source, raw, done, pids))
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", ACTIONS, "mark" + str(time.time_ns()))
        pids.add(proc.pid)
        assert await proc.wait() == 0
        await asyncio.wait_for(done.wait(), 60)
    finally:
        source.interrupt()
        await asyncio.gather(task, return_exceptions=True)
        await source.close()
    assert len(raw) > 50
    for paths, every in (([PROJECT_RULES], False), (RULE_FILES, False), (RULE_FILES, True)):
        engine = _engine(paths, every_rule=every)
        expected = _build(engine, raw, by_type=False, root=tmp_path)
        assert _build(engine, raw, by_type=True, root=tmp_path) == expected
    assert expected  # the stream does fire rules (every upstream rule enabled)
