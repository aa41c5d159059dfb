"""Factories for admission tests: pods, workloads, reviews, and a real HTTPS webhook on loopback."""

from __future__ import annotations

import asyncio
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from webhook import config as config_mod
from webhook.admission import certs, service
from webhook.admission.server import DecisionRecorder


def pod(name: str = "p", namespace: str = "default", **spec: Any) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "app", "image": "nginx:1.27"}])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def review(
    obj: dict[str, Any] | None,
    *,
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    kind: str | None = None,
    subresource: str | None = None,
    dry_run: bool = False,
    username: str = "alice",
) -> dict[str, Any]:
    kind = kind or (obj or old or {}).get("kind", "Pod")
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
        "operation": operation,
        "namespace": "default",
        "name": "p",
        "userInfo": {"username": username, "groups": ["system:authenticated"]},
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
    }
    if subresource:
        request["subResource"] = subresource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningWebhook:
    base: str
    ca: Path
    cert_dir: Path
    session: aiohttp.ClientSession

    async def post(self, path: str, payload: Any, **kw: Any) -> tuple[int, Any]:
        import orjson

        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        async with self.session.post(self.base + path, data=data, **kw) as r:
            body = await r.read()
            try:
                return r.status, orjson.loads(body)
            except orjson.JSONDecodeError:
                return r.status, body.decode()


@pytest.fixture
def start_webhook(tmp_path: Path) -> Callable[..., Any]:
    """Start the real server (``service.serve``) over HTTPS on a free loopback port."""
    import contextlib

    @contextlib.asynccontextmanager
    async def start(
        cfg: dict[str, Any] | None = None, recorder: DecisionRecorder | None = None, pipeline: Any = None
    ) -> AsyncIterator[RunningWebhook]:
        files = certs.generate(["localhost", "127.0.0.1"], tmp_path / "tls")
        config = config_mod.parse(cfg or {})
        listen = service.Listen("127.0.0.1", free_port())
        started, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            service.serve(
                config,
                listen,
                files.cert,
                files.key,
                recorder=recorder,
                pipeline=pipeline,
                started=started,
                stop=stop,
            )
        )
        await asyncio.wait_for(started.wait(), 10)
        ctx = ssl.create_default_context(cafile=str(files.ca_cert))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
        try:
            yield RunningWebhook(f"https://127.0.0.1:{listen.port}", files.ca_cert, tmp_path / "tls", session)
        finally:
            await session.close()
            stop.set()
            await task

    return start
