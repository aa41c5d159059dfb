"""Runtime class rules (evaluate stage; built by ``checks.registry``): GPU pods must use a GPU runtime,
untrusted namespaces a sandbox, denied classes nowhere, and named classes must exist.

Check ids: ``runtimeclass:gpu``, ``runtimeclass:untrusted``, ``runtimeclass:denied``,
``runtimeclass:unknown``. The first three are a pure function of the manifest and the
namespace labels (``evaluate``). The last asks the API server for the cluster's RuntimeClasses
through the official ``kubernetes`` client (blocking, so in a thread, within the request's
deadline and ``lookup_timeout_seconds``), caches the list for ``cache_seconds`` and shares one
in-flight lookup between concurrent requests. Failure mode of the lookup: a stale cached list
is used when there is one (with a warning); otherwise ``lookup_failure_mode`` decides: ``deny``
raises ``RuntimeClassLookupError`` (the pipeline applies the check's failure mode), ``allow``
skips the rule with a warning. Without an API server (``portcullis check``) the rule is skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhook import errors
from webhook.checks import changes, claims
from webhook.checks.services import Services
from webhook.config import Config
from webhook.config.privilege import RuntimeClassConfig
from webhook.core import workloads
from webhook.core.deadline import Deadline
from webhook.core.decision import CheckResult, FailureMode, Mode, Violation
from webhook.core.request import RequestContext
from webhook.core.workloads import PodSpecRef
from webhook.quota.requests import DEVICE_CLASS_RESOURCE

CHECK_ID = "runtimeclass"
_MISS_REFRESH_SECONDS = 5.0  # a name missing from a list this old triggers one refresh
_PAGE = 500
# Claims and templates are cached only briefly: one can be deleted and recreated with another class.
_CLAIM_CACHE_SECONDS = 10.0


class RuntimeClassLookupError(errors.ApiServerError):
    """The API server could not list RuntimeClasses (and no cached list was at hand)."""


@dataclass(frozen=True, slots=True)
class Rules:
    """``RuntimeClassConfig`` compiled for the hot path."""

    gpu_exact: frozenset[str]
    gpu_prefixes: tuple[str, ...]
    gpu_classes: frozenset[str]
    untrusted_label: str
    untrusted_values: frozenset[str]
    sandboxed: frozenset[str]
    denied: frozenset[str]
    device_exact: frozenset[str] = frozenset()
    device_prefixes: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: RuntimeClassConfig) -> Rules:
        return cls(
            gpu_exact=frozenset(p for p in config.gpu_resources if not p.endswith("*")),
            gpu_prefixes=tuple(p.rstrip("*") for p in config.gpu_resources if p.endswith("*")),
            gpu_classes=frozenset(config.gpu_runtime_classes),
            untrusted_label=config.untrusted_label,
            untrusted_values=frozenset(config.untrusted_values),
            sandboxed=frozenset(config.sandboxed_runtime_classes),
            denied=frozenset(config.denied_runtime_classes),
            device_exact=frozenset(p for p in config.gpu_device_classes if not p.endswith("*")),
            device_prefixes=tuple(p.rstrip("*") for p in config.gpu_device_classes if p.endswith("*")),
        )

    def is_gpu(self, resource: str) -> bool:
        # DRAExtendedResource (1.34+): any DeviceClass can be asked for in ``resources`` under
        # this implicit name; a GPU device class asked that way is a GPU like its claim would be.
        if resource.startswith(DEVICE_CLASS_RESOURCE):
            return self.is_gpu_class(resource[len(DEVICE_CLASS_RESOURCE) :])
        return resource in self.gpu_exact or (bool(self.gpu_prefixes) and resource.startswith(self.gpu_prefixes))

    def is_gpu_class(self, device_class: str) -> bool:
        return device_class in self.device_exact or (
            bool(self.device_prefixes) and device_class.startswith(self.device_prefixes)
        )


def runtime_class(pod: PodSpecRef) -> str | None:
    """The pod's runtimeClassName, or None when unset or empty (the cluster's default runtime)."""
    name = pod.spec.get("runtimeClassName")
    return name if isinstance(name, str) and name else None


def evaluate(pods: Sequence[PodSpecRef], namespace_labels: Mapping[str, str], rules: Rules) -> list[Violation]:
    """The GPU, untrusted-namespace and denylist findings for ``pods`` (pure; never raises)."""
    out: list[Violation] = []
    untrusted = namespace_labels.get(rules.untrusted_label) in rules.untrusted_values
    for pod in pods:
        name = runtime_class(pod)
        path = f"{pod.path}.runtimeClassName"
        shown = f'"{name}"' if name else "the default runtime"
        if name in rules.denied:
            out.append(
                Violation(
                    "runtimeclass:denied",
                    f"runtime class {shown} is denied by policy; set runtimeClassName to an allowed class",
                    path=path,
                )
            )
        if rules.gpu_classes and name not in rules.gpu_classes:
            container = _gpu_container(pod, rules)
            if container is not None:
                out.append(
                    Violation(
                        "runtimeclass:gpu",
                        f"requests GPUs but runs under {shown}; set runtimeClassName to {_one_of(rules.gpu_classes)}",
                        container=container,
                        path=path,
                    )
                )
        if rules.gpu_classes:
            out.extend(_gpu_env(pod))
        if untrusted and name not in rules.sandboxed:
            out.append(
                Violation(
                    "runtimeclass:untrusted",
                    f"namespace is labelled {rules.untrusted_label}={namespace_labels[rules.untrusted_label]} "
                    f"and must use a sandboxed runtime, not {shown}; set runtimeClassName to "
                    f"{_one_of(rules.sandboxed)}",
                    path=path,
                )
            )
    return out


# Values of NVIDIA_VISIBLE_DEVICES that expose no GPU.
_NO_DEVICES = frozenset({"", "void", "none"})


def _gpu_env(pod: PodSpecRef) -> list[Violation]:
    """NVIDIA_VISIBLE_DEVICES in a container's env: with the NVIDIA toolkit's default ``envvar``
    strategy it hands the container GPUs that no resource request names, past the quota and the
    GPU runtime class rule. A value from elsewhere (``valueFrom``) cannot be judged, so it counts."""
    found: list[Violation] = []
    for ref in workloads.containers(pod):
        env = ref.container.get("env")
        if not isinstance(env, list):
            continue
        for index, var in enumerate(env):
            if not isinstance(var, Mapping) or var.get("name") != "NVIDIA_VISIBLE_DEVICES":
                continue
            value = var.get("value")
            if "valueFrom" not in var and isinstance(value, str) and value.strip().lower() in _NO_DEVICES:
                continue
            shown = f"={value}" if isinstance(value, str) else " from valueFrom"
            found.append(
                Violation(
                    "runtimeclass:gpuEnv",
                    f"sets NVIDIA_VISIBLE_DEVICES{shown}, which exposes GPUs without a resource request "
                    f"(bypassing GPU quota and the GPU runtime class); request nvidia.com/gpu in resources "
                    f"instead (and set accept-nvidia-visible-devices-envvar-when-unprivileged=false on nodes)",
                    container=ref.name,
                    path=f"{ref.path}.env[{index}]",
                )
            )
            break  # one finding per container: repeating the variable a thousand times adds nothing
    return found


def _gpu_container(pod: PodSpecRef, rules: Rules) -> str | None:
    """The name of the first container (or "pod" for pod-level resources) that requests a GPU."""
    if _requests_gpu(pod.spec.get("resources"), rules):
        return "pod"
    for ref in workloads.containers(pod, ("initContainers", "containers")):
        if _requests_gpu(ref.container.get("resources"), rules):
            return ref.name
    return None


def _requests_gpu(resources: Any, rules: Rules) -> bool:
    if not isinstance(resources, Mapping):
        return False
    for key in ("limits", "requests"):
        amounts = resources.get(key)
        if isinstance(amounts, Mapping) and any(rules.is_gpu(r) and _nonzero(q) for r, q in amounts.items()):
            return True
    return False


def dra_pending(
    pods: Sequence[PodSpecRef], rules: Rules, old: Callable[[], Sequence[PodSpecRef]] = list
) -> list[tuple[PodSpecRef, list[claims.ClaimRef]]]:
    """Pods whose resource claims decide the GPU rule: they reference claims, run outside the GPU
    runtime classes and request no GPU through ``resources`` (that is reported already).

    ``old`` gives the pods an UPDATE replaces: one keeping both its claims and its runtime class
    was judged when admitted, and a template deleted since must not block edits of the workload.
    """
    if not rules.gpu_classes:
        return []
    pending = []
    previous: Sequence[PodSpecRef] | None = None
    for index, pod in enumerate(pods):
        refs = claims.pod_claims(pod)
        if not refs or runtime_class(pod) in rules.gpu_classes or _gpu_container(pod, rules) is not None:
            continue
        previous = old() if previous is None else previous
        kept = index < len(previous) and claims.pod_claims(previous[index]) == refs
        if kept and runtime_class(previous[index]) == runtime_class(pod):
            continue
        pending.append((pod, refs))
    return pending


def evaluate_claims(
    pod: PodSpecRef, refs: Sequence[claims.ClaimRef], found: Mapping[claims.ClaimRef, claims.Lookup], rules: Rules
) -> Violation | None:
    """The GPU finding for a pod's resource claims (pure), or None when no claim asks for a GPU.

    Stated rule (fail closed): a claim whose device class cannot be determined (no API server
    to read it from, the read failed, a request without ``deviceClassName``) counts as a GPU claim.
    A claim of a known GPU class is reported before an undetermined one.
    """
    undetermined: tuple[claims.ClaimRef, str] | None = None
    for ref in refs:
        lookup = found.get(ref, claims.Lookup(problem="not looked up"))
        if lookup.spec is None:
            undetermined = undetermined or (ref, lookup.problem or "unknown")
            continue
        classes = lookup.spec.device_classes()
        gpu = sorted(c for c in classes if c is not None and rules.is_gpu_class(c))
        if gpu:
            return _claim_violation(pod, ref, f'requests GPUs through {ref.shown()} of device class "{gpu[0]}"', rules)
        if None in classes:
            undetermined = undetermined or (ref, "a device request names no deviceClassName")
    if undetermined is None:
        return None
    ref, problem = undetermined
    what = f"uses {ref.shown()} whose device class could not be determined ({problem}), so it counts as a GPU claim"
    return _claim_violation(pod, ref, what, rules)


def _claim_violation(pod: PodSpecRef, ref: claims.ClaimRef, what: str, rules: Rules) -> Violation:
    name = runtime_class(pod)
    shown = f'"{name}"' if name else "the default runtime"
    return Violation(
        "runtimeclass:gpu",
        f"{what}, but runs under {shown}; set runtimeClassName to {_one_of(rules.gpu_classes)}",
        container=claims.claim_users(pod, ref.name),
        path=f"{pod.path}.runtimeClassName",
    )


def _nonzero(quantity: Any) -> bool:
    return quantity not in (0, "0", None, "")


def _one_of(names: frozenset[str]) -> str:
    listed = sorted(names)
    return f'"{listed[0]}"' if len(listed) == 1 else "one of " + ", ".join(f'"{n}"' for n in listed)


class Catalog:
    """The cluster's RuntimeClass names, listed through the API server and cached.

    ``api_client`` is a ``kubernetes.client.ApiClient``; its blocking calls run in a thread.
    """

    def __init__(
        self,
        api_client: Any,
        *,
        cache_seconds: float,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client  # imported here: only a cluster deployment pays for it

        self._api = client.NodeV1Api(api_client)
        self._exception = client.ApiException
        self._ttl = cache_seconds
        self._timeout = timeout_seconds
        self._clock = clock
        self._names: frozenset[str] | None = None
        self._fetched_at = float("-inf")
        self._inflight: asyncio.Future[frozenset[str]] | None = None

    def fresh(self, name: str) -> bool | None:
        """Whether ``name`` is known in a list that needs no refresh (None: ask ``names``)."""
        if self._names is None:
            return None
        age = self._clock() - self._fetched_at
        if age >= self._ttl:
            return None
        if name in self._names:
            return True
        return False if age < _MISS_REFRESH_SECONDS else None

    async def names(self, deadline: Deadline) -> frozenset[str]:
        """The listed names (refreshing now); raise ``RuntimeClassLookupError`` or ``DeadlineExceeded``."""
        if self._inflight is None:
            timeout = deadline.cap(self._timeout)
            if timeout <= 0:
                raise errors.DeadlineExceeded("runtime class lookup: no time left in the request's budget")
            self._inflight = asyncio.ensure_future(self._refresh(timeout))
            self._inflight.add_done_callback(self._done)
        # shield: a request that runs out of time must not cancel the lookup others wait on
        return await deadline.run(asyncio.shield(self._inflight), "runtime class lookup")

    @property
    def stale(self) -> frozenset[str] | None:
        return self._names

    def _done(self, future: asyncio.Future[frozenset[str]]) -> None:
        self._inflight = None
        if not future.cancelled():
            future.exception()  # retrieved here so an unawaited failure is never logged as lost

    async def _refresh(self, timeout: float) -> frozenset[str]:
        names = await asyncio.to_thread(self._list, timeout)
        self._names, self._fetched_at = names, self._clock()
        return names

    def _list(self, timeout: float) -> frozenset[str]:
        names: set[str] = set()
        token: str | None = None
        try:
            while True:
                page = self._api.list_runtime_class(limit=_PAGE, _continue=token, _request_timeout=timeout)
                names.update(item.metadata.name for item in page.items or () if item.metadata and item.metadata.name)
                token = page.metadata._continue if page.metadata else None
                if not token:
                    return frozenset(names)
        except self._exception as exc:
            raise RuntimeClassLookupError(
                f"listing RuntimeClasses failed: HTTP {exc.status} {exc.reason} "
                "(grant the webhook's service account list on runtimeclasses.node.k8s.io)"
            ) from exc
        except Exception as exc:  # urllib3 timeouts, refused connections, undecodable bodies
            raise RuntimeClassLookupError(f"listing RuntimeClasses failed: {type(exc).__name__}: {exc}") from exc


class RuntimeClassCheck:
    """The runtime class rules, plus the existence lookup when a catalog is given."""

    id = CHECK_ID
    reads: frozenset[changes.Part] = frozenset({"spec"})  # and namespace labels, which an UPDATE cannot change
    failure_mode = FailureMode.DENY
    default_mode = Mode.ENFORCE

    def __init__(
        self,
        config: RuntimeClassConfig,
        catalog: Catalog | None = None,
        directory: claims.ClaimDirectory | None = None,
        *,
        no_lookup: str = "no API server to read it from",
    ) -> None:
        self._config = config
        self.rules = Rules.from_config(config)
        self.catalog = catalog
        self.directory = directory
        self.does_io = catalog is not None or directory is not None
        self._no_lookup = no_lookup

    def ready(self) -> bool:
        return True  # the lookup is lazy and has its own failure mode: never hold /readyz back

    async def run(self, pods: Sequence[PodSpecRef], ctx: RequestContext) -> CheckResult:
        result = CheckResult(evaluate(pods, ctx.namespace_labels, self.rules))
        pending = dra_pending(pods, self.rules, lambda: claims.old_pods(ctx.operation, ctx.old_object, ctx.kind))
        if pending:
            await self._check_claims(pending, ctx, result)
        if self.catalog is not None:
            await self._check_exists(pods, ctx, result)
        return result

    async def _check_exists(self, pods: Sequence[PodSpecRef], ctx: RequestContext, result: CheckResult) -> None:
        named = _new_names(pods, ctx)
        if not named:
            return
        assert self.catalog is not None
        if any(self.catalog.fresh(name) is None for name, _ in named):
            known = await self._known(ctx, result)
        else:
            known = self.catalog.stale  # fresh enough to judge every name without asking
        if known is None:
            return
        for name, pod in named:
            if name not in known:
                result.violations.append(
                    Violation(
                        "runtimeclass:unknown",
                        f'runtime class "{name}" is not defined in the cluster; create the RuntimeClass '
                        "or fix runtimeClassName",
                        path=f"{pod.path}.runtimeClassName",
                    )
                )

    async def _check_claims(
        self, pending: Sequence[tuple[PodSpecRef, list[claims.ClaimRef]]], ctx: RequestContext, result: CheckResult
    ) -> None:
        refs = [ref for _, pod_refs in pending for ref in pod_refs]
        if self.directory is None:
            found = {ref: claims.Lookup(problem=self._no_lookup) for ref in refs}
        else:
            namespace = ctx.namespace or _namespace_of(ctx.object) or "default"
            found = await self.directory.resolve(namespace, refs, ctx.deadline)
            if self._config.lookup_failure_mode is FailureMode.ALLOW:
                for ref, lookup in list(found.items()):
                    if lookup.problem is not None and ref.kind is not None:
                        result.warnings.append(f"[{CHECK_ID}] {lookup.problem}; not counted as a GPU claim")
                        del found[ref]
                found = {ref: found.get(ref, claims.Lookup(claims.ClaimSpec(()))) for ref in refs}
        for pod, pod_refs in pending:
            violation = evaluate_claims(pod, pod_refs, found, self.rules)
            if violation is not None:
                result.violations.append(violation)

    async def _known(self, ctx: RequestContext, result: CheckResult) -> frozenset[str] | None:
        assert self.catalog is not None
        try:
            return await self.catalog.names(ctx.deadline)
        except errors.UpstreamError as exc:
            if self.catalog.stale is not None:
                result.warnings.append(f"[{CHECK_ID}] {exc}; judged against the last known list")
                return self.catalog.stale
            if self._config.lookup_failure_mode is FailureMode.ALLOW:
                result.warnings.append(f"[{CHECK_ID}] {exc}; runtime class existence not checked")
                return None
            raise


def _new_names(pods: Sequence[PodSpecRef], ctx: RequestContext) -> list[tuple[str, PodSpecRef]]:
    """Pods naming a runtime class that this request sets or changes.

    On UPDATE a class the old object already named is not looked up again: it was admitted
    then, and a class deleted since must not block edits of the workload that still uses it.
    """
    old: list[str | None] = []
    if ctx.operation == "UPDATE" and ctx.old_object is not None:
        try:
            old = [runtime_class(p) for p in workloads.pod_specs(ctx.old_object)]
        except errors.ReviewError:
            old = []
    named = []
    for index, pod in enumerate(pods):
        name = runtime_class(pod)
        if name is not None and (index >= len(old) or old[index] != name):
            named.append((name, pod))
    return named


def _namespace_of(obj: Any) -> str | None:
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    return namespace if isinstance(namespace, str) and namespace else None


def build(config: Config, services: Services) -> RuntimeClassCheck:
    """The runtime class check; the existence and claim lookups only with an API client and
    ``lookup`` on (without them, resource claims count as GPU claims: see ``evaluate_claims``)."""
    settings = config.runtimeclass
    if not settings.lookup:
        return RuntimeClassCheck(settings, no_lookup="runtimeclass.lookup is off, so it was not read")
    if services.kube_api is None or services.ci:
        return RuntimeClassCheck(settings, no_lookup="no API server to read it from")
    catalog = Catalog(
        services.kube_api,
        cache_seconds=settings.cache_seconds,
        timeout_seconds=settings.lookup_timeout_seconds,
    )
    directory = None
    if settings.gpu_runtime_classes:
        directory = claims.ClaimDirectory(
            services.kube_api,
            version=settings.dra_api_version,
            cache_seconds=min(settings.cache_seconds, _CLAIM_CACHE_SECONDS),
            timeout_seconds=settings.lookup_timeout_seconds,
        )
    return RuntimeClassCheck(settings, catalog, directory)
