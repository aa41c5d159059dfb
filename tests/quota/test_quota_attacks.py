"""Attacks on GPU quota accounting, sent as the API server sends them (AdmissionReview v1 bodies
decoded by ``admission.review`` and turned into a subject as ``admission.server`` does), through
the real pipeline with Pod Security, against the local API server (``kubeapi.py``: the real
list/watch wire format, since no Kubernetes API server can run here).

The watch lags the API server: a pod admitted a moment ago is held only by its reservation. Pods
an attack admits are therefore not put in the local API server until the attack is over.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import kubeapi
import orjson
import pytest
from aiohttp import web

from webhook.admission import review, server
from webhook.checks import gpu, privilege
from webhook.checks.pipeline import Outcome, Pipeline
from webhook.checks.services import Services
from webhook.config import parse
from webhook.config.kubernetes import KubernetesConfig
from webhook.core.deadline import Deadline
from webhook.kube import client as kube_client
from webhook.kube.namespaces import NamespaceDirectory

Judge = Callable[..., Any]


def admission_review(obj: dict[str, Any], *, operation: str = "CREATE", dry_run: bool = False) -> bytes:
    """An AdmissionReview v1 for a pod as kube-apiserver sends it at validating admission: the
    object carries its server-set uid and (for generateName) its generated name; ``request.name``
    is what the client sent."""
    meta = obj["metadata"]
    request = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": meta.get("name", ""),
        "namespace": meta["namespace"],
        "operation": operation,
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "object": obj,
        "oldObject": None,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})


def gpu_pod(name: str, gpus: int, *, uid: str, privileged: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "trainer:1",
        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}, "requests": {"nvidia.com/gpu": str(gpus)}},
    }
    if privileged:
        container["securityContext"] = {"privileged": True}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": uid},
        "spec": {"containers": [container]},
    }


@pytest.fixture
async def judge(api: Any, kube_config: Any) -> AsyncIterator[Judge]:
    """``await judge(pod, quota={...})`` → the outcome of its review, one pipeline per quota config
    (gpu check with local coordination + Pod Security, as ``portcullis serve`` builds them)."""
    pipelines: dict[str, tuple[Pipeline, gpu.GpuCheck]] = {}

    async def run(obj: dict[str, Any], *, quota: dict[str, Any], dry_run: bool = False) -> Outcome:
        key = orjson.dumps(quota, option=orjson.OPT_SORT_KEYS).decode()
        if key not in pipelines:
            config = parse({"quota": quota})
            check = gpu.build(config, Services(kube_api=api), kubernetes=kube_config)
            assert check is not None
            pipeline = Pipeline(config, [privilege.build(config, Services()), check])
            await pipeline.start()
            assert check.watch is not None
            assert await check.watch.wait_ready(10)
            pipelines[key] = (pipeline, check)
        pipeline = pipelines[key][0]
        subject = server._subject(review.decode(admission_review(obj, dry_run=dry_run)))
        return await pipeline.evaluate(subject, Deadline.after(10))

    yield run
    for pipeline, _ in pipelines.values():
        await pipeline.close()


POOL = {"quotas": [{"name": "pool", "namespace": "ml", "limit": 8}]}


async def test_a_second_create_of_the_same_name_does_not_free_the_first_pods_reservation(judge: Judge) -> None:
    """Attack: pod "x" (7 GPUs) is admitted and reserved; before the watch sees it, a second
    CREATE of "x" (1 GPU, privileged so Pod Security denies it; etcd would refuse the duplicate
    name anyway) is admitted by the gpu check. Keying reservations by namespace/name let that
    second request replace, then give back, the first pod's reservation, so 8 more GPUs fit."""
    first = await judge(gpu_pod("x", 7, uid="uid-1"), quota=POOL)
    assert first.verdict.allowed, first.verdict.deny_message()
    twin = await judge(gpu_pod("x", 1, uid="uid-2", privileged=True), quota=POOL)
    assert [d.check for d in twin.verdict.denials] == ["pss:privileged"]
    third = await judge(gpu_pod("y", 8, uid="uid-3"), quota=POOL)
    assert not third.verdict.allowed
    assert "7 reserved" in third.verdict.deny_message()


