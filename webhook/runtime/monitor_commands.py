"""``portcullis monitor``: run the runtime monitor (a thin layer over ``runtime.monitor``).

Imports of the monitor's parts happen when it runs, not when the CLI registers its commands, so
every other ``portcullis`` command starts without loading aiohttp and the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webhook import errors, listening

if TYPE_CHECKING:
    from webhook.config.monitor import MonitorConfig
    from webhook.runtime import monitor, outputs

# rules.DEFAULT_RULES (package data; a directory: every *.yaml in it, sorted), without importing
# the rules engine at registration time.
DEFAULT_RULES = Path(__file__).resolve().parent / "rules" / "default"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser("monitor", help="watch kernel events (or a recorded stream) with Falco rules")
    p.add_argument("--config", metavar="FILE", help="YAML config file (the `monitor:` section is used)")
    p.add_argument("--rules", action="append", help="rules file or directory (repeatable, loaded in order)")
    p.add_argument("--source", choices=("ebpf", "jsonl", "tetragon"), help="event source (default ebpf)")
    p.add_argument(
        "--ebpf-backend", choices=("auto", "ringbuf", "bpftrace"),
        help="eBPF backend: ringbuf (libbpf ring buffer; needs clang, bpftool, libbpf-dev), bpftrace, or auto "
        "(ringbuf when it can be built; the default)",
    )  # fmt: skip
    p.add_argument("--input", help="events file for jsonl/tetragon, '-' for stdin")
    p.add_argument("--output", action="append", help="stdout | file:PATH | http:URL (repeatable)")
    p.add_argument("--audit-log", help="also append alerts to the audit log in this directory")
    p.add_argument("--audit-key", help="the audit log's signing key (with --audit-log)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until SIGINT/SIGTERM)")
    p.add_argument("--metrics-listen", help="serve Prometheus metrics on HOST:PORT (/metrics)")
    p.add_argument("--kubelet", help="kubelet URL for pod metadata (k8s.* fields), e.g. https://NODE:10250")
    p.add_argument("--kubelet-token", help="bearer token file for the kubelet (default: the service account's)")
    p.add_argument("--kubelet-ca", help="CA bundle that signed the kubelet's serving certificate")
    p.add_argument(
        "--kubelet-insecure", action="store_true", default=None, help="do not verify the kubelet's certificate"
    )
    p.add_argument(
        "--ready-stale", type=float, metavar="SECONDS", help="/readyz fails when no event arrived for this long"
    )
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
    from webhook import config as config_mod

    cfg = config_mod.load(args.config) if args.config else config_mod.Config()
    mon = cfg.monitor
    overrides = {
        "source": args.source, "ebpf_backend": args.ebpf_backend, "input": args.input, "outputs": args.output,
        "audit_log": args.audit_log,
        "audit_key": args.audit_key, "metrics_listen": args.metrics_listen, "kubelet_url": args.kubelet,
        "kubelet_token_path": args.kubelet_token, "kubelet_ca_path": args.kubelet_ca,
        "kubelet_insecure": args.kubelet_insecure, "ready_stale_s": args.ready_stale,
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
    if not mon.ready_stale_s > 0:
        raise errors.ConfigError(f"--ready-stale {mon.ready_stale_s!r}: expected a positive number of seconds")
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
    from webhook.runtime.sources import kernel

    source = kernel.for_engine(
        engine, mon.ebpf_backend, bpftrace=mon.bpftrace, buffering=mon.buffering, perf_rb_pages=mon.perf_rb_pages,
        reorder_ms=mon.reorder_ms, ring_bytes=mon.ring_bytes, poll_ms=mon.poll_ms,
    )  # fmt: skip
    for evt, why in sorted(source.program.missing.items()):
        print(f"portcullis monitor: warning: event type {evt!r} will not be seen: {why}", file=sys.stderr)
    return source


def build_outputs(mon: MonitorConfig) -> list[outputs.Output]:
    from webhook.runtime import outputs

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
    if token is None:
        print(
            f"portcullis monitor: warning: kubelet token {mon.kubelet_token_path!r} not found: asking the kubelet "
            "anonymously (it usually refuses: no k8s.* fields)",
            file=sys.stderr,
        )
    return k8s_meta.KubeletPods(
        mon.kubelet_url, token_path=token, ca_path=mon.kubelet_ca_path or None, insecure=mon.kubelet_insecure
    )


def run(args: argparse.Namespace) -> int:
    from webhook.runtime.engine import Engine
    from webhook.runtime.rules import fields, loader

    mon, rules = settings(args)
    have = fields.producible_fields(mon.source, pod_metadata=bool(mon.kubelet_url))
    engine = Engine.load(rules, match=mon.match, disabled_tags=mon.disabled_tags, producible=have)
    for warning in getattr(engine, "warnings", ()):
        print(f"portcullis monitor: warning: {warning}", file=sys.stderr)
    report_coverage(engine, mon.source)
    files = ", ".join(str(f) for f in loader.expand(rules)[0])
    print(f"portcullis monitor: {len(engine.rules)} enabled rules from {files}", file=sys.stderr)
    snapshot = asyncio.run(_main(mon, engine, args.duration))
    print(json.dumps(snapshot, sort_keys=True), file=sys.stderr)
    return 0


def report_coverage(engine: Any, source: str) -> None:
    """Say, per rule, which fields the source cannot produce and whether the rule is therefore
    disabled (never silently); refuse to run when no enabled rule is left (fail closed)."""
    for cov in engine.coverage:
        if cov.missing:
            print(f"portcullis monitor: warning: {cov.message(source)}", file=sys.stderr)
    if engine.coverage and not engine.rules:
        raise errors.RuleLoadError(f"no enabled rule can fire on the {source} source (see the warnings above)")


async def _main(mon: MonitorConfig, engine: Any, duration: float | None) -> dict[str, Any]:
    from webhook.runtime import monitor

    sinks = build_outputs(mon)
    mon_ = monitor.Monitor(build_source(mon, engine), engine, sinks, queue_batches=mon.queue_batches,
                           hostname=mon.hostname or None, metadata=build_metadata(mon))  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runner = await _serve_metrics(mon.metrics_listen, mon_, mon.ready_stale_s) if mon.metrics_listen else None
    try:
        return await mon_.run(duration=duration, stop=stop)
    finally:
        if runner is not None:
            await runner.cleanup()


async def _serve_metrics(listen: str, mon: monitor.Monitor, stale_after: float = 120.0) -> Any:
    """``/metrics`` (Prometheus text), ``/healthz`` (the process answers) and ``/readyz`` (200 only
    while the source is attached and events flow, else 503 with the reason)."""
    from aiohttp import web

    from webhook.runtime import monitor

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise errors.ConfigError(f"--metrics-listen {listen!r}: expected HOST:PORT")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=monitor.prometheus(mon.snapshot()), content_type="text/plain")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ok, why = monitor.readiness(mon, stale_after)
        return web.Response(status=200 if ok else 503, text=why + "\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    try:
        await listening.start(site.start, host, int(port), "--metrics-listen (monitor.metrics_listen)")
    except errors.ConfigError:
        await runner.cleanup()
        raise
    return runner
