"""Binding a listening socket: a port in use, a privileged port or an address this host lacks is
the user's to fix (a ``ConfigError``, exit 2), named with the setting that chose it. Used by the
webhook, the monitor's metrics endpoint and the witness. Imports nothing of the project but errors.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable

from webhook import errors


def bind_error(exc: OSError, host: str, port: int, setting: str) -> errors.ConfigError:
    """The error to raise when binding ``host:port`` (chosen by ``setting``) failed with ``exc``."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's own wording repeats the address
    if exc.errno == errno.EADDRINUSE:
        hint = f"another process is listening there: stop it or choose another port with {setting}"
    elif exc.errno == errno.EACCES:
        hint = f"ports below 1024 need privileges: choose another with {setting}"
    else:
        hint = f"choose an address of this host with {setting}"
    return errors.ConfigError(f"cannot listen on {host}:{port}: {reason}; {hint}")


async def start(start_site: Callable[[], Awaitable[None]], host: str, port: int, setting: str) -> None:
    """Await ``start_site()`` (e.g. ``aiohttp.web.TCPSite.start``), turning bind failures into ours."""
    try:
        await start_site()
    except OSError as exc:
        raise bind_error(exc, host, port, setting) from exc
