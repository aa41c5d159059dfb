"""The webhook over real HTTPS on loopback: endpoints, bad input, deadlines, shedding, cert reload."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from webhook import config as config_mod
from webhook.admission import certs
from webhook.admission.review import ReviewRequest
from webhook.checks.pipeline import Outcome, Pipeline

from .conftest import pod, review
from .test_pipeline import DenyPrivileged, SlowUpstream, privileged_pod


def pipeline_with(*checks: Any, cfg: dict[str, Any] | None = None) -> Pipeline:
    return Pipeline(config_mod.parse(cfg or {}), list(checks))


async def test_health_ready_and_metrics(start_webhook: Any) -> None:
    async with start_webhook() as hook:
        async with hook.session.get(hook.base + "/healthz") as r:
            assert r.status == 200
        async with hook.session.get(hook.base + "/readyz") as r:
            assert r.status == 200
        await hook.post("/validate", review(pod()))
        async with hook.session.get(hook.base + "/metrics") as r:
            text = await r.text()
        assert 'portcullis_requests_total{endpoint="validate",code="200"} 1' in text
        assert re.search(r"portcullis_decisions_total{endpoint=\"validate\",result=\"(allowed|warned)\"} 1", text)
        assert 'portcullis_request_duration_seconds_count{endpoint="validate"} 1' in text


async def test_denial_lists_every_violation_and_counts_by_check(start_webhook: Any) -> None:
    obj = pod(
        containers=[
            {"name": "a", "image": "x", "securityContext": {"privileged": True}},
            {"name": "b", "image": "y", "securityContext": {"privileged": True}},
        ]
    )
    async with start_webhook(pipeline=pipeline_with(DenyPrivileged())) as hook:
        doc = review(obj)
        status, body = await hook.post("/validate", doc)
        async with hook.session.get(hook.base + "/metrics") as r:
            text = await r.text()
    assert status == 200
    response = body["response"]
    assert response["uid"] == doc["request"]["uid"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert "a: privileged" in response["status"]["message"]
    assert "b: privileged" in response["status"]["message"]
    assert 'portcullis_violations_total{check="privilege",mode="enforce"} 2' in text


async def test_mutate_allows_without_patch_until_a_check_asks_for_one(start_webhook: Any) -> None:
    async with start_webhook() as hook:
        status, body = await hook.post("/mutate", review(pod()))
    assert status == 200
    assert body["response"]["allowed"] is True
    assert "patch" not in body["response"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{", "not valid JSON"),
        (b"", "body is empty"),
        (b'{"apiVersion": "v1", "kind": "AdmissionReview", "request": {}}', "apiVersion"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "request"),
    ],
)
async def test_malformed_reviews_get_400_with_a_reason(start_webhook: Any, payload: bytes, reason: str) -> None:
    async with start_webhook() as hook:
        status, body = await hook.post("/validate", payload)
    assert status == 400
    assert reason in body["error"]


async def test_huge_body_is_refused_with_400(start_webhook: Any) -> None:
    async with start_webhook({"server": {"max_body_bytes": 1024}}) as hook:
        status, body = await hook.post("/validate", b"x" * 4096)
    assert status == 400
    assert "limit of 1024 bytes" in body["error"]


async def test_unjudgeable_object_in_a_good_review_is_denied_with_the_reason(start_webhook: Any) -> None:
    async with start_webhook() as hook:
        doc = review({"kind": "Widget", "spec": {}}, kind="Widget")
        status, body = await hook.post("/validate", doc)
        status2, body2 = await hook.post("/validate", review({"kind": "Pod", "spec": "x"}))
    assert status == 200
    assert body["response"]["allowed"] is True  # a kind no check applies to is allowed (and counted)
    assert status2 == 200
    assert "spec must be an object" in body2["response"]["status"]["message"]


async def test_apiserver_timeout_parameter_bounds_the_budget(start_webhook: Any) -> None:
    cfg = {"server": {"timeout_seconds": 10, "margin_seconds": 0.2}}
    async with start_webhook(cfg, pipeline=pipeline_with(SlowUpstream(delay=30), cfg=cfg)) as hook:
        status, body = await asyncio.wait_for(hook.post("/validate?timeout=1s", review(pod())), 5)
    assert status == 200
    assert body["response"]["allowed"] is False
    assert "timed out" in body["response"]["status"]["message"]


async def test_overload_is_shed_with_429_not_queued(start_webhook: Any) -> None:
    cfg = {"server": {"max_in_flight": 1, "timeout_seconds": 2, "margin_seconds": 0.5}}
    async with start_webhook(cfg, pipeline=pipeline_with(SlowUpstream(delay=30), cfg=cfg)) as hook:
        first = asyncio.create_task(hook.post("/validate", review(pod())))
        await asyncio.sleep(0.2)
        status, body = await hook.post("/validate", review(pod()))
        first_status, _ = await first
        async with hook.session.get(hook.base + "/metrics") as r:
            text = await r.text()
    assert status == 429
    assert "overloaded" in body["error"]
    assert first_status == 200
    assert "portcullis_requests_shed_total 1" in text


async def test_dry_run_is_decided_but_not_recorded_as_sideeffects_none_on_dry_run_promises(
    start_webhook: Any,
) -> None:
    seen: list[tuple[ReviewRequest, Outcome]] = []

    class Recorder:
        async def record(self, endpoint: str, request: ReviewRequest, outcome: Outcome, **_: Any) -> None:
            seen.append((request, outcome))

    async with start_webhook(recorder=Recorder(), pipeline=pipeline_with(DenyPrivileged())) as hook:
        _status, body = await hook.post("/validate", review(privileged_pod(), dry_run=True))
        async with hook.session.get(hook.base + "/metrics") as r:
            text = await r.text()
        _status, real = await hook.post("/validate", review(privileged_pod()))
    assert body["response"]["allowed"] is False
    assert real["response"]["allowed"] is False
    ((request, outcome),) = seen  # only the real request
    assert request.dry_run is False
    assert not outcome.verdict.allowed
    assert 'result="dry_run"' in text


async def test_certificate_rotation_is_picked_up_without_dropping_connections(
    start_webhook: Any, tmp_path: Path
) -> None:
    async with start_webhook({"server": {"cert_reload_interval": 0.05}}) as hook:
        # A keep-alive connection made with the first certificate.
        status, _ = await hook.post("/validate", review(pod()))
        assert status == 200
        old_ca = hook.ca.read_bytes()
        rotated = certs.generate(["localhost", "127.0.0.1"], tmp_path / "rotated")
        (hook.cert_dir / "tls.key").write_bytes(rotated.key.read_bytes())
        (hook.cert_dir / "tls.crt").write_bytes(rotated.cert.read_bytes())
        new_ctx = ssl.create_default_context(cafile=str(rotated.ca_cert))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=new_ctx)) as fresh:
            for _ in range(100):
                try:
                    async with fresh.get(hook.base + "/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectorCertificateError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the server never presented the rotated certificate")
        # The old connection (trusting only the old CA) still works: it was never dropped.
        status, _ = await hook.post("/validate", review(pod()))
        assert status == 200
        assert old_ca != rotated.ca_cert.read_bytes()


async def test_half_written_rotation_keeps_the_current_certificate(start_webhook: Any) -> None:
    async with start_webhook({"server": {"cert_reload_interval": 0.05}}) as hook:
        (hook.cert_dir / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
        await asyncio.sleep(0.3)
        ctx = ssl.create_default_context(cafile=str(hook.ca))
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as fresh,
            fresh.get(hook.base + "/healthz") as r,
        ):
            assert r.status == 200


async def test_random_bodies_never_get_a_500(start_webhook: Any) -> None:
    import random

    rng = random.Random(7)
    bodies = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(30)]
    bodies += [
        orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": x})
        for x in (
            1,
            [],
            {"uid": 5},
            {"uid": "u", "kind": []},
            {
                "uid": "u",
                "kind": {"kind": "Pod"},
                "operation": "CREATE",
                "object": {"kind": "Pod", "spec": {"containers": 3}},
            },
        )
    ]
    async with start_webhook() as hook:
        for body in bodies:
            status, _ = await hook.post("/validate", body)
            assert status in (200, 400), body


async def test_mutate_never_denies_and_runs_only_the_pinning_checks(start_webhook: Any) -> None:
    check = DenyPrivileged()
    async with start_webhook(pipeline=pipeline_with(check)) as hook:
        status, body = await hook.post("/mutate", review(privileged_pod()))
    assert status == 200
    assert body["response"]["allowed"] is True
    assert check.calls == 0  # privilege is judged by /validate only


async def test_reviews_are_shed_while_the_event_loop_queue_is_too_long(start_webhook: Any) -> None:
    """The queue before the handler (TLS, parsing, ready callbacks) is measured as event-loop lag;
    past `server.max_queue_seconds` reviews are refused at once rather than answered too late."""
    cfg = {"server": {"max_queue_seconds": 0.5}}
    pipeline = pipeline_with(cfg=cfg)
    async with start_webhook(cfg, pipeline=pipeline) as hook:
        status, _ = await hook.post("/validate", review(pod()))
        assert status == 200
        server = next(iter(_servers_of(pipeline)))
        server._lag_task.cancel()  # hold the measured lag where the test puts it
        server.loop_lag = 2.0
        status, body = await hook.post("/validate", review(pod()))
        assert status == 429
        assert "queued" in body["error"]
        async with hook.session.get(hook.base + "/metrics") as r:
            assert "portcullis_event_loop_lag_seconds 2.0" in await r.text()


def _servers_of(pipeline: Pipeline) -> list[Any]:
    """The running WebhookServer built around ``pipeline`` (service.serve keeps it private)."""
    import gc

    from webhook.admission.server import WebhookServer

    return [o for o in gc.get_objects() if isinstance(o, WebhookServer) and o.pipeline is pipeline]
