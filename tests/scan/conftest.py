"""Fixtures for the scan tests: the local wire-format API server (``tests/support/kubeapi.py``) with the chart's
PolicyReport CRDs installed, a config with the privilege check and a Gatekeeper constraint on
ConfigMaps, and object factories."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kubeapi
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "charts" / "portcullis" / "files" / "crds"
TEMPLATE = ROOT / "policies" / "gatekeeper" / "required-labels" / "template.yaml"


def crd(plural: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CRDS / f"{plural}.yaml").read_text())
    return loaded


@pytest.fixture
async def kube() -> AsyncIterator[Any]:
    server = kubeapi.FakeKubeApi()
    server.require_version_on_update = True
    server.install_crd(crd("policyreports"))
    server.install_crd(crd("clusterpolicyreports"))
    await server.start()
    yield server
    await server.stop()


CONSTRAINT = """
apiVersion: constraints.gatekeeper.sh/v1beta1
kind: K8sRequiredLabels
metadata:
  name: configmaps-need-owner
spec:
  match:
    kinds:
      - apiGroups: [""]
        kinds: ["ConfigMap"]
  parameters:
    labels:
      - key: owner
"""


@pytest.fixture
def scan_config(kube: Any, tmp_path: Path) -> dict[str, Any]:
    """privilege (PSS baseline enforced, restricted warned) + a Gatekeeper constraint on ConfigMaps."""
    gk = tmp_path / "gatekeeper"
    gk.mkdir()
    (gk / "template.yaml").write_text(TEMPLATE.read_text())
    (gk / "constraint.yaml").write_text(CONSTRAINT)
    return {
        "checks": {name: {"enabled": False} for name in ("runtimeclass", "images", "gpu")},
        "policy": {"gatekeeper": [str(gk)], "crash_probe": False, "reload_interval": 0},
        "kubernetes": {
            "api_url": kube.url,
            "request_timeout": 2.0,
            "watch_timeout": 30,
            "list_page_size": 2,
            "backoff_initial": 0.02,
            "backoff_max": 0.1,
        },
        "scan": {
            "lease_namespace": "portcullis",
            "lease_duration": 1,
            "renew_deadline": 0.5,
            "retry_period": 0.05,
            "rescan_interval": 0,
            "writes_per_second": 1000,
        },
    }


RESTRICTED = {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
}


def container(name: str = "app", **security: Any) -> dict[str, Any]:
    ctx = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, **security}
    return {"name": name, "image": "registry.local/app:1", "securityContext": ctx}


def pod(name: str, namespace: str, **security: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {**RESTRICTED, "containers": [container(**security)]},
    }


def deployment(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": name}}, "spec": {**RESTRICTED, "containers": [container()], **spec}}
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"template": template}}


def configmap(name: str, namespace: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels}, "data": {"k": "v"}}


def namespace(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}}


async def eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait for the watches and writes to catch up (events cross threads); fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + timeout
    while not predicate():
        if loop.time() > ends:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
