"""Remote OPA through opa-python-client. No OPA server can be installed here, so these tests run
a small local aiohttp server that answers OPA's Data API (``POST /v1/data/<path>`` with
``{"input": ...}`` → ``{"result": ...}``), the wire format a real OPA speaks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from opa_stub import serve

from webhook import errors
from webhook.core.deadline import Deadline
from webhook.policy import opa


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


async def _ask(handler: Any, extra: Any = None) -> list[Any]:
    runner, url = await serve(handler, extra)
    engine = opa.OpaEngine(url, "portcullis", timeout=5)
    try:
        return await engine.evaluate({"request": {"name": "web"}}, Deadline.after(10))
    finally:
        await engine.close()
        await runner.cleanup()


async def test_a_package_below_a_policy_is_still_judged() -> None:
    # data.portcullis.deny and data.portcullis.gpu.deny: two policies, both must answer.
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"result": {"deny": [], "gpu": {"deny": ["too many GPUs"]}}})

    results = await _ask(handler)
    by_id = {r.policy.id: r for r in results}
    assert by_id["portcullis.gpu"].deny[0].msg == "too many GPUs"


@pytest.mark.parametrize("document", [{}, {"lib": {"helpers": {"x": 1}}}, [], "yes", True])
async def test_an_answer_naming_no_policy_is_an_error_not_an_allow(document: Any) -> None:
    # An OPA without the bundle, or opa_path pointing at a library package, judges nothing:
    # that is the failure mode's call, not an empty list of findings.
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"result": document})

    results = await _ask(handler)
    assert results
    assert all(r.error for r in results)


async def test_a_policy_nested_too_deep_to_read_is_an_error_not_skipped() -> None:
    deep: dict[str, Any] = {"deny": ["deep"]}
    for i in range(12):
        deep = {f"l{i}": deep}

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"result": {"top": {"deny": []}, **deep}})

    results = await _ask(handler)
    assert any(r.error and "deep" in r.error for r in results)


async def test_a_redirect_is_an_opa_error_not_followed() -> None:
    # Followed, a 307 re-posts the input (the pod spec) elsewhere and a 302 turns into a GET
    # whose answer, from whatever serves it, would be taken as OPA's.
    def extra(app: web.Application) -> None:
        async def elsewhere(request: web.Request) -> web.Response:
            return web.json_response({"result": {"deny": []}})

        app.router.add_route("*", "/elsewhere", elsewhere)

    for status in (302, 307):

        async def handler(request: web.Request, status: int = status) -> web.Response:
            return web.Response(status=status, headers={"Location": "/elsewhere"})

        with pytest.raises(errors.OpaError, match=str(status)):
            await _ask(handler, extra)


async def test_an_oversized_answer_is_an_opa_error() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"result": {"deny": ["')
        chunk = b"x" * (1 << 20)
        for _ in range((opa.MAX_ANSWER_BYTES >> 20) + 2):
            await response.write(chunk)
        await response.write(b'"]}}')
        return response

    with pytest.raises(errors.OpaError, match="bytes"):
        await _ask(handler)


async def test_a_non_json_answer_is_an_opa_error() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="<html>login</html>", content_type="text/html")

    with pytest.raises(errors.OpaError):
        await _ask(handler)


async def test_an_answer_dripping_slowly_ends_within_the_timeout() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"result": {"deny": [')
        for _ in range(100):
            await asyncio.sleep(0.1)
            await response.write(b" ")
        await response.write(b"]}}")
        return response

    runner, url = await serve(handler)
    engine = opa.OpaEngine(url, timeout=0.3)
    try:
        with pytest.raises(errors.OpaError, match="no answer within 300 ms"):
            await asyncio.wait_for(engine.evaluate({}, Deadline.after(10)), 5)  # generous: a hang fails
    finally:
        await engine.close()
        await runner.cleanup()
