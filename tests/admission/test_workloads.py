"""Pod specs out of every workload kind, with exact field paths."""

from __future__ import annotations

from typing import Any

import pytest

from webhook import errors
from webhook.core import workloads

SPEC = {
    "initContainers": [{"name": "init"}],
    "containers": [{"name": "app"}],
    "ephemeralContainers": [{"name": "dbg"}],
}


def wrap(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": "x"}}, "spec": spec}
    if kind == "Pod":
        return {"kind": "Pod", "metadata": {"labels": {"app": "x"}}, "spec": spec}
    if kind == "CronJob":
        return {"kind": kind, "spec": {"jobTemplate": {"spec": {"template": template}}}}
    if kind == "PodTemplate":
        return {"kind": kind, "template": template}
    return {"kind": kind, "spec": {"template": template}}


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("Pod", "spec"),
        ("Deployment", "spec.template.spec"),
        ("ReplicaSet", "spec.template.spec"),
        ("StatefulSet", "spec.template.spec"),
        ("DaemonSet", "spec.template.spec"),
        ("Job", "spec.template.spec"),
        ("ReplicationController", "spec.template.spec"),
        ("CronJob", "spec.jobTemplate.spec.template.spec"),
        ("PodTemplate", "template.spec"),
    ],
)
def test_every_workload_kind_yields_its_pod_spec(kind: str, path: str) -> None:
    (ref,) = workloads.pod_specs(wrap(kind, SPEC))
    assert ref.path == path
    assert ref.labels == {"app": "x"}
    found = [(c.field, c.name, c.path) for c in workloads.containers(ref)]
    assert found == [
        ("initContainers", "init", f"{path}.initContainers[0]"),
        ("containers", "app", f"{path}.containers[0]"),
        ("ephemeralContainers", "dbg", f"{path}.ephemeralContainers[0]"),
    ]


def test_kinds_without_pod_specs_yield_nothing() -> None:
    assert workloads.pod_specs({"kind": "ConfigMap", "data": {}}) == []
    assert workloads.pod_specs({"kind": "Deployment", "spec": {"replicas": 3}}) == []


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"kind": "Pod", "spec": "nope"}, "spec must be an object"),
        ({"kind": "Deployment", "spec": {"template": []}}, "spec.template must be an object"),
        ({"kind": "Pod", "spec": {"containers": {"name": "a"}}}, "spec.containers must be a list"),
        ({"kind": "Pod", "spec": {"containers": ["a"]}}, r"spec.containers\[0\] must be an object"),
        ({"kind": "Pod", "metadata": "x", "spec": {}}, "metadata must be an object"),
    ],
)
def test_malformed_workloads_are_errors_not_silent_allows(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.ReviewError, match=message):
        workloads.pod_specs(obj)


def test_request_kind_overrides_the_object_kind() -> None:
    obj = {"kind": "Pod", "spec": {"template": {"spec": {"containers": []}}}}
    (ref,) = workloads.pod_specs(obj, "Deployment")
    assert ref.path == "spec.template.spec"
