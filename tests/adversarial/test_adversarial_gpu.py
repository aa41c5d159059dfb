"""Getting a GPU without asking for one: the runtime class rule (and the GPU quota) only see
extended resources such as ``nvidia.com/gpu`` in ``resources``.

Two other doors exist on real clusters. The NVIDIA container toolkit, in its default
``envvar`` device-list strategy, hands a container every GPU named by ``NVIDIA_VISIBLE_DEVICES``
(``all``) when the node's default runtime is nvidia, whatever the pod requested (NVIDIA's own
hardening guide: set ``accept-nvidia-visible-devices-envvar-when-unprivileged = false`` and the
device plugin's ``volume-mounts`` strategy). And Dynamic Resource Allocation (GA in 1.34) requests
devices through ``spec.resourceClaims``, which no check reads.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import RESTRICTED_SC, judge, pod

CFG: dict[str, Any] = {"runtimeclass": {"gpu_runtime_classes": ["nvidia"], "lookup": False}}


def _trainer(**container: Any) -> dict[str, Any]:
    return {"name": "train", "image": "nvcr.io/nvidia/pytorch:24.01", "securityContext": RESTRICTED_SC, **container}


async def test_gpu_request_without_the_gpu_runtime_class_is_denied() -> None:
    obj = pod(containers=[_trainer(resources={"limits": {"nvidia.com/gpu": "1"}})])
    outcome = await judge(obj, CFG)
    assert "runtimeclass:gpu" in {v.check for v in outcome.verdict.denials}


@pytest.mark.parametrize("quantity", ["1", 1, "0.5", "1k", "500m"])
async def test_any_nonzero_looking_gpu_quantity_counts(quantity: Any) -> None:
    obj = pod(containers=[_trainer(resources={"requests": {"nvidia.com/mig-1g.5gb": quantity}})])
    assert not (await judge(obj, CFG)).verdict.allowed


async def test_gpu_request_in_an_init_container_counts() -> None:
    obj = pod(
        initContainers=[_trainer(name="warmup", resources={"limits": {"nvidia.com/gpu": "1"}})],
        containers=[_trainer()],
    )
    assert not (await judge(obj, CFG)).verdict.allowed


async def test_nvidia_visible_devices_env_is_not_a_way_around_the_gpu_rules() -> None:
    obj = pod(containers=[_trainer(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])])
    outcome = await judge(obj, CFG)
    assert "runtimeclass:gpuEnv" in {v.check for v in outcome.verdict.denials}
    harmless = pod(containers=[_trainer(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}])])
    assert (await judge(harmless, CFG)).verdict.allowed


async def test_gpu_requested_through_dynamic_resource_allocation_counts() -> None:
    """No API server here: the claim template cannot be read, so the pod counts as a GPU pod."""
    obj = pod(
        resourceClaims=[{"name": "gpu", "resourceClaimTemplateName": "single-gpu"}],
        containers=[_trainer(resources={"claims": [{"name": "gpu"}]})],
    )
    outcome = await judge(obj, CFG)
    assert not outcome.verdict.allowed
    assert "runtimeclass:gpu" in {v.check for v in outcome.verdict.denials}
    assert "could not be determined" in outcome.verdict.deny_message()
