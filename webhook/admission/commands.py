"""Sub-commands of the admission face: ``serve``, ``certs`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from webhook import config as config_mod
from webhook import errors


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``serve``, ``certs`` and ``demo`` to the ``portcullis`` parser."""
    serve = subparsers.add_parser("serve", help="run the admission webhook over HTTPS")
    serve.add_argument("--config", type=Path, metavar="FILE", help="config file (YAML); defaults apply without one")
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to listen on (default: server.listen, 0.0.0.0:8443; with --dev 127.0.0.1 and that port)",
    )
    serve.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="serving certificate (PEM); reloaded when it changes"
    )
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="private key of the serving certificate (PEM)")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="try it out: loopback only, a throw-away certificate (prints its CA; removed on exit)",
    )
    serve.set_defaults(func=_serve, log_level=logging.INFO)  # a server says where it listens

    certs = subparsers.add_parser("certs", help="create a CA and a serving certificate for the webhook")
    certs.add_argument("--dns", action="append", required=True, metavar="NAME", help="Service DNS name (repeatable)")
    certs.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for ca.crt, tls.crt, tls.key")
    certs.add_argument(
        "--force",
        action="store_true",
        help="replace a CA and key already in --out (webhooks whose caBundle trusts the old CA then fail)",
    )
    certs.add_argument(
        "--days",
        "--validity-days",
        dest="days",
        type=int,
        default=365,
        metavar="N",
        help="validity of the serving certificate in days (default 365)",
    )
    certs.add_argument(
        "--renew-before-days",
        type=int,
        default=30,
        metavar="N",
        help="with --k8s-secret: keep a certificate valid longer than this (default 30)",
    )
    certs.add_argument("--k8s-secret", metavar="NAMESPACE/NAME", help="also store them in this TLS Secret")
    certs.add_argument(
        "--k8s-webhooks", metavar="NAME[,NAME]", help="also set caBundle in these webhook configurations"
    )
    certs.set_defaults(func=_certs)

    demo = subparsers.add_parser(
        "demo", help="start the webhook on loopback with a self-signed certificate and send it sample reviews"
    )
    demo.add_argument("--config", type=Path, metavar="FILE", help="config file (YAML); defaults apply without one")
    demo.set_defaults(func=_demo)


def _serve(args: argparse.Namespace) -> int:
    from webhook.admission import service

    cfg = config_mod.load(args.config)
    listen = service.Listen.parse(args.listen or cfg.server.listen)
    if args.dev:
        if args.tls_cert or args.tls_key:
            raise errors.ConfigError("--dev makes its own certificate: drop --tls-cert/--tls-key")
        if not args.listen:  # a throw-away certificate is for trying out on this machine, not the network
            listen = service.Listen("127.0.0.1", listen.port)
        with service.dev_certificates() as files:
            print(f"dev certificate: CA at {files.ca_cert} (removed on exit)", file=sys.stderr)
            _run_server(cfg, listen, files.cert, files.key)
        return 0
    cert_s = args.tls_cert or cfg.server.tls_cert
    key_s = args.tls_key or cfg.server.tls_key
    if not cert_s or not key_s:
        raise errors.ConfigError("serve needs --tls-cert and --tls-key (or server.tls_cert/tls_key), or --dev")
    _run_server(cfg, listen, Path(cert_s), Path(key_s))
    return 0


def _run_server(cfg: config_mod.Config, listen: Any, cert: Path, key: Path) -> None:
    from webhook.admission import service

    with service.event_loop_runner() as runner:
        if cfg.scan.enabled:
            runner.run(serve_and_scan(cfg, listen, cert, key))
        else:
            runner.run(service.serve(cfg, listen, cert, key))


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
    existing = [p for p in (args.out / "ca.crt", args.out / "tls.crt", args.out / "tls.key") if p.exists()]
    if existing and not args.force:
        raise errors.InputError(
            f"{existing[0]} already exists: a new CA breaks every webhook whose caBundle trusts the current one; "
            "pass --force to replace it (then update the caBundle), or choose another --out"
        )
    files = certs.generate(names, args.out, days=args.days)
    print(f"wrote {files.ca_cert}, {files.cert}, {files.key}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from webhook.admission import demo, service

    cfg = config_mod.load(args.config)
    with service.event_loop_runner() as runner:
        return runner.run(demo.run(cfg))
