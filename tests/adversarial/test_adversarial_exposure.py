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


def _client_pki(out: Path) -> tuple[Path, Path, Path]:
    """A client CA and a client certificate (clientAuth), as the apiserver's would be."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apiserver-client-ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "client.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "client.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return out / "ca.crt", out / "client.crt", out / "client.key"


async def test_reviews_without_an_apiserver_client_certificate_are_refused(tmp_path: Path) -> None:
    """Fixed: with `server.client_ca` the webhook port demands the apiserver's client certificate;
    probes and metrics move to the plain `health_listen` port."""
    client_ca, client_cert, client_key = _client_pki(tmp_path / "client")
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    port, health_port = ports
    config = config_mod.parse({"server": {"client_ca": str(client_ca), "health_listen": f"127.0.0.1:{health_port}"}})
    files = certs.generate(["127.0.0.1"], tmp_path / "tls")
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
        ctx.load_cert_chain(client_cert, client_key)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
            session.post(f"https://127.0.0.1:{port}/validate", json=review(pod())) as r,
        ):
            assert r.status == 200
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{health_port}/readyz") as r:
            assert r.status == 200
    finally:
        stop.set()
        await task


def test_client_ca_without_a_health_port_is_a_config_error() -> None:
    from webhook import errors

    with pytest.raises(errors.ConfigError, match="health_listen"):
        config_mod.parse({"server": {"client_ca": "ca.pem"}})


async def test_a_dribbled_body_cannot_hold_an_in_flight_slot(webhook: Any, tmp_path: Path) -> None:
    """Fixed: the body was awaited without limit, so a pod on the network could hold every
    ``server.max_in_flight`` slot with half-sent requests and push the apiserver's reviews into
    429s (failurePolicy). Now the body must arrive within the request's budget or it is a 400.
    The 10 s below is a hang guard, not a timing assertion (the budget here is 0.5 s)."""
    cfg = {"server": {"timeout_seconds": 1.0, "margin_seconds": 0.5, "max_in_flight": 1}}
    async with webhook(cfg) as hook:
        port = int(hook.base.rsplit(":", 1)[1])
        ctx = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.crt"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
        try:
            head = (
                b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
            )
            writer.write(head + b'{"apiVersion":')
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 10)
            assert status_line.startswith(b"HTTP/1.1 400")
        finally:
            writer.close()
        status, answer = await hook.post("/validate", review(pod()))
        assert status == 200
        assert answer["response"]["allowed"] is True
