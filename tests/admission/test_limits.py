"""Bounded input: a pod too large to judge within the budget is denied before any check runs,
naming the field, its size and the setting (``limits``); findings per id are bounded too."""

from __future__ import annotations

import re
from typing import Any

import pytest

from webhook import config as config_mod
from webhook import errors
from webhook.admission import service
from webhook.checks import limits
from webhook.checks.pipeline import Subject
from webhook.core.deadline import Deadline
from webhook.core.decision import Violation

from .conftest import pod, review


def containers(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": f"c{i}", "image": "x:1", **extra} for i in range(n)]


async def judge(obj: dict[str, Any], cfg: dict[str, Any] | None = None, kind: str = "Pod") -> Any:
    pipeline = service.build_pipeline(config_mod.parse(cfg or {}))
    try:
        return await pipeline.evaluate(Subject("CREATE", kind, "default", "p", obj), Deadline.after(5))
    finally:
        await pipeline.close()


async def test_a_16000_container_pod_is_denied_over_https_naming_the_limit(start_webhook: Any) -> None:
    async with start_webhook() as hook:
        status, body = await hook.post("/validate", review(pod(containers=containers(16_000))))
    assert status == 200
    response = body["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert (
        "spec: 16000 containers, more than the 256 Portcullis judges (limits.max_containers)"
        in (response["status"]["message"])
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"containers": containers(200), "initContainers": containers(57)}, "257 containers"),
        ({"containers": containers(1), "volumes": [{"name": f"v{i}"} for i in range(513)]}, "spec.volumes: 513"),
        (
            {"containers": containers(1, env=[{"name": f"E{i}"} for i in range(1000)], envFrom=[{}] * 25)},
            "spec.containers[0]: 1025 env/envFrom entries",
        ),
    ],
    ids=["containers", "volumes", "env"],
)
async def test_each_limit_denies_with_its_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.ReviewError, match=re.escape(message)):
        await judge(pod(**spec))


async def test_limits_apply_to_workload_templates_and_are_configurable() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": containers(300)}}},
    }
    with pytest.raises(errors.ReviewError, match=r"spec.template.spec: 300 containers"):
        await judge(deployment, kind="Deployment")
    outcome = await judge(deployment, {"limits": {"max_containers": 300}}, kind="Deployment")
    assert outcome.verdict.allowed


def test_limits_must_be_positive() -> None:
    with pytest.raises(errors.ConfigError, match="max_containers"):
        config_mod.parse({"limits": {"max_containers": 0}})


async def test_a_pod_at_the_limits_is_judged_with_bounded_findings() -> None:
    """256 containers each setting NVIDIA_VISIBLE_DEVICES hundreds of times: judged, one finding
    per container, at most 100 listed plus one summary."""
    env = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}] * 300
    cfg = {"runtimeclass": {"gpu_runtime_classes": ["nvidia"]}}
    outcome = await judge(pod(containers=containers(256, env=env)), cfg)
    found = [f.violation for f in outcome.verdict.findings if f.violation.check == "runtimeclass:gpuEnv"]
    assert len(found) == limits.MAX_FINDINGS + 1
    assert found[-1].message.startswith("and 156 more runtimeclass:gpuEnv findings")


def test_bounded_keeps_the_strongest_mode_of_what_it_sums_up() -> None:
    from webhook.core.decision import Mode

    found = [Violation("x", str(i), mode=Mode.AUDIT) for i in range(150)] + [Violation("x", "last", mode=Mode.ENFORCE)]
    kept = limits.bounded(found)
    assert len(kept) == limits.MAX_FINDINGS + 1
    assert kept[-1].mode is Mode.ENFORCE
    assert limits.bounded(found[:5]) == found[:5]
