"""The scan loop inside ``serve``: campaign for the Lease, scan while leading (one replica scans)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

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
) -> None:
    """Until ``stop``: while this replica leads, a fresh ``Scanner`` follows the cluster."""
    campaign = campaign or elector(rest, settings)

    async def lead() -> None:
        await Scanner(pipeline, rest, kube, settings, metrics=metrics, clock=clock).run()

    await campaign.run(stop, lead)
