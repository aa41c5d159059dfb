"""The gpu check: GPU requests against per-pod rules and quotas (uses ``quota/``).

Per-pod rules (max GPUs, requests equal limits, model required) are pure and also run in CI.
Quotas need the cluster: a Pod CREATE is checked against the ledger (pods seen by the watch
plus reservations) and, when admitted and not a dry run, reserves its GPUs until the watch
sees it; the pipeline then ``settle``s the reservation with the combined verdict, so it is
given back at once when another check denies the pod. Workload templates (Deployments, ...)
are judged only against what one pod could ever get, since their pods come through admission
one by one. No accelerator resource is free (see ``config.quota``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

from webhook import errors
from webhook.checks import changes, claims
from webhook.checks.services import Services
from webhook.config import Config
from webhook.config.kubernetes import KubernetesConfig
from webhook.core.deadline import Deadline
from webhook.core.decision import CheckResult, FailureMode, Mode, Violation
from webhook.core.request import RequestContext
from webhook.core.workloads import PodSpecRef
from webhook.quota import coordination, metrics, quantity, requests
from webhook.quota.ledger import Ledger, QuotaView
from webhook.quota.model import Demand, QuotaModel, gpu_models
from webhook.quota.watch import PodWatch

CHECK_ID = "gpu"
log = logging.getLogger("portcullis.quota")

_EMPTY = CheckResult()
_RELEASE_SECONDS = 10.0  # a background release in the API server gives up after this
_NO_CLUSTER = "GPU quotas not judged: no cluster to count usage in (per-pod rules only)"


class GpuCheck:
    """GPU per-pod rules and quotas; ``ready()`` once the pod watch has listed every pod."""

    id = CHECK_ID
    default_mode = Mode.ENFORCE
    reads: frozenset[changes.Part] = frozenset({"spec"})  # resources, node selection, claims

    def __init__(
        self,
        config: Config,
        model: QuotaModel,
        *,
        ledger: Ledger | None = None,
        coordinator: coordination.Coordinator | None = None,
        watch: PodWatch | None = None,
        namespaces: Any = None,
        ci: bool = False,
        owns_namespaces: bool = False,
        directory: claims.ClaimDirectory | None = None,
    ) -> None:
        settings = config.checks.get(CHECK_ID)
        self.failure_mode = settings.failure_mode if settings is not None else FailureMode.DENY
        self.model = model
        self.ledger = ledger
        self.coordinator = coordinator
        self.watch = watch
        self.namespaces = namespaces
        self.ci = ci
        self.directory = directory
        self.does_io = bool(coordinator is not None and coordinator.does_io) or directory is not None
        self._is_gpu_class = claims.class_matcher(config.runtimeclass.gpu_device_classes)
        self._dra = bool(config.quota.quotas)
        self._config = config
        self._quota = config.quota
        self._by_team = any(q.team is not None or q.per == "team" for q in config.quota.quotas)
        self._owns_namespaces = owns_namespaces
        # Reservations taken by requests whose verdict is not final yet, by request (id of its
        # context): ``settle`` keeps them for an admitted pod and gives them back otherwise.
        self._held: dict[int, list[tuple[tuple[str, ...], tuple[Any, ...]]]] = {}
        self._releases: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self.namespaces is not None and self._owns_namespaces:
            await self.namespaces.start()
        if self.watch is not None:
            await self.watch.start()

    async def close(self) -> None:
        if self._releases:
            await asyncio.wait(self._releases, timeout=_RELEASE_SECONDS)
        if self.watch is not None:
            await self.watch.close()
        if self.namespaces is not None and self._owns_namespaces:
            await self.namespaces.close()

    def ready(self) -> bool:
        """Ready once pods (and namespace labels, for team quotas) have been listed."""
        if self.namespaces is not None and not self.namespaces.ready():
            return False
        return self.watch is None or self.watch.ready()

    def metrics(self) -> list[str]:
        """Prometheus text lines: used / reserved / limit per quota (in GPUs)."""
        if self.ledger is None:
            return []
        return metrics.prometheus_lines(self.ledger, self.model)

    # -- judgement -------------------------------------------------------------------------
    async def run(self, pods: Sequence[PodSpecRef], ctx: RequestContext) -> CheckResult:
        result: CheckResult | None = None
        old: list[PodSpecRef] | None = None
        for index, pod in enumerate(pods):
            refs = claims.pod_claims(pod) if self._dra else None
            if refs:
                # an UPDATE keeping a pod's claims was judged when admitted (pods' claims never change)
                old = claims.old_pods(ctx.operation, ctx.old_object, ctx.kind) if old is None else old
                if not (index < len(old) and claims.pod_claims(old[index]) == refs):
                    result = result or CheckResult()
                    await self._claims(pod, refs, ctx, result)
            try:
                demand = self.model.demand(pod.spec)
            except quantity.QuantityError as exc:
                result = result or CheckResult()
                result.violations.append(_unreadable(pod, exc))
                continue
            if demand.empty:
                continue
            result = result or CheckResult()
            self._unweighted(pod, demand, result)
            self._per_pod(pod, demand, result)
            await self._quotas(pod, demand, ctx, result)
        return result or _EMPTY

    def _unweighted(self, pod: PodSpecRef, demand: Demand, result: CheckResult) -> None:
        """An accelerator resource with no weight would pass every quota for free: refused."""
        for name in sorted(demand.milli):
            if self.model.factor(name) is None:
                result.violations.append(
                    Violation(
                        CHECK_ID,
                        f"requests {name}, which looks like an accelerator but has no weight in GPUs; "
                        f"set quota.resources[{name!r}] (e.g. 1, 1/4; 0 if it is not a GPU) so quotas count it",
                        path=pod.path,
                    )
                )

    def _per_pod(self, pod: PodSpecRef, demand: Demand, result: CheckResult) -> None:
        model, rules = self.model, self._quota.per_pod
        total = model.total(demand)
        result.context["gpus"] = total / model.scale
        result.context["requests"] = {k: _milli_str(v) for k, v in demand.milli.items()}
        if demand.models is not None:
            result.context["gpu_models"] = sorted(demand.models)
        if model.max_pod_units is not None and total > model.max_pod_units:
            result.violations.append(
                Violation(
                    CHECK_ID,
                    f"pod asks {model.gpus(total)} GPUs, more than the {model.gpus(model.max_pod_units)} "
                    f"allowed per pod (quota.per_pod.max_gpus)",
                    path=pod.path,
                )
            )
        if rules.requests_equal_limits:
            try:
                for m in requests.mismatches(pod.spec, model.counts):
                    result.violations.append(
                        Violation(
                            CHECK_ID,
                            f"{m.resource} request {m.request} must equal its limit ({m.limit})",
                            container=m.name,
                            path=f"{pod.path}.{m.field}[{m.index}].resources",
                        )
                    )
            except quantity.QuantityError as exc:  # defence in depth: demand() reads these fields first
                result.violations.append(_unreadable(pod, exc))
        if rules.require_gpu_model and model.has_model_quotas and demand.models is None:
            result.violations.append(
                Violation(
                    CHECK_ID,
                    f"GPU pods must select a GPU model with nodeSelector or required node affinity on "
                    f"{self._quota.gpu_model_label!r}",
                    path=pod.path,
                )
            )

    async def _quotas(self, pod: PodSpecRef, demand: Demand, ctx: RequestContext, result: CheckResult) -> None:
        labels = ctx.namespace_labels
        if self._by_team and ctx.kind == "Pod" and ctx.operation == "CREATE" and not self.ci:
            labels = await self._team_labels(ctx)
        charges = self.model.charges(ctx.namespace, labels, demand)
        if not charges:
            return
        if ctx.kind != "Pod":
            self._template_fits(pod, charges, result)
            return
        if ctx.operation != "CREATE":
            return  # a pod's GPU requests cannot change after creation; it was counted then
        if self.ci:
            self._template_fits(pod, charges, result)
            result.warnings.append(_NO_CLUSTER)
            return
        if self.ledger is None or self.coordinator is None:
            raise errors.ApiServerError(
                "GPU quotas are configured but there is no Kubernetes API to count usage "
                "(set kubernetes.mode, or run inside the cluster)"
            )
        self._fresh()
        keys = _pod_keys(ctx)
        # A pod this check denies anyway (a per-pod rule, enforced) must not hold GPUs for the TTL.
        doomed = bool(result.violations) and self._config.mode_for(CHECK_ID, ctx.namespace_labels) is Mode.ENFORCE
        reserve = not ctx.dry_run and not doomed
        admitted, views = await self.coordinator.admit(keys, charges, reserve=reserve, deadline=ctx.deadline)
        if admitted and reserve:
            self._held.setdefault(id(ctx), []).append((keys, charges))
        scale = self.model.scale
        result.context["quotas"] = [_view_json(scale, v) for v in views]
        result.context["usage"] = self._usage(ctx)
        if not admitted:
            for view in views:
                if not view.fits:
                    result.violations.append(Violation(CHECK_ID, self._denial(view), path=pod.path))
            return
        for view in views:
            after = view.used + view.reserved + view.asked
            if view.limit and after > view.limit * self._quota.warn_ratio:
                result.warnings.append(
                    f"GPU quota {view.rule!r} ({view.scope}) at {100 * after // view.limit}% after this pod: "
                    f"{self.model.gpus(after)} of {self.model.gpus(view.limit)} GPUs"
                )

    async def _team_labels(self, ctx: RequestContext) -> Mapping[str, str]:
        """The namespace's real labels, which name its team, as the pod watch will charge it.

        The pipeline judges a namespace whose labels could not be read with the config's defaults
        (see SECURITY.md): for a team quota that would mean no team, so the pod would draw on no
        team's quota while the watch charges the team once it catches up. Read them here (one GET
        on a miss, shared with the pipeline's); when that fails the team is unknown and this check
        cannot finish (``ApiServerError``: its failure mode decides). A namespace that does not
        exist (404) keeps the request's labels: the API server refuses its pods anyway.
        """
        directory = self.namespaces
        known = directory.labels(ctx.namespace) if directory is not None else None
        if known is not None:
            return cast("Mapping[str, str]", known)
        lookup = getattr(directory, "lookup", None)
        if lookup is None:
            return ctx.namespace_labels
        try:
            found = await lookup(ctx.namespace, ctx.deadline)
        except errors.UpstreamError as exc:
            raise errors.ApiServerError(
                f"the team of namespace {ctx.namespace!r} is unknown, so its team GPU quota cannot be "
                f"judged: its labels could not be read ({exc})"
            ) from exc
        return ctx.namespace_labels if found is None else cast("Mapping[str, str]", found)

    def settle(self, ctx: RequestContext, admitted: bool) -> None:
        """The combined verdict of the request ``ctx`` is final: keep its reservations when the pod
        is admitted, give them back when any check (Pod Security, images, Rego, ...) denied it,
        so a pod refused for another reason never holds GPUs for the TTL. Local reservations are
        released at once; those in the API server by a background task (the answer does not wait)."""
        held = self._held.pop(id(ctx), None)
        if not held or admitted or self.coordinator is None:
            return
        for keys, charges in held:
            if self.ledger is not None and not self.coordinator.does_io:
                self.ledger.release(keys)
                continue
            task = asyncio.get_running_loop().create_task(self._release(keys, charges))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _release(self, keys: tuple[str, ...], charges: tuple[Any, ...]) -> None:
        assert self.coordinator is not None
        try:
            await self.coordinator.release(keys, charges, Deadline.after(_RELEASE_SECONDS))
        except errors.UpstreamError as exc:  # it expires after reservation_ttl anyway
            log.warning("GPU reservation of %s not released (expires by itself): %s", keys[0], exc)

    async def _claims(
        self, pod: PodSpecRef, refs: Sequence[claims.ClaimRef], ctx: RequestContext, result: CheckResult
    ) -> None:
        """GPUs through DRA resource claims, where a GPU quota applies: the ledger (fed by the pod
        watch) counts only extended resources, so such a pod would hold GPUs no quota sees. It is
        denied, naming the count; a claim that cannot be read counts as a GPU claim (fail closed)."""
        try:
            models = gpu_models(pod.spec, self._quota.gpu_model_label)
        except quantity.QuantityError:
            models = None
        # one GPU as nvidia.com/gpu: which quotas would a DRA GPU draw on?
        factor = self.model.factor("nvidia.com/gpu") or self.model.scale // 1000
        probe = Demand({"nvidia.com/gpu": 1000 * factor}, models, {"nvidia.com/gpu": 1000})
        charges = self.model.charges(ctx.namespace, ctx.namespace_labels, probe)
        if not charges:
            return
        if self.directory is None:
            found = {ref: claims.Lookup(problem="no API server to read it from") for ref in refs}
        else:
            found = await self.directory.resolve(ctx.namespace, refs, ctx.deadline)
        quota = f"GPU quota {charges[0].rule!r} ({charges[0].scope})"
        for ref in refs:
            lookup = found[ref]
            if lookup.spec is None:
                if self.directory is not None and ref.kind is not None:
                    raise claims.ClaimLookupError(f"{ref.shown()}: {lookup.problem}")  # the failure mode decides
                what = f"uses {ref.shown()} whose devices could not be determined ({lookup.problem})"
            else:
                count = claims.gpu_devices(lookup.spec, self._is_gpu_class)
                if count == 0:
                    continue
                asked = "GPUs in a number that cannot be counted (allocationMode All, or no deviceClassName)"
                what = f"asks {asked if count is None else f'{count} GPU(s)'} through {ref.shown()}"
            message = (
                f"{what}, which {quota} cannot count: the quota ledger counts only extended resources; "
                "request nvidia.com/gpu in resources instead"
            )
            if self.ci:
                result.warnings.append(f"[{CHECK_ID}] {message}")
            else:
                result.violations.append(Violation(CHECK_ID, message, path=f"{pod.path}.resourceClaims[{ref.index}]"))

    def _template_fits(self, pod: PodSpecRef, charges: Sequence[Any], result: CheckResult) -> None:
        for charge in charges:
            if charge.units > charge.limit:
                result.violations.append(
                    Violation(
                        CHECK_ID,
                        f"each pod asks {self.model.gpus(charge.units)} GPUs but GPU quota {charge.rule!r} "
                        f"({charge.scope}) allows {self.model.gpus(charge.limit)} in all: no pod could ever start",
                        path=pod.path,
                    )
                )

    def _fresh(self) -> None:
        """Raise ``ApiServerError`` when usage is not known (first list pending, watch lost)."""
        watch = self.watch
        if watch is None:
            return
        if not self.ready():
            raise errors.ApiServerError(
                "GPU usage not known yet: the pod watch has not finished its first list from the API server"
            )
        stale = watch.reflector.stale_for()
        if stale > self._quota.max_staleness:
            raise errors.ApiServerError(
                f"GPU usage unknown: the pod watch lost the API server {stale:.0f}s ago "
                f"({watch.reflector.last_error or 'no answer'}); "
                f"limit quota.max_staleness={self._quota.max_staleness:g}s"
            )

    def _denial(self, view: QuotaView) -> str:
        gpus = self.model.gpus
        in_use = view.used + view.reserved
        return (
            f"GPU quota {view.rule!r} ({view.scope}) exceeded: {gpus(in_use)} of {gpus(view.limit)} GPUs in use "
            f"({gpus(view.used)} by running pods, {gpus(view.reserved)} reserved), this pod asks "
            f"{gpus(view.asked)}, {gpus(view.left)} left"
        )

    def _usage(self, ctx: RequestContext) -> dict[str, float]:
        """GPUs held by every pod of the namespace and of its team (quota or not), for Rego."""
        assert self.ledger is not None
        groups, scale = self.ledger.group_used, self.model.scale
        usage = {"namespace": groups.get(f"namespace={ctx.namespace}", 0) / scale}
        team = ctx.namespace_labels.get(self._quota.team_label)
        if team is not None:
            usage["team"] = groups.get(f"team={team}", 0) / scale
        return usage


def _unreadable(pod: PodSpecRef, exc: quantity.QuantityError) -> Violation:
    """A violation naming the field the GPU arithmetic could not read, and why."""
    if isinstance(exc, requests.FieldError):
        path = f"{pod.path}.{exc.field}"
        return Violation(CHECK_ID, f"{path}: {exc.problem}", path=path)
    return Violation(CHECK_ID, f"cannot read GPU requests: {exc}", path=pod.path)


def _pod_keys(ctx: RequestContext) -> tuple[str, ...]:
    """What names the pod to the watch: its uid (set before validating admission) and namespace/name."""
    metadata = ctx.object.get("metadata") or {}
    uid = metadata.get("uid")
    name = ctx.name or metadata.get("name") or ""
    by_name = f"{ctx.namespace}/{name}"
    return (str(uid), by_name) if uid else (by_name,)


def _view_json(scale: int, view: QuotaView) -> dict[str, Any]:
    """One quota for Rego and the audit record, in GPUs as numbers."""
    return {
        "quota": view.rule,
        "key": view.key,
        "scope": view.scope,
        "used": view.used / scale,
        "reserved": view.reserved / scale,
        "limit": view.limit / scale,
        "asked": view.asked / scale,
        "left": view.left / scale,
    }


def _milli_str(milli: int) -> str:
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def build(config: Config, services: Services, *, kubernetes: KubernetesConfig | None = None) -> GpuCheck | None:
    """The gpu check, or None when ``quota:`` configures nothing to judge.

    ``kubernetes`` (timeouts, backoff) defaults to the config's ``kubernetes:`` section.
    """
    quota = config.quota
    rules = quota.per_pod
    if not quota.quotas and rules.max_gpus is None and not rules.requests_equal_limits and not rules.require_gpu_model:
        return None
    model = QuotaModel(quota)
    api = services.kube_api
    if services.ci or api is None or not quota.quotas:
        return GpuCheck(config, model, ci=services.ci)
    settings = config.runtimeclass
    directory = claims.ClaimDirectory(
        api, version=settings.dra_api_version, cache_seconds=10.0, timeout_seconds=settings.lookup_timeout_seconds
    )
    kube = kubernetes or _kube_config(config)
    ledger = Ledger(quota.reservation_ttl)
    for rule in quota.quotas:
        if rule.per is None:
            for charge in model.charges(rule.namespace or "", {quota.team_label: rule.team or ""}, _any(model, rule)):
                if charge.rule == rule.name:
                    ledger.note_quota(charge)
    namespaces = getattr(services, "namespaces", None)
    owns = False
    if namespaces is None and any(q.team is not None or q.per == "team" for q in quota.quotas):
        from webhook.kube.namespaces import NamespaceDirectory

        namespaces = NamespaceDirectory(api, kube)
        owns = True
    watch = PodWatch(api, kube, model, ledger, namespaces)
    if namespaces is not None and hasattr(namespaces, "subscribe"):
        namespaces.subscribe(watch.namespace_changed)
    coordinator: coordination.Coordinator
    if quota.coordination == "apiserver":
        coordinator = coordination.ApiServerCoordinator(
            api,
            quota.coordination_namespace,
            ledger,
            model,
            ttl=quota.reservation_ttl,
            request_timeout=kube.request_timeout,
        )
    else:
        coordinator = coordination.LocalCoordinator(ledger)
    return GpuCheck(
        config,
        model,
        ledger=ledger,
        coordinator=coordinator,
        watch=watch,
        namespaces=namespaces,
        owns_namespaces=owns,
        directory=directory,
    )


def _kube_config(config: Config) -> KubernetesConfig:
    return config.kubernetes


def _any(model: QuotaModel, rule: Any) -> Demand:
    """A demand that matches ``rule`` (to name its quota key in metrics before any pod uses it)."""
    resource = next(iter(rule.resources), None) or next(iter(model.config.resources), "nvidia.com/gpu")
    models = frozenset((rule.gpu_model,)) if rule.gpu_model else None
    return Demand({resource: 1}, models, {resource: 1})
