"""GPUs requested through Dynamic Resource Allocation must use the GPU runtime class too.

No Kubernetes API server can run here: the claim lookups are tested against a small local aiohttp
server on 127.0.0.1 speaking the real wire format of ``GET /apis/resource.k8s.io/{v1,v1beta1}/
namespaces/{ns}/resourceclaimtemplates/{name}`` and ``.../resourceclaims/{name}`` (the objects as
kube-apiserver serves them, and ``Status`` errors), read through the official ``kubernetes`` client.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from kubernetes import client

from webhook import config as config_mod
from webhook import errors
from webhook.checks import claims, gpu, runtimeclass
from webhook.checks.pipeline import Pipeline, Subject
from webhook.checks.services import Services
from webhook.config import Config
from webhook.core import workloads
from webhook.core.deadline import Deadline
from webhook.core.decision import Verdict
from webhook.core.request import RequestContext
from webhook.quota.model import QuotaModel


def request_v1(name: str, device_class: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "exactly": {"deviceClassName": device_class, **extra}}


def template(name: str, requests: list[dict[str, Any]], version: str = "v1") -> dict[str, Any]:
    return {
        "apiVersion": f"resource.k8s.io/{version}",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": "team", "uid": "6f1c1e9e-0000-4000-8000-000000000001"},
        "spec": {"spec": {"devices": {"requests": requests}}},
    }


def claim(name: str, requests: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "team", "uid": "6f1c1e9e-0000-4000-8000-000000000002"},
        "spec": {"devices": {"requests": requests}},
        "status": {},
    }


@dataclass
class FakeResourceApi:
    """Serves ResourceClaim(Template) GETs like kube-apiserver (objects keyed by version/plural/name)."""

    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    status: int = 200
    hang: bool = False
    requests: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        if self.hang:
            await self.release.wait()
        info = request.match_info
        key = (info["version"], info["plural"], info["name"])
        if self.status == 200 and key in self.objects:
            return web.json_response(self.objects[key])
        code = self.status if self.status != 200 else 404
        reason = {403: "Forbidden", 404: "NotFound"}.get(code, "InternalError")
        return web.json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f'{info["plural"]}.resource.k8s.io "{info["name"]}" {reason}',
                "reason": reason,
                "details": {"name": info["name"], "group": "resource.k8s.io", "kind": info["plural"]},
                "code": code,
            },
            status=code,
        )


async def runtime_classes(request: web.Request) -> web.Response:
    """The RuntimeClass list the existence lookup reads (a cluster with the "nvidia" class)."""
    item = {"metadata": {"name": "nvidia", "resourceVersion": "7"}, "handler": "nvidia"}
    return web.json_response(
        {
            "kind": "RuntimeClassList",
            "apiVersion": "node.k8s.io/v1",
            "metadata": {"resourceVersion": "9"},
            "items": [item],
        }
    )


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[FakeResourceApi, Any]]:
    fake = FakeResourceApi()
    fake.objects[("v1", "resourceclaimtemplates", "single-gpu")] = template(
        "single-gpu", [request_v1("gpu", "gpu.nvidia.com")]
    )
    fake.objects[("v1", "resourceclaimtemplates", "fpga")] = template("fpga", [request_v1("f", "fpga.example.com")])
    fake.objects[("v1", "resourceclaims", "shared-mig")] = claim("shared-mig", [request_v1("m", "mig.nvidia.com")])
    app = web.Application()
    app.router.add_get("/apis/resource.k8s.io/{version}/namespaces/team/{plural}/{name}", fake.handle)
    app.router.add_get("/apis/node.k8s.io/v1/runtimeclasses", runtime_classes)
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
        api_client.close()  # type: ignore[no-untyped-call]
        await runner.cleanup()


def settings(**extra: Any) -> Config:
    return config_mod.parse({"runtimeclass": {"gpu_runtime_classes": ["nvidia"], **extra}})


def dra_pod(*entries: Any, runtime_class: str | None = None, kind: str = "Pod") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceClaims": list(entries),
        "containers": [
            {"name": "sidecar", "image": "registry.example/s:1"},
            {"name": "trainer", "image": "registry.example/t:1", "resources": {"claims": [{"name": "gpu"}]}},
        ],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team"}, "spec": spec}
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": "w", "namespace": "team"},
        "spec": {"template": {"metadata": {"labels": {"app": "x"}}, "spec": spec}},
    }


def from_template(name: str = "single-gpu") -> dict[str, Any]:
    return {"name": "gpu", "resourceClaimTemplateName": name}


async def admit(config: Config, obj: dict[str, Any], services: Services, deadline: Deadline | None = None) -> Verdict:
    pipeline = Pipeline(config, [runtimeclass.build(config, services)])
    subject = Subject("CREATE", obj["kind"], "team", "w", obj, None)
    return (await pipeline.evaluate(subject, deadline or Deadline.after(10))).verdict


# --- decoding, on the manifest and the claim objects alone ---------------------------------------


def test_claim_references_are_read_in_every_shape() -> None:
    pod = workloads.pod_specs(
        dra_pod(
            from_template(),
            {"name": "c", "resourceClaimName": "shared"},
            {"name": "old", "source": {"resourceClaimTemplateName": "legacy"}},
            {"name": "both", "resourceClaimName": "a", "resourceClaimTemplateName": "b"},
            "garbage",
        )
    )[0]
    refs = claims.pod_claims(pod)
    assert [(r.name, r.kind, r.object_name) for r in refs] == [
        ("gpu", "ResourceClaimTemplate", "single-gpu"),
        ("c", "ResourceClaim", "shared"),
        ("old", "ResourceClaimTemplate", "legacy"),
        ("both", None, None),
        ("#4", None, None),
    ]
    assert claims.claim_users(pod, "gpu") == "trainer"
    assert claims.claim_users(pod, "c") == "pod"


def test_device_requests_are_read_in_v1_v1beta1_and_prioritized_list_shapes() -> None:
    spec = claims.parse(
        template(
            "t",
            [
                request_v1("one", "gpu.nvidia.com"),
                request_v1("four", "gpu.nvidia.com", count=4),
                request_v1("every", "gpu.nvidia.com", allocationMode="All"),
                {"name": "flat", "deviceClassName": "fpga.example.com", "count": 2},
                {"name": "pick", "firstAvailable": [{"name": "big", "deviceClassName": "mig.nvidia.com"}]},
                {"name": "bare"},
            ],
        ),
        "ResourceClaimTemplate",
    )
    options = [(r.name, [(o.device_class, o.count) for o in r.options]) for r in spec.requests]
    assert options == [
        ("one", [("gpu.nvidia.com", 1)]),
        ("four", [("gpu.nvidia.com", 4)]),
        ("every", [("gpu.nvidia.com", None)]),
        ("flat", [("fpga.example.com", 2)]),
        ("pick", [("mig.nvidia.com", 1)]),
        ("bare", [(None, 1)]),
    ]
    with pytest.raises(claims.ClaimLookupError, match=r"spec\.devices\.requests"):
        claims.parse({"spec": {"devices": {"requests": "all"}}}, "ResourceClaim")


def test_without_an_api_server_a_claim_counts_as_a_gpu_claim() -> None:
    config = settings()
    check = runtimeclass.build(config, Services())
    assert check.does_io is False
    ctx = RequestContext("CREATE", "Pod", "team", "p")
    result = asyncio.run(check.run(workloads.pod_specs(dra_pod(from_template())), ctx))
    (v,) = result.violations
    assert (v.check, v.container, v.path) == ("runtimeclass:gpu", "trainer", "spec.runtimeClassName")
    assert "could not be determined (no API server to read it from)" in v.message
    assert 'set runtimeClassName to "nvidia"' in v.message


def test_pods_without_claims_or_under_the_gpu_class_are_not_judged_by_claims() -> None:
    rules = runtimeclass.Rules.from_config(settings().runtimeclass)
    plain = dra_pod()
    plain["spec"].pop("resourceClaims")
    assert runtimeclass.dra_pending(workloads.pod_specs(plain), rules) == []
    assert runtimeclass.dra_pending(workloads.pod_specs(dra_pod(from_template(), runtime_class="nvidia")), rules) == []
    off = runtimeclass.Rules.from_config(Config().runtimeclass)
    assert runtimeclass.dra_pending(workloads.pod_specs(dra_pod(from_template())), off) == []


@pytest.mark.parametrize(
    ("patterns", "device_class", "gpu"),
    [
        (["gpu.nvidia.com"], "gpu.nvidia.com", True),
        (["gpu.nvidia.com"], "fpga.example.com", False),
        (["gpu.nvidia.com", "mig.nvidia.com"], "mig.nvidia.com", True),
        (["gpu.amd.com*"], "gpu.amd.com-mi300", True),
    ],
)
def test_gpu_device_classes_are_configurable(patterns: list[str], device_class: str, gpu: bool) -> None:
    rules = runtimeclass.Rules.from_config(settings(gpu_device_classes=patterns).runtimeclass)
    assert rules.is_gpu_class(device_class) is gpu


@pytest.mark.parametrize(
    "bad", [{"gpu_device_classes": ["gpu.*.com"]}, {"gpu_device_classes": ["*"]}, {"dra_api_version": "v2"}]
)
def test_bad_dra_settings_are_a_config_error(bad: dict[str, Any]) -> None:
    with pytest.raises(errors.ConfigError, match="runtimeclass"):
        config_mod.parse({"runtimeclass": bad})


# --- the lookups, against a local server speaking the resource.k8s.io API -------------------------


async def test_a_template_of_a_gpu_class_needs_the_gpu_runtime_class(apiserver: tuple[FakeResourceApi, Any]) -> None:
    fake, api = apiserver
    verdict = await admit(settings(), dra_pod(from_template()), Services(kube_api=api))
    assert not verdict.allowed
    (finding,) = verdict.findings
    assert finding.violation.container == "trainer"
    assert 'ResourceClaimTemplate "single-gpu") of device class "gpu.nvidia.com"' in finding.violation.message
    assert fake.requests == ["/apis/resource.k8s.io/v1/namespaces/team/resourceclaimtemplates/single-gpu"]
    verdict = await admit(settings(), dra_pod(from_template(), runtime_class="nvidia"), Services(kube_api=api))
    assert verdict.allowed
    assert len(fake.requests) == 1  # under the GPU class, claims need no lookup


async def test_a_claim_of_a_gpu_class_counts_in_workload_templates(apiserver: tuple[FakeResourceApi, Any]) -> None:
    fake, api = apiserver
    obj = dra_pod({"name": "gpu", "resourceClaimName": "shared-mig"}, kind="Deployment")
    verdict = await admit(settings(), obj, Services(kube_api=api))
    assert [f.violation.path for f in verdict.findings] == ["spec.template.spec.runtimeClassName"]
    assert '"mig.nvidia.com"' in verdict.deny_message()
    assert fake.requests == ["/apis/resource.k8s.io/v1/namespaces/team/resourceclaims/shared-mig"]


async def test_a_claim_of_another_device_class_is_allowed(apiserver: tuple[FakeResourceApi, Any]) -> None:
    _, api = apiserver
    verdict = await admit(settings(), dra_pod(from_template("fpga")), Services(kube_api=api))
    assert verdict.allowed, verdict.deny_message()


async def test_a_missing_template_counts_as_a_gpu_claim(apiserver: tuple[FakeResourceApi, Any]) -> None:
    _, api = apiserver
    verdict = await admit(settings(), dra_pod(from_template("not-yet")), Services(kube_api=api))
    assert not verdict.allowed
    message = verdict.deny_message()
    assert "could not be determined" in message
    assert "HTTP 404" in message
    assert "create it, or fix the pod's resourceClaims" in message


async def test_a_forbidden_lookup_denies_unless_the_failure_mode_allows(apiserver: tuple[FakeResourceApi, Any]) -> None:
    fake, api = apiserver
    fake.status = 403
    verdict = await admit(settings(), dra_pod(from_template()), Services(kube_api=api))
    assert not verdict.allowed
    assert "get on resourceclaimtemplates.resource.k8s.io" in verdict.deny_message()
    verdict = await admit(settings(lookup_failure_mode="allow"), dra_pod(from_template()), Services(kube_api=api))
    assert verdict.allowed
    assert any("not counted as a GPU claim" in w for w in verdict.warnings)


async def test_a_malformed_entry_denies_even_when_lookup_failures_are_allowed(
    apiserver: tuple[FakeResourceApi, Any],
) -> None:
    fake, api = apiserver
    obj = dra_pod({"name": "gpu"})
    verdict = await admit(settings(lookup_failure_mode="allow"), obj, Services(kube_api=api))
    assert not verdict.allowed
    assert "names neither a resourceClaimName nor a resourceClaimTemplateName" in verdict.deny_message()
    assert fake.requests == []


async def test_lookups_are_cached_and_shared(apiserver: tuple[FakeResourceApi, Any]) -> None:
    fake, api = apiserver
    check = runtimeclass.build(settings(), Services(kube_api=api))
    ctx = RequestContext("CREATE", "Pod", "team", "p")
    pods = workloads.pod_specs(dra_pod(from_template()))
    results = await asyncio.gather(*(check.run(pods, ctx) for _ in range(5)))
    results.append(await check.run(pods, ctx))
    assert all([v.check for v in r.violations] == ["runtimeclass:gpu"] for r in results)
    assert len(fake.requests) == 1


async def test_a_lookup_that_outlives_the_deadline_counts_as_a_gpu_claim(
    apiserver: tuple[FakeResourceApi, Any],
) -> None:
    fake, api = apiserver
    fake.hang = True
    config = settings(lookup_timeout_seconds=0.1)
    verdict = await admit(config, dra_pod(from_template()), Services(kube_api=api))
    assert not verdict.allowed
    assert 'could not be determined (reading ResourceClaimTemplate "team/single-gpu"' in verdict.deny_message()
    # the request's own budget running out first: the check's failure mode (deny) answers
    verdict = await admit(settings(), dra_pod(from_template()), Services(kube_api=api), Deadline.after(0.2))
    assert not verdict.allowed


async def test_the_served_version_is_configurable(apiserver: tuple[FakeResourceApi, Any]) -> None:
    fake, api = apiserver
    legacy = template("single-gpu", [{"name": "gpu", "deviceClassName": "gpu.nvidia.com", "count": 2}], "v1beta1")
    fake.objects[("v1beta1", "resourceclaimtemplates", "single-gpu")] = legacy
    verdict = await admit(settings(dra_api_version="v1beta1"), dra_pod(from_template()), Services(kube_api=api))
    assert '"gpu.nvidia.com"' in verdict.deny_message()
    assert fake.requests == ["/apis/resource.k8s.io/v1beta1/namespaces/team/resourceclaimtemplates/single-gpu"]


async def test_ci_and_lookup_off_never_ask_and_count_claims_as_gpu_claims(
    apiserver: tuple[FakeResourceApi, Any],
) -> None:
    fake, api = apiserver
    verdict = await admit(settings(), dra_pod(from_template("fpga")), Services(kube_api=api, ci=True))
    assert "no API server to read it from" in verdict.deny_message()
    verdict = await admit(settings(lookup=False), dra_pod(from_template("fpga")), Services(kube_api=api))
    assert "runtimeclass.lookup is off" in verdict.deny_message()
    assert fake.requests == []


# --- GPU quota: DRA GPUs are not counted by the ledger, so a quota'd namespace refuses them ------

QUOTA = {"quota": {"quotas": [{"name": "ml-gpus", "limit": 4, "namespace": "team"}]}}


def quota_check(api: Any | None, *, ci: bool = False) -> gpu.GpuCheck:
    """The gpu check with only its claim lookup wired (no pod watch: DRA-only pods never reach it)."""
    config = config_mod.parse(QUOTA)
    directory = None if api is None else claims.ClaimDirectory(api, cache_seconds=10, timeout_seconds=2)
    return gpu.GpuCheck(config, QuotaModel(config.quota), directory=directory, ci=ci)


async def quota_run(check: gpu.GpuCheck, obj: dict[str, Any], namespace: str = "team") -> Any:
    return await check.run(workloads.pod_specs(obj), RequestContext("CREATE", obj["kind"], namespace, "p"))


def test_gpu_devices_are_counted_per_request() -> None:
    is_gpu = claims.class_matcher(["gpu.nvidia.com", "mig.nvidia.com*"])
    spec = claims.parse(
        claim(
            "c",
            [
                request_v1("a", "gpu.nvidia.com", count=2),
                request_v1("b", "fpga.example.com", count=8),
                {"name": "c", "firstAvailable": [{"deviceClassName": "mig.nvidia.com", "count": 3}]},
            ],
        ),
        "ResourceClaim",
    )
    assert claims.gpu_devices(spec, is_gpu) == 5
    every = claims.parse(claim("c", [request_v1("a", "gpu.nvidia.com", allocationMode="All")]), "ResourceClaim")
    assert claims.gpu_devices(every, is_gpu) is None


async def test_a_dra_gpu_pod_under_a_gpu_quota_is_denied_with_its_count(
    apiserver: tuple[FakeResourceApi, Any],
) -> None:
    fake, api = apiserver
    fake.objects[("v1", "resourceclaimtemplates", "two-gpus")] = template(
        "two-gpus", [request_v1("gpu", "gpu.nvidia.com", count=2)]
    )
    check = quota_check(api)
    assert check.does_io
    (v,) = (await quota_run(check, dra_pod(from_template("two-gpus")))).violations
    assert (v.check, v.path) == ("gpu", "spec.resourceClaims[0]")
    assert 'asks 2 GPU(s) through resource claim "gpu"' in v.message
    assert "GPU quota 'ml-gpus' (namespace team) cannot count" in v.message
    assert (await quota_run(check, dra_pod(from_template("fpga")))).violations == []
    before = len(fake.requests)
    assert (await quota_run(check, dra_pod(from_template("two-gpus")), namespace="other")).violations == []
    assert len(fake.requests) == before  # no quota there: no lookup


async def test_all_devices_of_a_pool_cannot_be_counted(apiserver: tuple[FakeResourceApi, Any]) -> None:
    fake, api = apiserver
    fake.objects[("v1", "resourceclaims", "every")] = claim(
        "every", [request_v1("gpu", "gpu.nvidia.com", allocationMode="All")]
    )
    (v,) = (await quota_run(quota_check(api), dra_pod({"name": "gpu", "resourceClaimName": "every"}))).violations
    assert "cannot be counted (allocationMode All" in v.message


async def test_a_failed_claim_read_under_a_quota_is_the_checks_failure_mode(
    apiserver: tuple[FakeResourceApi, Any],
) -> None:
    fake, api = apiserver
    fake.status = 403
    with pytest.raises(claims.ClaimLookupError, match="HTTP 403"):
        await quota_run(quota_check(api), dra_pod(from_template()))


async def test_quota_in_ci_only_warns_about_dra_claims() -> None:
    result = await quota_run(quota_check(None, ci=True), dra_pod(from_template()))
    assert result.violations == []
    assert any("could not be determined" in w and "cannot count" in w for w in result.warnings)


async def test_an_update_keeping_claims_and_class_needs_no_lookup(apiserver: tuple[FakeResourceApi, Any]) -> None:
    fake, api = apiserver
    check = runtimeclass.build(settings(), Services(kube_api=api))
    old = dra_pod(from_template("deleted-since"), kind="Deployment")
    new = copy.deepcopy(old)
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example/s:2"
    ctx = RequestContext("UPDATE", "Deployment", "team", "w", old_object=old)
    assert (await check.run(workloads.pod_specs(new), ctx)).violations == []
    old["spec"]["template"]["spec"]["runtimeClassName"] = "nvidia"  # the update drops the GPU class
    (v,) = (await check.run(workloads.pod_specs(new), ctx)).violations
    assert "HTTP 404" in v.message
    assert len(fake.requests) == 1
    quota = quota_check(api)
    same = RequestContext("UPDATE", "Deployment", "team", "w", old_object=old)
    assert (await quota.run(workloads.pod_specs(new), same)).violations == []
    assert len(fake.requests) == 1
