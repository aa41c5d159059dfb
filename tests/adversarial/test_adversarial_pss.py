"""Pod Security edge cases beyond the upstream fixtures, and the cost an attacker can impose.

Values of the wrong JSON type (``privileged: "true"``) are not tested as attacks here: the
apiserver decodes every object into typed structs before admission, so the webhook never sees
them, and ``portcullis check`` reads YAML the way kubectl does (see test_adversarial_ci.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from webhook.checks import privilege
from webhook.core.workloads import PodSpecRef

from .conftest import RESTRICTED_SC, checks_found, judge, pod


def _container(**fields: Any) -> dict[str, Any]:
    return {"name": "app", "image": "nginx:1.27", **fields}


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        # capability names are compared as written: anything but the exact default set is refused
        (
            {"containers": [_container(securityContext={"capabilities": {"add": ["sys_admin"]}})]},
            "pss:capabilities_baseline",
        ),
        (
            {"containers": [_container(securityContext={"capabilities": {"add": ["CAP_SYS_ADMIN"]}})]},
            "pss:capabilities_baseline",
        ),
        ({"containers": [_container(securityContext={"capabilities": {"add": ["ALL"]}})]}, "pss:capabilities_baseline"),
        (
            {"containers": [_container(securityContext={"capabilities": {"add": [" NET_ADMIN"]}})]},
            "pss:capabilities_baseline",
        ),
        # every container list counts
        ({"initContainers": [_container(securityContext={"privileged": True})]}, "pss:privileged"),
        ({"ephemeralContainers": [_container(securityContext={"privileged": True})]}, "pss:privileged"),
        # host fields at pod level and in less obvious places
        ({"hostPID": True}, "pss:hostNamespaces"),
        ({"volumes": [{"name": "v", "hostPath": {}}]}, "pss:hostPathVolumes"),  # empty hostPath still mounts /
        ({"containers": [_container(ports=[{"containerPort": 80, "hostPort": 80}])]}, "pss:hostPorts"),
        ({"securityContext": {"windowsOptions": {"hostProcess": True}}}, "pss:windowsHostProcess"),
        ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, "pss:seccompProfile_baseline"),
        ({"securityContext": {"sysctls": [{"name": "kernel.core_pattern", "value": "|/x"}]}}, "pss:sysctls"),
        ({"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}, "pss:seLinuxOptions"),
        ({"containers": [_container(securityContext={"procMount": "Unmasked"})]}, "pss:procMount"),
        (
            {"containers": [_container(readinessProbe={"httpGet": {"host": "169.254.169.254", "port": 80}})]},
            "pss:hostProbesAndHostLifecycle",
        ),
    ],
)
async def test_baseline_refuses(spec: dict[str, Any], check: str) -> None:
    assert check in checks_found(await judge(pod(**spec)))


@pytest.mark.parametrize(
    "spec",
    [
        {"securityContext": None, "containers": [_container(securityContext=None)]},
        {"containers": [_container(ports=[{"containerPort": 80, "hostPort": 0}])]},  # 0 means none
        {"hostNetwork": False, "hostPID": False, "hostIPC": False},
        {"containers": [_container(securityContext={"capabilities": {"add": ["NET_BIND_SERVICE", "CHOWN"]}})]},
        {"securityContext": {"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]}},
    ],
)
async def test_baseline_admits(spec: dict[str, Any]) -> None:
    outcome = await judge(pod(**spec))
    assert outcome.verdict.allowed, outcome.verdict.deny_message()


async def test_restricted_namespace_judges_ephemeral_containers_too() -> None:
    cfg = {"namespaces": {"default": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}}
    obj = pod(
        containers=[_container(securityContext=RESTRICTED_SC)],
        ephemeralContainers=[{"name": "debug", "image": "busybox:1"}],
    )
    outcome = await judge(obj, cfg)
    assert not outcome.verdict.allowed
    assert all("ephemeralContainers[0]" in (v.path or "") for v in outcome.verdict.denials)


# -- cost: findings are the expensive part --------------------------------------------------


def test_findings_per_review_are_bounded() -> None:
    """Not a timing assertion: the number of findings is what the time is proportional to."""
    spec = {
        "containers": [_container(securityContext=RESTRICTED_SC)],
        "volumes": [{"name": f"v{i}", "hostPath": {"path": "/"}} for i in range(5000)],
    }
    found = privilege.evaluate([PodSpecRef(spec, {}, "spec")], "baseline")
    assert len(found) <= 1000
