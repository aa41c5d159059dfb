"""A pod's effective resource requests, computed exactly as kube-scheduler does (evaluate stage).

``resourcehelper.PodRequests``: the sum of the regular containers and of the sidecars
(init containers with ``restartPolicy: Always``), against the largest init container, where
an init container also holds every sidecar started before it; the larger wins, then the pod
``overhead`` is added. A container that sets a limit but no request for a resource requests its
limit (the API server's defaulting), so manifests judged in CI count like admitted pods; one
whose request and limit differ (the API server refuses that for an extended resource) counts
the larger, since the kubelet's device manager hands out the limit.
Pod-level ``spec.resources`` only covers cpu and memory upstream, so it never changes GPUs.

Amounts the API server's validation refuses are refused here too (``FieldError``), so nothing
counts lower than a device plugin would hand out: negative amounts (they would offset another
container's), fractions of an extended resource (devices are not divisible;
``ValidateResourceQuantityValue``), and any counted resource on an ephemeral container (which
may set no resources at all). The API server never stores such a pod; CI manifests may hold one.
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


class FieldError(quantity.QuantityError):
    """A field the GPU arithmetic reads has the wrong JSON type or holds an invalid quantity.

    ``field`` is its path inside the pod spec ("containers[0].resources.limits"); the check puts
    the pod spec's own path in front. The API server would refuse such a pod, so judging it as
    unreadable (a violation) never blocks a valid one.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


_QUANTITIES = "must be an object of quantities"


def container_requests(
    container: Mapping[str, Any], counts: Counts, field: str = "containers", index: int = 0, stored: bool = False
) -> dict[str, int]:
    """Requests (milli-units) of the counted resources of one container, limits filling gaps
    (and winning over a smaller request: devices are allocated by the limit).

    ``field[index]`` is where the container sits in the pod spec, for ``FieldError`` (the path is
    only built on error: this runs for every container of every pod). Every counted limit is read,
    even one its request overrides, so an invalid one is reported whatever the rules. ``stored``:
    see ``pod_requests``.
    """
    if not (type(container) is dict or isinstance(container, Mapping)):
        raise FieldError(f"{field}[{index}]", "must be an object")
    resources = container.get("resources")
    if not resources:
        return {}
    if not (type(resources) is dict or isinstance(resources, Mapping)):
        raise FieldError(f"{field}[{index}].resources", "must be an object with requests and limits")
    requests = resources.get("requests")
    if requests is None:
        requests = _EMPTY
    elif not (type(requests) is dict or isinstance(requests, Mapping)):
        raise FieldError(f"{field}[{index}].resources.requests", _QUANTITIES)
    limits = resources.get("limits")
    if limits is None:
        limits = _EMPTY
    elif not (type(limits) is dict or isinstance(limits, Mapping)):
        raise FieldError(f"{field}[{index}].resources.limits", _QUANTITIES)
    out: dict[str, int] = {}
    section, name = "requests", ""
    milli = quantity.milli
    try:
        for name, value in requests.items():
            if counts(name):
                out[name] = _valid(name, milli(value), stored)
        section = "limits"
        for name, value in limits.items():
            if counts(name):
                amount = _valid(name, milli(value), stored)
                if amount > out.get(name, -1):
                    out[name] = amount
    except quantity.QuantityError as exc:
        raise FieldError(f"{field}[{index}].resources.{section}[{name}]", str(exc)) from None
    return out


def pod_requests(spec: Mapping[str, Any], counts: Counts, stored: bool = False) -> dict[str, int]:
    """Effective requests (milli-units) of the counted resources; empty when the pod asks none.

    Raises ``FieldError`` (a ``QuantityError``) for a field of the wrong type or a quantity that
    does not parse, or (unless ``stored``) an amount the API server refuses. ``stored`` is for
    pods the API server already holds (the pod watch): they are counted as what they get, never
    dropped, so a negative amount counts 0 and a fraction of an extended resource whole devices.
    """
    total: dict[str, int] = {}
    for index, container in enumerate(_containers(spec, "containers")):
        _add(total, container_requests(container, counts, "containers", index, stored))
    init_containers = _containers(spec, "initContainers")
    if init_containers:
        # Upstream also takes the max with the running sidecar sum after each sidecar; ``total``
        # already holds every sidecar, so only a regular init container (plus the sidecars
        # started before it) can raise the peak.
        sidecars: dict[str, int] = {}
        init_peak: dict[str, int] = {}
        for index, container in enumerate(init_containers):
            own = container_requests(container, counts, "initContainers", index, stored)
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
    overhead = _quantities(spec.get("overhead"), "overhead", "")
    if overhead:
        _add(total, {k: _milli(v, "overhead", k, stored) for k, v in overhead.items() if counts(k)})
    ephemeral = spec.get("ephemeralContainers")
    if ephemeral and not stored:
        for index, container in enumerate(_containers(spec, "ephemeralContainers")):
            if container_requests(container, counts, "ephemeralContainers", index):
                raise FieldError(
                    f"ephemeralContainers[{index}].resources",
                    "an ephemeral container may not set resources (the API server refuses them); "
                    "request GPUs in containers",
                )
    return {k: v for k, v in total.items() if v}


