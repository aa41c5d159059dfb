"""The scan loop inside ``serve``: campaign for the Lease, scan while leading (one replica scans)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from webhook.checks.pipeline import Pipeline
from webhook.config.kubernetes import KubernetesConfig
from webhook.config.scan import ScanConfig
from webhook.scan.api import RestApi
from webhook.scan.lease import LeaderElector
from webhook.scan.metrics import ScanMetrics
from webhook.scan.scanner import Scanner


def identity(settings: ScanConfig) -> str:
    """This replica's name in the Lease: ``scan.identity``, ``$POD_NAME``, or the host name."""
    return settings.identity or os.environ.get("POD_NAME") or socket.gethostname()


def lease_namespace(settings: ScanConfig) -> str:
    return settings.lease_namespace or os.environ.get("POD_NAMESPACE") or "default"


def elector(rest: RestApi, settings: ScanConfig) -> LeaderElector:
    return LeaderElector(
        rest,
        lease_namespace(settings),
        settings.lease_name,
        identity(settings),
        lease_duration=settings.lease_duration,
        renew_deadline=settings.renew_deadline,
        retry_period=settings.retry_period,
    )


async def run(
    pipeline: Pipeline,
    rest: RestApi,
    kube: KubernetesConfig,
    settings: ScanConfig,
    stop: asyncio.Event,
    *,
    metrics: ScanMetrics,
    campaign: LeaderElector | None = None,
    clock: Callable[[], float] = time.time,
    namespaces: Any | None = None,
) -> None:
    """Until ``stop``: while this replica leads, a fresh ``Scanner`` follows the cluster.

    ``namespaces`` is the pipeline's namespace directory (``kube.namespaces``): when a
    namespace's labels change, its objects are judged again.
    """
    campaign = campaign or elector(rest, settings)
    current: list[Scanner] = []  # the scanner of this leader term, if any
    if namespaces is not None:  # label changes re-judge the namespace (subscribed once, for all terms)
        namespaces.subscribe(lambda name, labels: current[0].namespace_changed(name, labels) if current else None)

    async def lead() -> None:
        scanner = Scanner(pipeline, rest, kube, settings, metrics=metrics, clock=clock)
        current[:] = [scanner]
        try:
            await scanner.run()
        finally:
            current.clear()

    await campaign.run(stop, lead)
