"""Concurrent admissions racing for the last GPUs: none overshoots, with one replica (local
reservations) and with two replicas (two ledgers, two watches) whose reservations go through
the local API server (``kubeapi.py``: a small aiohttp server speaking the real Kubernetes wire
format, ConfigMaps with resourceVersion compare-and-swap and 409, since no real API server runs
here). Pods another check denies (Pod Security) never keep GPUs reserved."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from webhook.checks import gpu, privilege
from webhook.checks.pipeline import Pipeline, Subject
from webhook.checks.services import Services
from webhook.config import parse
from webhook.core.deadline import Deadline
from webhook.kube import client as kube_client
from webhook.quota import coordination

LIMIT = 4


@pytest.fixture
async def replicas(kube: Any, kube_config: Any) -> AsyncIterator[Callable[..., Any]]:
    """``await replicas(n, coordination)`` → n pipelines, each with its own API client and ledger."""
    made: list[tuple[Pipeline, Any]] = []
    kube.put("namespaces", {"metadata": {"name": "pc"}})  # the coordination namespace, as the chart's

    async def make(n: int, mode: str, *, with_pss: bool = False) -> list[Pipeline]:
        config = parse(
            {
                "quota": {
                    "quotas": [{"name": "pool", "limit": LIMIT}],
                    "coordination": mode,
                    "coordination_namespace": "pc",
                }
            }
        )
        out = []
        for _ in range(n):
            api = kube_client.build(kube_config)
            check = gpu.build(config, Services(kube_api=api), kubernetes=kube_config)
            assert check is not None
            checks: list[Any] = [privilege.build(config, Services())] if with_pss else []
            pipeline = Pipeline(config, [*checks, check])
            await pipeline.start()
            assert await check.watch.wait_ready(10)
            made.append((pipeline, api))
            out.append(pipeline)
        return out

    yield make
    for pipeline, api in made:
        await pipeline.close()
        await asyncio.to_thread(api.close)


async def _race(pipelines: list[Pipeline], make_pod: Any, count: int) -> list[bool]:
    async def one(i: int) -> bool:
        obj = make_pod(f"p{i}", gpus=1, uid=f"uid-{i}", phase=None)
        subject = Subject("CREATE", "Pod", "ml", obj["metadata"]["name"], obj)
        outcome = await pipelines[i % len(pipelines)].evaluate(subject, Deadline.after(20))
        return outcome.verdict.allowed

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def test_one_replica_admits_exactly_what_is_left(kube: Any, make_pod: Any, replicas: Any) -> None:
    kube.put("pods", make_pod("running", gpus=1))
    (pipeline,) = await replicas(1, "local")
    check = pipeline.checks[-1]
    assert len(check.ledger) == 1
    admitted = await _race([pipeline], make_pod, 12)
    assert sum(admitted) == LIMIT - 1


async def test_two_replicas_share_reservations_through_the_api_server(kube: Any, make_pod: Any, replicas: Any) -> None:
    kube.put("pods", make_pod("running", gpus=1))
    pipelines = await replicas(2, "apiserver")
    admitted = await _race(pipelines, make_pod, 12)
    assert sum(admitted) == LIMIT - 1
    stored = kube.objects[("configmaps", "pc", coordination.configmap_name("pool"))]
    entries = json.loads(stored["data"]["reservations.json"])
    assert sorted(entries) == sorted(f"uid-{i}" for i, ok in enumerate(admitted) if ok)
    assert all(e["gpus"] == "1" for e in entries.values())


async def test_replicas_skip_reservations_of_pods_their_watch_has_seen(
    kube: Any, make_pod: Any, replicas: Any, eventually: Any
) -> None:
    first, second = await replicas(2, "apiserver")
    obj = make_pod("a", gpus=3, uid="uid-a", phase=None)
    assert (await first.evaluate(Subject("CREATE", "Pod", "ml", "a", obj), Deadline.after(10))).verdict.allowed
    kube.put("pods", {**obj, "status": {"phase": "Running"}})
    await eventually(lambda: all(len(p.checks[0].ledger) == 1 for p in (first, second)))
    # 3 used (seen by both watches) + the stale reservation of the same pod must not count twice
    obj = make_pod("b", gpus=1, uid="uid-b", phase=None)
    outcome = await second.evaluate(Subject("CREATE", "Pod", "ml", "b", obj), Deadline.after(10))
    assert outcome.verdict.allowed
    assert outcome.context["gpu"]["quotas"][0]["used"] == 3
    assert outcome.context["gpu"]["quotas"][0]["reserved"] == 0


async def test_stale_resource_version_gets_409_and_the_replica_decides_again(
    kube: Any, api: Any, make_pod: Any, replicas: Any
) -> None:
    (pipeline,) = await replicas(1, "apiserver")
    name = coordination.configmap_name("pool")
    kube.put("configmaps", {"metadata": {"name": name, "namespace": "pc"}, "data": {"reservations.json": "{}"}})
    coordinator = pipeline.checks[0].coordinator
    original = coordinator._read
    raced = False

    async def read_then_someone_else_writes(name: str, deadline: Deadline) -> Any:
        nonlocal raced
        current = await original(name, deadline)
        if not raced:  # another replica takes 3 GPUs between our read and our write
            raced = True
            entries = {"uid-other": {"gpus": "3", "expires": 4e9}}
            body = {"metadata": {"name": name, "namespace": "pc"}, "data": {"reservations.json": json.dumps(entries)}}
            kube.put("configmaps", body)
        return current

    coordinator._read = read_then_someone_else_writes
    obj = make_pod("mine", gpus=2, uid="uid-mine", phase=None)
    outcome = await pipeline.evaluate(Subject("CREATE", "Pod", "ml", "mine", obj), Deadline.after(10))
    assert coordinator.conflicts == 1
    assert kube.requests.count(f"PUT /api/v1/namespaces/pc/configmaps/{name}") == 1  # the stale write only
    assert "3 reserved), this pod asks 2, 1 left" in outcome.verdict.deny_message()


def _privileged(obj: dict[str, Any]) -> dict[str, Any]:
    obj["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    return obj


async def _race_mixed(pipelines: list[Pipeline], make_pod: Any, count: int) -> list[tuple[bool, bool]]:
    """``count`` pods at once, every other one privileged (denied by Pod Security) asking all 3
    GPUs left: returns (privileged, admitted) per pod."""

    async def one(i: int) -> tuple[bool, bool]:
        bad = i % 2 == 0
        obj = make_pod(f"p{i}", gpus=LIMIT - 1 if bad else 1, uid=f"uid-{i}", phase=None)
        if bad:
            _privileged(obj)
        subject = Subject("CREATE", "Pod", "ml", obj["metadata"]["name"], obj)
        outcome = await pipelines[i % len(pipelines)].evaluate(subject, Deadline.after(20))
        return bad, outcome.verdict.allowed

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def _released(pipelines: list[Pipeline]) -> None:
    for pipeline in pipelines:  # background releases in the API server
        check = pipeline.checks[-1]
        if check._releases:
            await asyncio.wait(check._releases, timeout=10)


@pytest.mark.parametrize(("count", "mode"), [(1, "local"), (2, "apiserver")])
async def test_a_pod_denied_by_pod_security_holds_no_gpus(
    kube: Any, make_pod: Any, replicas: Any, count: int, mode: str
) -> None:
    """The GPU check reserves, Pod Security denies the same request: the reservation is given
    back, so sending the privileged pod again and again never locks the team out."""
    pipelines = await replicas(count, mode, with_pss=True)
    for attempt in range(3):
        bad = _privileged(make_pod(f"bad{attempt}", gpus=LIMIT, uid=f"uid-bad{attempt}", phase=None))
        subject = Subject("CREATE", "Pod", "ml", "bad", bad)
        outcome = await pipelines[attempt % count].evaluate(subject, Deadline.after(10))
        assert [d.check for d in outcome.verdict.denials] == ["pss:privileged"]
        await _released(pipelines)
    good = make_pod("good", gpus=LIMIT, uid="uid-good", phase=None)
    outcome = await pipelines[-1].evaluate(Subject("CREATE", "Pod", "ml", "good", good), Deadline.after(10))
    assert outcome.verdict.allowed, outcome.verdict.deny_message()
    if mode == "apiserver":
        stored = kube.objects[("configmaps", "pc", coordination.configmap_name("pool"))]
        assert sorted(json.loads(stored["data"]["reservations.json"])) == ["uid-good"]


async def test_two_replicas_racing_with_pods_denied_by_another_check_never_overshoot(
    kube: Any, make_pod: Any, replicas: Any
) -> None:
    """12 concurrent pods over two replicas, half of them privileged pods asking every GPU left,
    which Pod Security denies: no privileged pod is admitted, the clean 1-GPU pods never exceed the limit, and
    once every verdict is in, only admitted pods hold reservations."""
    kube.put("pods", make_pod("running", gpus=1))
    pipelines = await replicas(2, "apiserver", with_pss=True)
    results = await _race_mixed(pipelines, make_pod, 12)
    await _released(pipelines)
    assert not any(ok for bad, ok in results if bad)
    admitted = [i for i, (bad, ok) in enumerate(results) if ok]
    assert len(admitted) <= LIMIT - 1  # while denied pods briefly held GPUs, fewer may get in
    stored = kube.objects[("configmaps", "pc", coordination.configmap_name("pool"))]
    assert sorted(json.loads(stored["data"]["reservations.json"])) == sorted(f"uid-{i}" for i in admitted)
    # what the denied pods briefly held is free again: the rest of the quota can still be used
    more = [make_pod(f"late{i}", gpus=1, uid=f"uid-late{i}", phase=None) for i in range(LIMIT)]
    late = [
        (
            await pipelines[i % 2].evaluate(
                Subject("CREATE", "Pod", "ml", o["metadata"]["name"], o), Deadline.after(10)
            )
        ).verdict.allowed
        for i, o in enumerate(more)
    ]
    assert len(admitted) + sum(late) == LIMIT - 1


async def test_a_second_create_of_a_name_leaves_the_first_pods_reservation_in_the_api_server(
    kube: Any, make_pod: Any, replicas: Any
) -> None:
    """With reservations in the API server (keyed by uid), a second CREATE of a name (another
    uid; Pod Security denies it) on the other replica never drops the first pod's entry."""
    pipelines = await replicas(2, "apiserver", with_pss=True)
    first = make_pod("x", gpus=LIMIT - 1, uid="uid-first", phase=None)
    outcome = await pipelines[0].evaluate(Subject("CREATE", "Pod", "ml", "x", first), Deadline.after(10))
    assert outcome.verdict.allowed, outcome.verdict.deny_message()
    twin = _privileged(make_pod("x", gpus=1, uid="uid-twin", phase=None))
    outcome = await pipelines[1].evaluate(Subject("CREATE", "Pod", "ml", "x", twin), Deadline.after(10))
    assert [d.check for d in outcome.verdict.denials] == ["pss:privileged"]
    await _released(pipelines)
    stored = kube.objects[("configmaps", "pc", coordination.configmap_name("pool"))]
    assert sorted(json.loads(stored["data"]["reservations.json"])) == ["uid-first"]
    other = make_pod("y", gpus=LIMIT, uid="uid-other", phase=None)
    outcome = await pipelines[1].evaluate(Subject("CREATE", "Pod", "ml", "y", other), Deadline.after(10))
    assert not outcome.verdict.allowed
