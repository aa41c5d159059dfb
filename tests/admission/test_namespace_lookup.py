"""A namespace the watch has not delivered yet: one live GET, cached; a failed GET warns.

No Kubernetes API server can run here, so these tests run the official ``kubernetes`` client
against a small local aiohttp server on 127.0.0.1 that speaks the API's wire format: the quota
tests' server (``tests/quota/kubeapi.py``: namespace list and watch) plus ``GET
/api/v1/namespaces/{name}`` answering the object, or a 404 ``Status`` as kube-apiserver does.
A namespace stored without a watch event stands for one created together with its pods, before
the watch delivers it. The checks are the real Pod Security check with the default config
(``baseline`` enforced); a namespace label ``pod-security.kubernetes.io/enforce: restricted``
is what the lookup must find for a root pod to be denied.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import kubeapi
import pytest
from aiohttp import web

from webhook import config as config_mod
from webhook.checks import privilege
from webhook.checks.pipeline import Outcome, Pipeline, Subject
from webhook.checks.services import Services
from webhook.config.kubernetes import KubernetesConfig
from webhook.core.deadline import Deadline
from webhook.kube import client as kube_client
from webhook.kube.namespaces import NamespaceDirectory

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


class NamespaceApi(kubeapi.FakeKubeApi):
    """The tests' local API server, with a namespace GET that tests can stall or fail."""

    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []  # names asked for by GET
        self.stall: asyncio.Event | None = None  # GETs wait for it: an API server that does not answer
        self.fail_with: int | None = None  # answer GETs with this HTTP status and a Status body

    def create_unwatched(self, name: str, **labels: str) -> None:
        """Store a namespace without a watch event: created, but not yet delivered to watchers."""
        self.rv += 1
        metadata = {"name": name, "labels": labels, "uid": f"uid-{name}", "resourceVersion": str(self.rv)}
        self.objects[("namespaces", "", name)] = {"metadata": metadata}

    async def _get_one(self, request: web.Request, resource: str, namespace: str, name: str) -> web.Response:
        if resource != "namespaces":
            return await super()._get_one(request, resource, namespace, name)
        self.gets.append(name)
        if self.stall is not None:
            await self.stall.wait()
        if self.fail_with is not None:
            body = kubeapi.status(self.fail_with, "Forbidden", f'namespaces "{name}" is forbidden')
            return web.json_response(body, status=self.fail_with)
        return await super()._get_one(request, resource, namespace, name)


@pytest.fixture
async def kube() -> AsyncIterator[NamespaceApi]:
    server = NamespaceApi()
    await server.start()
    yield server
    if server.stall is not None:
        server.stall.set()  # let a stalled handler finish before the server goes
    await server.stop()


@pytest.fixture
async def directory(kube: NamespaceApi) -> AsyncIterator[NamespaceDirectory]:
    """A started directory whose first list is done (``default`` is listed, nothing else)."""
    kube_config = KubernetesConfig(api_url=kube.url, request_timeout=2.0, backoff_initial=0.02, backoff_max=0.1)
    api = kube_client.build(kube_config)
    assert api is not None
    kube.put("namespaces", {"metadata": {"name": "default", "labels": RESTRICTED}})
    found = NamespaceDirectory(api, kube_config)
    await found.start()
    try:
        assert await found.wait_ready(10)
        yield found
    finally:
        await found.close()
        await asyncio.to_thread(api.close)


Make = Callable[..., Pipeline]


@pytest.fixture
def make_pipeline(directory: NamespaceDirectory) -> Make:
    def make(**cfg: Any) -> Pipeline:
        config = config_mod.parse(cfg)
        return Pipeline(config, [privilege.build(config, Services())], directory)

    return make


