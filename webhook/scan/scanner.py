"""The background scan (evaluate stage): list and watch the selected kinds, judge each
object through the admission pipeline, keep every object's results, and write them as
PolicyReports (through ``writer``, compare-and-swap).

Judging is rate-limited (a token bucket) and runs as a dry run (no GPU reservation); patches
(image pinning) are ignored. Reports are first written once every selected kind has been listed
and judged, so a half-done pass never replaces a complete report; after that each change
(an object added, fixed or deleted, a periodic re-judgement) rewrites only its namespace's
report, and only when its content changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook import errors
from webhook.checks.pipeline import Pipeline, Subject
from webhook.config.kubernetes import KubernetesConfig
from webhook.config.scan import ScanConfig
from webhook.core import workloads
from webhook.core.deadline import Deadline
from webhook.kube.reflector import Reflector
from webhook.scan import reports, resources
from webhook.scan.api import RestApi
from webhook.scan.metrics import ScanMetrics
from webhook.scan.resources import Resource
from webhook.scan.writer import ReportWriter, TokenBucket

log = logging.getLogger("portcullis.scan")
Key = tuple[str, str, str, str]  # (group, plural, namespace, name)
_WORKERS = 8  # judgements in flight: image checks await registries, the rest is CPU
_WRITERS = 8  # namespaces whose reports are written at once


@dataclass(slots=True)
class _Entry:
    resource: Resource
    namespace: str
    obj: Mapping[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)


class Scanner:
    """Scan state for one leader term (or one ``portcullis scan``)."""

    def __init__(
        self,
        pipeline: Pipeline,
        rest: RestApi,
        kube: KubernetesConfig,
        settings: ScanConfig,
        *,
        metrics: ScanMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pipeline = pipeline
        self.rest = rest
        self.kube = kube
        self.settings = settings
        self.metrics = metrics or ScanMetrics()
        self._clock = clock
        self.check_ids = tuple(c.id for c in pipeline.checks)
        pod_checks = any(c.id != "rego" or getattr(c, "bundle", None) is not None for c in pipeline.checks)
        self.selection = resources.select(pod_checks, resources.constraint_kinds(pipeline.checks))
        for reason in self.selection.not_scanned:
            log.warning("scan: not scanned: %s", reason)
        self._excluded = frozenset(settings.exclude_namespaces)
        self._entries: dict[Key, _Entry] = {}
        self._by_namespace: dict[str, set[Key]] = {}
        self._pending: dict[Key, tuple[Resource, Mapping[str, Any]]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        self._dirty: set[str] = set()
        self._dirty_event = asyncio.Event()
        self._synced = False
        self._pass_started: float | None = None
        self._judge_bucket = TokenBucket(settings.objects_per_second, settings.burst)
        self.writer = ReportWriter(rest, settings, self.metrics)
        self._reflectors: list[Reflector] = []
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Find the reports written before, then list and watch every selected kind."""
        await self.writer.seed()
        for resource in self.selection.resources:
            reflector = Reflector(
                f"scan {resource.plural}",
                self.rest.lister(resource.path()),
                self.kube,
                functools.partial(self._replaced, resource),
                functools.partial(self._event, resource),
            )
            self._reflectors.append(reflector)
        for reflector in self._reflectors:
            await reflector.start()
        self._tasks = [asyncio.create_task(self._worker(), name="scan-judge") for _ in range(_WORKERS)]

    async def wait_synced(self, timeout: float | None = None, *, strict: bool = True) -> None:
        """Until every kind was listed and every listed object judged once.

        A kind not listed within ``timeout`` (RBAC refuses it, the API server is down) raises
        ``ApiServerError`` when ``strict``; otherwise it is logged and the others go ahead (its
        reflector keeps retrying, and its objects join the reports once listed).
        """
        for reflector in self._reflectors:
            if not await reflector.wait_ready(timeout):
                message = f"{reflector.what}: not listed in time ({reflector.last_error or 'no answer'})"
                if strict:
                    raise errors.ApiServerError(message)
                log.error("scan: %s; reporting the other kinds meanwhile", message)
        await self._idle.wait()
        self._synced = True

    async def run(self) -> None:
        """The scan loop (while leading): sync, write everything, then follow changes until cancelled."""
        self.metrics.leader = True
        try:
            await self.start()
            await self.wait_synced(max(60.0, self.kube.request_timeout * 10), strict=False)
            writer = asyncio.create_task(self._writer(), name="scan-writer")
            self._tasks.append(writer)
            self._mark_all_dirty()
            interval = self.settings.rescan_interval
            while True:
                await asyncio.sleep(interval if interval > 0 else 3600)
                if interval > 0:
                    self.rescan()
        finally:
            self.metrics.leader = False
            await self.close()

    async def once(self) -> None:
        """One full scan: list, judge everything, write every report, stop."""
        await self.start()
        try:
            await self.wait_synced(self.kube.request_timeout * 10)
            self._mark_all_dirty()
            failed = await self.flush()
            if failed:
                raise errors.ApiServerError(f"the reports of {failed} namespace(s) could not be written (see the log)")
        finally:
            await self.close()

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        reflectors, self._reflectors = self._reflectors, []
        for reflector in reflectors:
            await reflector.close()

    def namespace_changed(self, namespace: str, _labels: Mapping[str, str]) -> None:
        """Judge a namespace's objects again: its labels set Pod Security levels and check modes.

        Called by the namespace directory after it stored the new labels, so the pipeline
        already judges with them."""
        for key in sorted(self._by_namespace.get(namespace, ())):
            entry = self._entries[key]
            self._enqueue(key, entry.resource, entry.obj)

    def rescan(self) -> None:
        """Judge every known object again (policies, image verdicts and labels change on their own)."""
        self._begin_pass(len(self._entries))
        for key, entry in self._entries.items():
            self._enqueue(key, entry.resource, entry.obj)

    # -- what the watches deliver (event loop) -----------------------------------------------
    def _key(self, resource: Resource, obj: Mapping[str, Any]) -> tuple[Key, str] | None:
        meta = obj.get("metadata")
        if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
            return None
        namespace = meta.get("namespace") if resource.namespaced else ""
        if not isinstance(namespace, str) or namespace in self._excluded:
            return None
        return (resource.group, resource.plural, namespace, meta["name"]), namespace

    def _replaced(self, resource: Resource, items: list[Mapping[str, Any]]) -> None:
        seen: set[Key] = set()
        self._begin_pass(len(items))
        for obj in items:
            found = self._key(resource, obj)
            if found is not None:
                seen.add(found[0])
                self._enqueue(found[0], resource, obj)
        for key in [k for k, e in self._entries.items() if e.resource == resource and k not in seen]:
            self._forget(key)

    def _event(self, resource: Resource, kind: str, obj: Mapping[str, Any]) -> None:
        found = self._key(resource, obj)
        if found is None:
            return
        if kind == "DELETED":
            self._forget(found[0])
        else:
            self._enqueue(found[0], resource, obj)

    def _enqueue(self, key: Key, resource: Resource, obj: Mapping[str, Any]) -> None:
        namespace = key[2]
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = _Entry(resource, namespace, obj)
            self._by_namespace.setdefault(namespace, set()).add(key)
        else:
            entry.obj = obj
        self._pending[key] = (resource, obj)
        self.metrics.queue = len(self._pending)
        self._idle.clear()
        self._wake.set()

    def _forget(self, key: Key) -> None:
        self._pending.pop(key, None)
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._by_namespace.get(entry.namespace, set()).discard(key)
            self._mark_dirty(entry.namespace)
        self._check_idle()

    def _begin_pass(self, count: int) -> None:
        if self._pass_started is None:
            self._pass_started = time.monotonic()
            self.metrics.listed = 0
            self.metrics.done = 0
        self.metrics.listed += count

    # -- judging -------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            key = next(iter(self._pending))
            resource, obj = self._pending.pop(key)
            self.metrics.queue = len(self._pending)
            self._in_flight += 1
            try:
                await self._judge_bucket.take()
                await self._judge(key, resource, obj)
            except Exception:  # one object must never stop the scan
                log.exception("scan: judging %s/%s failed", resource.kind, key[3])
            finally:
                self._in_flight -= 1
                self.metrics.done += 1
                self._check_idle()

    async def _judge(self, key: Key, resource: Resource, obj: Mapping[str, Any]) -> None:
        namespace, name = key[2], key[3]
        meta = obj.get("metadata") or {}
        raw_uid = meta.get("uid") if isinstance(meta, Mapping) else None
        uid = raw_uid if isinstance(raw_uid, str) else ""
        ref = reports.ObjectRef(resource.api_version, resource.kind, namespace, name, uid)
        full = {**obj, "apiVersion": resource.api_version, "kind": resource.kind}  # list items lack both
        subject = Subject("CREATE", resource.kind, namespace, name, full, uid=uid, dry_run=True)
        pod_kind = workloads.carries_pod_spec(resource.kind)
        now = self._clock()
        try:
            outcome = await self.pipeline.evaluate(subject, Deadline.after(self.settings.budget_seconds))
            results = reports.results_for(ref, outcome, self.check_ids, now=now)
        except errors.ReviewError as exc:
            results = reports.error_results(ref, self.check_ids, str(exc), pod_kind=pod_kind, now=now)
        self.metrics.judged[resource.kind] += 1
        entry = self._entries.get(key)
        if entry is None or entry.obj is not obj:
            return  # deleted, or a newer version is queued: its judgement counts
        old = {r["policy"]: r for r in entry.results}
        for result in results:
            self.metrics.results[result["result"]] += 1
            before = old.get(result["policy"])
            if before is not None and reports.same_result(before, result):
                result["timestamp"] = before["timestamp"]  # unchanged: keep when it was found
        if results != entry.results:
            entry.results = results
            self._mark_dirty(namespace)

    def _check_idle(self) -> None:
        if not self._pending and self._in_flight == 0 and not self._idle.is_set():
            self._idle.set()
            if self._pass_started is not None:
                self.metrics.last_pass_seconds = time.monotonic() - self._pass_started
                self.metrics.passes += 1
                self._pass_started = None

    # -- writing reports -----------------------------------------------------------------
    def _mark_dirty(self, namespace: str) -> None:
        self._dirty.add(namespace)
        if self._synced:
            self._dirty_event.set()

    def _mark_all_dirty(self) -> None:
        self._dirty |= set(self._by_namespace) | self.writer.namespaces()
        self._dirty_event.set()

    async def _writer(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            # let a burst of changes settle (a rollout touches many pods at once). Not
            # ``wait_for``: on Python 3.11 it drops a cancel that lands as the wait ends, and
            # this loop would then outlive ``close()`` (seen as a hung shutdown under load).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._idle.wait()
            await self.flush()

    async def flush(self) -> int:
        """Write the report of every namespace whose results changed; returns how many failed
        (they stay marked, so the next change or re-judgement writes them again)."""
        failed: set[str] = set()
        while self._dirty:
            batch, self._dirty = sorted(self._dirty), set()
            # a few namespaces at a time: each write is a round trip; the write rate limit still holds
            for start in range(0, len(batch), _WRITERS):
                chunk = batch[start : start + _WRITERS]
                done = await asyncio.gather(*(self.writer.write(ns, self.results(ns)) for ns in chunk))
                failed |= {ns for ns, ok in zip(chunk, done, strict=True) if not ok}
        self._dirty |= failed
        return len(failed)

    @property
    def object_count(self) -> int:
        return len(self._entries)

    def namespaces(self) -> list[str]:
        return sorted(ns for ns, keys in self._by_namespace.items() if keys)

    def results(self, namespace: str) -> list[dict[str, Any]]:
        return [r for key in self._by_namespace.get(namespace, ()) for r in self._entries[key].results]
