"""``portcullis demo``: the webhook on loopback with a throw-away certificate, fed sample reviews.

Shows the main job with no cluster: each bundled example manifest is wrapped in an
AdmissionReview, sent over real HTTPS, and the decision printed.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import uuid
from importlib import resources
from typing import Any

import aiohttp
import orjson
import yaml

from webhook.admission import certs, service
from webhook.config import Config


def examples() -> list[tuple[str, dict[str, Any]]]:
    """The bundled example manifests, by file name."""
    folder = resources.files("webhook") / "examples"
    found = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            for doc in yaml.safe_load_all(entry.read_text(encoding="utf-8")):
                if isinstance(doc, dict):
                    found.append((entry.name, doc))
    return found


def admission_review(obj: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    """Wrap an object the way the apiserver does."""
    api_version = obj.get("apiVersion", "v1")
    group, _, version = api_version.rpartition("/")
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": group, "version": version, "kind": obj.get("kind", "")},
            "resource": {"group": group, "version": version, "resource": obj.get("kind", "").lower() + "s"},
            "operation": operation,
            "namespace": meta.get("namespace", "default"),
            "name": meta.get("name", ""),
            "userInfo": {"username": "demo-user", "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
        },
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(config: Config) -> int:
    with service.dev_certificates() as files:
        return await _run(config, files)


async def _run(config: Config, files: certs.CertFiles) -> int:
    listen = service.Listen("127.0.0.1", _free_port())
    started, stop = asyncio.Event(), asyncio.Event()
    pipeline = service.build_pipeline(config)  # no cluster: the demo never talks to an API server
    server = asyncio.create_task(
        service.serve(config, listen, files.cert, files.key, pipeline=pipeline, started=started, stop=stop)
    )
    await asyncio.wait([server, asyncio.create_task(started.wait())], return_when=asyncio.FIRST_COMPLETED)
    if server.done():
        await server  # raises the start-up error
    ssl_ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    base = f"https://localhost:{listen.port}"
    print(f"portcullis webhook on {base} (CA {files.ca_cert})")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx)) as session:
            for name, obj in examples():
                async with session.post(f"{base}/validate", data=orjson.dumps(admission_review(obj))) as r:
                    answer = (await r.json())["response"]
                verdict = "ALLOWED" if answer["allowed"] else "DENIED "
                print(f"\n{verdict} {obj.get('kind')}/{obj.get('metadata', {}).get('name')} ({name})")
                if not answer["allowed"]:
                    print(f"  {answer['status']['message']}")
                for warning in answer.get("warnings", []):
                    print(f"  warning: {warning}")
            async with session.post(f"{base}/validate", data=b'{"kind": "AdmissionReview"}') as r:
                print(f"\nmalformed review -> HTTP {r.status}: {(await r.json())['error']}")
            async with session.get(f"{base}/metrics") as r:
                lines = [ln for ln in (await r.text()).splitlines() if ln.startswith("portcullis_decisions_total")]
            print("\n" + "\n".join(lines))
    finally:
        stop.set()
        await server
    sys.stdout.flush()
    return 0
