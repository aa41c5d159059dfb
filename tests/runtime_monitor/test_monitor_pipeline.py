"""The pipeline with replayed sources: conformance events through the real engine, drops, sinks, CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from webhook import errors
from webhook.runtime import monitor, monitor_commands, outputs
from webhook.runtime.engine import Engine
from webhook.runtime.sources import jsonl

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "falco"
# Conditions from conditions.txt whose expected matches are compared through the whole pipeline.
CONDITIONS = ("procname_exists", "fdip_zero", "str_ne_absent_field", "not_exists", "env_contains")


def conditions() -> dict[str, str]:
    out = {}
    for line in (SHARED / "conditions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            cid, _, cond = line.partition(" ")
            out[cid] = cond.strip()
    return out


def rules_file(tmp_path: Path, conds: dict[str, str]) -> Path:
    items = [
        {"rule": cid, "desc": cid, "condition": conds[cid], "output": f"{cid} %evt.num", "priority": "INFO"}
        for cid in CONDITIONS
        if cid in conds
    ]
    path = tmp_path / "rules.yaml"
    path.write_text(json.dumps(items))
    return path


class Collect(outputs.Output):
    name = "collect"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.alerts: list[dict[str, Any]] = []

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        self.alerts.extend(batch)


@pytest.mark.parametrize("trace", ["connect_localhost", "single_ipv6_conn", "cat_write", "libs_sample"])
async def test_replayed_conformance_events_alert_as_sysdig_matched(tmp_path: Path, trace: str) -> None:
    conds = conditions()
    engine = Engine.load([rules_file(tmp_path, conds)])
    sink = Collect()
    snap = await monitor.Monitor(jsonl.JsonlSource(SHARED / "events" / f"{trace}.jsonl"), engine, [sink]).run()
    expected = json.loads((SHARED / "expected" / "conditions.json").read_text())
    got: dict[str, list[int]] = {cid: [] for cid in CONDITIONS}
    for a in sink.alerts:
        got[a["rule"]].append(a["output_fields"]["evt.num"])
    want = {cid: expected[cid][trace] for cid in CONDITIONS if cid in conds}
    assert {k: sorted(v) for k, v in got.items() if k in want} == want
    assert snap["drops"] == 0
    assert snap["events"] == sum(1 for ln in (SHARED / "events" / f"{trace}.jsonl").open() if ln.strip())


class Burst:
    """A live source that hands over 10 batches without yielding to the loop (an overload)."""

    kind, live, name = "fields", True, "burst"

    async def batches(self) -> AsyncIterator[list[Any]]:
        for i in range(10):
            yield [{"evt.type": "openat", "evt.num": i * 3 + j} for j in range(3)]

    def stats(self) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        return None


class CountingEngine:
    """Stand-in engine: alerts on every event (the drop test is about the queue, not rules)."""

    required_fields = frozenset({"evt.type"})

    def __init__(self) -> None:
        self.seen = 0

    def process(self, event: dict[str, Any]) -> list[Any]:
        self.seen += 1
        return []


async def test_a_live_source_drops_and_counts_when_the_queue_is_full() -> None:
    engine = CountingEngine()
    snap = await monitor.Monitor(Burst(), engine, [], queue_batches=1).run()
    assert (snap["events"], snap["drops"]) == (3, 27)
    assert snap["drop_ratio"] == 0.9
    assert engine.seen == 3


async def test_queue_drops_are_said_as_falcos_drop_alert_once_with_the_rest_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Dropped at the queue is lost as surely as in the kernel: Falco's internal drop alert
    (string fields, as Falco's), not only a counter; at most one per 30 s while running, and
    whatever is left when the run ends."""
    sink = Collect()
    mon = monitor.Monitor(Burst(), CountingEngine(), [sink], queue_batches=1)
    mon._report_loss()  # nothing lost yet: nothing said
    snap = await mon.run()
    drops = [a for a in sink.alerts if a["rule"] == monitor.DROP_RULE]
    assert [a["output_fields"] for a in drops] == [
        {"n_drops": "27", "n_drops_buffer": "0", "n_drops_queue": "27", "n_evts": "3"}
    ]
    assert drops[0]["output"] == "Falco internal: syscall event drop. 27 system calls dropped in last second."
    assert (drops[0]["priority"], snap["alerts_by_rule"]) == ("Debug", {monitor.DROP_RULE: 1})
    assert [r.levelname for r in caplog.records if monitor.DROP_RULE in r.getMessage()] == ["CRITICAL"]
    mon.metrics.drops += 5  # more, within 30 s of the first report: held until the end of a run
    mon._report_loss()
    assert mon.metrics.alerts_by_rule[monitor.DROP_RULE] == 1
    mon._report_loss(final=True)
    assert mon.metrics.alerts_by_rule[monitor.DROP_RULE] == 2
    assert "5 system calls dropped" in caplog.records[-1].getMessage()


