"""``portcullis scan``: one background scan of the cluster into PolicyReports (CLI layer)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from webhook import config as config_mod
from webhook import errors


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "scan", help="judge the cluster's existing objects once and write PolicyReports (wgpolicyk8s.io/v1alpha2)"
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="config file (YAML); the same one `serve` uses")
    p.add_argument(
        "--format", choices=["text", "json"], default="text", help="summary as text for people or JSON for tools"
    )
    p.set_defaults(func=_scan)


def _scan(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    summary = asyncio.run(run(cfg))
    if args.format == "json":
        sys.stdout.write(json.dumps({"version": 1, **summary}, sort_keys=True, indent=2) + "\n")
    else:
        totals = summary["summary"]
        print(
            f"scanned {summary['objects']} objects of {len(summary['kinds'])} kinds: "
            + ", ".join(f"{totals[k]} {k}" for k in ("pass", "fail", "warn", "error", "skip"))
        )
        for namespace, counts in sorted(summary["namespaces"].items()):
            print(f"  {namespace or '(cluster)'}: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
        for reason in summary["not_scanned"]:
            print(f"not scanned: {reason}", file=sys.stderr)
    return 1 if summary["summary"]["fail"] else 0


async def run(cfg: config_mod.Config) -> dict[str, Any]:
    """One scan with ``cfg``'s checks against its API server; the summary of what was written."""
    from webhook.admission import service
    from webhook.scan import reports
    from webhook.scan.api import RestApi
    from webhook.scan.scanner import Scanner

    services = service.cluster_services(cfg)
    if services.kube_api is None:
        raise errors.ConfigError("scan needs a Kubernetes API server (kubernetes.mode, a kubeconfig, or in a pod)")
    pipeline = service.build_pipeline(cfg, services)
    rest = RestApi.build(cfg.kubernetes)
    await pipeline.start()
    try:
        scanner = Scanner(pipeline, rest, cfg.kubernetes, cfg.scan)
        await scanner.once()
        namespaces = {ns: reports.summary(scanner.results(ns)) for ns in scanner.namespaces()}
        total: Counter[str] = Counter()
        for counts in namespaces.values():
            total.update(counts)
        return {
            "objects": scanner.object_count,
            "kinds": [r.kind for r in scanner.selection.resources],
            "not_scanned": list(scanner.selection.not_scanned),
            "namespaces": namespaces,
            "summary": {k: total.get(k, 0) for k in reports.RESULTS},
        }
    finally:
        await pipeline.close()
        await asyncio.to_thread(rest.close)
        await asyncio.to_thread(services.kube_api.close)
