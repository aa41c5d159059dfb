"""Leader election through a ``coordination.k8s.io/v1`` Lease, with client-go's semantics.

Replicas race to write themselves into ``spec.holderIdentity`` by compare-and-swap on
``metadata.resourceVersion`` (a 409 means another replica won). A lease held by someone else
counts as expired only when this replica has seen it unchanged for ``leaseDurationSeconds`` on
its own monotonic clock (client-go's ``observedTime``): clocks of different nodes never compare.
The leader renews every ``retry_period``; if it cannot renew within ``renew_deadline`` it stops
leading before the lease can expire for the others. On shutdown it releases the lease
(empty holder, one-second duration) so a successor starts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from webhook import errors
from webhook.scan.api import Conflict, RestApi

log = logging.getLogger("portcullis.scan")
GROUP_VERSION = "coordination.k8s.io/v1"


def micro_time(seconds: float) -> str:
    """``metav1.MicroTime``: RFC 3339 UTC with six fractional digits."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for one Lease; ``run`` calls ``lead`` while this replica holds it."""

    def __init__(
        self,
        api: RestApi,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float,
        renew_deadline: float,
        retry_period: float,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not identity:
            raise errors.ConfigError("scan: the leader election needs a non-empty identity (scan.identity)")
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._wall = wall
        self._monotonic = monotonic
        self._observed: dict[str, Any] | None = None
        self._observed_at = 0.0
        self.leading = False
        self.transitions = 0  # times this replica became leader

    @property
    def path(self) -> str:
        return f"/apis/{GROUP_VERSION}/namespaces/{self.namespace}/leases/{self.name}"

    async def try_acquire_or_renew(self) -> bool:
        """One round of the election: True when this replica holds the lease afterwards."""
        what = f"lease {self.namespace}/{self.name}"
        current = await self.api.get(what, self.path)
        now = self._wall()
        if current is None:
            body = {
                "apiVersion": GROUP_VERSION,
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, now, 0),
            }
            try:
                created = await self.api.create(what, self.path.rsplit("/", 1)[0], body)
            except Conflict:
                return False  # another replica created it first
            self._observe(created.get("spec") or {})
            return True
        spec = current.get("spec") or {}
        if spec != self._observed:
            self._observe(spec)
        holder = spec.get("holderIdentity") or ""
        duration = _seconds(spec.get("leaseDurationSeconds"))
        if holder and holder != self.identity and self._observed_at + duration > self._monotonic():
            return False  # held by another replica and not expired by our own clock
        if holder == self.identity:
            acquired, transitions = spec.get("acquireTime") or micro_time(now), _count(spec.get("leaseTransitions"))
        else:
            acquired, transitions = micro_time(now), _count(spec.get("leaseTransitions")) + 1
        body = {**current, "spec": {**spec, **self._spec(now, now, transitions), "acquireTime": acquired}}
        try:
            updated = await self.api.replace(what, self.path, body)  # metadata.resourceVersion: CAS
        except Conflict:
            return False
        self._observe(updated.get("spec") or {})
        return True

    def _spec(self, acquire: float, renew: float, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "acquireTime": micro_time(acquire),
            "renewTime": micro_time(renew),
            "leaseTransitions": transitions,
        }

    def _observe(self, spec: dict[str, Any]) -> None:
        self._observed = spec
        self._observed_at = self._monotonic()

    async def release(self) -> None:
        """Give the lease up (only if still ours): empty holder, so a successor need not wait."""
        what = f"lease {self.namespace}/{self.name}"
        with contextlib.suppress(errors.UpstreamError):
            current = await self.api.get(what, self.path)
            if current is None or (current.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            now = micro_time(self._wall())
            spec = {**current["spec"], "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now}
            await self.api.replace(what, self.path, {**current, "spec": spec})

    async def _round(self) -> bool:
        try:
            return await self.try_acquire_or_renew()
        except errors.UpstreamError as exc:
            log.warning("scan leader election: %s", exc)
            return False

    async def run(self, stop: asyncio.Event, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Campaign until ``stop``; run ``lead()`` while leading, cancel it when leadership is lost."""
        try:
            while not stop.is_set():
                if not await self._round():
                    await _wait(stop, self.retry_period)
                    continue
                self.leading = True
                self.transitions += 1
                log.warning("scan: %s is now the leader (lease %s/%s)", self.identity, self.namespace, self.name)
                task = asyncio.create_task(lead(), name="scan-leader")
                try:
                    await self._renew_until_lost(stop, task)
                finally:
                    self.leading = False
                    ended_itself = task.done()
                    task.cancel()
                    # a failed scan was logged by _renew_until_lost; the campaign goes on
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                if ended_itself:  # the scan failed: do not restart it in a tight loop
                    await _wait(stop, max(self.retry_period, 1.0))
        finally:
            await self.release()

    async def _renew_until_lost(self, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        last_renew = self._monotonic()
        while not stop.is_set() and not task.done():
            await _wait(stop, self.retry_period)
            if stop.is_set():
                return
            if await self._round():
                last_renew = self._monotonic()
            elif self._monotonic() - last_renew >= self.renew_deadline:
                log.warning("scan: %s lost the lease (not renewed within %ss)", self.identity, self.renew_deadline)
                return
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("scan loop failed: %s", task.exception())


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _seconds(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0.0


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