def _containers(*amounts: str, field: str = "containers") -> dict[str, Any]:
    return {
        field: [
            {"name": f"c{i}", "image": "trainer:1", "resources": {"limits": {"nvidia.com/gpu": a}}}
            for i, a in enumerate(amounts)
        ]
    }


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        # a negative request offsets another container's: 2 in all, 3 GPUs handed out
        (_containers("-1", "3"), "containers[0].resources.limits[nvidia.com/gpu]"),
        (_containers("-1000m", "3"), "containers[0].resources.limits[nvidia.com/gpu]"),
        # devices are not divisible: the API server refuses fractional extended resources
        (_containers("1500m", "500m"), "containers[0].resources.limits[nvidia.com/gpu]"),
        (_containers("0.5"), "containers[0].resources.limits[nvidia.com/gpu]"),
        ({**_containers("2"), "overhead": {"nvidia.com/gpu": "-2"}}, "overhead[nvidia.com/gpu]"),
        ({**_containers("2"), **_containers("-2", field="initContainers")}, "initContainers[0]"),
        # the API server refuses resources on ephemeral containers: they must not go uncounted
        ({**_containers("2"), **_containers("4", field="ephemeralContainers")}, "ephemeralContainers[0].resources"),
    ],
)
async def test_amounts_the_api_server_refuses_are_never_counted_low(
    judge: Judge, spec: dict[str, Any], field: str
) -> None:
    """Attack: quantities that make the pod's sum smaller than what a device plugin would hand out
    (or that the API server refuses outright) against a 2-GPU quota. The check is at least as
    strict as the API server's validation: such a pod is denied, naming the field."""
    obj = gpu_pod("odd", 0, uid="uid-odd")
    obj["spec"] = spec
    outcome = await judge(obj, quota={"quotas": [{"name": "pool", "namespace": "ml", "limit": 2}]})
    assert not outcome.verdict.allowed
    gpu_denials = [d.message for d in outcome.verdict.denials if d.check == "gpu"]
    assert gpu_denials, outcome.verdict.deny_message()
    assert any(field in m for m in gpu_denials), gpu_denials


@pytest.mark.parametrize("amount", ["1", "1000m", "1e0", "0.001k", "2", "2000m"])
async def test_whole_amounts_in_any_spelling_are_admitted(judge: Judge, amount: str) -> None:
    obj = gpu_pod("whole", 0, uid=f"uid-whole-{amount}")
    obj["spec"] = _containers(amount)
    outcome = await judge(obj, quota={"quotas": [{"name": "pool", "namespace": "ml", "limit": 2}]})
    assert outcome.verdict.allowed, outcome.verdict.deny_message()


DRA_MIG = "deviceclass.resource.kubernetes.io/mig.nvidia.com"


async def test_a_dra_device_class_asked_as_an_extended_resource_is_not_free(judge: Judge) -> None:
    """Attack (DRAExtendedResource, 1.34+): any DeviceClass can be asked for in ``resources`` as
    ``deviceclass.resource.kubernetes.io/<class>``; the scheduler turns it into a ResourceClaim
    for that many devices. The name does not look like a GPU, so it was counted as nothing."""
    obj = gpu_pod("dra", 0, uid="uid-dra")
    obj["spec"]["containers"][0]["resources"] = {"limits": {DRA_MIG: "7"}, "requests": {DRA_MIG: "7"}}
    quota = {"quotas": [{"name": "pool", "namespace": "ml", "limit": 2}]}
    outcome = await judge(obj, quota=quota)
    assert not outcome.verdict.allowed
    assert f"set quota.resources['{DRA_MIG}']" in outcome.verdict.deny_message()
    weighed = await judge(obj, quota={**quota, "resources": {"nvidia.com/gpu": 1, DRA_MIG: "1/7"}})
    assert weighed.verdict.allowed, weighed.verdict.deny_message()
    assert weighed.context["gpu"]["gpus"] == 1.0
    obj["spec"]["containers"][0]["resources"] = {"limits": {DRA_MIG: "500m"}}
    outcome = await judge(obj, quota={**quota, "resources": {"nvidia.com/gpu": 1, DRA_MIG: "1/7"}})
    assert "is not a whole number" in outcome.verdict.deny_message()


