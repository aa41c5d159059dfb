"""Pod Security Admission's ``isSignificantPodUpdate``, case by case (``checks.pss.updates``).

The reference is PSA's admission.go: seccomp annotations (pod, and per container by the new
container's name), container and init container counts and images by index, ephemeral
containers by name. Nothing else makes a pod UPDATE significant.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from webhook.checks.pss import updates
from webhook.core import workloads

SECCOMP_POD = "seccomp.security.alpha.kubernetes.io/pod"
SECCOMP_CONTAINER = "container.seccomp.security.alpha.kubernetes.io/"


def pod() -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "labels": {"app": "a"},
            "annotations": {SECCOMP_CONTAINER + "app": "runtime/default"},
        },
        "spec": {
            "initContainers": [{"name": "init", "image": "busybox:1"}],
            "containers": [{"name": "app", "image": "nginx:1"}, {"name": "side", "image": "envoy:1"}],
            "ephemeralContainers": [{"name": "dbg", "image": "busybox:1"}, {"name": "dbg2", "image": "busybox:1"}],
        },
    }


def significant(change: Callable[[dict[str, Any]], Any]) -> bool:
    old = pod()
    new = copy.deepcopy(old)
    change(new)
    (n,) = workloads.pod_specs(new)
    (o,) = workloads.pod_specs(old)
    return updates.significant(n, o)


def annotations(o: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = o["metadata"]["annotations"]
    return result


@pytest.mark.parametrize(
    "change",
    [
        lambda o: annotations(o).update({SECCOMP_POD: "unconfined"}),
        lambda o: annotations(o).update({SECCOMP_CONTAINER + "app": "unconfined"}),
        lambda o: annotations(o).pop(SECCOMP_CONTAINER + "app"),
        lambda o: annotations(o).update({SECCOMP_CONTAINER + "init": "unconfined"}),
        lambda o: annotations(o).update({SECCOMP_CONTAINER + "dbg": "unconfined"}),
        lambda o: o["spec"]["containers"][1].update(image="envoy:2"),
        lambda o: o["spec"]["initContainers"][0].update(image="busybox:2"),
        lambda o: o["spec"]["containers"].pop(),
        lambda o: o["spec"]["initContainers"].append({"name": "i2", "image": "x"}),
        lambda o: o["spec"]["containers"].reverse(),  # by index: images now differ
        lambda o: o["spec"]["ephemeralContainers"].append({"name": "new", "image": "busybox:1"}),
        lambda o: o["spec"]["ephemeralContainers"][0].update(image="busybox:2"),
        lambda o: o["spec"]["ephemeralContainers"][0].update(name="renamed"),
    ],
    ids=[
        "pod-seccomp",
        "container-seccomp",
        "container-seccomp-removed",
        "init-container-seccomp",
        "ephemeral-seccomp",
        "image",
        "init-image",
        "container-removed",
        "init-added",
        "containers-swapped",
        "ephemeral-added",
        "ephemeral-image",
        "ephemeral-renamed",
    ],
)
def test_significant_updates(change: Callable[[dict[str, Any]], Any]) -> None:
    assert significant(change)


@pytest.mark.parametrize(
    "change",
    [
        lambda o: o["metadata"]["labels"].update(app="b"),
        lambda o: annotations(o).update({"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}),
        lambda o: annotations(o).update({SECCOMP_CONTAINER + "gone": "unconfined"}),
        lambda o: o["spec"]["containers"][0].update(securityContext={"privileged": True}),  # immutable in a real pod
        lambda o: o["spec"]["containers"][0].update(resources={"limits": {"cpu": "1"}}),
        lambda o: o["spec"].update(activeDeadlineSeconds=5, tolerations=[{"operator": "Exists"}]),
        lambda o: o["spec"]["ephemeralContainers"].reverse(),  # by name: nothing changed
        lambda o: o["spec"]["ephemeralContainers"].pop(),  # removal is not an addition
    ],
    ids=[
        "label",
        "apparmor",
        "seccomp-of-no-container",
        "security-context",
        "resources",
        "deadline-tolerations",
        "ephemeral-reordered",
        "ephemeral-removed",
    ],
)
def test_insignificant_updates(change: Callable[[dict[str, Any]], Any]) -> None:
    assert not significant(change)


def test_ill_typed_fields_read_as_absent_without_raising() -> None:
    old = pod()
    new = copy.deepcopy(old)
    new["metadata"]["annotations"] = "not a map"
    new["spec"]["ephemeralContainers"] = [{"name": 7, "image": "busybox:1"}]
    (n,) = workloads.pod_specs(new)
    (o,) = workloads.pod_specs(old)
    assert updates.significant(n, o)  # the container seccomp annotation vanished, and "dbg" is new
