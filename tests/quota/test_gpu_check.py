"""The gpu check end to end through the admission pipeline, against the local API server
(``kubeapi.py``, which speaks the real list/watch wire format): quotas of each kind, MIG and
time-slicing weights, reservations, dry-run, warnings, per-pod rules, CI mode, failure modes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from webhook import errors
from webhook.checks import gpu
from webhook.checks.pipeline import Outcome, Pipeline, Subject
from webhook.checks.services import Services
from webhook.config import parse
from webhook.core.deadline import Deadline
from webhook.kube.namespaces import NamespaceDirectory

Env = Callable[..., Any]


@pytest.fixture
async def env(api: Any, kube_config: Any) -> AsyncIterator[Env]:
    """``await env(quota={...}, checks={...})`` → (pipeline, check), started and synced."""
    started: list[tuple[Pipeline, NamespaceDirectory]] = []

    async def make(wait: bool = True, **sections: Any) -> tuple[Pipeline, gpu.GpuCheck]:
        config = parse(sections)
        check = gpu.build(config, Services(kube_api=api), kubernetes=kube_config)
        assert check is not None
        namespaces = NamespaceDirectory(api, kube_config)
        pipeline = Pipeline(config, [check], namespaces)
        await namespaces.start()
        await pipeline.start()
        started.append((pipeline, namespaces))
        if wait:
            assert await namespaces.wait_ready(10)
            assert check.watch is not None
            assert await check.watch.wait_ready(10)
        return pipeline, check

    yield make
    for pipeline, namespaces in started:
        await pipeline.close()
        await namespaces.close()


async def admit(
    pipeline: Pipeline, obj: dict[str, Any], *, dry_run: bool = False, operation: str = "CREATE"
) -> Outcome:
    meta = obj["metadata"]
    subject = Subject(operation, obj["kind"], meta.get("namespace", "ml"), meta["name"], obj, dry_run=dry_run)
    return await pipeline.evaluate(subject, Deadline.after(5))


def denial(outcome: Outcome) -> str:
    assert not outcome.verdict.allowed, outcome
    return outcome.verdict.deny_message()


async def test_namespace_quota_denies_with_used_asked_left(env: Env, kube: Any, make_pod: Any, eventually: Any) -> None:
    kube.put("pods", make_pod("running", gpus=1))
    pipeline, check = await env(quota={"quotas": [{"name": "ml-gpus", "namespace": "ml", "limit": 2}]})
    await eventually(lambda: len(check.ledger) == 1)
    message = denial(await admit(pipeline, make_pod("big", gpus=2, phase=None)))
    assert "GPU quota 'ml-gpus' (namespace ml) exceeded: 1 of 2 GPUs in use" in message
    assert "this pod asks 2, 1 left" in message
    outcome = await admit(pipeline, make_pod("small", gpus=1, phase=None))
    assert outcome.verdict.allowed
    assert any("at 100% after this pod" in w for w in outcome.verdict.warnings)
    other = await admit(pipeline, make_pod("elsewhere", "web", gpus=2, phase=None))
    assert other.verdict.allowed


async def test_team_quota_sums_every_namespace_of_the_team(
    env: Env, kube: Any, make_pod: Any, make_namespace: Any, eventually: Any
) -> None:
    for name, team in (("ml", "vision"), ("ml2", "vision"), ("audio", "speech")):
        kube.put("namespaces", make_namespace(name, team=team))
    kube.put("pods", make_pod("a", "ml", gpus=2))
    pipeline, check = await env(
        quota={
            "quotas": [{"name": "vision", "team": "vision", "limit": 3}, {"name": "teams", "per": "team", "limit": 4}]
        }
    )
    # team quotas also need the namespaces listed: the pod may be counted before they are
    await eventually(lambda: check.ready() and len(check.ledger) == 1)
    message = denial(await admit(pipeline, make_pod("b", "ml2", gpus=2, phase=None)))
    assert "GPU quota 'vision' (team vision) exceeded: 2 of 3 GPUs in use" in message
    speech = await admit(pipeline, make_pod("c", "audio", gpus=4, phase=None))
    assert speech.verdict.allowed
    assert speech.context["gpu"]["usage"] == {"namespace": 0, "team": 0}
    message = denial(await admit(pipeline, make_pod("d", "audio", gpus=1, phase=None)))
    assert "GPU quota 'teams' (team speech) exceeded: 4 of 4 GPUs in use (0 by running pods, 4 reserved)" in message


async def test_per_namespace_quota_gives_each_namespace_its_own_pool(env: Env, kube: Any, make_pod: Any) -> None:
    pipeline, _ = await env(quota={"quotas": [{"name": "each", "per": "namespace", "limit": 1}]})
    assert (await admit(pipeline, make_pod("a", "ns1", gpus=1, phase=None))).verdict.allowed
    assert (await admit(pipeline, make_pod("a", "ns2", gpus=1, phase=None))).verdict.allowed
    assert "(namespace ns1) exceeded" in denial(await admit(pipeline, make_pod("b", "ns1", gpus=1, phase=None)))


async def test_gpu_model_quota_counts_only_pods_selecting_that_model(env: Env, kube: Any, make_pod: Any) -> None:
    pipeline, _ = await env(quota={"quotas": [{"name": "a100", "gpu_model": "A100", "limit": 1}]})
    assert "(gpu model A100) exceeded" in denial(await admit(pipeline, make_pod("x", gpus=2, model="A100", phase=None)))
    assert (await admit(pipeline, make_pod("y", gpus=2, model="H100", phase=None))).verdict.allowed
    assert (await admit(pipeline, make_pod("z", gpus=1, model="A100", phase=None))).verdict.allowed


async def test_seven_mig_slices_fill_one_gpu_and_the_eighth_is_denied(env: Env, kube: Any, make_pod: Any) -> None:
    pipeline, _ = await env(quota={"quotas": [{"name": "one", "limit": 1}]})
    for i in range(7):
        outcome = await admit(pipeline, make_pod(f"s{i}", gpus=1, resource="nvidia.com/mig-1g.10gb", phase=None))
        assert outcome.verdict.allowed, outcome
    message = denial(await admit(pipeline, make_pod("s7", gpus=1, resource="nvidia.com/mig-1g.10gb", phase=None)))
    assert "1 of 1 GPUs in use (0 by running pods, 1 reserved), this pod asks 1/7, 0 left" in message


async def test_time_sliced_replicas_weigh_one_over_n(env: Env, kube: Any, make_pod: Any, eventually: Any) -> None:
    kube.put("pods", make_pod("r", gpus=3, resource="nvidia.com/gpu.shared"))
    pipeline, check = await env(
        quota={
            "resources": {"nvidia.com/gpu": 1, "nvidia.com/gpu.shared": "1/4"},
            "quotas": [{"name": "q", "limit": 1}],
        }
    )
    await eventually(lambda: len(check.ledger) == 1)
    assert (await admit(pipeline, make_pod("s", gpus=1, resource="nvidia.com/gpu.shared", phase=None))).verdict.allowed
    message = denial(await admit(pipeline, make_pod("t", gpus=1, resource="nvidia.com/gpu.shared", phase=None)))
    assert "0.75 by running pods, 0.25 reserved), this pod asks 0.25, 0 left" in message


async def test_reservation_turns_into_usage_when_the_watch_sees_the_pod(
    env: Env, kube: Any, make_pod: Any, eventually: Any
) -> None:
    pipeline, check = await env(quota={"quotas": [{"name": "q", "limit": 1}]})
    first = make_pod("first", gpus=1, uid="u-1", phase=None)
    assert (await admit(pipeline, first)).verdict.allowed
    assert check.ledger.reserved
    kube.put("pods", {**first, "status": {"phase": "Pending"}})  # the API server stores the pod
    await eventually(lambda: len(check.ledger) == 1)
    assert not check.ledger.reserved
    assert "1 by running pods, 0 reserved" in denial(await admit(pipeline, make_pod("second", gpus=1, phase=None)))
    kube.delete("pods", "ml", "first")
    await eventually(lambda: len(check.ledger) == 0)
    assert (await admit(pipeline, make_pod("second", gpus=1, phase=None))).verdict.allowed


async def test_dry_run_never_reserves_and_updates_are_not_recounted(env: Env, kube: Any, make_pod: Any) -> None:
    pipeline, check = await env(quota={"quotas": [{"name": "q", "limit": 1}]})
    for _ in range(3):
        assert (await admit(pipeline, make_pod("dry", gpus=1, phase=None), dry_run=True)).verdict.allowed
    assert not check.ledger.reserved
    update = await admit(pipeline, make_pod("old", gpus=5, phase=None), operation="UPDATE")
    assert update.verdict.allowed
    assert (await admit(pipeline, make_pod("real", gpus=1, phase=None))).verdict.allowed


async def test_warning_past_eighty_percent_and_context_for_rego(env: Env, kube: Any, make_pod: Any) -> None:
    pipeline, _ = await env(quota={"quotas": [{"name": "q", "limit": 10}]})
    quiet = await admit(pipeline, make_pod("a", gpus=8, phase=None))
    assert quiet.verdict.allowed
    assert not quiet.verdict.warnings
    loud = await admit(pipeline, make_pod("b", gpus=1, phase=None))
    assert loud.verdict.warnings == ("GPU quota 'q' (all pods) at 90% after this pod: 9 of 10 GPUs",)
    quota = loud.context["gpu"]["quotas"][0]
    assert quota == {
        "quota": "q",
        "key": "q",
        "scope": "all pods",
        "used": 0,
        "reserved": 8,
        "limit": 10,
        "asked": 1,
        "left": 2,
    }
    assert loud.context["gpu"]["gpus"] == 1


async def test_per_pod_rules_apply_to_every_workload(env: Env, kube: Any, make_pod: Any) -> None:
    pipeline, check = await env(
        quota={"quotas": [{"name": "q", "limit": 4}], "per_pod": {"max_gpus": 2, "requests_equal_limits": True}}
    )
    message = denial(await admit(pipeline, make_pod("big", gpus=3, phase=None)))
    assert "pod asks 3 GPUs, more than the 2 allowed per pod" in message
    assert not check.ledger.reserved  # a denied pod holds nothing
    uneven = make_pod(
        "uneven",
        phase=None,
        containers=[{"name": "m", "resources": {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}}}],
    )
    assert "m: nvidia.com/gpu request 1 must equal its limit (2)" in denial(await admit(pipeline, uneven))
    template = make_pod("tmpl", gpus=5, phase=None)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ml"},
        "spec": {"replicas": 3, "template": {"metadata": {}, "spec": template["spec"]}},
    }
    message = denial(await admit(pipeline, deployment))
    assert "each pod asks 5 GPUs but GPU quota 'q' (all pods) allows 4 in all" in message


async def test_ci_mode_judges_only_per_pod_rules_and_says_so(make_pod: Any) -> None:
    config = parse({"quota": {"quotas": [{"name": "q", "limit": 1}], "per_pod": {"max_gpus": 4}}})
    check = gpu.build(config, Services(ci=True))
    assert check is not None
    assert check.watch is None
    pipeline = Pipeline(config, [check])
    outcome = await admit(pipeline, make_pod("a", gpus=1, phase=None))
    assert outcome.verdict.allowed
    assert any("GPU quotas not judged: no cluster" in w for w in outcome.verdict.warnings)
    assert "more than the 4 allowed per pod" in denial(await admit(pipeline, make_pod("b", gpus=6, phase=None)))
    nothing = await admit(pipeline, make_pod("cpu", gpus=None, phase=None))
    assert nothing.verdict.allowed
    assert not nothing.verdict.warnings


def test_unconfigured_quota_builds_no_check() -> None:
    assert gpu.build(parse({}), Services()) is None


async def test_api_server_down_uses_failure_mode_deny_with_a_clear_message(
    env: Env, kube: Any, make_pod: Any, eventually: Any
) -> None:
    pipeline, check = await env(quota={"quotas": [{"name": "q", "limit": 4}], "max_staleness": 0.05})
    assert (await admit(pipeline, make_pod("a", gpus=1, phase=None))).verdict.allowed
    await kube.stop()
    await eventually(lambda: check.watch.reflector.stale_for() > 0.05)
    message = denial(await admit(pipeline, make_pod("b", gpus=1, phase=None)))
    assert "[gpu] could not finish (GPU usage unknown: the pod watch lost the API server" in message
    assert "denied by failure mode 'deny'" in message
    assert (await admit(pipeline, make_pod("cpu-only", gpus=None, phase=None))).verdict.allowed
    await kube.start()
    await eventually(lambda: check.watch.reflector.stale_for() == 0)
    assert (await admit(pipeline, make_pod("c", gpus=1, phase=None))).verdict.allowed


async def test_api_server_down_with_failure_mode_allow_admits_and_warns(
    env: Env, kube: Any, make_pod: Any, eventually: Any
) -> None:
    pipeline, check = await env(
        quota={"quotas": [{"name": "q", "limit": 4}], "max_staleness": 0.05},
        checks={"gpu": {"failure_mode": "allow"}},
    )
    await kube.stop()
    await eventually(lambda: check.watch.reflector.stale_for() > 0.05)
    outcome = await admit(pipeline, make_pod("b", gpus=1, phase=None))
    assert outcome.verdict.allowed
    assert any("could not finish, allowed by failure mode" in w for w in outcome.verdict.warnings)


async def test_not_ready_until_the_first_list(env: Env, kube: Any, make_pod: Any, eventually: Any) -> None:
    await kube.stop()
    pipeline, check = await env(wait=False, quota={"quotas": [{"name": "q", "limit": 4}]})
    assert not pipeline.ready()
    message = denial(await admit(pipeline, make_pod("a", gpus=1, phase=None)))
    assert "GPU usage not known yet: the pod watch has not finished its first list" in message
    await kube.start()
    assert await check.watch.wait_ready(10)
    await eventually(pipeline.ready)  # the namespace watch may still be in its reconnect backoff


async def test_metrics_report_used_reserved_and_limit(env: Env, kube: Any, make_pod: Any, eventually: Any) -> None:
    kube.put("pods", make_pod("a", gpus=1))
    pipeline, check = await env(
        quota={"quotas": [{"name": "q", "limit": 4}, {"name": "ns", "per": "namespace", "limit": 2}]}
    )
    await eventually(lambda: len(check.ledger) == 1)
    assert (await admit(pipeline, make_pod("b", gpus=1, resource="nvidia.com/mig-1g.10gb", phase=None))).verdict.allowed
    lines = check.metrics()
    assert 'portcullis_gpu_quota_used_gpus{quota="q",key="q",scope="all pods"} 1' in lines
    assert 'portcullis_gpu_quota_reserved_gpus{quota="q",key="q",scope="all pods"} 0.142857' in lines
    assert 'portcullis_gpu_quota_limit_gpus{quota="ns",key="ns/namespace=ml",scope="namespace ml"} 2' in lines
    assert "# TYPE portcullis_gpu_quota_limit_gpus gauge" in lines
    assert "portcullis_gpu_ledger_pods 1" in lines


async def test_quotas_without_any_kubernetes_api_fail_by_the_failure_mode(make_pod: Any) -> None:
    config = parse({"quota": {"quotas": [{"name": "q", "limit": 1}]}})
    check = gpu.build(config, Services())
    assert check is not None
    outcome = await admit(Pipeline(config, [check]), make_pod("a", gpus=1, phase=None))
    assert "GPU quotas are configured but there is no Kubernetes API to count usage" in denial(outcome)


async def test_apiserver_coordination_with_the_server_down_names_the_failed_call(
    env: Env, kube: Any, make_pod: Any
) -> None:
    kube.put("namespaces", {"metadata": {"name": "portcullis-system"}})  # the coordination namespace
    pipeline, check = await env(quota={"quotas": [{"name": "q", "limit": 4}], "coordination": "apiserver"})
    assert check.does_io
    assert (await admit(pipeline, make_pod("a", gpus=1, uid="u-a", phase=None))).verdict.allowed
    await kube.stop()  # the watch's last contact is fresh (max_staleness 30 s): the reservation call fails
    message = denial(await admit(pipeline, make_pod("b", gpus=1, uid="u-b", phase=None)))
    assert "could not finish (read GPU reservations portcullis-system/portcullis-gpu-q-" in message
    assert "API server unreachable" in message


async def test_a_watch_hung_open_cannot_let_an_expired_reservation_admit_past_the_quota(
    api: Any, kube: Any, make_pod: Any, kube_config: Any
) -> None:
    """The pod watch hangs open (delivers nothing, never closes) right before a GPU pod is
    admitted and created. Its reservation expires after ``reservation_ttl``; the watch must
    have caught up by then (it is reopened after ``watch_idle_timeout`` of silence), or a
    second pod is admitted past the quota."""
    kube_config = msgspec.structs.replace(kube_config, watch_idle_timeout=0.3)
    config = parse(
        {
            "quota": {"quotas": [{"name": "q", "limit": 1}], "reservation_ttl": 1.0, "max_staleness": 0.5},
            "kubernetes": {"watch_idle_timeout": 0.3, "request_timeout": 0.5},
        }
    )
    check = gpu.build(config, Services(kube_api=api), kubernetes=kube_config)
    assert check is not None
    assert check.watch is not None
    namespaces = NamespaceDirectory(api, kube_config)
    pipeline = Pipeline(config, [check], namespaces)
    await namespaces.start()
    await pipeline.start()
    try:
        assert await check.watch.wait_ready(10)
        assert await namespaces.wait_ready(10)
        kube.hang_watches()
        assert (await admit(pipeline, make_pod("a", gpus=1, phase=None))).verdict.allowed
        kube.put("pods", make_pod("a", gpus=1))  # created; the hung stream does not carry it
        await asyncio.sleep(1.5)  # the reservation's TTL goes by
        assert "GPU quota 'q' (all pods) exceeded" in denial(await admit(pipeline, make_pod("b", gpus=1, phase=None)))
    finally:
        await pipeline.close()
        await namespaces.close()


def test_a_reservation_must_outlive_the_time_a_watch_can_lag_unnoticed() -> None:
    with pytest.raises(errors.ConfigError, match=r"quota.reservation_ttl \(20s\) must be longer .* = 30s"):
        parse({"quota": {"quotas": [{"name": "q", "limit": 1}], "reservation_ttl": 20}})
    with pytest.raises(errors.ConfigError, match=r"request_timeout\) = 65s"):
        parse({"quota": {"quotas": [{"name": "q", "limit": 1}]}, "kubernetes": {"watch_idle_timeout": 60}})
    assert parse({"quota": {"reservation_ttl": 1}}).quota.reservation_ttl == 1  # no quota: nothing reserved
