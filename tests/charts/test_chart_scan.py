"""The chart's scan option: the PolicyReport CRDs (installed, or left to an existing install) and
exactly the RBAC a scan needs, rendered with the real Helm engine (helm-python-sdk)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "portcullis"
pytestmark = pytest.mark.helm


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    files = chart.render(values, name="pc", namespace="portcullis", is_install=True)
    return [d for p, t in sorted(files.items()) if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]


def test_scan_installs_the_crds_and_grants_exactly_what_it_uses(chart: Any) -> None:
    extra = [{"apiGroups": [""], "resources": ["configmaps"]}]
    objects = render(chart, {"scan": {"enabled": True, "extraResources": extra, "excludeNamespaces": ["scratch"]}})
    crds = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition")
    assert crds == ["clusterpolicyreports.wgpolicyk8s.io", "policyreports.wgpolicyk8s.io"]
    [role] = [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith("-scan")]
    granted = {
        (g, r, tuple(rule["verbs"])) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    watch = ("list", "watch")
    assert granted == {
        ("", "pods", watch),
        ("", "replicationcontrollers", watch),
        ("", "podtemplates", watch),
        ("apps", "deployments", watch),
        ("apps", "replicasets", watch),
        ("apps", "statefulsets", watch),
        ("apps", "daemonsets", watch),
        ("batch", "jobs", watch),
        ("batch", "cronjobs", watch),
        ("", "configmaps", watch),
        ("wgpolicyk8s.io", "policyreports", ("get", "list", "create", "update", "delete")),
        ("wgpolicyk8s.io", "clusterpolicyreports", ("get", "list", "create", "update", "delete")),
    }
    [lease_role] = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-scan-lease")]
    assert lease_role["metadata"]["namespace"] == "portcullis"
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]
    [cm] = [o for o in objects if o["kind"] == "ConfigMap" and "config.yaml" in o.get("data", {})]
    scan = yaml.safe_load(cm["data"]["config.yaml"])["scan"]
    assert scan == {
        "enabled": True,
        "objects_per_second": 2000,
        "rescan_interval": 3600,
        "lease_namespace": "portcullis",
        "exclude_namespaces": ["scratch"],
    }


def test_existing_crds_are_left_alone_and_nothing_is_granted_without_scans(chart: Any) -> None:
    objects = render(chart, {"scan": {"enabled": True, "installCRDs": False}})
    assert not [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    assert [o for o in objects if o["metadata"]["name"].endswith("-scan")]
    off = render(chart, {})
    assert not [o for o in off if "scan" in o["metadata"]["name"] or o["kind"] == "CustomResourceDefinition"]
