"""Assemble and run the webhook process: config → checks → pipeline → HTTPS server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook import errors, listening
from webhook.admission import certs, http, tls
from webhook.admission.metrics import WebhookMetrics
from webhook.admission.recorder import AuditRecorder
from webhook.admission.server import DecisionRecorder, WebhookServer
from webhook.checks.pipeline import Pipeline
from webhook.checks.registry import build_checks
from webhook.checks.services import Services
from webhook.config import Config
from webhook.core.decision import FailureMode

log = logging.getLogger("portcullis.serve")


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise errors.ConfigError(f"listen address {text!r} must be HOST:PORT, e.g. 0.0.0.0:8443")
        return cls(host.strip("[]") or "0.0.0.0", int(port))


def cluster_services(config: Config) -> Services:
    """The API client (in a cluster, or per ``kubernetes:``) and the namespace label watch."""
    from webhook.kube import client as kube_client

    api = kube_client.build(config.kubernetes)
    services = Services(kube_api=api)
    if api is not None:
        from webhook.kube.namespaces import NamespaceDirectory

        services.namespaces = NamespaceDirectory(api, config.kubernetes)
    return services


def build_pipeline(config: Config, services: Services | None = None) -> Pipeline:
    """The webhook's pipeline; with an API server, namespace labels come from its watch."""
    services = services if services is not None else Services()
    return Pipeline(config, build_checks(config, services), services.namespaces)


@contextlib.contextmanager
def dev_certificates() -> Iterator[certs.CertFiles]:
    """A throw-away CA and certificate for localhost (``serve --dev``, ``demo``), removed on exit.

    The key is a private key on disk: it goes when the block ends, also on SIGTERM (which
    otherwise ends the process without unwinding) and on Ctrl-C.
    """
    out = Path(tempfile.mkdtemp(prefix="portcullis-dev-"))
    previous: Any = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield certs.generate(["localhost", "127.0.0.1", "::1"], out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds, so ``finally`` blocks run


async def serve(
    config: Config,
    listen: Listen,
    cert: Path,
    key: Path,
    *,
    recorder: DecisionRecorder | None = None,
    pipeline: Pipeline | None = None,
    started: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    metrics: WebhookMetrics | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); drain in-flight reviews before exiting."""
    client_ca = config.resolve_path(config.server.client_ca) if config.server.client_ca else None
    reloading = tls.ReloadingContext(cert, key, interval=config.server.cert_reload_interval, client_ca=client_ca)
    metrics = metrics or WebhookMetrics()
    audit_log = None
    if recorder is None and config.audit.directory:
        audit_log, recorder = await open_audit(config)
    services: Services | None = None
    if pipeline is None:
        services = cluster_services(config)
        pipeline = build_pipeline(config, services)
    server = WebhookServer(config.server, pipeline, metrics=metrics, recorder=recorder)
    await server.start()
    port = http.HttpServer(server.routes())
    health_port: http.HttpServer | None = None
    try:
        await _start(port, listen, reloading.context, "--listen or server.listen")
        if config.server.health_listen:
            health = Listen.parse(config.server.health_listen)
            health_port = http.HttpServer(server.health_routes())
            await _start(health_port, health, None, "server.health_listen")
        reloading.start()
        metrics.cert_reloads = lambda: reloading.reloads
        for check in pipeline.checks:
            source = getattr(check, "metrics", None)
            if callable(source):
                metrics.check_sources.append((check.id, source))
        metrics.gauge_sources.append(
            lambda: [
                ("portcullis_unjudged_kind_reviews_total", {"kind": k}, n) for k, n in pipeline.unjudged_kinds.items()
            ]
        )
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        log.info("portcullis webhook listening on https://%s:%d", listen.host, listen.port)
        if started is not None:
            started.set()
        await stop.wait()
    finally:
        await reloading.stop()
        if health_port is not None:
            await health_port.shutdown(timeout=1.0)
        await port.shutdown(timeout=5.0)  # drains in-flight reviews first
        await server.close()
        if isinstance(recorder, AuditRecorder):
            await recorder.drain()
        if audit_log is not None:
            await audit_log.close()
        if services is not None and services.kube_api is not None:
            await asyncio.to_thread(services.kube_api.close)  # its connection pool and threads


async def _start(port: http.HttpServer, listen: Listen, context: ssl.SSLContext | None, setting: str) -> None:
    """Bind ``port``; a port in use or an address this host lacks is the caller's to fix (exit 2)."""

    async def bind() -> None:
        await port.start(listen.host, listen.port, ssl_context=context, backlog=1024)

    await listening.start(bind, listen.host, listen.port, setting)


async def open_audit(config: Config) -> tuple[Any, AuditRecorder]:
    """Open this replica's own audit log (its own origin) and the recorder that feeds it."""
    from webhook.audit.log import AuditLog

    audit = config.audit
    assert audit.directory is not None
    key = config.resolve_path(audit.signing_key) if audit.signing_key else None
    writer = audit.writer or os.environ.get("POD_NAME") or socket.gethostname()
    audit_log = await AuditLog.open(
        config.resolve_path(audit.directory),
        signing_key_path=key,
        origin=audit.origin,
        writer=writer,
        commit_window=audit.commit_window,
        checkpoint_every=audit.checkpoint_every,
        checkpoint_interval=audit.checkpoint_interval,
        durable=audit.durable,
        witnesses=audit.witnesses,
    )
    from webhook.audit import objects

    store = objects.ObjectStore(objects.beside(config.resolve_path(audit.directory)), durable=audit.durable)
    recorder = AuditRecorder(
        audit_log,
        wait_durable=audit.wait_durable,
        deny_on_failure=audit.failure_mode is FailureMode.DENY,
        objects=store,
    )
    return audit_log, recorder


def event_loop_runner() -> asyncio.Runner:
    """uvloop when available: it cuts per-request overhead of the event loop noticeably."""
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.Runner()
