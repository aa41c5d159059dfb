"""GPU usage per quota: pods seen by the watch plus reservations of admitted pods not yet seen.

Fed by ``quota.watch`` (on the event loop thread only, so check-and-reserve is atomic without
locks) and read by the gpu check. Every operation is O(charges of one pod): a check looks up
a handful of integer totals, never walks the pods. Reservations expire after a TTL (a pod
admitted here may still be refused by a later webhook and never appear); they sit in a FIFO
in expiry order, so purging is amortized O(1).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from webhook.quota.model import Charge, Demand


class QuotaView(NamedTuple):
    """One quota's state as a check saw it (units; see ``QuotaModel.scale``)."""

    key: str
    rule: str
    scope: str
    used: int
    reserved: int
    limit: int
    asked: int = 0

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used - self.reserved)

    @property
    def fits(self) -> bool:
        return self.used + self.reserved + self.asked <= self.limit


@dataclass(slots=True)
class PodRecord:
    """A pod the watch has seen, with what it charges."""

    namespace: str
    name: str
    demand: Demand
    charges: tuple[Charge, ...]
    team: str | None = None


@dataclass(slots=True)
class _Reservation:
    keys: tuple[str, ...]
    charges: tuple[Charge, ...]
    expires: float
    live: bool = True


class Ledger:
    """Used and reserved units per quota key, with the pods and reservations behind them."""

    def __init__(self, reservation_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = reservation_ttl
        self._clock = clock
        self.used: dict[str, int] = {}
        self.reserved: dict[str, int] = {}
        self.remote_reserved: dict[str, int] = {}  # last totals read from the API server (metrics)
        # Every GPU pod's units by "namespace=<ns>" and "team=<team>", quota or not (Rego input).
        self.group_used: dict[str, int] = {}
        self._quotas: dict[str, Charge] = {}  # key -> a charge naming it (rule, scope, limit)
        self._pods: dict[str, PodRecord] = {}
        self._by_namespace: dict[str, set[str]] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._expiry: deque[_Reservation] = deque()
        self._seen: dict[str, float] = {}
        self._seen_order: deque[tuple[float, str]] = deque()
        self.version = 0  # bumped on every change the watch makes (tests wait on it)

    # -- fed by the watch ------------------------------------------------------------------
    def replace(self, pods: Iterable[tuple[str, PodRecord]]) -> None:
        """Forget every pod and take these (after a full list). Reservations stay."""
        self._pods.clear()
        self._by_namespace.clear()
        self.used.clear()
        self.group_used.clear()
        for uid, record in pods:
            self._insert(uid, record)
        self.version += 1

    def upsert(self, uid: str, record: PodRecord) -> None:
        """A pod that holds GPUs (added or modified); it ends any reservation made for it."""
        old = self._pods.get(uid)
        if old is not None:
            self._remove(uid, old)
        self._insert(uid, record)
        self.version += 1

    def remove(self, uid: str) -> None:
        """A pod deleted, or finished (Succeeded / Failed): its GPUs are free."""
        old = self._pods.get(uid)
        if old is not None:
            self._remove(uid, old)
        self.version += 1

    def recharge(
        self,
        namespace: str,
        charges_of: Callable[[PodRecord], tuple[Charge, ...]],
        labels: Mapping[str, str],
        team_label: str = "team",
    ) -> None:
        """Recompute the charges of a namespace's pods (its team label changed)."""
        for uid in list(self._by_namespace.get(namespace, ())):
            record = self._pods[uid]
            self._remove(uid, record)
            record.charges = charges_of(record)
            record.team = labels.get(team_label)
            self._insert(uid, record)
        self.version += 1

    def seen(self, key: str) -> bool:
        """Whether the watch saw this pod (uid or "namespace/name") within the reservation TTL."""
        return key in self._seen

    def __len__(self) -> int:
        return len(self._pods)

    # -- used by the check -----------------------------------------------------------------
    def admit(
        self, keys: tuple[str, ...], charges: tuple[Charge, ...], *, reserve: bool
    ) -> tuple[bool, list[QuotaView]]:
        """Check every charge and, when all fit and ``reserve``, reserve them atomically.

        ``keys`` name the pod (its uid first when known, then "namespace/name") so the watch can
        end the reservation when it sees the pod. Returns (admitted, views).
        """
        self._purge(self._clock())
        used, reserved = self.used, self.reserved
        views = []
        admitted = True
        for key, rule, scope, units, limit in charges:
            u, r = used.get(key, 0), reserved.get(key, 0)
            if u + r + units > limit:
                admitted = False
            views.append(QuotaView(key, rule, scope, u, r, limit, units))
        if admitted and reserve and charges:
            self.reserve(keys, charges)
        return admitted, views

    def reserve(self, keys: tuple[str, ...], charges: tuple[Charge, ...]) -> None:
        """Hold ``charges`` for the pod named by ``keys[0]`` (its uid when the review has one).

        Only that identity replaces an earlier reservation (the same pod admitted again). A
        namespace/name is not one: a second CREATE of a name (which etcd refuses, after
        admission) must not free the reservation of the pod that holds the name.
        """
        identity = keys[0]
        previous = self._reservations.get(identity)
        if previous is not None:
            self._release(previous)
        reservation = _Reservation((identity,), charges, self._clock() + self.ttl)
        self._reservations[identity] = reservation
        reserved = self.reserved
        for charge in charges:
            reserved[charge.key] = reserved.get(charge.key, 0) + charge.units
            self._quotas.setdefault(charge.key, charge)
        self._expiry.append(reservation)

    def release(self, keys: tuple[str, ...]) -> None:
        """Drop the reservation of the pod named by ``keys[0]`` (its admission was refused after
        all); never another pod's that shares its namespace/name."""
        reservation = self._reservations.get(keys[0]) if keys else None
        if reservation is not None:
            self._release(reservation)

    def quotas(self) -> Iterator[QuotaView]:
        """Every quota key known so far, for metrics."""
        self._purge(self._clock())
        for key in sorted(self._quotas):
            charge = self._quotas[key]
            reserved = self.reserved.get(key, 0) + self.remote_reserved.get(key, 0)
            yield QuotaView(key, charge.rule, charge.scope, self.used.get(key, 0), reserved, charge.limit)

    def note_quota(self, charge: Charge) -> None:
        self._quotas.setdefault(charge.key, charge)

    # -- internals -------------------------------------------------------------------------
    def _insert(self, uid: str, record: PodRecord) -> None:
        self._pods[uid] = record
        self._by_namespace.setdefault(record.namespace, set()).add(uid)
        used = self.used
        for charge in record.charges:
            used[charge.key] = used.get(charge.key, 0) + charge.units
            self._quotas.setdefault(charge.key, charge)
        self._group(record, 1)
        now = self._clock()
        for key in (uid, f"{record.namespace}/{record.name}"):
            # by uid, or by namespace/name for a pod reviewed without a uid (never both: see reserve)
            reservation = self._reservations.get(key)
            if reservation is not None:
                self._release(reservation)
            if key not in self._seen:
                self._seen_order.append((now + self.ttl, key))
            self._seen[key] = now
        self._prune_seen(now)

    def _remove(self, uid: str, record: PodRecord) -> None:
        del self._pods[uid]
        members = self._by_namespace.get(record.namespace)
        if members is not None:
            members.discard(uid)
            if not members:
                del self._by_namespace[record.namespace]
        used = self.used
        for charge in record.charges:
            left = used.get(charge.key, 0) - charge.units
            if left > 0:
                used[charge.key] = left
            else:
                used.pop(charge.key, None)
        self._group(record, -1)

    def _group(self, record: PodRecord, sign: int) -> None:
        units = sign * sum(record.demand.units.values())
        groups = self.group_used
        for group in (f"namespace={record.namespace}", f"team={record.team}" if record.team else None):
            if group is not None:
                total = groups.get(group, 0) + units
                if total > 0:
                    groups[group] = total
                else:
                    groups.pop(group, None)

    def _release(self, reservation: _Reservation) -> None:
        if not reservation.live:
            return
        reservation.live = False
        for key in reservation.keys:
            if self._reservations.get(key) is reservation:
                del self._reservations[key]
        reserved = self.reserved
        for charge in reservation.charges:
            left = reserved.get(charge.key, 0) - charge.units
            if left > 0:
                reserved[charge.key] = left
            else:
                reserved.pop(charge.key, None)

    def _purge(self, now: float) -> None:
        expiry = self._expiry
        while expiry and (expiry[0].expires <= now or not expiry[0].live):
            self._release(expiry.popleft())

    def _prune_seen(self, now: float) -> None:
        order = self._seen_order
        while order and order[0][0] <= now:
            _, key = order.popleft()
            seen_at = self._seen.get(key)
            if seen_at is not None and seen_at + self.ttl <= now:
                del self._seen[key]
            elif seen_at is not None:
                order.append((seen_at + self.ttl, key))
