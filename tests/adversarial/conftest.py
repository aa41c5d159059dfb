"""Builders for adversarial admission tests: realistic AdmissionReviews, pods, the real pipeline,
and the real HTTPS webhook on loopback (what an in-cluster attacker can reach directly)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from webhook import config as config_mod
from webhook.admission import certs, service
from webhook.admission.service import build_pipeline
from webhook.checks.pipeline import Outcome, Subject
from webhook.core.deadline import Deadline

RESTRICTED_SC = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod(name: str = "p", *, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "app", "image": "nginx:1.27"}])
    metadata: dict[str, Any] = {"name": name, "namespace": "default"}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def privileged(name: str = "app") -> dict[str, Any]:
    return {"name": name, "image": "nginx:1.27", "securityContext": {"privileged": True}}


def review(
    obj: dict[str, Any] | None,
    *,
    kind: str = "Pod",
    group: str = "",
    version: str = "v1",
    resource: str = "pods",
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    subresource: str | None = None,
    namespace: str = "default",
    username: str = "alice",
) -> dict[str, Any]:
    """An AdmissionReview v1 as the apiserver sends it."""
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "requestKind": {"group": group, "version": version, "kind": kind},
        "operation": operation,
        "namespace": namespace,
        "name": (obj or old or {}).get("metadata", {}).get("name", ""),
        "userInfo": {"username": username, "groups": ["system:authenticated"]},
        "object": obj,
        "oldObject": old,
        "dryRun": False,
    }
    if subresource:
        request["subResource"] = subresource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


async def judge(
    obj: dict[str, Any],
    cfg: dict[str, Any] | None = None,
    *,
    kind: str | None = None,
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    subresource: str = "",
    namespace: str = "default",
    username: str = "alice",
    base_dir: Path | None = None,
) -> Outcome:
    """``obj`` through the pipeline ``portcullis serve`` builds from ``cfg`` (every real check)."""
    config = config_mod.parse(cfg or {}, base_dir=base_dir)
    pipeline = build_pipeline(config)
    subject = Subject(
        operation, kind or obj.get("kind", "Pod"), namespace, "p", obj, old, subresource, username=username
    )
    try:
        return await pipeline.evaluate(subject, Deadline.after(10))
    finally:
        await pipeline.close()


def checks_found(outcome: Outcome, mode: str = "enforce") -> set[str]:
    return {f.violation.check for f in outcome.verdict.findings if f.mode.value == mode}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Webhook:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session

    async def post(self, path: str, payload: Any) -> tuple[int, Any]:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        async with self.session.post(self.base + path, data=data) as r:
            body = await r.read()
            try:
                return r.status, orjson.loads(body)
            except orjson.JSONDecodeError:
                return r.status, body.decode(errors="replace")


@pytest.fixture
def webhook(tmp_path: Path) -> Callable[..., Any]:
    """Start ``service.serve`` (the real server, TLS and all) with a config dict."""

    @contextlib.asynccontextmanager
    async def start(cfg: dict[str, Any] | None = None) -> AsyncIterator[Webhook]:
        files = certs.generate(["127.0.0.1"], tmp_path / "tls")
        listen = service.Listen("127.0.0.1", _free_port())
        started, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            service.serve(config_mod.parse(cfg or {}), listen, files.cert, files.key, started=started, stop=stop)
        )
        await asyncio.wait_for(started.wait(), 10)
        ctx = ssl.create_default_context(cafile=str(files.ca_cert))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
        try:
            yield Webhook(f"https://127.0.0.1:{listen.port}", session)
        finally:
            await session.close()
            stop.set()
            await task

    return start
