"""Leader election over a Lease on the local wire-format API server (``kubeapi.py``): compare-and-swap,
expiry measured on the observer's own clock (client-go's observedTime), transitions, release."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from webhook.config.kubernetes import KubernetesConfig
from webhook.kube import client as kube_client
from webhook.scan.api import RestApi
from webhook.scan.lease import LeaderElector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def rest(kube: Any) -> AsyncIterator[RestApi]:
    kube.put("namespaces", {"metadata": {"name": "ops"}})
    api = kube_client.build(KubernetesConfig(api_url=kube.url, request_timeout=2.0))
    assert api is not None
    yield RestApi(api, 2.0)
    await asyncio.to_thread(api.close)


def elector(rest: RestApi, identity: str, clock: Clock) -> LeaderElector:
    return LeaderElector(
        rest, "ops", "scan", identity, lease_duration=15, renew_deadline=10, retry_period=2, wall=clock, monotonic=clock
    )


def spec(kube: Any) -> dict[str, Any]:
    return dict(kube.get("leases.coordination.k8s.io", "ops", "scan")["spec"])


async def test_a_held_lease_expires_only_after_its_duration_on_the_observers_clock(kube: Any, rest: RestApi) -> None:
    clock_a, clock_b = Clock(), Clock()
    a, b = elector(rest, "a", clock_a), elector(rest, "b", clock_b)
    assert await a.try_acquire_or_renew()
    assert spec(kube)["holderIdentity"] == "a"
    assert spec(kube)["leaseTransitions"] == 0
    assert not await b.try_acquire_or_renew()  # b first observes the record now
    clock_b.now += 14.9
    assert not await b.try_acquire_or_renew()  # not yet expired for b
    clock_a.now += 5
    assert await a.try_acquire_or_renew()  # a renews: the record changes, b's observation restarts
    clock_b.now += 5
    assert not await b.try_acquire_or_renew()
    clock_b.now += 15.1  # a stopped renewing 15.1 s ago by b's clock
    assert await b.try_acquire_or_renew()
    after = spec(kube)
    assert after["holderIdentity"] == "b"
    assert after["leaseTransitions"] == 1
    assert after["acquireTime"] == after["renewTime"]
    assert not await a.try_acquire_or_renew()  # a sees b's fresh record


async def test_racing_candidates_one_wins_by_resource_version(kube: Any, rest: RestApi) -> None:
    clock = Clock()
    candidates = [elector(rest, f"r{i}", clock) for i in range(5)]
    won = await asyncio.gather(*(c.try_acquire_or_renew() for c in candidates))
    assert sum(won) == 1
    assert spec(kube)["holderIdentity"] == f"r{won.index(True)}"


async def test_release_empties_the_holder_so_a_successor_need_not_wait(kube: Any, rest: RestApi) -> None:
    clock = Clock()
    a, b = elector(rest, "a", clock), elector(rest, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert spec(kube)["holderIdentity"] == ""
    assert await b.try_acquire_or_renew()
    await a.release()  # no longer a's: left alone
    assert spec(kube)["holderIdentity"] == "b"


async def test_a_failing_leader_task_is_logged_and_restarted_not_fatal(kube: Any, rest: RestApi) -> None:
    clock = Clock()
    a = LeaderElector(rest, "ops", "scan", "a", lease_duration=15, renew_deadline=10, retry_period=0.01, wall=clock)
    stop = asyncio.Event()
    runs = []

    async def lead() -> None:
        runs.append(1)
        if len(runs) == 2:
            stop.set()
        raise RuntimeError("scan broke")

    await asyncio.wait_for(a.run(stop, lead), 30)
    assert len(runs) == 2
    assert spec(kube)["holderIdentity"] == ""  # released at the end
