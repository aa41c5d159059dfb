"""The per-request time budget every check and every outside call runs inside."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

import msgspec

from webhook import errors

T = TypeVar("T")


class Deadline(msgspec.Struct, frozen=True):
    """A point on the monotonic clock after which a request's answer is worthless.

    The apiserver gives up after the webhook's ``timeoutSeconds``; the budget is that minus a
    margin, so Portcullis always answers itself (with the configured failure mode) first.
    A frozen ``msgspec.Struct`` (one per review; its ``__init__`` is C, a frozen dataclass's
    is ``object.__setattr__`` per field).
    """

    expires_at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def never(cls) -> Deadline:
        return cls(float("inf"))

    def remaining(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self.expires_at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.expires_at

    def cap(self, seconds: float) -> float:
        """The smaller of ``seconds`` and what is left: the timeout for one outside call."""
        return min(seconds, self.remaining())

    async def run(self, awaitable: Awaitable[T], what: str) -> T:
        """Await ``awaitable`` within the budget; raise ``DeadlineExceeded`` naming ``what``."""
        left = self.remaining()
        if left <= 0:
            raise errors.DeadlineExceeded(f"{what}: no time left in the request's budget")
        # ``asyncio.timeout``, not ``wait_for``: no task per call (this runs a few times per
        # review), and on Python 3.11 ``wait_for`` drops a cancel that lands as the awaitable
        # finishes, so a cancelled request could run on.
        try:
            async with asyncio.timeout(None if left == float("inf") else left):
                return await awaitable
        except TimeoutError as exc:
            raise errors.DeadlineExceeded(f"{what}: timed out after {left * 1000:.0f} ms") from exc
