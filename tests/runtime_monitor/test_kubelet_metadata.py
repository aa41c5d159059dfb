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

from webhook import errors
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


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("https://10.0.0.7:10250", "https://10.0.0.7:10250"),
        ("https://fd00::7:10250", "https://[fd00::7]:10250"),  # status.hostIP on an IPv6 node
        ("https://[fd00::7]:10250/", "https://[fd00::7]:10250"),
    ],
)
def test_the_kubelet_url_takes_the_host_ip_as_the_downward_api_gives_it(given: str, want: str) -> None:
    assert k8s_meta.kubelet_url(given) == want


def test_a_kubelet_url_without_a_scheme_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="https://HOST:PORT"):
        k8s_meta.kubelet_url("10.0.0.7:10250")


def test_a_missing_ca_bundle_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="kubelet CA bundle"):
        k8s_meta.KubeletPods("https://127.0.0.1:1", ca_path=tmp_path / "nope.crt")


@pytest.mark.parametrize(
    "doc",
    [
        {"items": {"not": "a list"}},
        {"items": ["pod", None, 3]},
        {"items": [{"metadata": [], "status": "x"}]},
        {"items": [{"metadata": {"labels": ["a"]}, "status": {"containerStatuses": {"a": 1}}}]},
        {
            "items": [
                {
                    "metadata": {"name": 3, "labels": {"a": 1}},
                    "status": {"containerStatuses": [None, {"containerID": 7}]},
                }
            ]
        },
    ],
)
def test_an_ill_typed_pod_list_yields_what_is_well_formed_and_never_raises(doc: dict[str, Any]) -> None:
    assert k8s_meta.index_pods(doc) == {}


def test_an_image_reported_as_an_id_is_named_from_the_pod_spec() -> None:
    doc = {
        "items": [{
            "metadata": {"name": "p", "namespace": "n", "labels": {"a": "b", "bad": 1}},
            "spec": {"containers": [{"name": "c", "image": "registry.local:5000/team/app:1.2"}]},
            "status": {"containerStatuses": [{
                "name": "c", "containerID": "cri-o://" + "cd" * 32, "image": "sha256:" + "ef" * 32,
                "imageID": "registry.local:5000/team/app@sha256:" + "12" * 32,
            }]},
        }]
    }  # fmt: skip
    f = k8s_meta.index_pods(doc)["cd" * 32].fields()
    assert f["container.image.repository"] == "registry.local:5000/team/app"
    assert f["container.image.tag"] == "1.2"
    assert f["container.image.digest"] == "sha256:" + "12" * 32
    assert f["k8s.pod.labels"] == "a:b"


async def test_a_forbidden_answer_keeps_the_old_list_and_is_counted(tmp_path: Path) -> None:
    """A kubelet (local aiohttp, real TLS) that denies the token with 403 after one good list."""
    cert, key = self_signed(tmp_path)
    answers = [web.json_response(POD_LIST), web.Response(status=403, text="Forbidden (user=... verb=get)")]

    async def pods(_: web.Request) -> web.Response:
        return answers.pop(0) if answers else web.Response(status=403)

    app = web.Application()
    app.router.add_get("/pods", pods)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        pods_ = k8s_meta.KubeletPods(f"https://127.0.0.1:{port}", ca_path=cert)
        await pods_.start()
        await pods_.refresh()
        await pods_.close()
    finally:
        await runner.cleanup()
    assert pods_.stats() == {"pods_containers": 2, "kubelet_errors": 1, "kubelet_fetches": 1}
