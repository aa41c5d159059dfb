"""Fixtures for fault tests: the real webhook server (``service.serve``) over HTTPS on loopback,
with a pipeline of the test's choosing, and AdmissionReview bodies."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from webhook import config as config_mod
from webhook.admission import certs, service
from webhook.admission.server import DecisionRecorder


def pod_review(name: str = "p", namespace: str = "default", **spec: Any) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "app", "image": "nginx:1.27"}])
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    request = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": namespace,
        "name": name,
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "object": obj,
        "oldObject": None,
        "dryRun": False,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Webhook:
    base: str
    session: aiohttp.ClientSession
    tls_dir: Path

    async def post(self, path: str, payload: Any, **kw: Any) -> tuple[int, dict[str, str], Any]:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        async with self.session.post(self.base + path, data=data, **kw) as r:
            body = await r.read()
            try:
                return r.status, dict(r.headers), orjson.loads(body)
            except orjson.JSONDecodeError:
                return r.status, dict(r.headers), body.decode()

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.base + path) as r:
            return r.status, await r.text()


@pytest.fixture
def webhook_server(tmp_path: Path) -> Callable[..., Any]:
    """``async with webhook_server(cfg, pipeline=..., recorder=...) as hook``: the real server."""

    @contextlib.asynccontextmanager
    async def start(
        cfg: dict[str, Any] | None = None,
        *,
        pipeline: Any = None,
        recorder: DecisionRecorder | None = None,
        connections: int = 100,
    ) -> AsyncIterator[Webhook]:
        files = certs.generate(["localhost", "127.0.0.1"], tmp_path / "tls")
        config = config_mod.parse(cfg or {})
        listen = service.Listen("127.0.0.1", _free_port())
        started, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            service.serve(
                config, listen, files.cert, files.key, recorder=recorder, pipeline=pipeline, started=started, stop=stop
            )
        )
        await asyncio.wait_for(started.wait(), 10)
        ctx = ssl.create_default_context(cafile=str(files.ca_cert))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=connections))
        try:
            yield Webhook(f"https://127.0.0.1:{listen.port}", session, tmp_path / "tls")
        finally:
            await session.close()
            stop.set()
            await task

    return start
