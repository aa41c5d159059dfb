"""A local HTTP server in OPA's place (``POST /v1/data/<path>``), answering as the test's handler
says: the remote-OPA engine and ``portcullis check`` are tested against real HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web


async def serve(handler: Any, extra: Callable[[web.Application], None] | None = None) -> tuple[web.AppRunner, str]:
    """Start it on 127.0.0.1 (a free port); ``extra`` may add routes. Returns the runner (to
    clean up) and the base URL."""
    app = web.Application()
    app.router.add_post("/v1/data/{path:.*}", handler)
    if extra is not None:
        extra(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"
