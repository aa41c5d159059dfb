"""Runtime class rules: GPU pods, untrusted namespaces, the denylist, and classes the cluster lacks.

No Kubernetes API server runs here: the existence lookup is tested against a small local aiohttp
server on 127.0.0.1 that speaks the real wire format of ``GET /apis/node.k8s.io/v1/runtimeclasses``
(a ``node.k8s.io/v1`` ``RuntimeClassList``, paginated with ``limit``/``continue``, and ``Status``
errors), queried through the official ``kubernetes`` client exactly as in a cluster.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from kubernetes import client

from webhook import config as config_mod
from webhook import errors
from webhook.checks import runtimeclass
from webhook.checks.pipeline import Pipeline, Subject
from webhook.checks.services import Services
from webhook.config import Config
from webhook.core import workloads
from webhook.core.deadline import Deadline
from webhook.core.decision import Verdict
from webhook.core.request import RequestContext

GPU_CONFIG = {
    "runtimeclass": {
        "gpu_runtime_classes": ["nvidia"],
        "gpu_resources": ["nvidia.com/gpu", "nvidia.com/mig-*", "amd.com/gpu"],
    }
}


def pod_spec(runtime_class: str | None = None, gpu: str | None = None, quantity: Any = 1) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "trainer", "image": "registry.example/train:1"}
    if gpu:
        c["resources"] = {"limits": {gpu: quantity, "cpu": "2"}}
    spec: dict[str, Any] = {"containers": [{"name": "sidecar", "image": "registry.example/s:1"}, c]}
    if runtime_class is not None:
        spec["runtimeClassName"] = runtime_class
    return spec


def wrap(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` inside a ``kind`` object, at that kind's template path."""
    template = {"metadata": {"labels": {"app": "x"}}, "spec": spec}
    body: dict[str, Any] = {
        "Pod": {"spec": spec},
        "Deployment": {"spec": {"template": template}},
        "ReplicaSet": {"spec": {"template": template}},
        "StatefulSet": {"spec": {"template": template}},
        "DaemonSet": {"spec": {"template": template}},
        "Job": {"spec": {"template": template}},
        "ReplicationController": {"spec": {"template": template}},
        "CronJob": {"spec": {"jobTemplate": {"spec": {"template": template}}}},
        "PodTemplate": {"template": template},
    }[kind]
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": "w"}, **body}


SPEC_PATHS = {
    "Pod": "spec",
    "Deployment": "spec.template.spec",
    "ReplicaSet": "spec.template.spec",
    "StatefulSet": "spec.template.spec",
    "DaemonSet": "spec.template.spec",
    "Job": "spec.template.spec",
    "ReplicationController": "spec.template.spec",
    "CronJob": "spec.jobTemplate.spec.template.spec",
    "PodTemplate": "template.spec",
}
assert set(SPEC_PATHS) == workloads.WORKLOAD_KINDS


