"""``data.inventory`` from a list+watch of the synced kinds, against the local API server of the
quota tests (``tests/quota/kubeapi.py``: the real list/watch wire format over HTTP on
127.0.0.1, since no Kubernetes API server can run here), and a referential constraint judged
with it through the pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kubeapi
import pytest
import yaml

from webhook import config as config_mod
from webhook.checks import rego as rego_check
from webhook.checks.pipeline import Pipeline, Subject
from webhook.checks.services import Services
from webhook.config.kubernetes import KubernetesConfig
from webhook.core.deadline import Deadline
from webhook.kube import client as kube_client
from webhook.policy import inventory


@pytest.fixture
async def kube() -> AsyncIterator[Any]:
    server = kubeapi.FakeKubeApi()
    await server.start()
    yield server
    await server.stop()


def _settings(kube: Any) -> dict[str, Any]:
    return {"api_url": kube.url, "request_timeout": 2.0, "watch_timeout": 30, "list_page_size": 50}


@pytest.fixture
async def api(kube: Any) -> AsyncIterator[Any]:
    client = kube_client.build(KubernetesConfig(**_settings(kube)))
    assert client is not None
    yield client
    await asyncio.to_thread(client.close)


def _pod(name: str, namespace: str, app_id: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app-id": app_id}},
        "spec": {"containers": [{"name": "c", "image": "registry.example.com/a:1"}]},
    }


async def _eventually(predicate: Callable[[], bool]) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_synced_kinds_are_kept_in_gatekeepers_layout(kube: Any, api: Any) -> None:
    kube.put("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml", "labels": {"a": "b"}}})
    kube.put("pods", _pod("one", "ml", "x"))
    kinds = [inventory.SyncedKind("", "v1", "Pod"), inventory.SyncedKind("", "v1", "Namespace")]
    sync = inventory.InventorySync(api, KubernetesConfig(**_settings(kube)), kinds)
    await sync.start()
    try:
        await _eventually(sync.ready)
        doc = sync.document
        assert doc["cluster"]["v1"]["Namespace"]["ml"]["metadata"]["labels"] == {"a": "b"}
        assert doc["namespace"]["ml"]["v1"]["Pod"]["one"]["kind"] == "Pod"
        kube.put("pods", _pod("two", "ml", "y"))
        await _eventually(lambda: "two" in sync.document["namespace"]["ml"]["v1"]["Pod"])
        kube.delete("pods", "ml", "one")
        await _eventually(lambda: "one" not in sync.document["namespace"]["ml"]["v1"]["Pod"])
    finally:
        await sync.close()


def test_collection_paths_and_plurals() -> None:
    assert inventory.SyncedKind("", "v1", "Namespace").path == "/api/v1/namespaces"
    assert inventory.SyncedKind("networking.k8s.io", "v1", "Ingress").path == "/apis/networking.k8s.io/v1/ingresses"
    assert inventory.plural("NetworkPolicy") == "networkpolicies"
    assert inventory.plural("PodDisruptionBudget") == "poddisruptionbudgets"


UNIQUE_TEMPLATE = {
    "apiVersion": "templates.gatekeeper.sh/v1",
    "kind": "ConstraintTemplate",
    "metadata": {"name": "k8suniqueappid"},
    "spec": {
        "crd": {"spec": {"names": {"kind": "K8sUniqueAppId"}}},
        "targets": [
            {
                "target": "admission.k8s.gatekeeper.sh",
                "rego": (
                    "package k8suniqueappid\n\n"
                    'violation[{"msg": msg}] {\n'
                    '  id := input.review.object.metadata.labels["app-id"]\n'
                    "  ns := input.review.object.metadata.namespace\n"
                    '  other := data.inventory.namespace[ns]["v1"]["Pod"][name]\n'
                    "  name != input.review.object.metadata.name\n"
                    '  other.metadata.labels["app-id"] == id\n'
                    '  msg := concat("", ["app-id ", id, " is already used by pod ", name])\n'
                    "}\n"
                ),
            }
        ],
    },
}
UNIQUE_CONSTRAINT = {
    "apiVersion": "constraints.gatekeeper.sh/v1beta1",
    "kind": "K8sUniqueAppId",
    "metadata": {"name": "unique-app-id"},
    "spec": {"match": {"kinds": [{"apiGroups": [""], "kinds": ["Pod"]}]}},
}


async def test_a_referential_constraint_sees_the_synced_cluster_state(kube: Any, api: Any, tmp_path: Path) -> None:
    kube.put("pods", _pod("running", "ml", "abc"))
    (tmp_path / "unique.yaml").write_text(yaml.safe_dump_all([UNIQUE_TEMPLATE, UNIQUE_CONSTRAINT]))
    cfg = config_mod.parse(
        {
            "kubernetes": _settings(kube),
            "policy": {"gatekeeper": [str(tmp_path)], "sync": [{"version": "v1", "kind": "Pod"}], "timeout": 10},
        }
    )
    check = rego_check.build(cfg, Services(kube_api=api))
    assert isinstance(check, rego_check.RegoCheck)
    pipeline = Pipeline(cfg, [check])
    assert not check.ready()
    assert pipeline.not_ready() == ["the rego check to start"]  # what /readyz says it waits for
    await pipeline.start()
    try:
        await _eventually(check.ready)
        taken = await pipeline.evaluate(
            Subject("CREATE", "Pod", "ml", "new", _pod("new", "ml", "abc")), Deadline.after(30)
        )
        (denial,) = taken.verdict.denials
        assert "app-id abc is already used by pod running" in denial.message
        free = await pipeline.evaluate(
            Subject("CREATE", "Pod", "ml", "new", _pod("new", "ml", "xyz")), Deadline.after(30)
        )
        assert free.verdict.allowed
        kube.delete("pods", "ml", "running")
        await _eventually(
            lambda: not check.sync or "running" not in check.sync.document["namespace"]["ml"]["v1"]["Pod"]
        )
        again = await pipeline.evaluate(
            Subject("CREATE", "Pod", "ml", "new", _pod("new", "ml", "abc")), Deadline.after(30)
        )
        assert again.verdict.allowed
    finally:
        await pipeline.close()
