"""Values of the wrong JSON type in the fields PSA compares against an allowed set: each is judged
like a value outside that set (a violation at the field), never a crash. The API server would
refuse such a pod before PSA saw it; a webhook, reached first or with another decoder, must not
admit it."""

from __future__ import annotations

from typing import Any

import pytest

from webhook.checks import privilege
from webhook.core import workloads
from webhook.core.decision import Violation


def _pod(spec: dict[str, Any]) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "app", "image": "registry.example/app:1.2"}])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}


def _sc(sc: dict[str, Any]) -> dict[str, Any]:
    return _pod({"containers": [{"name": "app", "image": "registry.example/app:1.2", "securityContext": sc}]})


def _judge(obj: dict[str, Any], level: str = "baseline") -> list[Violation]:
    return privilege.evaluate(workloads.pod_specs(obj), level, "latest", hardened_checks=())


BAD_VALUES = [{}, ["RuntimeDefault"], 1, True]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
@pytest.mark.parametrize(
    ("make", "check", "path"),
    [
        (
            lambda v: _sc({"capabilities": {"add": ["CHOWN", v]}}),
            "pss:capabilities_baseline",
            "spec.containers[0].securityContext.capabilities.add",
        ),
        (
            lambda v: _sc({"appArmorProfile": {"type": v}}),
            "pss:appArmorProfile",
            "spec.containers[0].securityContext.appArmorProfile.type",
        ),
        (
            lambda v: _sc({"seLinuxOptions": {"type": v}}),
            "pss:seLinuxOptions",
            "spec.containers[0].securityContext.seLinuxOptions.type",
        ),
        (
            lambda v: _pod({"securityContext": {"seLinuxOptions": {"user": v}}}),
            "pss:seLinuxOptions",
            "spec.securityContext.seLinuxOptions.user",
        ),
        (
            lambda v: _sc({"seccompProfile": {"type": v}}),
            "pss:seccompProfile_baseline",
            "spec.containers[0].securityContext.seccompProfile.type",
        ),
        (
            lambda v: _pod({"securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced"}, {"name": v}]}}),
            "pss:sysctls",
            "spec.securityContext.sysctls[1].name",
        ),
    ],
)
def test_a_non_string_value_violates_baseline_at_its_field(value: Any, make: Any, check: str, path: str) -> None:
    found = [(v.check, v.path) for v in _judge(make(value))]
    assert found == [(check, path)]


def _restricted_pods(value: Any) -> list[dict[str, Any]]:
    container = {
        "name": "app",
        "image": "registry.example/app:1.2",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    on_pod = _pod(
        {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": value}}, "containers": [container]}
    )
    own = {**container, "securityContext": {**container["securityContext"], "seccompProfile": {"type": value}}}
    on_container = _pod({"securityContext": {"runAsNonRoot": True}, "containers": [own]})
    return [on_pod, on_container]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_a_non_string_seccomp_type_is_judged_by_restricted_like_a_forbidden_one(value: Any) -> None:
    for ill_typed, forbidden in zip(_restricted_pods(value), _restricted_pods("Unconfined"), strict=True):
        expected = [(v.check, v.path, v.container) for v in _judge(forbidden, "restricted")]
        assert expected  # the pod-level type also leaves its containers without a valid profile
        assert [(v.check, v.path, v.container) for v in _judge(ill_typed, "restricted")] == expected


def test_allowed_string_values_still_pass() -> None:
    obj = _pod(
        {
            "securityContext": {
                "seLinuxOptions": {"type": "container_t", "user": ""},
                "seccompProfile": {"type": "RuntimeDefault"},
                "appArmorProfile": {"type": "Localhost", "localhostProfile": "p"},
                "sysctls": [{"name": "kernel.shm_rmid_forced"}],
            }
        }
    )
    assert _judge(obj) == []