def shadow_rules(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(
        "- rule: shadow\n  desc: d\n  condition: fd.name = /etc/shadow\n"
        "  output: read %fd.name by %proc.name\n  priority: WARNING\n  tags: [t]\n"
    )
    return path


def events_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "events.jsonl"
    lines = [{"evt.num": i, "evt.type": "openat", "fd.name": "/etc/shadow", "proc.name": "cat"} for i in range(n)]
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in lines))
    return path


async def test_shutdown_flushes_every_alert_to_the_file(tmp_path: Path) -> None:
    out = tmp_path / "alerts.jsonl"
    engine = Engine.load([shadow_rules(tmp_path)])
    snap = await monitor.Monitor(
        jsonl.JsonlSource(events_file(tmp_path, 500)), engine, [outputs.FileOutput(out)], hostname="node-1"
    ).run()
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(alerts) == 500 == snap["alerts"]
    assert alerts[0]["hostname"] == "node-1"
    assert alerts[0]["output_fields"]["fd.name"] == "/etc/shadow"
    assert snap["alerts_by_priority"] == {"Warning": 500}


async def test_http_output_retries_then_delivers_batches() -> None:
    """A local aiohttp server speaks plain HTTP POST (what falcosidekick receives)."""
    calls: list[int] = []
    received: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) == 1:
            return web.Response(status=503)
        received.extend(orjson.loads(line) for line in (await request.read()).splitlines())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        sink = outputs.HttpOutput(f"http://127.0.0.1:{port}/alerts", backoff=0.01)
        await sink.start()
        for i in range(5):
            sink.emit({"rule": "r", "n": i})
        await sink.close()
    finally:
        await runner.cleanup()
    assert [a["n"] for a in received] == [0, 1, 2, 3, 4]
    assert sink.stats() == {"sent": 5, "dropped": 0, "failed": 0}
    assert sink.attempts == 2


async def test_http_output_gives_up_on_a_client_error_and_counts_it() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=400)

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        sink = outputs.HttpOutput(f"http://127.0.0.1:{port}/", backoff=0.01)
        await sink.start()
        sink.emit({"rule": "r"})
        await sink.close()
    finally:
        await runner.cleanup()
    assert (sink.attempts, sink.failed) == (1, 1)


async def test_alerts_go_to_the_signed_audit_log(tmp_path: Path) -> None:
    audit_log = pytest.importorskip("webhook.audit.log")
    note = pytest.importorskip("webhook.audit.note")
    key = tmp_path / "key"
    key.write_text(note.generate("portcullis.dev/monitor").private_text())
    sink = outputs.AuditOutput(tmp_path / "log", key, origin="portcullis.dev/monitor", writer="node-1")
    engine = Engine.load([shadow_rules(tmp_path)])
    await monitor.Monitor(jsonl.JsonlSource(events_file(tmp_path, 3)), engine, [sink]).run()
    assert sink.stats()["sent"] == 3
    log = await audit_log.AuditLog.open(
        tmp_path / "log", signing_key_path=key, origin="portcullis.dev/monitor", writer="node-1"
    )
    try:
        assert log.size == 3
    finally:
        await log.close()


