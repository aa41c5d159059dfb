"""Benchmark of image signature verification (run: ``python bench/bench_images.py``).

Starts a real docker-registry on 127.0.0.1, pushes a keyed-signed image, then measures:
  1. warm-cache verification cost per image (the images check's run) vs a dict lookup;
  2. cold keyed verification (two registry round trips + ECDSA) vs one bare registry round trip;
  3. 100 concurrent pods of one image → number of verifications (must be 1).
Figures are printed as ratios against baselines measured in the same run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from webhook import config as config_mod
from webhook.checks import images
from webhook.checks.services import Services
from webhook.core.deadline import Deadline
from webhook.core.request import RequestContext
from webhook.core.workloads import pod_specs

OCI = "application/vnd.oci.image.manifest.v1+json"


def _put(host: str, method: str, path: str, body: bytes | None = None, ctype: str = "") -> Any:
    url = path if path.startswith("http") else f"http://{host}{path}"
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype} if ctype else {})
    return urllib.request.urlopen(req, timeout=10)


def push_blob(host: str, repo: str, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with _put(host, "POST", f"/v2/{repo}/blobs/uploads/") as r:
        loc = r.headers["Location"]
    with _put(host, "PUT", f"{loc}{'&' if '?' in loc else '?'}digest={digest}", data, "application/octet-stream"):
        pass
    return {"mediaType": "application/octet-stream", "digest": digest, "size": len(data)}


def push_manifest(host: str, repo: str, ref: str, doc: dict[str, Any]) -> str:
    body = json.dumps(doc).encode()
    with _put(host, "PUT", f"/v2/{repo}/manifests/{ref}", body, OCI):
        pass
    return "sha256:" + hashlib.sha256(body).hexdigest()


def push_signed_image(host: str, repo: str, key: ec.EllipticCurvePrivateKey) -> str:
    cfg = push_blob(host, repo, b"{}")
    layer = push_blob(host, repo, os.urandom(64))
    digest = push_manifest(host, repo, "v1", {"schemaVersion": 2, "mediaType": OCI, "config": cfg, "layers": [layer]})
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": f"{host}/{repo}"},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    sig = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    sig_layer = {
        **push_blob(host, repo, payload),
        "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
        "annotations": {"dev.cosignproject.cosign/signature": sig},
    }
    doc = {"schemaVersion": 2, "mediaType": OCI, "config": cfg, "layers": [sig_layer]}
    push_manifest(host, repo, digest.replace(":", "-") + ".sig", doc)
    return digest


def start_registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = root / "config.yml"
    conf.write_text(
        f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["/usr/bin/docker-registry", "serve", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    host = f"127.0.0.1:{port}"
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"http://{host}/v2/", timeout=1):
                return proc, host
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("docker-registry did not start")


def pod(image: str) -> Any:
    return pod_specs(
        {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": image}]}}
    )


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, host = start_registry(root)
        try:
            await run(root, host)
        finally:
            proc.kill()
            proc.wait()


async def run(root: Path, host: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (root / "k.pub").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    digest = push_signed_image(host, "team-a/app", key)
    config = config_mod.parse(
        {
            "images": {
                "insecure_registries": [host],
                "policies": [{"pattern": f"{host}/team-a/*", "keys": ["k.pub"], "tlog": "optional"}],
            }
        },
        base_dir=root,
    )

    # 1. warm cache ---------------------------------------------------------------------------
    check = images.build(config, Services())
    assert check is not None
    pods = pod(f"{host}/team-a/app@{digest}")
    ctx = RequestContext("CREATE", "Pod", "default", "p", deadline=Deadline.after(3600))
    assert not (await check.run(pods, ctx)).violations
    n = 20000
    start = time.perf_counter()
    for _ in range(n):
        await check.run(pods, ctx)
    warm = (time.perf_counter() - start) / n
    table = {("127.0.0.1", "team-a/app", digest, "policy"): True}
    probe = ("127.0.0.1", "team-a/app", digest, "policy")
    m = 1_000_000
    start = time.perf_counter()
    for _ in range(m):
        table[probe]
    lookup = (time.perf_counter() - start) / m
    print(
        f"warm-cache verification per image: {warm * 1e6:.1f} µs (target ≤ 50 µs); "
        f"dict lookup baseline {lookup * 1e9:.0f} ns; ratio {warm / lookup:.0f}x"
    )

    # 2. cold keyed verification --------------------------------------------------------------
    cold: list[float] = []
    for _ in range(60):
        check.verifier.cache._entries.clear()
        t0 = time.perf_counter()
        result = await check.run(pods, ctx)
        cold.append(time.perf_counter() - t0)
        assert not result.violations
    async with aiohttp.ClientSession() as session:
        rtt: list[float] = []
        for _ in range(60):
            t0 = time.perf_counter()
            async with session.get(f"http://{host}/v2/team-a/app/manifests/{digest}", headers={"Accept": OCI}) as r:
                await r.read()
            rtt.append(time.perf_counter() - t0)
    c, b = statistics.median(cold[5:]), statistics.median(rtt[5:])
    print(
        f"cold keyed verification (2 round trips + ECDSA P-256): median {c * 1e3:.2f} ms, "
        f"best {min(cold) * 1e3:.2f} ms (target ≤ 10 ms); one bare registry round trip: median {b * 1e3:.2f} ms, "
        f"best {min(rtt) * 1e3:.2f} ms; ratio of medians {c / b:.1f}x, of bests {min(cold) / min(rtt):.1f}x"
    )
    await check.close()

    # 3. 100 concurrent pods --------------------------------------------------------------------
    check = images.build(config, Services())
    assert check is not None
    tag_pods = pod(f"{host}/team-a/app:v1")
    t0 = time.perf_counter()
    results = await asyncio.gather(*(check.run(tag_pods, ctx) for _ in range(100)))
    elapsed = time.perf_counter() - t0
    assert all(not r.violations for r in results)
    stats = check.metrics()
    print(
        f"100 concurrent pods of one image: {stats['computations']:.0f} verification(s), "
        f"{stats['shared']:.0f} joined in flight, {stats['hits']:.0f} cache hits, {elapsed * 1e3:.1f} ms total "
        f"(~{elapsed / b:.0f} bare round trips)"
    )
    await check.close()


if __name__ == "__main__":
    asyncio.run(main())
