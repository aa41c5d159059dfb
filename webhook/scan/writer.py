"""PolicyReports onto the API server (record stage of scans): compare-and-swap writes.

A report is replaced with the ``metadata.resourceVersion`` it was read at; a ``409 Conflict``
(someone wrote in between) reads it again and retries. A report is written only when its content
changed, reports no longer wanted are deleted with a ``resourceVersion`` precondition, and every
write waits for the write rate limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from webhook import errors
from webhook.config.scan import ScanConfig
from webhook.scan import reports
from webhook.scan.api import Conflict, NotFound, RestApi
from webhook.scan.metrics import ScanMetrics

log = logging.getLogger("portcullis.scan")
_WRITE_RETRIES = 5
Known = dict[str, tuple[str, dict[str, Any]]]  # report name -> (resourceVersion, content)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; ``take`` waits for one."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self._clock = clock
        self._last = clock()

    async def take(self) -> None:
        while True:
            now = self._clock()
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
            self._last = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


class ReportWriter:
    """The reports of one scanner: what it wrote (version and content) and how to change them."""

    def __init__(self, rest: RestApi, settings: ScanConfig, metrics: ScanMetrics) -> None:
        self.rest = rest
        self.settings = settings
        self.metrics = metrics
        self._written: dict[str, Known] = {}  # namespace ("" = cluster) -> its reports
        self._bucket = TokenBucket(settings.writes_per_second, max(1, int(settings.writes_per_second)))

    def namespaces(self) -> set[str]:
        """Namespaces holding reports of ours (to delete the stale ones)."""
        return set(self._written)

    async def write(self, namespace: str, results: Sequence[Mapping[str, Any]]) -> bool:
        """Make the namespace's reports hold ``results``; False when the API server refused
        (logged and counted; the caller writes again on the next change)."""
        base = self.settings.report_name if namespace else self.settings.cluster_report_name
        desired = reports.reports(namespace, base, results)
        known = self._written.setdefault(namespace, {})
        try:
            for name, body in desired.items():
                await self._put(namespace, name, body, known)
            for name in sorted(set(known) - set(desired)):
                await self._bucket.take()
                await self.rest.delete(f"report {namespace}/{name}", reports.path(namespace, name), known.pop(name)[0])
                self.metrics.writes["delete"] += 1
        except errors.UpstreamError as exc:
            self.metrics.write_errors += 1
            where = namespace or "the cluster"
            log.warning("scan: writing the report of %s failed (written again on the next change): %s", where, exc)
            return False
        finally:
            if not known:
                self._written.pop(namespace, None)
        return True

    async def _put(self, namespace: str, name: str, body: dict[str, Any], known: Known) -> None:
        what = f"report {namespace or '(cluster)'}/{name}"
        path = reports.path(namespace, name)
        content = _content(body)
        cached = known.get(name)
        for _ in range(_WRITE_RETRIES):
            if cached is not None and cached[1] == content:
                return
            await self._bucket.take()
            if cached is None:
                current = await self.rest.get(what, path)
                if current is None:
                    try:
                        created = await self.rest.create(what, reports.path(namespace), body)
                    except Conflict:  # created meanwhile (another writer): read it and replace
                        self.metrics.conflicts += 1
                        continue
                    except NotFound:  # the namespace is gone; its reports went with it
                        return
                    known[name] = (_version(created), content)
                    self.metrics.writes["create"] += 1
                    return
                cached = known[name] = (_version(current), _content(current))
                continue
            update = {**body, "metadata": {**body["metadata"], "resourceVersion": cached[0]}}
            try:
                replaced = await self.rest.replace(what, path, update)
            except (Conflict, NotFound):  # changed or deleted since we read it: read again
                self.metrics.conflicts += 1
                known.pop(name, None)
                cached = None
                continue
            known[name] = (_version(replaced), content)
            self.metrics.writes["replace"] += 1
            return
        raise errors.ApiServerError(f"{what}: still conflicting after {_WRITE_RETRIES} attempts")

    async def seed(self) -> None:
        """Find the reports written before (by this or an earlier leader), so stale ones get
        replaced or deleted. Raises ``ApiServerError`` when the PolicyReport CRDs are missing."""
        selector = "app.kubernetes.io/managed-by=portcullis"
        for namespaced in (True, False):
            collection = f"/apis/{reports.API_VERSION}/" + ("policyreports" if namespaced else "clusterpolicyreports")
            try:
                listed = await self.rest.call("list PolicyReports", "GET", collection, labelSelector=selector)
            except NotFound as exc:
                raise errors.ApiServerError(
                    f"{collection}: the PolicyReport CRDs are not installed "
                    "(install the chart with scan.installCRDs=true, or Kyverno's or the wg-policy CRDs)"
                ) from exc
            for item in listed.get("items") or ():
                meta = item.get("metadata") or {}
                namespace = meta.get("namespace") or "" if namespaced else ""
                if isinstance(meta.get("name"), str):
                    self._written.setdefault(namespace, {})[meta["name"]] = (_version(item), _content(item))


def _version(obj: Mapping[str, Any]) -> str:
    value = (obj.get("metadata") or {}).get("resourceVersion")
    return str(value) if value else ""


def _content(obj: Mapping[str, Any]) -> dict[str, Any]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return {"labels": labels, "summary": obj.get("summary"), "results": obj.get("results") or []}
