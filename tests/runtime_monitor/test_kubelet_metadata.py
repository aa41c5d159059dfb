"""Pod metadata from the kubelet's /pods endpoint.

No kubelet runs here: a local aiohttp server over real TLS (a self-signed certificate for
127.0.0.1) serves a PodList in the kubelet's wire format and checks the bearer token.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from webhook.runtime import events, k8s_meta, state
from webhook.runtime.sources.base import RawEvent

CID = "9d" * 32
POD_LIST: dict[str, Any] = {
    "kind": "PodList",
    "apiVersion": "v1",
    "items": [
        {
            "metadata": {
                "name": "llm-0",
                "namespace": "serving",
                "uid": "u-1",
                "labels": {"app": "llm", "tier": "gpu"},
            },
            "status": {
                "containerStatuses": [
                    {"name": "server", "containerID": f"containerd://{CID}", "image": "ghcr.io/acme/vllm:0.4.2"}
                ],
                "initContainerStatuses": [{"name": "fetch", "containerID": "cri-o://" + "ab" * 32, "image": "busybox"}],
            },
        },
        {"metadata": {"name": "pending", "namespace": "x"}, "status": {}},
    ],
}


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubelet")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
async def kubelet(tmp_path: Path) -> AsyncIterator[tuple[str, Path, list[int]]]:
    cert, key = self_signed(tmp_path)
    calls: list[int] = []

    async def pods(request: web.Request) -> web.Response:
        calls.append(1)
        if request.headers.get("Authorization") != "Bearer s3cret":
            return web.Response(status=401)
        return web.json_response(POD_LIST)

    app = web.Application()
    app.router.add_get("/pods", pods)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"https://127.0.0.1:{port}", cert, calls
    await runner.cleanup()


def test_a_pod_list_indexes_every_container_id() -> None:
    index = k8s_meta.index_pods(POD_LIST)
    assert set(index) == {CID, "ab" * 32}
    f = index[CID].fields()
    assert (f["k8s.ns.name"], f["k8s.pod.name"], f["container.name"]) == ("serving", "llm-0", "server")
    assert (f["container.image.repository"], f["container.image.tag"]) == ("ghcr.io/acme/vllm", "0.4.2")
    assert (f["k8s.pod.label[app]"], f["k8s.pod.labels"]) == ("llm", "app:llm, tier:gpu")


async def test_processes_in_a_pod_get_k8s_fields(kubelet: tuple[str, Path, list[int]], tmp_path: Path) -> None:
    url, cert, _ = kubelet
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    pods = k8s_meta.KubeletPods(url, token_path=token, ca_path=cert)
    await pods.start()
    try:
        table = state.ProcessTable(tmp_path)
        table.procs[10] = state.Process(pid=10, ppid=1, name="python3", container=CID)
        b = events.EventBuilder(
            table, ["k8s.pod.name", "k8s.ns.name", "k8s.pod.label[tier]", "container.id"], "n", pods
        )
        out = b.build(RawEvent("ptrace", 1, 10, 10, 0, "python3", 0, {"request": 16, "pid": 4}))
    finally:
        await pods.close()
    assert out == {
        "evt.num": 1, "k8s.pod.name": "llm-0", "k8s.ns.name": "serving", "k8s.pod.label[tier]": "gpu",
        "container.id": CID[:12],
    }  # fmt: skip


async def test_a_kubelet_refusing_the_token_is_counted_not_fatal(
    kubelet: tuple[str, Path, list[int]], tmp_path: Path
) -> None:
    url, cert, calls = kubelet
    pods = k8s_meta.KubeletPods(url, ca_path=cert)
    await pods.start()
    await pods.close()
    assert (pods.errors, pods.pods, len(calls)) == (1, {}, 1)
