"""The scan loop inside ``serve`` (real HTTPS webhook, local wire-format API server ``kubeapi.py``):
it takes the Lease, writes the reports, and shows its progress on the webhook's /metrics."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from webhook import config as config_mod
from webhook.admission import certs, service
from webhook.admission.commands import serve_and_scan

from .conftest import eventually, namespace, pod


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serve_scans_while_it_holds_the_lease(kube: Any, scan_config: dict[str, Any], tmp_path: Path) -> None:
    for ns in ("team-a", "portcullis"):
        kube.put("namespaces", namespace(ns))
    kube.put("pods", pod("root", "team-a", privileged=True))
    scan_config["scan"] |= {"enabled": True, "identity": "webhook-0"}
    cfg = config_mod.parse(scan_config)
    files = certs.generate(["127.0.0.1"], tmp_path / "tls")
    listen = service.Listen("127.0.0.1", free_port())
    started, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_and_scan(cfg, listen, files.cert, files.key, started=started, stop=stop))
    try:
        await asyncio.wait_for(started.wait(), 10)

        def summary() -> Any:
            report = kube.get("policyreports.wgpolicyk8s.io", "team-a", "portcullis")
            return report and report["summary"]

        await eventually(lambda: summary() == {"pass": 0, "fail": 1, "warn": 0, "error": 0, "skip": 0})
        ctx = ssl.create_default_context(cafile=str(files.ca_cert))
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
            session.get(f"https://127.0.0.1:{listen.port}/metrics") as response,
        ):
            text = await response.text()
        assert "portcullis_scan_leader 1" in text
        assert 'portcullis_scan_objects_judged_total{kind="Pod"} 1' in text
        assert "portcullis_scan_last_pass_duration_seconds" in text
    finally:
        stop.set()
        await task
    lease = kube.get("leases.coordination.k8s.io", "portcullis", "portcullis-scan")
    assert lease["spec"]["holderIdentity"] == ""  # released on shutdown
