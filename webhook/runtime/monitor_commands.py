"""``portcullis monitor``: run the runtime monitor (a thin layer over ``runtime.monitor``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from webhook import config as config_mod
from webhook import errors
from webhook.config.monitor import MonitorConfig
from webhook.runtime import monitor, outputs

DEFAULT_RULES = Path(__file__).resolve().parents[2] / "rules" / "portcullis_rules.yaml"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser("monitor", help="watch kernel events (or a recorded stream) with Falco rules")
    p.add_argument("--config", help="YAML config file (the `monitor:` section is used)")
    p.add_argument("--rules", action="append", help="rules file or directory (repeatable, loaded in order)")
    p.add_argument("--source", choices=("ebpf", "jsonl", "tetragon"), help="event source (default ebpf)")
    p.add_argument("--input", help="events file for jsonl/tetragon, '-' for stdin")
    p.add_argument("--output", action="append", help="stdout | file:PATH | http:URL (repeatable)")
    p.add_argument("--audit-log", help="also append alerts to the audit log in this directory")
    p.add_argument("--audit-key", help="the audit log's signing key (with --audit-log)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until SIGINT/SIGTERM)")
    p.add_argument("--metrics-listen", help="serve Prometheus metrics on HOST:PORT (/metrics)")
    p.add_argument("--kubelet", help="kubelet URL for pod metadata (k8s.* fields), e.g. https://NODE:10250")
    p.set_defaults(func=run)


def main(argv: list[str]) -> int:
    """``portcullis monitor ARGS`` without the rest of the CLI (tests, and ``python -m`` use)."""
    parser = argparse.ArgumentParser(prog="portcullis")
    register(parser.add_subparsers())
    args = parser.parse_args(["monitor", *argv])
    try:
        return int(args.func(args))
    except errors.PortcullisError as exc:
        print(f"portcullis: error: {exc}", file=sys.stderr)
        return 2


def settings(args: argparse.Namespace) -> tuple[MonitorConfig, list[Path]]:
    """The monitor section with flags applied, and the rules files resolved against the config."""
    cfg = config_mod.load(args.config) if args.config else config_mod.Config()
    mon = cfg.monitor
    overrides = {
        "source": args.source, "input": args.input, "outputs": args.output, "audit_log": args.audit_log,
        "audit_key": args.audit_key, "metrics_listen": args.metrics_listen, "kubelet_url": args.kubelet,
    }  # fmt: skip
    values = {k: v for k, v in overrides.items() if v is not None}
    if values:
        import msgspec

        mon = msgspec.structs.replace(mon, **values)
    if args.rules:
        rules = [Path(r) for r in args.rules]
    elif mon.rules:
        rules = [cfg.resolve_path(r) for r in mon.rules]
    else:
        rules = [DEFAULT_RULES]
    if mon.audit_log and not mon.audit_key:
        raise errors.ConfigError("--audit-log needs --audit-key (the log's signing key)")
    return mon, rules


def build_source(mon: MonitorConfig, engine: Any) -> Any:
    if mon.source == "jsonl":
        from webhook.runtime.sources import jsonl

        return jsonl.JsonlSource(mon.input)
    if mon.source == "tetragon":
        from webhook.runtime.sources import tetragon

        return tetragon.TetragonSource(mon.input)
    from webhook.runtime.sources import ebpf

    types = None if engine.matches_all_types else engine.event_types
    source = ebpf.EbpfSource(
        types, bpftrace=mon.bpftrace, buffering=mon.buffering, perf_rb_pages=mon.perf_rb_pages,
        reorder_ms=mon.reorder_ms, success_only=engine.success_only_types,
    )  # fmt: skip
    for evt, why in sorted(source.program.missing.items()):
        print(f"portcullis monitor: warning: event type {evt!r} will not be seen: {why}", file=sys.stderr)
    return source


def build_outputs(mon: MonitorConfig) -> list[outputs.Output]:
    sinks = [outputs.parse_output(o) for o in mon.outputs]
    if mon.audit_log:
        import socket

        sinks.append(
            outputs.AuditOutput(mon.audit_log, mon.audit_key, origin=mon.audit_origin, writer=socket.gethostname())
        )
    return sinks


def build_metadata(mon: MonitorConfig) -> Any:
    if not mon.kubelet_url:
        return None
    from webhook.runtime import k8s_meta

    token = mon.kubelet_token_path if mon.kubelet_token_path and Path(mon.kubelet_token_path).is_file() else None
    return k8s_meta.KubeletPods(
        mon.kubelet_url, token_path=token, ca_path=mon.kubelet_ca_path or None, insecure=mon.kubelet_insecure
    )


def run(args: argparse.Namespace) -> int:
    from webhook.runtime.engine import Engine

    mon, rules = settings(args)
    engine = Engine.load(rules, match=mon.match, disabled_tags=mon.disabled_tags)
    for warning in getattr(engine, "warnings", ()):
        print(f"portcullis monitor: warning: {warning}", file=sys.stderr)
    snapshot = asyncio.run(_main(mon, engine, args.duration))
    print(json.dumps(snapshot, sort_keys=True), file=sys.stderr)
    return 0


async def _main(mon: MonitorConfig, engine: Any, duration: float | None) -> dict[str, Any]:
    sinks = build_outputs(mon)
    mon_ = monitor.Monitor(build_source(mon, engine), engine, sinks, queue_batches=mon.queue_batches,
                           hostname=mon.hostname or None, metadata=build_metadata(mon))  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runner = await _serve_metrics(mon.metrics_listen, mon_) if mon.metrics_listen else None
    try:
        return await mon_.run(duration=duration, stop=stop)
    finally:
        if runner is not None:
            await runner.cleanup()


async def _serve_metrics(listen: str, mon: monitor.Monitor) -> Any:
    from aiohttp import web

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise errors.ConfigError(f"--metrics-listen {listen!r}: expected HOST:PORT")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=monitor.prometheus(mon.snapshot()), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    return runner
