"""Sub-commands of the admission face: ``serve``, ``certs`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from webhook import config as config_mod
from webhook import errors


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``serve``, ``certs`` and ``demo`` to the ``portcullis`` parser."""
    serve = subparsers.add_parser("serve", help="run the admission webhook over HTTPS")
    serve.add_argument("--config", type=Path, help="config file (YAML); defaults apply without one")
    serve.add_argument("--listen", help="HOST:PORT to listen on (default from config: 0.0.0.0:8443)")
    serve.add_argument("--tls-cert", type=Path, help="serving certificate (PEM); reloaded when it changes")
    serve.add_argument("--tls-key", type=Path, help="private key of the serving certificate (PEM)")
    serve.add_argument("--dev", action="store_true", help="self-signed certificate in a temp dir (prints its CA)")
    serve.set_defaults(func=_serve)

    certs = subparsers.add_parser("certs", help="create a CA and a serving certificate for the webhook")
    certs.add_argument("--dns", action="append", required=True, help="Service DNS name (repeatable)")
    certs.add_argument("--out", type=Path, required=True, help="directory for ca.crt, tls.crt, tls.key")
    certs.add_argument(
        "--days", "--validity-days", dest="days", type=int, default=365, help="validity of the serving certificate"
    )
    certs.add_argument(
        "--renew-before-days", type=int, default=30, help="with --k8s-secret: keep a certificate valid longer than this"
    )
    certs.add_argument("--k8s-secret", metavar="NAMESPACE/NAME", help="also store them in this TLS Secret")
    certs.add_argument(
        "--k8s-webhooks", metavar="NAME[,NAME]", help="also set caBundle in these webhook configurations"
    )
    certs.set_defaults(func=_certs)

    demo = subparsers.add_parser(
        "demo", help="start the webhook on loopback with a self-signed certificate and send it sample reviews"
    )
    demo.add_argument("--config", type=Path, help="config file (YAML); defaults apply without one")
    demo.set_defaults(func=_demo)


def _serve(args: argparse.Namespace) -> int:
    from webhook.admission import service

    cfg = config_mod.load(args.config)
    listen = service.Listen.parse(args.listen or cfg.server.listen)
    if args.dev:
        if args.tls_cert or args.tls_key:
            raise errors.ConfigError("--dev makes its own certificate: drop --tls-cert/--tls-key")
        files = service.dev_certificates()
        print(f"dev certificate: CA at {files.ca_cert}", file=sys.stderr)
        cert, key = files.cert, files.key
    else:
        cert_s = args.tls_cert or cfg.server.tls_cert
        key_s = args.tls_key or cfg.server.tls_key
        if not cert_s or not key_s:
            raise errors.ConfigError("serve needs --tls-cert and --tls-key (or server.tls_cert/tls_key), or --dev")
        cert, key = Path(cert_s), Path(key_s)
    with service.event_loop_runner() as runner:
        if cfg.scan.enabled:
            runner.run(serve_and_scan(cfg, listen, cert, key))
        else:
            runner.run(service.serve(cfg, listen, cert, key))
    return 0


async def serve_and_scan(
    cfg: config_mod.Config,
    listen: Any,
    cert: Path,
    key: Path,
    *,
    started: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """The webhook plus the background scan loop (``scan.enabled``): both judge through the one
    pipeline; the scan's progress is on the webhook's /metrics; only the Lease holder scans."""
    from webhook.admission import service
    from webhook.admission.metrics import WebhookMetrics
    from webhook.scan import loop as scan_loop
    from webhook.scan.api import RestApi
    from webhook.scan.metrics import ScanMetrics

    services = service.cluster_services(cfg)
    if services.kube_api is None:
        raise errors.ConfigError("scan.enabled needs a Kubernetes API server (kubernetes.mode, or run in a pod)")
    pipeline = service.build_pipeline(cfg, services)
    rest = RestApi.build(cfg.kubernetes)
    metrics, scan_metrics = WebhookMetrics(), ScanMetrics()
    metrics.check_sources.append(("scan", scan_metrics.lines))
    started = started or asyncio.Event()
    stop = stop or asyncio.Event()
    server = asyncio.create_task(
        service.serve(cfg, listen, cert, key, pipeline=pipeline, started=started, stop=stop, metrics=metrics)
    )
    scanning: asyncio.Task[None] | None = None
    try:
        waiting = asyncio.create_task(started.wait())
        await asyncio.wait({server, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if started.is_set():  # the pipeline is started by the server: scan only after that
            scanning = asyncio.create_task(
                scan_loop.run(
                    pipeline, rest, cfg.kubernetes, cfg.scan, stop, metrics=scan_metrics, namespaces=services.namespaces
                )
            )
        await server
    finally:
        stop.set()
        if scanning is not None:
            await scanning
        await asyncio.to_thread(rest.close)
        await asyncio.to_thread(services.kube_api.close)


def _certs(args: argparse.Namespace) -> int:
    from webhook.admission import certs

    names: list[str] = []
    for dns in args.dns:
        names += certs.service_names(dns)
    names = list(dict.fromkeys(names))
    if args.days <= 0 or args.renew_before_days < 0 or args.renew_before_days >= args.days:
        raise errors.ConfigError("--validity-days must be positive and larger than --renew-before-days")
    if args.k8s_secret or args.k8s_webhooks:
        from webhook.admission import certs_k8s

        files, issued = certs_k8s.sync(
            names,
            args.out,
            secret=args.k8s_secret,
            webhooks=args.k8s_webhooks,
            days=args.days,
            renew_before_days=args.renew_before_days,
        )
        print(f"{'issued a new' if issued else 'kept the existing'} certificate; files in {args.out}")
        return 0
    files = certs.generate(names, args.out, days=args.days)
    print(f"wrote {files.ca_cert}, {files.cert}, {files.key}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from webhook.admission import demo, service

    cfg = config_mod.load(args.config)
    with service.event_loop_runner() as runner:
        return runner.run(demo.run(cfg))