@pytest.mark.parametrize(
    "resources",
    [
        {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "3"}},
        {"requests": {"nvidia.com/gpu": "3"}, "limits": {"nvidia.com/gpu": "1"}},
        {"requests": {"nvidia.com/gpu": "0"}, "limits": {"nvidia.com/gpu": "3"}},
    ],
)
async def test_a_request_below_its_limit_counts_the_limit(judge: Judge, resources: dict[str, Any]) -> None:
    """Attack: request 1 GPU, limit 3. The kubelet's device manager allocates extended resources
    by the limit, so counting the request would hand out 3 GPUs against a 2-GPU quota (the API
    server refuses such a pod; manifests in CI are not validated by it)."""
    obj = gpu_pod("uneven", 0, uid="uid-uneven")
    obj["spec"]["containers"][0]["resources"] = resources
    outcome = await judge(obj, quota={"quotas": [{"name": "pool", "namespace": "ml", "limit": 2}]})
    assert not outcome.verdict.allowed
    assert "this pod asks 3, 2 left" in outcome.verdict.deny_message()


class _FailingNamespaceGets(kubeapi.FakeKubeApi):
    """The local API server, except that a GET of one namespace answers 500 (an overloaded or
    briefly unreachable API server); lists and watches work."""

    async def _get_one(self, request: web.Request, resource: str, namespace: str, name: str) -> web.Response:
        if resource == "namespaces":
            return web.json_response(kubeapi.status(500, "InternalError", "etcdserver: request timed out"), status=500)
        return await super()._get_one(request, resource, namespace, name)


async def test_a_pod_whose_namespace_team_cannot_be_read_is_not_judged_teamless(make_pod: Any) -> None:
    """Attack: a namespace of team vision created together with its pods (the namespace watch has
    not delivered it) while the API server fails the namespace GET. The pipeline judges with the
    config's labels (no team), so the team's quota was never charged: 3 GPUs against a team
    limit of 2, counted once the watches catch up. The team is unknown, so the check cannot
    finish: its failure mode (deny) decides."""
    kube = _FailingNamespaceGets()
    await kube.start()
    kube_config = KubernetesConfig(api_url=kube.url, request_timeout=2.0, backoff_initial=0.02, backoff_max=0.1)
    api = kube_client.build(kube_config)
    directory = NamespaceDirectory(api, kube_config)
    config = parse({"quota": {"quotas": [{"name": "teams", "per": "team", "limit": 2}]}})
    check = gpu.build(config, Services(kube_api=api, namespaces=directory), kubernetes=kube_config)
    assert check is not None
    pipeline = Pipeline(config, [check], directory)
    try:
        kube.put("namespaces", {"metadata": {"name": "vision-a", "labels": {"team": "vision"}}})
        kube.put("pods", make_pod("running", "vision-a", gpus=2, uid="uid-running"))
        await pipeline.start()
        assert await directory.wait_ready(10)
        assert check.watch is not None
        assert await check.watch.wait_ready(10)
        kube.rv += 1  # stored, not yet delivered to watchers
        kube.objects[("namespaces", "", "fresh")] = {
            "metadata": {"name": "fresh", "labels": {"team": "vision"}, "resourceVersion": str(kube.rv)}
        }
        obj = gpu_pod("new", 1, uid="uid-new")
        obj["metadata"]["namespace"] = "fresh"
        subject = server._subject(review.decode(admission_review(obj)))
        outcome = await pipeline.evaluate(subject, Deadline.after(5))
        assert not outcome.verdict.allowed
        assert "denied by failure mode 'deny'" in outcome.verdict.deny_message()
        assert "team" in outcome.verdict.deny_message()
    finally:
        await pipeline.close()
        await asyncio.to_thread(api.close)
        await kube.stop()
