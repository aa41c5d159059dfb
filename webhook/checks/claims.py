"""Dynamic Resource Allocation claims of a pod (decode, pure) and the device requests behind them,
looked up through the API server (``ClaimDirectory``). Used by ``checks.runtimeclass``.

A pod asks for DRA devices by naming, in ``spec.resourceClaims[]``, a ResourceClaim
(``resourceClaimName``) or a ResourceClaimTemplate (``resourceClaimTemplateName``) of its
namespace; which devices that means (``spec.devices.requests[]``: a DeviceClass and a count) is
only in that cluster object. ``resource.k8s.io/v1`` (GA in 1.34) and ``v1beta2`` nest a request's
fields under ``exactly`` or list alternatives in ``firstAvailable``; ``v1beta1`` has
``deviceClassName``/``count`` on the request itself. ``parse`` reads all three shapes.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from webhook import errors
from webhook.core import workloads
from webhook.core.deadline import Deadline
from webhook.core.workloads import PodSpecRef

ClaimKind = Literal["ResourceClaim", "ResourceClaimTemplate"]
ApiVersion = Literal["v1", "v1beta2", "v1beta1"]
_MAX_ENTRIES = 4096  # cached lookups; the oldest goes first
_Key = tuple[str, ClaimKind, str]  # namespace, kind, name


class ClaimLookupError(errors.ApiServerError):
    """A ResourceClaim or ResourceClaimTemplate could not be read (or made no sense)."""


@dataclass(frozen=True, slots=True)
class ClaimRef:
    """One ``spec.resourceClaims[]`` entry. ``kind``/``object_name`` are None when the entry names
    no claim or template this code understands (a future field, or a malformed manifest)."""

    name: str
    kind: ClaimKind | None
    object_name: str | None
    index: int

    def shown(self) -> str:
        target = f'{self.kind} "{self.object_name}"' if self.kind else "no claim or template it understands"
        return f'resource claim "{self.name}" ({target})'


@dataclass(frozen=True, slots=True)
class DeviceOption:
    """A way to satisfy a request: a DeviceClass (None when unset) and a count (None: mode ``All``
    or an allocation mode this code does not know, so no number can be given)."""

    device_class: str | None
    count: int | None


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """``spec.devices.requests[]``: one option, or several (``firstAvailable``, the first that fits)."""

    name: str
    options: tuple[DeviceOption, ...]


@dataclass(frozen=True, slots=True)
class ClaimSpec:
    requests: tuple[DeviceRequest, ...]

    def device_classes(self) -> frozenset[str | None]:
        return frozenset(o.device_class for r in self.requests for o in r.options)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a claim reference resolved to: its spec, or why it could not be determined."""

    spec: ClaimSpec | None = None
    problem: str | None = None


def class_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """A predicate for DeviceClass names: exact names, or prefixes written with a trailing '*'."""
    exact = frozenset(p for p in patterns if not p.endswith("*"))
    prefixes = tuple(p.rstrip("*") for p in patterns if p.endswith("*"))
    return lambda name: name in exact or (bool(prefixes) and name.startswith(prefixes))


def gpu_devices(spec: ClaimSpec, is_gpu: Callable[[str], bool]) -> int | None:
    """How many GPUs the claim asks for: per request, the count of a GPU-class option (the largest
    among ``firstAvailable`` alternatives). None when that cannot be numbered: a GPU option in
    allocation mode ``All`` (every matching device of a pool) or a request naming no class."""
    total = 0
    for request in spec.requests:
        most = 0
        for option in request.options:
            if option.device_class is None:
                return None
            if is_gpu(option.device_class):
                if option.count is None:
                    return None
                most = max(most, option.count)
        total += most
    return total


def pod_claims(pod: PodSpecRef) -> list[ClaimRef]:
    """The pod's ``spec.resourceClaims[]`` (empty for almost every pod: the hot path stays cheap)."""
    entries = pod.spec.get("resourceClaims")
    if not entries:
        return []
    if not isinstance(entries, list):
        return [ClaimRef("?", None, None, 0)]
    return [_claim_ref(entry, index) for index, entry in enumerate(entries)]


