"""Fronts for the real docker-registry in tests: forward every request to it, except where the
test answers itself (auth challenges, a referrers API, hostile content)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

Override = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


async def forward(request: web.Request, upstream: str) -> web.Response:
    """The upstream registry's answer to ``request`` (content type and digest headers kept)."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            request.method,
            f"http://{upstream}{request.path_qs}",
            headers={"Accept": request.headers.get("Accept", "*/*")},
        ) as up,
    ):
        body = await up.read()
        headers = {k: v for k, v in up.headers.items() if k in ("Content-Type", "Docker-Content-Digest")}
        return web.Response(status=up.status, body=body if request.method != "HEAD" else None, headers=headers)


def front(upstream: str, override: Override) -> web.Application:
    """Forward ``/v2/`` to the real registry, except where ``override`` answers itself."""
    app = web.Application()

    async def proxy(request: web.Request) -> web.StreamResponse:
        answer = await override(request)
        return answer if answer is not None else await forward(request, upstream)

    app.router.add_route("*", "/v2/{tail:.*}", proxy)
    return app
