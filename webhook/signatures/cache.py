"""Verdict cache keyed by (repository, digest, policy): TTLs, single flight, a bound on memory.

Owned by one images check (no module-level state). Concurrent pods of one Deployment that
miss together share one verification; outside failures are never cached, so a recovered
registry is asked again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

V = TypeVar("V")


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    shared: int = 0  # misses that joined a verification already in flight
    computations: int = 0
    failures: int = 0
    evictions: int = 0
    compute_seconds: float = 0.0  # total time spent verifying (latency sum)

    def as_dict(self) -> dict[str, float]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "shared": self.shared,
            "computations": self.computations,
            "failures": self.failures,
            "evictions": self.evictions,
            "compute_seconds": round(self.compute_seconds, 6),
        }


class VerdictCache(Generic[V]):
    """An LRU of verdicts with per-entry expiry and one in-flight computation per key."""

    def __init__(
        self,
        *,
        ttl: float,
        negative_ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.stats = CacheStats()
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> V | None:
        """The cached verdict, or ``None`` (expired entries are dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry[1]

    def put(self, key: Hashable, value: V, positive: bool) -> None:
        ttl = self.ttl if positive else self.negative_ttl
        if ttl <= 0:
            return
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.stats.evictions += 1

    async def get_or_compute(
        self, key: Hashable, compute: Callable[[], Awaitable[V]], positive: Callable[[V], bool]
    ) -> V:
        """Cached value, or the result of the one ``compute`` running for ``key``.

        The computation runs in its own task: a waiter that gives up (its request's deadline)
        does not cancel it for the others, and its result still lands in the cache.
        Exceptions reach every waiter and are not cached.
        """
        cached = self.get(key)
        if cached is not None:
            return cached
        self.stats.misses += 1
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._compute(key, compute, positive))
            future.add_done_callback(_retrieve)
            self._inflight[key] = future
        else:
            self.stats.shared += 1
        return await asyncio.shield(future)

    async def _compute(self, key: Hashable, compute: Callable[[], Awaitable[V]], positive: Callable[[V], bool]) -> V:
        started = self._clock()
        self.stats.computations += 1
        try:
            value = await compute()
        except BaseException:
            self.stats.failures += 1
            raise
        finally:
            self._inflight.pop(key, None)
            self.stats.compute_seconds += self._clock() - started
        self.put(key, value, positive(value))
        return value

    async def close(self) -> None:
        """Cancel verifications still in flight (server shutdown)."""
        for future in list(self._inflight.values()):
            future.cancel()
        for future in list(self._inflight.values()):
            with contextlib.suppress(BaseException):  # cancelled or failed: nothing to keep at shutdown
                await future
        self._inflight.clear()


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failure as seen even when every waiter gave up (no 'never retrieved' noise)."""
    if not future.cancelled():
        future.exception()