def old_pods(operation: str, old_object: Any, kind: str | None = None) -> list[PodSpecRef]:
    """The pod specs of the object an UPDATE replaces (empty otherwise, or when it cannot be read)."""
    if operation != "UPDATE" or not isinstance(old_object, Mapping):
        return []
    try:
        return workloads.pod_specs(old_object, kind)
    except errors.ReviewError:
        return []


def _claim_ref(entry: Any, index: int) -> ClaimRef:
    if not isinstance(entry, Mapping):
        return ClaimRef(f"#{index}", None, None, index)
    name = entry.get("name")
    shown = name if isinstance(name, str) and name else f"#{index}"
    source = entry.get("source")  # the 1.26-1.30 shape: the two names nested under ``source``
    fields = source if isinstance(source, Mapping) and not _names_any(entry) else entry
    claim, template = fields.get("resourceClaimName"), fields.get("resourceClaimTemplateName")
    if isinstance(claim, str) and claim and not template:
        return ClaimRef(shown, "ResourceClaim", claim, index)
    if isinstance(template, str) and template and not claim:
        return ClaimRef(shown, "ResourceClaimTemplate", template, index)
    return ClaimRef(shown, None, None, index)


def _names_any(entry: Mapping[str, Any]) -> bool:
    return "resourceClaimName" in entry or "resourceClaimTemplateName" in entry


def claim_users(pod: PodSpecRef, claim: str) -> str:
    """The first container whose ``resources.claims[]`` names ``claim``, else "pod"."""
    for field in ("initContainers", "containers"):
        items = pod.spec.get(field)
        for container in items if isinstance(items, list) else ():
            if not isinstance(container, Mapping):
                continue
            resources = container.get("resources")
            used = resources.get("claims") if isinstance(resources, Mapping) else None
            if isinstance(used, list) and any(isinstance(u, Mapping) and u.get("name") == claim for u in used):
                name = container.get("name")
                return name if isinstance(name, str) else "pod"
    return "pod"


def parse(obj: Any, kind: ClaimKind) -> ClaimSpec:
    """The device requests of a ResourceClaim or ResourceClaimTemplate object (any served version).

    Raises ``ClaimLookupError`` when the object has no readable ``devices.requests``.
    """
    spec = obj.get("spec") if isinstance(obj, Mapping) else None
    if kind == "ResourceClaimTemplate":
        spec = spec.get("spec") if isinstance(spec, Mapping) else None
    devices = spec.get("devices") if isinstance(spec, Mapping) else None
    if isinstance(spec, Mapping) and devices is None:
        return ClaimSpec(())  # a claim for no devices at all
    requests = devices.get("requests", []) if isinstance(devices, Mapping) else None
    if not isinstance(requests, list):
        raise ClaimLookupError(f"{kind} has no readable spec.devices.requests")
    return ClaimSpec(tuple(_request(r, i) for i, r in enumerate(requests)))


def _request(raw: Any, index: int) -> DeviceRequest:
    if not isinstance(raw, Mapping):
        return DeviceRequest(f"#{index}", (DeviceOption(None, None),))
    raw_name = raw.get("name")
    name = raw_name if isinstance(raw_name, str) else f"#{index}"
    alternatives = raw.get("firstAvailable")
    if isinstance(alternatives, list) and alternatives:
        return DeviceRequest(name, tuple(_option(a) for a in alternatives))
    exactly = raw.get("exactly")
    return DeviceRequest(name, (_option(exactly if isinstance(exactly, Mapping) else raw),))


def _option(raw: Any) -> DeviceOption:
    if not isinstance(raw, Mapping):
        return DeviceOption(None, None)
    device_class = raw.get("deviceClassName")
    mode = raw.get("allocationMode", "ExactCount") or "ExactCount"
    count = raw.get("count", 1)
    exact = mode == "ExactCount" and isinstance(count, int) and not isinstance(count, bool) and count >= 0
    return DeviceOption(
        device_class if isinstance(device_class, str) and device_class else None, count if exact else None
    )