def mismatches(spec: Mapping[str, Any], counts: Counts) -> Iterator[Mismatch]:
    """Containers whose request of a counted resource is set and differs from its limit (or
    that request one without a limit). A limit without a request is fine: the request defaults
    to it. Raises ``FieldError`` like ``pod_requests``."""
    for field in ("initContainers", "containers"):
        for index, container in enumerate(_containers(spec, field)):
            where = f"{field}[{index}]"
            if not _is_object(container):
                raise FieldError(where, "must be an object")
            resources = container.get("resources")
            if not resources:
                continue
            if not _is_object(resources):
                raise FieldError(f"{where}.resources", "must be an object with requests and limits")
            limits = _quantities(resources.get("limits"), where, "limits")
            for name, req in _quantities(resources.get("requests"), where, "requests").items():
                lim = limits.get(name)
                if req == lim or not counts(name):
                    continue
                if lim is None or _exact(req, f"{where}.resources.requests", name) != _exact(
                    lim, f"{where}.resources.limits", name
                ):
                    yield Mismatch(field, index, _name(container, index), name, str(req), str(lim))


def _is_object(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)


def _containers(spec: Mapping[str, Any], field: str) -> list[Any]:
    listed = spec.get(field)
    if listed is None:
        return []
    if not isinstance(listed, list):
        raise FieldError(field, "must be a list of containers")
    return listed


def _quantities(value: Any, where: str, section: str) -> Mapping[str, Any]:
    """``value`` as a name -> quantity object: empty when unset, ``FieldError`` when not an object."""
    if value is None:
        return _EMPTY
    if type(value) is dict or isinstance(value, Mapping):
        return value
    raise FieldError(f"{where}.resources.{section}" if section else where, _QUANTITIES)


_EMPTY: Mapping[str, Any] = {}


def _milli(value: Any, where: str, name: str, stored: bool) -> int:
    try:
        return _valid(name, quantity.milli(value), stored)
    except quantity.QuantityError as exc:
        raise FieldError(f"{where}[{name}]", str(exc)) from None


def _valid(name: str, milli: int, stored: bool) -> int:
    """``milli`` when the API server would accept it for ``name``; else ``QuantityError``, or for a
    ``stored`` pod what it gets: nothing for a negative amount, whole devices for a fraction."""
    if stored:
        if milli % 1000 and _extended(name):
            milli += 1000 - milli % 1000
        return max(milli, 0)
    if milli < 0:
        raise quantity.QuantityError(f"{_shown(milli)} must not be negative")
    if milli % 1000 and _extended(name):
        raise quantity.QuantityError(
            f"{_shown(milli)} is not a whole number: {name} is an extended resource, whose devices "
            "cannot be divided (the API server refuses fractions of it)"
        )
    return milli


def _extended(name: str) -> bool:
    """Whether ``name`` is an extended resource (upstream ``IsExtendedResourceName``): it has a
    domain, not kubernetes.io's (save a DRA device class asked for by name), and is not a quota's
    ``requests.`` name. Those take whole amounts."""
    if name.startswith(DEVICE_CLASS_RESOURCE):
        return True
    return "/" in name and "kubernetes.io/" not in name and not name.startswith("requests.")


DEVICE_CLASS_RESOURCE = "deviceclass.resource.kubernetes.io/"  # DRAExtendedResource's implicit names


def _shown(milli: int) -> str:
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def _exact(value: Any, where: str, name: str) -> Any:
    try:
        return quantity.parse(value)
    except quantity.QuantityError as exc:
        raise FieldError(f"{where}[{name}]", str(exc)) from None


def _name(container: Mapping[str, Any], index: int) -> str:
    name = container.get("name")
    return name if isinstance(name, str) else str(index)


def _add(into: dict[str, int], other: Mapping[str, int]) -> None:
    for name, value in other.items():
        into[name] = into.get(name, 0) + value


def _max(into: dict[str, int], other: Mapping[str, int]) -> None:
    for name, value in other.items():
        if value > into.get(name, 0):
            into[name] = value
