"""Where reservations live: in this process (one replica) or in the API server (many replicas).

``apiserver``: each quota key has one ConfigMap holding the live reservations of admitted pods
not yet seen by the watch. A replica reads it, checks used (its watch) + reserved (the map)
+ asked against the limit, and writes its entry back with the ``resourceVersion`` it read; a
stale version gets ``409 Conflict``, so it re-reads and decides again. etcd orders the writes:
two replicas can never both take the last GPU. Entries carry an absolute expiry (wall clock,
shared by replicas) and are skipped once the reader's own watch has seen the pod.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any, Protocol

import kubernetes.client

from webhook import errors
from webhook.core.deadline import Deadline
from webhook.kube import client
from webhook.quota.ledger import Ledger, QuotaView
from webhook.quota.model import Charge, QuotaModel

_DATA_KEY = "reservations.json"
_MANAGED_BY = {"app.kubernetes.io/managed-by": "portcullis", "portcullis.dev/role": "gpu-reservations"}


class Coordinator(Protocol):
    does_io: bool

    async def admit(
        self, keys: tuple[str, ...], charges: tuple[Charge, ...], *, reserve: bool, deadline: Deadline
    ) -> tuple[bool, list[QuotaView]]: ...

    async def release(self, keys: tuple[str, ...], charges: tuple[Charge, ...], deadline: Deadline) -> None:
        """Give back what ``admit`` reserved for a pod the final verdict denied (best effort)."""
        ...


class LocalCoordinator:
    """Reservations in the ledger: atomic because the event loop runs one check at a time."""

    does_io = False

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def admit(
        self, keys: tuple[str, ...], charges: tuple[Charge, ...], *, reserve: bool, deadline: Deadline
    ) -> tuple[bool, list[QuotaView]]:
        return self._ledger.admit(keys, charges, reserve=reserve)

    async def release(self, keys: tuple[str, ...], charges: tuple[Charge, ...], deadline: Deadline) -> None:
        self._ledger.release(keys)


class ApiServerCoordinator:
    """Reservations in one ConfigMap per quota key, updated by compare-and-swap."""

    does_io = True

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        namespace: str,
        ledger: Ledger,
        model: QuotaModel,
        *,
        ttl: float,
        request_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._core = kubernetes.client.CoreV1Api(api)
        self._namespace = namespace
        self._ledger = ledger
        self._model = model
        self._ttl = ttl
        self._timeout = request_timeout
        self._clock = clock
        self.conflicts = 0  # 409s met (and retried); for tests and logs

    async def admit(
        self, keys: tuple[str, ...], charges: tuple[Charge, ...], *, reserve: bool, deadline: Deadline
    ) -> tuple[bool, list[QuotaView]]:
        fits, views = self._ledger.admit(keys, charges, reserve=False)  # used alone: no I/O to deny
        if not fits or not charges:
            return fits, views
        pod_key = keys[0]
        done: list[Charge] = []
        views = []
        for charge in sorted(charges, key=lambda c: c.key):  # a fixed order keeps replicas fair
            view = await self._reserve_one(charge, pod_key, reserve, deadline)
            views.append(view)
            if not view.fits:
                for taken in done:
                    await self._drop(taken, pod_key, deadline)
                return False, views
            done.append(charge)
        return True, views

    async def _reserve_one(self, charge: Charge, pod_key: str, reserve: bool, deadline: Deadline) -> QuotaView:
        name = configmap_name(charge.key)
        while True:
            current = await self._read(name, deadline)
            now = self._clock()
            entries = _live(current, now)
            reserved = sum(self._units(e) for k, e in entries.items() if k != pod_key and not self._ledger.seen(k))
            self._ledger.remote_reserved[charge.key] = reserved
            self._ledger.note_quota(charge)
            view = QuotaView(
                charge.key,
                charge.rule,
                charge.scope,
                self._ledger.used.get(charge.key, 0),
                reserved,
                charge.limit,
                charge.units,
            )
            if not view.fits or not reserve:
                return view
            entries[pod_key] = {"gpus": str(Fraction(charge.units, self._model.scale)), "expires": now + self._ttl}
            if await self._write(name, charge.key, current, entries, deadline):
                self._ledger.remote_reserved[charge.key] = reserved + charge.units
                return view
            self.conflicts += 1  # someone wrote first: read again and decide again

    async def release(self, keys: tuple[str, ...], charges: tuple[Charge, ...], deadline: Deadline) -> None:
        for charge in sorted(charges, key=lambda c: c.key):
            await self._drop(charge, keys[0], deadline)
            left = self._ledger.remote_reserved.get(charge.key, 0) - charge.units
            self._ledger.remote_reserved[charge.key] = max(0, left)

    async def _drop(self, charge: Charge, pod_key: str, deadline: Deadline) -> None:
        """Best effort: take back a reservation of a pod denied after all (else it expires)."""
        name = configmap_name(charge.key)
        try:
            for _ in range(5):
                current = await self._read(name, deadline)
                entries = _live(current, self._clock())
                if current is None or entries.pop(pod_key, None) is None:
                    return
                if await self._write(name, charge.key, current, entries, deadline):
                    return
        except errors.UpstreamError:
            return

    def _units(self, entry: Mapping[str, Any]) -> int:
        try:
            gpus = Fraction(str(entry.get("gpus", "0")))
        except (ValueError, ZeroDivisionError):
            return 0
        return -(-gpus.numerator * self._model.scale // gpus.denominator)  # ceil: never under-count

    async def _read(self, name: str, deadline: Deadline) -> dict[str, Any] | None:
        what = f"read GPU reservations {self._namespace}/{name}"
        try:
            response = await client.call(
                deadline,
                what,
                self._core.read_namespaced_config_map,
                name,
                self._namespace,
                _preload_content=False,
                _request_timeout=deadline.cap(self._timeout),
            )
        except client.ApiStatusError as exc:
            if exc.status == 404:
                return None
            raise
        decoded: dict[str, Any] = client.read_json(response)
        return decoded

    async def _write(
        self, name: str, key: str, current: Mapping[str, Any] | None, entries: Mapping[str, Any], deadline: Deadline
    ) -> bool:
        """Create or replace the map at the version read; False on 409 Conflict / AlreadyExists."""
        data = {_DATA_KEY: json.dumps(entries, sort_keys=True, separators=(",", ":"))}
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": self._namespace,
            "labels": _MANAGED_BY,
            "annotations": {"portcullis.dev/quota": key},
        }
        what = f"write GPU reservations {self._namespace}/{name}"
        timeout = deadline.cap(self._timeout)
        try:
            if current is None:
                body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
                await client.call(
                    deadline,
                    what,
                    self._core.create_namespaced_config_map,
                    self._namespace,
                    body,
                    _preload_content=False,
                    _request_timeout=timeout,
                )
            else:
                metadata["resourceVersion"] = (current.get("metadata") or {}).get("resourceVersion")
                body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
                await client.call(
                    deadline,
                    what,
                    self._core.replace_namespaced_config_map,
                    name,
                    self._namespace,
                    body,
                    _preload_content=False,
                    _request_timeout=timeout,
                )
        except client.ApiStatusError as exc:
            if exc.status == 409:
                return False
            raise
        return True


def configmap_name(key: str) -> str:
    """A valid, stable ConfigMap name for a quota key.

    "gpus/team=Vision" → "portcullis-gpu-gpus-team-vision-<8 hex of its hash>" (the hash keeps
    keys that differ only in case or punctuation apart).
    """
    slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")[:200]
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"portcullis-gpu-{slug}-{digest}"


def _live(configmap: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    if configmap is None:
        return {}
    raw = (configmap.get("data") or {}).get(_DATA_KEY) or "{}"
    try:
        entries = json.loads(raw)
    except ValueError:
        return {}  # a corrupt map is rewritten whole on the next reservation
    if not isinstance(entries, dict):
        return {}
    return {
        k: e
        for k, e in entries.items()
        if isinstance(e, dict) and isinstance(e.get("expires"), int | float) and e["expires"] > now
    }