class ClaimDirectory:
    """ResourceClaims and ResourceClaimTemplates read through the API server, cached briefly.

    ``api_client`` is a ``kubernetes.client.ApiClient``; its blocking calls run in a thread, each
    within the request's deadline and ``timeout_seconds``. Concurrent lookups of one object share
    one call. Only answers are cached, never failures.
    """

    def __init__(
        self,
        api_client: Any,
        *,
        version: ApiVersion = "v1",
        cache_seconds: float,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client  # imported here: only a cluster deployment pays for it

        api_class = {"v1": "ResourceV1Api", "v1beta2": "ResourceV1beta2Api", "v1beta1": "ResourceV1beta1Api"}
        self._api = getattr(client, api_class[version])(api_client)
        self._exception = client.ApiException
        self._version = version
        self._ttl = cache_seconds
        self._timeout = timeout_seconds
        self._clock = clock
        self._cache: OrderedDict[_Key, tuple[float, ClaimSpec]] = OrderedDict()
        self._inflight: dict[_Key, asyncio.Future[ClaimSpec]] = {}

    async def resolve(self, namespace: str, refs: Sequence[ClaimRef], deadline: Deadline) -> dict[ClaimRef, Lookup]:
        """A ``Lookup`` per reference; failures become a ``Lookup.problem``, never an exception."""
        results = await asyncio.gather(*(self.lookup(namespace, ref, deadline) for ref in refs))
        return dict(zip(refs, results, strict=True))

    async def lookup(self, namespace: str, ref: ClaimRef, deadline: Deadline) -> Lookup:
        if ref.kind is None or ref.object_name is None:
            return Lookup(problem="the entry names neither a resourceClaimName nor a resourceClaimTemplateName")
        key: _Key = (namespace, ref.kind, ref.object_name)
        hit = self._cache.get(key)
        if hit is not None and self._clock() - hit[0] < self._ttl:
            return Lookup(spec=hit[1])
        try:
            return Lookup(spec=await self._fetch(key, deadline))
        except errors.UpstreamError as exc:  # DeadlineExceeded included
            return Lookup(problem=str(exc))

    async def _fetch(self, key: _Key, deadline: Deadline) -> ClaimSpec:
        future = self._inflight.get(key)
        if future is None:
            timeout = deadline.cap(self._timeout)
            if timeout <= 0:
                raise errors.DeadlineExceeded("resource claim lookup: no time left in the request's budget")
            future = asyncio.ensure_future(self._refresh(key, timeout))
            self._inflight[key] = future
            future.add_done_callback(lambda done: self._done(key, done))
        # shield: a request that runs out of time must not cancel the lookup others wait on
        return await deadline.run(asyncio.shield(future), "resource claim lookup")

    def _done(self, key: _Key, future: asyncio.Future[ClaimSpec]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved here so an unawaited failure is never logged as lost

    async def _refresh(self, key: _Key, timeout: float) -> ClaimSpec:
        spec = await asyncio.to_thread(self._read, key, timeout)
        self._cache[key] = (self._clock(), spec)
        self._cache.move_to_end(key)
        while len(self._cache) > _MAX_ENTRIES:
            self._cache.popitem(last=False)
        return spec

    def _read(self, key: _Key, timeout: float) -> ClaimSpec:
        namespace, kind, name = key
        what = f'{kind} "{namespace}/{name}" (resource.k8s.io/{self._version})'
        read = (
            self._api.read_namespaced_resource_claim
            if kind == "ResourceClaim"
            else self._api.read_namespaced_resource_claim_template
        )
        try:
            response = read(name, namespace, _preload_content=False, _request_timeout=timeout)
            body = orjson.loads(response.data)
        except self._exception as exc:
            hint = (
                "create it, or fix the pod's resourceClaims"
                if exc.status == 404
                else f"grant the webhook's service account get on {kind.lower()}s.resource.k8s.io"
            )
            raise ClaimLookupError(f"reading {what} failed: HTTP {exc.status} {exc.reason} ({hint})") from exc
        except orjson.JSONDecodeError as exc:
            raise ClaimLookupError(f"reading {what} failed: the answer is not JSON ({exc})") from exc
        except Exception as exc:  # urllib3 timeouts, refused connections
            raise ClaimLookupError(f"reading {what} failed: {type(exc).__name__}: {exc}") from exc
        try:
            return parse(body, kind)
        except ClaimLookupError as exc:
            raise ClaimLookupError(f"reading {what} failed: {exc}") from exc