def judge(obj: Mapping[str, Any], settings: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> list[str]:
    rules = runtimeclass.Rules.from_config(config_mod.parse(settings).runtimeclass)
    return [v.check for v in runtimeclass.evaluate(workloads.pod_specs(obj), labels or {}, rules)]


class _Namespaces:
    def __init__(self, labels: Mapping[str, Mapping[str, str]]) -> None:
        self._labels = labels

    def labels(self, namespace: str) -> Mapping[str, str] | None:
        return self._labels.get(namespace)


UNTRUSTED = {"sandbox": {"portcullis.dev/untrusted": "true"}}


async def admit(
    config: Config,
    obj: dict[str, Any],
    *,
    namespace: str = "team",
    old: dict[str, Any] | None = None,
    services: Services | None = None,
    deadline: Deadline | None = None,
) -> Verdict:
    check = runtimeclass.build(config, services or Services())
    pipeline = Pipeline(config, [check], namespaces=_Namespaces(UNTRUSTED))
    operation = "UPDATE" if old is not None else "CREATE"
    subject = Subject(operation, obj["kind"], namespace, "w", obj, old)
    outcome = await pipeline.evaluate(subject, deadline or Deadline.never())
    return outcome.verdict


# --- the rules, on the manifest alone ------------------------------------------------------------


def test_a_gpu_pod_without_the_gpu_runtime_class_is_denied() -> None:
    rules = runtimeclass.Rules.from_config(config_mod.parse(GPU_CONFIG).runtimeclass)
    (v,) = runtimeclass.evaluate(workloads.pod_specs(wrap("Pod", pod_spec(gpu="nvidia.com/gpu"))), {}, rules)
    assert (v.check, v.container, v.path) == ("runtimeclass:gpu", "trainer", "spec.runtimeClassName")
    assert 'set runtimeClassName to "nvidia"' in v.message


@pytest.mark.parametrize("resource", ["nvidia.com/gpu", "nvidia.com/mig-1g.5gb", "amd.com/gpu"])
def test_every_configured_gpu_resource_needs_the_gpu_runtime_class(resource: str) -> None:
    assert judge(wrap("Pod", pod_spec(gpu=resource)), GPU_CONFIG) == ["runtimeclass:gpu"]
    assert judge(wrap("Pod", pod_spec("nvidia", gpu=resource)), GPU_CONFIG) == []


@pytest.mark.parametrize(
    ("resource", "gpu"),
    [
        ("deviceclass.resource.kubernetes.io/gpu.nvidia.com", True),
        ("deviceclass.resource.kubernetes.io/mig.nvidia.com", True),
        ("deviceclass.resource.kubernetes.io/fpga.example.com", False),
    ],
)
def test_a_gpu_device_class_asked_as_an_extended_resource_needs_the_gpu_runtime_class(resource: str, gpu: bool) -> None:
    """DRAExtendedResource (Kubernetes 1.34+) lets ``resources`` ask for any DeviceClass by the
    name ``deviceclass.resource.kubernetes.io/<class>``: a GPU class asked that way once ran
    under any runtime class."""
    assert judge(wrap("Pod", pod_spec(gpu=resource)), GPU_CONFIG) == (["runtimeclass:gpu"] if gpu else [])
    assert judge(wrap("Pod", pod_spec("nvidia", gpu=resource)), GPU_CONFIG) == []


def test_pods_without_gpus_or_with_zero_gpus_need_no_gpu_runtime_class() -> None:
    assert judge(wrap("Pod", pod_spec()), GPU_CONFIG) == []
    assert judge(wrap("Pod", pod_spec(gpu="nvidia.com/gpu", quantity="0")), GPU_CONFIG) == []
    assert judge(wrap("Pod", pod_spec(gpu="example.com/fpga")), GPU_CONFIG) == []


def test_pod_level_gpu_resources_count_too() -> None:
    spec = pod_spec()
    spec["resources"] = {"requests": {"nvidia.com/gpu": 1}}
    assert judge(wrap("Pod", spec), GPU_CONFIG) == ["runtimeclass:gpu"]


def test_the_gpu_rule_is_off_without_configured_gpu_classes() -> None:
    assert judge(wrap("Pod", pod_spec(gpu="nvidia.com/gpu")), {}) == []


def test_untrusted_namespaces_must_use_a_sandboxed_class() -> None:
    labels = {"portcullis.dev/untrusted": "true"}
    assert judge(wrap("Pod", pod_spec()), {}, labels) == ["runtimeclass:untrusted"]
    assert judge(wrap("Pod", pod_spec("runc")), {}, labels) == ["runtimeclass:untrusted"]
    assert judge(wrap("Pod", pod_spec("gvisor")), {}, labels) == []
    assert judge(wrap("Pod", pod_spec()), {}, {"portcullis.dev/untrusted": "false"}) == []


def test_the_untrusted_label_and_sandboxes_are_configurable() -> None:
    settings = {
        "runtimeclass": {
            "untrusted_label": "tenant",
            "untrusted_values": ["external"],
            "sandboxed_runtime_classes": ["kata-qemu"],
        }
    }
    assert judge(wrap("Pod", pod_spec("gvisor")), settings, {"tenant": "external"}) == ["runtimeclass:untrusted"]
    assert judge(wrap("Pod", pod_spec("kata-qemu")), settings, {"tenant": "external"}) == []


def test_denied_runtime_classes_are_denied_everywhere() -> None:
    settings = {"runtimeclass": {"denied_runtime_classes": ["runc-privileged"]}}
    assert judge(wrap("Pod", pod_spec("runc-privileged")), settings) == ["runtimeclass:denied"]
    assert judge(wrap("Pod", pod_spec("gvisor")), settings) == []


def test_rules_combine_on_one_pod() -> None:
    settings = {"runtimeclass": {**GPU_CONFIG["runtimeclass"], "denied_runtime_classes": ["runc"]}}
    found = judge(wrap("Pod", pod_spec("runc", gpu="nvidia.com/gpu")), settings, {"portcullis.dev/untrusted": "true"})
    assert found == ["runtimeclass:denied", "runtimeclass:gpu", "runtimeclass:untrusted"]


@pytest.mark.parametrize("kind", sorted(SPEC_PATHS))
async def test_every_workload_kind_is_judged_at_its_template_path(kind: str) -> None:
    config = config_mod.parse(GPU_CONFIG)
    verdict = await admit(config, wrap(kind, pod_spec(gpu="nvidia.com/gpu")))
    assert not verdict.allowed
    assert [f.violation.path for f in verdict.findings] == [f"{SPEC_PATHS[kind]}.runtimeClassName"]
    verdict = await admit(config, wrap(kind, pod_spec()), namespace="sandbox")
    assert [f.violation.check for f in verdict.findings] == ["runtimeclass:untrusted"]
    assert (await admit(config, wrap(kind, pod_spec("nvidia", gpu="nvidia.com/gpu")))).allowed


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "CronJob", "Pod"])
async def test_updates_are_judged_like_creates(kind: str) -> None:
    config = config_mod.parse({"runtimeclass": {"denied_runtime_classes": ["runc"]}})
    old = wrap(kind, pod_spec("gvisor"))
    new = wrap(kind, pod_spec("runc"))
    verdict = await admit(config, new, old=old)
    assert [f.violation.check for f in verdict.findings] == ["runtimeclass:denied"]
    # moving the namespace to untrusted: the next change of the workload must move to a sandbox
    changed = copy.deepcopy(old)
    changed_spec = workloads.pod_specs(changed)[0].spec
    assert isinstance(changed_spec, dict)
    changed_spec["runtimeClassName"] = "runc-fast"
    verdict = await admit(config, changed, old=old, namespace="sandbox")
    assert [f.violation.check for f in verdict.findings] == ["runtimeclass:untrusted"]


