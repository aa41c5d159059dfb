"""A pod's effective resource requests, computed exactly as kube-scheduler does (evaluate stage).

``resourcehelper.PodRequests``: the sum of the regular containers and of the sidecars
(init containers with ``restartPolicy: Always``), against the largest init container, where
an init container also holds every sidecar started before it; the larger wins, then the pod
``overhead`` is added. A container that sets a limit but no request for a resource requests its
limit (the API server's defaulting), so manifests judged in CI count like admitted pods.
Pod-level ``spec.resources`` only covers cpu and memory upstream, so it never changes GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from webhook.quota import quantity

Counts = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A container whose request of a counted resource differs from its limit."""

    field: str
    index: int
    name: str
    resource: str
    request: str
    limit: str


def container_requests(container: Mapping[str, Any], counts: Counts) -> dict[str, int]:
    """Requests (milli-units) of the counted resources of one container, limits filling gaps."""
    resources = container.get("resources")
    if not resources:
        return {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    out: dict[str, int] = {}
    for name, value in requests.items():
        if counts(name):
            out[name] = quantity.milli(value)
    for name, value in limits.items():
        if name not in requests and counts(name):
            out[name] = quantity.milli(value)
    return out


def pod_requests(spec: Mapping[str, Any], counts: Counts) -> dict[str, int]:
    """Effective requests (milli-units) of the counted resources; empty when the pod asks none.

    Raises ``QuantityError`` for a quantity that does not parse.
    """
    total: dict[str, int] = {}
    for container in spec.get("containers") or ():
        _add(total, container_requests(container, counts))
    init_containers = spec.get("initContainers")
    if init_containers:
        # Upstream also takes the max with the running sidecar sum after each sidecar; ``total``
        # already holds every sidecar, so only a regular init container (plus the sidecars
        # started before it) can raise the peak.
        sidecars: dict[str, int] = {}
        init_peak: dict[str, int] = {}
        for container in init_containers:
            own = container_requests(container, counts)
            if not own:
                continue
            if container.get("restartPolicy") == "Always":
                _add(total, own)
                _add(sidecars, own)
            else:
                if sidecars:
                    _add(own, sidecars)
                _max(init_peak, own)
        if init_peak:
            _max(total, init_peak)
    overhead = spec.get("overhead")
    if overhead:
        _add(total, {k: quantity.milli(v) for k, v in overhead.items() if counts(k)})
    return {k: v for k, v in total.items() if v}


def mismatches(spec: Mapping[str, Any], counts: Counts) -> Iterator[Mismatch]:
    """Containers whose request of a counted resource is set and differs from its limit (or
    that request one without a limit). A limit without a request is fine: the request defaults
    to it."""
    for field in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(field) or ()):
            resources = container.get("resources")
            if not resources:
                continue
            limits = resources.get("limits") or {}
            for name, req in (resources.get("requests") or {}).items():
                lim = limits.get(name)
                if req == lim or not counts(name):
                    continue
                if lim is None or quantity.parse(req) != quantity.parse(lim):
                    yield Mismatch(field, index, str(container.get("name", index)), name, str(req), str(lim))


def _add(into: dict[str, int], other: Mapping[str, int]) -> None:
    for name, value in other.items():
        into[name] = into.get(name, 0) + value


def _max(into: dict[str, int], other: Mapping[str, int]) -> None:
    for name, value in other.items():
        if value > into.get(name, 0):
            into[name] = value
