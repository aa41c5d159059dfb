"""Remote OPA through opa-python-client. No OPA server can be installed here, so these tests run
a small local aiohttp server that answers OPA's Data API (``POST /v1/data/<path>`` with
``{"input": ...}`` → ``{"result": ...}``), the wire format a real OPA speaks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from webhook import errors
from webhook.core.deadline import Deadline
from webhook.policy import opa


async def serve(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/data/{path:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_results_per_package_and_connection_reuse() -> None:
    seen: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.match_info["path"], body["input"]["request"]["name"], request.transport))
        return web.json_response(
            {
                "result": {
                    "gpu": {"deny": [{"msg": "too many", "path": "spec"}], "mode": "warn"},
                    "labels": {"warn": ["x"]},
                }
            }
        )

    runner, url = await serve(handler)
    engine = opa.OpaEngine(url, "portcullis", timeout=2)
    try:
        for _ in range(2):
            results = await engine.evaluate({"request": {"name": "web"}}, Deadline.after(5))
        by_id = {r.policy.id: r for r in results}
        assert by_id["portcullis.gpu"].deny[0].msg == "too many"
        assert by_id["portcullis.gpu"].policy.mode == "warn"
        assert by_id["portcullis.labels"].warn[0].msg == "x"
        assert seen[0][0] == "portcullis"
        assert seen[0][2] is seen[1][2]
    finally:
        await engine.close()
        await runner.cleanup()


async def test_slow_opa_is_an_opa_error_within_the_deadline() -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.json_response({"result": {}})

    runner, url = await serve(handler)
    engine = opa.OpaEngine(url, timeout=0.05)
    try:
        with pytest.raises(errors.OpaError, match="no answer within 50 ms"):
            await engine.evaluate({}, Deadline.after(5))
    finally:
        await engine.close()
        await runner.cleanup()


async def test_http_error_and_undefined_document_are_opa_errors() -> None:
    answers = [web.json_response({"code": "internal_error"}, status=500), web.json_response({})]

    async def handler(request: web.Request) -> web.Response:
        return answers.pop(0)

    runner, url = await serve(handler)
    engine = opa.OpaEngine(url, timeout=2)
    try:
        with pytest.raises(errors.OpaError, match="HTTP 500"):
            await engine.evaluate({}, Deadline.after(5))
        with pytest.raises(errors.OpaError, match="undefined"):
            await engine.evaluate({}, Deadline.after(5))
    finally:
        await engine.close()
        await runner.cleanup()


async def test_refused_connection_is_an_opa_error() -> None:
    engine = opa.OpaEngine("http://127.0.0.1:9", timeout=1)
    try:
        with pytest.raises(errors.OpaError, match=r"127\.0\.0\.1:9"):
            await engine.evaluate({}, Deadline.after(5))
    finally:
        await engine.close()


def test_wrong_shape_from_opa_is_a_policy_error() -> None:
    (result,) = opa.interpret({"deny": "nope"}, "portcullis")
    assert "must be a set" in (result.error or "")