def test_the_check_needs_no_io_without_an_api_server() -> None:
    check = runtimeclass.build(Config(), Services())
    assert check.does_io is False
    assert runtimeclass.build(Config(), Services(kube_api=object(), ci=True)).does_io is False


@pytest.mark.parametrize(
    "bad",
    [
        {"runtimeclass": {"gpu_resources": ["nvidia.com/*/x"]}},
        {"runtimeclass": {"lookup_timeout_seconds": 0}},
        {"runtimeclass": {"lookup_failure_mode": "maybe"}},
        {"runtimeclass": {"gpu_runtime_class": ["nvidia"]}},
    ],
)
def test_bad_config_is_a_config_error(bad: dict[str, Any]) -> None:
    with pytest.raises(errors.ConfigError, match="runtimeclass"):
        config_mod.parse(bad)


# --- the existence lookup, against a local server speaking the RuntimeClass list API --------------


@dataclass
class FakeApiServer:
    """Serves ``GET /apis/node.k8s.io/v1/runtimeclasses`` like kube-apiserver."""

    names: list[str] = field(default_factory=lambda: ["gvisor", "kata", "nvidia"])
    status: int = 200
    hang: bool = False
    requests: list[Mapping[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.query))
        if self.hang:
            await self.release.wait()
        if self.status != 200:
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": 'runtimeclasses.node.k8s.io is forbidden: User "system:serviceaccount:x:y" cannot list',
                    "reason": "Forbidden",
                    "details": {"group": "node.k8s.io", "kind": "runtimeclasses"},
                    "code": self.status,
                },
                status=self.status,
            )
        limit = int(request.query.get("limit", "500"))
        start = int(request.query.get("continue") or 0)
        page = self.names[start : start + limit]
        more = start + limit < len(self.names)
        return web.json_response(
            {
                "kind": "RuntimeClassList",
                "apiVersion": "node.k8s.io/v1",
                "metadata": {"resourceVersion": "4242", **({"continue": str(start + limit)} if more else {})},
                "items": [
                    {
                        "metadata": {
                            "name": name,
                            "uid": f"00000000-0000-0000-0000-{index:012d}",
                            "resourceVersion": str(100 + index),
                            "creationTimestamp": "2026-01-02T03:04:05Z",
                        },
                        "handler": "runsc" if name == "gvisor" else name,
                        "scheduling": {"nodeSelector": {"runtime": name}},
                    }
                    for index, name in enumerate(page, start)
                ],
            }
        )


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[FakeApiServer, Any]]:
    fake = FakeApiServer()
    app = web.Application()
    app.router.add_get("/apis/node.k8s.io/v1/runtimeclasses", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    api_client = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))
    try:
        yield fake, api_client
    finally:
        fake.release.set()
        api_client.close()
        await runner.cleanup()


