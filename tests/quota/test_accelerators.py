"""No accelerator is free: default weights for MIG variants and whole devices, refusal until
configured for anything else that looks like one (``QuotaConfig.weight``, the gpu check)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from webhook.checks import gpu
from webhook.checks.pipeline import Pipeline, Subject
from webhook.checks.services import Services
from webhook.config import parse
from webhook.config.quota import QuotaConfig
from webhook.core.deadline import Deadline


@pytest.mark.parametrize(
    ("resource", "weight"),
    [
        ("nvidia.com/gpu", Fraction(1)),
        ("nvidia.com/gpu.shared", Fraction(1)),
        ("nvidia.com/mig-1g.10gb", Fraction(1, 7)),
        ("nvidia.com/mig-1g.10gb.me", Fraction(1, 7)),
        ("nvidia.com/mig-1g.10gb+me", Fraction(1, 7)),
        ("nvidia.com/mig-1c.3g.20gb", Fraction(3, 7)),
        ("nvidia.com/mig-7g.80gb", Fraction(1)),
        ("amd.com/gpu", Fraction(1)),
        ("gpu.intel.com/i915", Fraction(1)),
        ("gpu.intel.com/xe", Fraction(1)),
    ],
)
def test_default_weights(resource: str, weight: Fraction) -> None:
    config = QuotaConfig()
    assert config.weight(resource) == weight
    assert not config.unweighted_accelerator(resource)


@pytest.mark.parametrize(
    "resource",
    [
        "nvidia.com/rdma_shared_device_a",
        "gpu.intel.com/millicores",
        "amd.com/xgmi",
        "habana.ai/gaudi",
        "aws.amazon.com/neuroncore",
        "google.com/tpu",
        "example.com/vgpu",
        # DRAExtendedResource: any DeviceClass asked for as an extended resource
        "deviceclass.resource.kubernetes.io/mig.nvidia.com",
        "deviceclass.resource.kubernetes.io/dra.cpu",
        # no MIG profile has 0 slices: a resource so named is not weighed 0 (free) by the MIG rule
        "nvidia.com/mig-0g.5gb",
        "nvidia.com/mig-1c.0g.5gb",
    ],
)
def test_other_accelerators_have_no_weight_until_configured(resource: str) -> None:
    assert QuotaConfig().unweighted_accelerator(resource)
    assert not QuotaConfig(resources={resource: 0}).unweighted_accelerator(resource)


@pytest.mark.parametrize("resource", ["cpu", "memory", "hugepages-2Mi", "ephemeral-storage", "example.com/fpga-ish"])
def test_ordinary_resources_are_not_accelerators(resource: str) -> None:
    config = QuotaConfig()
    assert config.weight(resource) is None
    assert not config.unweighted_accelerator(resource)


def _pod(resources: dict[str, Any]) -> dict[str, Any]:
    container = {"name": "c", "image": "x:1", "resources": {"limits": resources, "requests": resources}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [container]}}


async def _judge(quota: dict[str, Any], resources: dict[str, Any]) -> Any:
    config = parse({"quota": quota})
    check = gpu.build(config, Services(ci=True))
    assert check is not None
    pipeline = Pipeline(config, [check])
    return (await pipeline.evaluate(Subject("CREATE", "Pod", "ml", "p", _pod(resources)), Deadline.after(5))).verdict


@pytest.mark.parametrize(
    ("resources", "allowed"),
    [
        ({"nvidia.com/mig-1g.10gb.me": 7}, True),  # 7 x 1/7 = exactly 1 GPU
        ({"nvidia.com/mig-1g.10gb.me": 8}, False),
        ({"nvidia.com/gpu.shared": 2}, False),
        ({"amd.com/gpu": 2}, False),
        ({"gpu.intel.com/i915": 1, "nvidia.com/gpu": 1}, False),
        ({"amd.com/gpu": 1}, True),
    ],
)
async def test_default_weighted_accelerators_count_against_the_per_pod_limit(
    resources: dict[str, Any], allowed: bool
) -> None:
    verdict = await _judge({"per_pod": {"max_gpus": 1}}, resources)
    assert verdict.allowed is allowed


async def test_an_unweighted_accelerator_is_refused_naming_the_setting() -> None:
    verdict = await _judge({"per_pod": {"max_gpus": 8}}, {"habana.ai/gaudi": 1})
    assert not verdict.allowed
    assert "quota.resources['habana.ai/gaudi']" in verdict.deny_message()
    weighted = await _judge({"per_pod": {"max_gpus": 8}, "resources": {"habana.ai/gaudi": 1}}, {"habana.ai/gaudi": 9})
    assert not weighted.allowed
    assert "asks 9 GPUs" in weighted.deny_message()
    ignored = await _judge({"per_pod": {"max_gpus": 1}, "resources": {"habana.ai/gaudi": 0}}, {"habana.ai/gaudi": 9})
    assert ignored.allowed
