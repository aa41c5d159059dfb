"""Who may talk to the webhook: the Service is a ClusterIP, reachable from every pod.

TLS here authenticates the server only. Any pod can therefore POST its own AdmissionReviews:
forged decision records in the audit log (any ``userInfo`` it likes), GPU reservations held for
``quota.reservation_ttl`` under any namespace/name/uid (a quota denial of service for a team),
and enough load to push the apiserver's real reviews into 429s or timeouts, which
``failurePolicy: Ignore`` turns into admissions. The fix needs the apiserver to authenticate
itself: client certificates (the apiserver's AdmissionConfiguration ``kubeConfigFile``) checked
against a configured CA, plus a NetworkPolicy in the chart for clusters that cannot do that.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from webhook import config as config_mod
from webhook.admission import certs, service

from .conftest import pod, review


async def test_any_tls_client_gets_a_decision_today(webhook: Any) -> None:
    """Pins the exposure described above (flip it when client authentication lands)."""
    async with webhook() as hook:
        body = review(pod(), username="system:serviceaccount:kube-system:replicaset-controller")
        status, answer = await hook.post("/validate", body)
    assert status == 200
    assert answer["response"]["uid"] == body["request"]["uid"]


@pytest.mark.xfail(
    strict=True,
    reason="no client authentication: add `server.client_ca` (PEM bundle); when set, the TLS "
    "context requires a client certificate chaining to it (ssl.CERT_REQUIRED), reloaded like the "
    "serving pair; document the apiserver's AdmissionConfiguration kubeConfigFile that supplies it",
)
async def test_reviews_without_an_apiserver_client_certificate_are_refused(tmp_path: Path) -> None:
    client_ca = certs.generate(["apiserver"], tmp_path / "client").ca_cert
    config = config_mod.parse({"server": {"client_ca": str(client_ca)}})
    files = certs.generate(["127.0.0.1"], tmp_path / "tls")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        service.serve(config, service.Listen("127.0.0.1", port), files.cert, files.key, started=started, stop=stop)
    )
    try:
        await asyncio.wait_for(started.wait(), 10)
        ctx = ssl.create_default_context(cafile=str(files.ca_cert))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.post(f"https://127.0.0.1:{port}/validate", json=review(pod())) as r:
                    await r.read()
    finally:
        stop.set()
        await task