def lookup_config(**settings: Any) -> Config:
    return config_mod.parse({"runtimeclass": {"lookup": True, **settings}})


async def test_a_class_the_cluster_defines_is_allowed(apiserver: tuple[FakeApiServer, Any]) -> None:
    fake, api = apiserver
    verdict = await admit(lookup_config(), wrap("Deployment", pod_spec("kata")), services=Services(kube_api=api))
    assert verdict.allowed, verdict.deny_message()
    assert len(fake.requests) == 1


async def test_a_class_the_cluster_lacks_is_denied(apiserver: tuple[FakeApiServer, Any]) -> None:
    _, api = apiserver
    verdict = await admit(lookup_config(), wrap("Job", pod_spec("gvsior")), services=Services(kube_api=api))
    assert not verdict.allowed
    (finding,) = verdict.findings
    assert finding.violation.check == "runtimeclass:unknown"
    assert finding.violation.path == "spec.template.spec.runtimeClassName"
    assert '"gvsior" is not defined' in finding.violation.message


async def test_pods_without_a_runtime_class_need_no_lookup(apiserver: tuple[FakeApiServer, Any]) -> None:
    fake, api = apiserver
    assert (await admit(lookup_config(), wrap("Pod", pod_spec()), services=Services(kube_api=api))).allowed
    assert fake.requests == []


async def test_the_list_is_paginated_and_cached(apiserver: tuple[FakeApiServer, Any]) -> None:
    fake, api = apiserver
    fake.names = [f"class-{i}" for i in range(1203)]
    check = runtimeclass.build(lookup_config(), Services(kube_api=api))
    ctx = RequestContext("CREATE", "Pod", "team", "w")
    for name in ("class-1202", "class-0", "class-600"):
        result = await check.run(workloads.pod_specs(wrap("Pod", pod_spec(name))), ctx)
        assert result.violations == []
    assert [r.get("continue") for r in fake.requests] == [None, "500", "1000"]  # one paginated list, then cache
    assert all(r["limit"] == "500" for r in fake.requests)


async def test_concurrent_requests_share_one_lookup(apiserver: tuple[FakeApiServer, Any]) -> None:
    fake, api = apiserver
    check = runtimeclass.build(lookup_config(), Services(kube_api=api))
    ctx = RequestContext("CREATE", "Pod", "team", "w")
    pods = workloads.pod_specs(wrap("Pod", pod_spec("nvidia")))
    results = await asyncio.gather(*(check.run(pods, ctx) for _ in range(5)))
    assert all(r.violations == [] for r in results)
    assert len(fake.requests) == 1


async def test_an_update_keeping_its_class_is_not_looked_up_again(apiserver: tuple[FakeApiServer, Any]) -> None:
    fake, api = apiserver
    old = wrap("Deployment", pod_spec("retired"))
    new = copy.deepcopy(old)
    new["spec"]["template"]["metadata"]["labels"]["version"] = "2"
    verdict = await admit(lookup_config(), new, old=old, services=Services(kube_api=api))
    assert verdict.allowed
    assert fake.requests == []
    new["spec"]["template"]["spec"]["runtimeClassName"] = "also-retired"
    verdict = await admit(lookup_config(), new, old=old, services=Services(kube_api=api))
    assert [f.violation.check for f in verdict.findings] == ["runtimeclass:unknown"]


