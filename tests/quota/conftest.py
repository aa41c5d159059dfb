"""Fixtures for the GPU quota tests: a local API server (``tests/support/kubeapi.py``), clients, pod factories."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import kubeapi
import pytest

from webhook.config.kubernetes import KubernetesConfig
from webhook.kube import client as kube_client


@pytest.fixture
async def kube() -> AsyncIterator[Any]:
    server = kubeapi.FakeKubeApi()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def kube_config(kube: Any) -> KubernetesConfig:
    return KubernetesConfig(
        api_url=kube.url,
        request_timeout=2.0,
        watch_timeout=30,
        list_page_size=50,
        backoff_initial=0.02,
        backoff_max=0.1,
    )


@pytest.fixture
async def api(kube_config: KubernetesConfig) -> AsyncIterator[Any]:
    api_client = kube_client.build(kube_config)
    assert api_client is not None
    yield api_client
    await asyncio.to_thread(api_client.close)


def pod(
    name: str,
    namespace: str = "ml",
    *,
    gpus: int | str | None = 1,
    resource: str = "nvidia.com/gpu",
    phase: str | None = "Running",
    uid: str | None = None,
    model: str | None = None,
    containers: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A pod object as the API server stores it (uid, phase) asking ``gpus`` of ``resource``."""
    if containers is None:
        resources = {"limits": {resource: gpus}, "requests": {resource: gpus}} if gpus is not None else {}
        containers = [{"name": "main", "image": "trainer:1", "resources": resources}]
    spec: dict[str, Any] = {"containers": containers}
    if init_containers:
        spec["initContainers"] = init_containers
    if model is not None:
        spec["nodeSelector"] = {"nvidia.com/gpu.product": model}
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if uid is not None:
        metadata["uid"] = uid
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    if phase is not None:
        obj["status"] = {"phase": phase}
    return obj


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


@pytest.fixture
def make_pod() -> Callable[..., dict[str, Any]]:
    return pod


@pytest.fixture
def make_namespace() -> Callable[..., dict[str, Any]]:
    return namespace


async def _eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for the watch to catch up (events cross a thread); fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + timeout
    while not predicate():
        if loop.time() > ends:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def eventually() -> Callable[..., Any]:
    return _eventually
