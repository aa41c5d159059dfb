"""Digest pinning end to end: the real HTTPS webhook, a real registry, real signatures.

/mutate pins a verified tag to its digest; /validate then admits the pinned pod; a tag moved to
unsigned content afterwards is refused, while the pinned digest still runs what was verified.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from webhook import config as config_mod
from webhook.admission import certs, service
from webhook.signatures import cosign

pytestmark = pytest.mark.registry


def review(image: str, operation: str = "CREATE") -> bytes:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
           "spec": {"containers": [{"name": "app", "image": image}]}}  # fmt: skip
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": operation,
        "namespace": "default", "name": "p", "userInfo": {"username": "u"}, "object": pod}})  # fmt: skip


async def test_mutate_pins_and_validate_refuses_a_moved_tag(registry: Any, tools: Any, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "team.pub").write_bytes(tools.public_pem(key))
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    name = f"{registry.host}/{repo}"
    payload = tools.simple_signing(name, digest)
    sig = base64.b64encode(tools.sign_bytes(key, payload)).decode()
    registry.push_signature_layers(
        repo, digest, [(payload, cosign.SIMPLE_SIGNING_MEDIA, {cosign.SIGNATURE_ANNOTATION: sig})]
    )
    rule = {"pattern": f"{registry.host}/**", "keys": [str(tmp_path / "team.pub")], "tlog": "optional"}
    cfg = config_mod.parse({"images": {"insecure_registries": [registry.host], "policies": [rule]}})
    files = certs.generate(["localhost", "127.0.0.1"], tmp_path / "tls")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started, stop = asyncio.Event(), asyncio.Event()
    listen = service.Listen("127.0.0.1", port)
    pipeline = service.build_pipeline(cfg)
    task = asyncio.create_task(
        service.serve(cfg, listen, files.cert, files.key, pipeline=pipeline, started=started, stop=stop)
    )
    await asyncio.wait_for(started.wait(), 10)
    base = f"https://127.0.0.1:{port}"
    ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:

            async def post(path: str, body: bytes) -> dict[str, Any]:
                async with session.post(base + path, data=body) as r:
                    assert r.status == 200
                    return (await r.json())["response"]

            mutated = await post("/mutate", review(f"{name}:v1"))
            assert mutated["allowed"] is True
            patch = orjson.loads(base64.b64decode(mutated["patch"]))
            assert patch == [{"op": "replace", "path": "/spec/containers/0/image", "value": f"{name}@{digest}"}]
            assert (await post("/validate", review(f"{name}@{digest}")))["allowed"] is True

            registry.push_image(repo, "v1")  # the tag moves to new, unsigned content
            moved = await post("/validate", review(f"{name}:v1"))
            assert moved["allowed"] is False
            assert "images" in moved["status"]["message"]
            assert (await post("/mutate", review(f"{name}:v1"))).get("patch") is None  # nothing verified to pin
            assert (await post("/validate", review(f"{name}@{digest}")))["allowed"] is True  # pinned still runs
    finally:
        stop.set()
        await task