async def test_a_failed_lookup_denies_by_default(apiserver: tuple[FakeApiServer, Any]) -> None:
    fake, api = apiserver
    fake.status = 403
    verdict = await admit(lookup_config(), wrap("Pod", pod_spec("kata")), services=Services(kube_api=api))
    assert not verdict.allowed
    assert "HTTP 403" in verdict.deny_message()
    assert "grant the webhook's service account list" in verdict.deny_message()


async def test_a_failed_lookup_can_allow_with_a_warning(apiserver: tuple[FakeApiServer, Any]) -> None:
    fake, api = apiserver
    fake.status = 500
    config = lookup_config(lookup_failure_mode="allow")
    verdict = await admit(config, wrap("Pod", pod_spec("kata")), services=Services(kube_api=api))
    assert verdict.allowed
    assert any("existence not checked" in w for w in verdict.warnings)


async def test_a_failed_refresh_falls_back_to_the_last_known_list(apiserver: tuple[FakeApiServer, Any]) -> None:
    fake, api = apiserver
    now = [0.0]
    catalog = runtimeclass.Catalog(api, cache_seconds=60, timeout_seconds=2, clock=lambda: now[0])
    check = runtimeclass.RuntimeClassCheck(lookup_config().runtimeclass, catalog)
    ctx = RequestContext("CREATE", "Pod", "team", "w")
    assert (await check.run(workloads.pod_specs(wrap("Pod", pod_spec("kata"))), ctx)).violations == []
    fake.status, now[0] = 503, 120.0  # the list is stale and the API server is down
    result = await check.run(workloads.pod_specs(wrap("Pod", pod_spec("ghost"))), ctx)
    assert [v.check for v in result.violations] == ["runtimeclass:unknown"]
    assert any("last known list" in w for w in result.warnings)


async def test_a_missing_name_refreshes_a_list_older_than_a_few_seconds(apiserver: tuple[FakeApiServer, Any]) -> None:
    fake, api = apiserver
    now = [0.0]
    catalog = runtimeclass.Catalog(api, cache_seconds=60, timeout_seconds=2, clock=lambda: now[0])
    check = runtimeclass.RuntimeClassCheck(lookup_config().runtimeclass, catalog)
    ctx = RequestContext("CREATE", "Pod", "team", "w")
    await check.run(workloads.pod_specs(wrap("Pod", pod_spec("kata"))), ctx)
    fake.names.append("wasm")  # created in the cluster after the first list
    result = await check.run(workloads.pod_specs(wrap("Pod", pod_spec("wasm"))), ctx)
    assert [v.check for v in result.violations] == ["runtimeclass:unknown"]  # within 5 s: cached answer
    now[0] = 10.0
    assert (await check.run(workloads.pod_specs(wrap("Pod", pod_spec("wasm"))), ctx)).violations == []
    assert len(fake.requests) == 2


async def test_a_lookup_that_outlives_the_deadline_yields_the_failure_mode(
    apiserver: tuple[FakeApiServer, Any],
) -> None:
    fake, api = apiserver
    fake.hang = True
    verdict = await admit(
        lookup_config(), wrap("Pod", pod_spec("kata")), services=Services(kube_api=api), deadline=Deadline.after(0.3)
    )
    assert not verdict.allowed
    assert "could not finish" in verdict.deny_message()
    config = config_mod.parse({"runtimeclass": {"lookup": True}, "checks": {"runtimeclass": {"failure_mode": "allow"}}})
    verdict = await admit(
        config, wrap("Pod", pod_spec("kata")), services=Services(kube_api=api), deadline=Deadline.after(0.3)
    )
    assert verdict.allowed
    assert any("could not finish" in w for w in verdict.warnings)


@pytest.mark.parametrize(
    "resource",
    ["nvidia.com/gpu", "nvidia.com/gpu.shared", "nvidia.com/mig-1g.10gb.me", "amd.com/gpu", "gpu.intel.com/i915"],
)
def test_every_accelerator_quotas_charge_by_default_makes_a_gpu_pod(resource: str) -> None:
    """The default ``gpu_resources`` cover what GPU quotas charge by default, so the two agree."""
    config = {"runtimeclass": {"gpu_runtime_classes": ["nvidia"]}}
    assert judge(wrap("Pod", pod_spec(gpu=resource)), config) == ["runtimeclass:gpu"]
    assert judge(wrap("Pod", pod_spec("nvidia", gpu=resource)), config) == []