async def test_a_bad_events_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"evt.type": "openat"}\n\n[1, 2]\n')
    engine = Engine.load([shadow_rules(tmp_path)])
    with pytest.raises(jsonl.EventInputError, match=r"bad.jsonl:3: expected an object"):
        await monitor.Monitor(jsonl.JsonlSource(path), engine, []).run()


def test_prometheus_text_has_the_counters() -> None:
    snap = monitor.Metrics(events=10, drops=2).snapshot({"kernel_lost": 1}, {"stdout": {"sent": 1}})
    snap["alerts_by_rule"] = {'Say "hi"': 1}
    text = monitor.prometheus(snap)
    assert "portcullis_monitor_events_total 10" in text
    assert "portcullis_monitor_drops_total 2" in text
    assert 'portcullis_monitor_source_total{counter="kernel_lost"} 1' in text
    assert 'portcullis_monitor_alerts_total{rule="Say \\"hi\\""} 1' in text


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    monitor_commands.register(parser.add_subparsers())
    args = parser.parse_args(["monitor", *argv])
    return int(args.func(args))


def test_cli_replays_a_file_into_a_file_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "alerts.jsonl"
    code = cli("--source", "jsonl", "--input", str(events_file(tmp_path, 4)), "--rules", str(shadow_rules(tmp_path)),
               "--output", f"file:{out}")  # fmt: skip
    assert code == 0
    assert len(out.read_text().splitlines()) == 4
    assert json.loads(capsys.readouterr().err.splitlines()[-1])["alerts"] == 4


def test_cli_reads_the_monitor_section_of_the_config(tmp_path: Path) -> None:
    out = tmp_path / "alerts.jsonl"
    cfg = tmp_path / "portcullis.yaml"
    events = events_file(tmp_path, 2)
    cfg.write_text(f"monitor:\n  source: jsonl\n  input: {events}\n  rules: [r.yaml]\n  outputs: ['file:{out}']\n")
    shadow_rules(tmp_path)
    assert cli("--config", str(cfg)) == 0
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--output", "syslog"], "unknown output 'syslog'"),
        (["--audit-log", "/tmp/x"], "--audit-log needs --audit-key"),
        (["--metrics-listen", "nope"], "expected HOST:PORT"),
    ],
)
def test_cli_usage_errors_are_config_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    base = ["--source", "jsonl", "--input", str(events_file(tmp_path, 1)), "--rules", str(shadow_rules(tmp_path))]
    with pytest.raises(errors.ConfigError, match=message):
        cli(*base, *argv)


def test_the_shipped_rules_are_the_default() -> None:
    assert monitor_commands.DEFAULT_RULES.is_dir()


async def test_metrics_endpoint_serves_prometheus_text(tmp_path: Path) -> None:
    import aiohttp

    engine = Engine.load([shadow_rules(tmp_path)])
    mon = monitor.Monitor(jsonl.JsonlSource(events_file(tmp_path, 3)), engine, [])
    await mon.run()
    runner = await monitor_commands._serve_metrics("127.0.0.1:0", mon)
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
    finally:
        await runner.cleanup()
    assert "portcullis_monitor_events_total 3" in text
    _ = asyncio  # the event loop is pytest-asyncio's


def test_events_from_stdin_to_stdout_as_falco_json(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    runner = "import sys; from webhook.runtime import monitor_commands as m; sys.exit(m.main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", runner, "--source", "jsonl", "--input", "-", "--rules", str(shadow_rules(tmp_path))],
        input=events_file(tmp_path, 2).read_bytes(), capture_output=True, cwd=root, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    alerts = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["rule"] for a in alerts] == ["shadow", "shadow"]
    assert set(alerts[0]) == {"hostname", "output", "output_fields", "priority", "rule", "source", "tags", "time"}


def test_an_invalid_rules_file_exits_2_with_the_location(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: x\n  desc: d\n  condition: fd.name =\n  output: o\n  priority: INFO\n")
    code = monitor_commands.main(["--source", "jsonl", "--input", str(events_file(tmp_path, 1)), "--rules", str(bad)])
    assert code == 2
    assert "bad.yaml" in capsys.readouterr().err
