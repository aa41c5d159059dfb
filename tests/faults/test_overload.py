"""Overload: beyond ``server.max_in_flight`` the webhook sheds load with fast 429s instead of
queueing, the reviews in flight still complete, and a review that runs out of budget is answered
by its failure mode before the apiserver's timeout — never silently dropped.

The real HTTPS server (``service.serve``) with a check that blocks on a gate the test opens, so
the test orders events without any timing assertion: the 429s must arrive while the admitted
reviews are provably still blocked.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from webhook import config as config_mod
from webhook.checks.pipeline import Pipeline
from webhook.core.decision import CheckResult, FailureMode, Mode
from webhook.core.request import RequestContext
from webhook.core.workloads import PodSpecRef

from .conftest import pod_review


@dataclass
class GatedCheck:
    """Holds each review until ``gate`` opens; counts the reviews that reached it."""

    id: str = "images"
    failure_mode: FailureMode = FailureMode.DENY
    default_mode: Mode = Mode.ENFORCE
    does_io: bool = True
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    entered: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    want: int = 0

    async def run(self, pods: Sequence[PodSpecRef], ctx: RequestContext) -> CheckResult:
        self.entered += 1
        if self.entered >= self.want:
            self.arrived.set()
        await self.gate.wait()
        return CheckResult()


def _pipeline(cfg: dict[str, Any], check: GatedCheck) -> Pipeline:
    return Pipeline(config_mod.parse(cfg), [check])


async def test_reviews_beyond_max_in_flight_get_429_while_admitted_ones_complete(webhook_server: Any) -> None:
    limit, extra = 3, 12
    cfg = {"server": {"max_in_flight": limit, "timeout_seconds": 30}}
    check = GatedCheck(want=limit)
    async with webhook_server(cfg, pipeline=_pipeline(cfg, check)) as hook:
        admitted = [asyncio.create_task(hook.post("/validate", pod_review(f"a{i}"))) for i in range(limit)]
        await asyncio.wait_for(check.arrived.wait(), 20)  # all `limit` reviews are now blocked in the check

        shed = await asyncio.gather(*(hook.post("/validate", pod_review(f"s{i}")) for i in range(extra)))
        assert not check.gate.is_set()  # answered while the admitted reviews are still held
        assert not any(t.done() for t in admitted)
        for status, headers, body in shed:
            assert status == 429
            assert headers.get("Retry-After") == "1"
            assert "overloaded" in body["error"]
        assert check.entered == limit  # shed reviews never reached the checks (no queue behind the limit)

        check.gate.set()
        for status, _, body in await asyncio.gather(*admitted):
            assert status == 200
            assert body["response"]["allowed"] is True

        status, _, body = await hook.post("/validate", pod_review("after"))  # capacity is back
        assert status == 200
        assert body["response"]["allowed"] is True
        _, metrics = await hook.get("/metrics")
        assert re.search(r"^portcullis_requests_shed_total 12$", metrics, re.MULTILINE), metrics


async def test_health_endpoints_answer_while_reviews_are_shed(webhook_server: Any) -> None:
    cfg = {"server": {"max_in_flight": 1, "timeout_seconds": 30}}
    check = GatedCheck(want=1)
    async with webhook_server(cfg, pipeline=_pipeline(cfg, check)) as hook:
        blocked = asyncio.create_task(hook.post("/validate", pod_review()))
        await asyncio.wait_for(check.arrived.wait(), 20)
        assert (await hook.post("/validate", pod_review("x")))[0] == 429
        assert await hook.get("/healthz") == (200, "ok\n")  # the kubelet's probes do not count as reviews
        assert (await hook.get("/readyz"))[0] == 200
        check.gate.set()
        assert (await blocked)[0] == 200


async def test_a_review_out_of_budget_is_answered_by_its_failure_mode(webhook_server: Any) -> None:
    """The check never finishes: the webhook answers itself (deny, naming the deadline) inside
    timeout_seconds − margin, rather than letting the apiserver time out on it."""
    cfg = {"server": {"max_in_flight": 4, "timeout_seconds": 1, "margin_seconds": 0.5}}
    check = GatedCheck(want=1)
    async with webhook_server(cfg, pipeline=_pipeline(cfg, check)) as hook:
        status, _, body = await asyncio.wait_for(hook.post("/validate", pod_review()), 20)
        assert status == 200
        response = body["response"]
        assert response["allowed"] is False
        assert "images" in response["status"]["message"]
        assert "failure mode" in response["status"]["message"]
        check.gate.set()


async def test_the_apiservers_timeout_parameter_tightens_the_budget(webhook_server: Any) -> None:
    cfg = {"server": {"max_in_flight": 4, "timeout_seconds": 30, "margin_seconds": 0.5}}
    check = GatedCheck(want=1, failure_mode=FailureMode.ALLOW)
    async with webhook_server(cfg, pipeline=_pipeline(cfg, check)) as hook:
        status, _, body = await asyncio.wait_for(hook.post("/validate?timeout=1s", pod_review()), 20)
        assert status == 200
        assert body["response"]["allowed"] is True  # this check's failure mode is allow
        assert any("could not finish" in w for w in body["response"]["warnings"])
        check.gate.set()