def root_pod(namespace: str, **container: Any) -> dict[str, Any]:
    """A pod baseline allows and restricted denies (no runAsNonRoot, no seccomp, caps kept)."""
    spec = {"containers": [{"name": "app", "image": "nginx:1.27", **container}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": namespace}, "spec": spec}


async def admit(pipeline: Pipeline, obj: dict[str, Any], deadline: Deadline | None = None) -> Outcome:
    meta = obj["metadata"]
    subject = Subject("CREATE", "Pod", meta["namespace"], meta["name"], obj)
    return await pipeline.evaluate(subject, deadline or Deadline.after(5))


def namespace_warnings(outcome: Outcome) -> list[str]:
    return [w for w in outcome.verdict.warnings if "labels of namespace" in w]


async def test_a_namespace_the_watch_delivered_is_judged_without_a_call(
    kube: NamespaceApi, directory: NamespaceDirectory, make_pipeline: Make
) -> None:
    outcome = await admit(make_pipeline(), root_pod("default"))
    assert not outcome.verdict.allowed  # the listed labels (restricted) applied
    assert kube.gets == []
    assert directory.lookups == 0


async def test_a_namespace_created_with_its_pods_is_read_once_then_cached(
    kube: NamespaceApi, directory: NamespaceDirectory, make_pipeline: Make
) -> None:
    kube.create_unwatched("fresh", **RESTRICTED)
    heard: list[tuple[str, dict[str, str]]] = []
    directory.subscribe(lambda name, labels: heard.append((name, dict(labels))))
    pipeline = make_pipeline()
    first = await admit(pipeline, root_pod("fresh"))
    assert not first.verdict.allowed, "the namespace's restricted label must apply, not the defaults"
    assert "runAsNonRoot" in first.verdict.deny_message()
    assert namespace_warnings(first) == []
    assert directory.labels("fresh") == RESTRICTED
    assert heard == [("fresh", RESTRICTED)]  # the quota's team view hears of it as from the watch
    second = await admit(pipeline, root_pod("fresh"))
    assert not second.verdict.allowed
    assert kube.gets == ["fresh"]


async def test_pods_arriving_together_share_one_lookup(
    kube: NamespaceApi, directory: NamespaceDirectory, make_pipeline: Make
) -> None:
    kube.create_unwatched("burst", **RESTRICTED)
    kube.stall = asyncio.Event()
    pipeline = make_pipeline()
    pending = [asyncio.ensure_future(admit(pipeline, root_pod("burst"))) for _ in range(5)]
    for _ in range(1000):  # until the one GET has reached the server; every request waits on it
        if kube.gets:
            break
        await asyncio.sleep(0.01)
    kube.stall.set()
    outcomes = await asyncio.gather(*pending)
    assert all(not o.verdict.allowed for o in outcomes)
    assert kube.gets == ["burst"]
    assert directory.lookups == 1


async def test_a_namespace_that_does_not_exist_gets_the_config_defaults_without_a_warning(
    kube: NamespaceApi, directory: NamespaceDirectory, make_pipeline: Make
) -> None:
    allowed = await admit(make_pipeline(), root_pod("ghost"))
    assert allowed.verdict.allowed  # default: baseline enforced
    assert namespace_warnings(allowed) == []
    configured = make_pipeline(namespaces={"ghost": {"labels": RESTRICTED}})
    denied = await admit(configured, root_pod("ghost"))
    assert not denied.verdict.allowed  # the config's labels for it apply
    assert directory.labels("ghost") is None  # a 404 is not cached
    assert kube.gets == ["ghost", "ghost"]


async def test_a_lookup_that_times_out_judges_with_the_defaults_and_warns_within_the_deadline(
    kube: NamespaceApi, directory: NamespaceDirectory, make_pipeline: Make
) -> None:
    kube.create_unwatched("slow", **RESTRICTED)
    kube.stall = asyncio.Event()
    pipeline = make_pipeline()
    outcome = await admit(pipeline, root_pod("slow"), Deadline.after(1.0))
    assert not kube.stall.is_set(), "the verdict must come before the API server's answer"
    assert kube.gets  # it was asked
    assert outcome.verdict.allowed  # judged at the configured baseline, not the label's restricted
    (warning,) = namespace_warnings(outcome)
    assert "labels of namespace 'slow' unavailable" in warning
    assert "timed out" in warning
    assert "judged with the config's default labels" in warning
    assert directory.labels("slow") is None  # nothing cached: the next request asks again
    privileged = await admit(pipeline, root_pod("slow", securityContext={"privileged": True}), Deadline.after(1.0))
    assert not privileged.verdict.allowed  # the defaults still deny what baseline forbids
    assert "privileged" in privileged.verdict.deny_message()
    assert len(namespace_warnings(privileged)) == 1


async def test_defaults_from_the_config_apply_when_the_lookup_fails(
    kube: NamespaceApi, directory: NamespaceDirectory, make_pipeline: Make
) -> None:
    """The admin's labels for a namespace in the config are the floor a failed lookup falls to."""
    kube.create_unwatched("slow", **RESTRICTED)
    kube.stall = asyncio.Event()
    pipeline = make_pipeline(namespaces={"slow": {"labels": RESTRICTED}})
    outcome = await admit(pipeline, root_pod("slow"), Deadline.after(1.0))
    assert not outcome.verdict.allowed
    assert "runAsNonRoot" in outcome.verdict.deny_message()
    assert len(namespace_warnings(outcome)) == 1


@pytest.mark.parametrize(
    ("status", "hint"), [(403, "grant the webhook's service account get on namespaces"), (500, "500")]
)
async def test_an_api_server_error_is_named_in_a_warning(
    kube: NamespaceApi, directory: NamespaceDirectory, make_pipeline: Make, status: int, hint: str
) -> None:
    kube.create_unwatched("guarded", **RESTRICTED)
    kube.fail_with = status
    outcome = await admit(make_pipeline(), root_pod("guarded"))
    assert outcome.verdict.allowed  # baseline from the config
    (warning,) = namespace_warnings(outcome)
    assert "labels of namespace 'guarded' unavailable" in warning
    assert hint in warning
    assert directory.labels("guarded") is None


async def test_a_pipeline_without_an_api_server_uses_the_config_labels() -> None:
    config = config_mod.parse({"namespaces": {"ci": {"labels": RESTRICTED}}})
    pipeline = Pipeline(config, [privilege.build(config, Services(ci=True))])
    outcome = await admit(pipeline, root_pod("ci"))
    assert not outcome.verdict.allowed
    assert namespace_warnings(outcome) == []
