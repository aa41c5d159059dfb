"""The rego check: user policies (embedded Rego bundle, Gatekeeper templates, or a remote OPA)
judge the request, the pod specs and what the built-in checks learnt. Runs last in the pipeline
so ``ctx.shared`` holds the other checks' context.

A policy's ``deny`` items become violations (mode from its ``# METADATA`` ``custom.mode``,
capped by the check's mode), ``warn`` items become warn-mode violations. A policy that errors,
returns the wrong shape or overruns yields its failure mode; it never crashes the webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from webhook.checks.base import Check
from webhook.checks.services import Services
from webhook.config import Config
from webhook.config.policy import PolicyConfig
from webhook.core import decision
from webhook.core.decision import CheckResult, FailureMode, Mode, Violation
from webhook.core.request import RequestContext
from webhook.core.workloads import PodSpecRef
from webhook.policy import bounds, gatekeeper, inventory, isolation, lifecycle, opa, rego
from webhook.policy import input as policy_input
from webhook.policy.rego import PolicyResult

CHECK_ID = "rego"
log = logging.getLogger("portcullis.policy")


class RegoCheck:
    """User policies as one check (id ``rego``)."""

    id = CHECK_ID
    default_mode = Mode.ENFORCE

    def __init__(
        self,
        settings: PolicyConfig,
        *,
        failure_mode: FailureMode,
        bundle: lifecycle.Reloadable[rego.CompiledPolicies] | None = None,
        templates: lifecycle.Reloadable[gatekeeper.GatekeeperSet] | None = None,
        remote: opa.OpaEngine | None = None,
        sync: inventory.InventorySync | None = None,
    ) -> None:
        self.settings = settings
        self.sync = sync
        self.failure_mode = failure_mode
        self.bundle = bundle
        self.templates = templates
        self.remote = remote
        self.does_io = remote is not None
        # Evaluation runs in worker processes the webhook kills at the deadline (policy.isolation).
        self.pool = isolation.WorkerPool(
            settings.workers,
            memory_bytes=settings.worker_memory_mb << 20,
            cpu_seconds=math.ceil(settings.timeout) + 1.0,
        )
        self._installed: _Version | None = None
        self._versions: dict[int, _Version] = {}  # generation -> what its workers hold
        self._reloader: asyncio.Task[None] | None = None
        self.over_bounds = 0  # requests denied by the input bounds, for /metrics

    async def start(self) -> None:
        if self.remote is not None:
            await self.remote.start()
        if self.sync is not None:
            await self.sync.start()
        if self.bundle or self.templates:
            self._install()
            await self.pool.start()
        if self.settings.reload_interval > 0 and (self.bundle or self.templates) and self._reloader is None:
            self._reloader = asyncio.create_task(self._reload_loop(), name="rego-reload")

    async def close(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
            self._reloader = None
        if self.remote is not None:
            await self.remote.close()
        if self.sync is not None:
            await self.sync.close()
        await self.pool.close()

    def ready(self) -> bool:
        # Ready once the first workers hold the policies; never again tied to them: a saturated
        # or restarting pool is the failure mode of the requests it cannot serve, not a
        # not-ready webhook (which would stop every admission).
        if self.sync is not None and not self.sync.ready():
            return False  # referential templates need the synced kinds listed once
        return self.remote is not None or not self.pool.configured or self.pool.warm

    def metrics(self) -> dict[str, float]:
        stats = self.pool.stats
        return {
            "evaluations": stats.evaluations,
            "workers_killed": stats.killed,
            "workers_died": stats.died,
            "workers_unavailable": stats.unavailable,
            "workers_started": stats.started,
            "inputs_over_bounds": self.over_bounds,
        }

    def applies_to(self, kind: str) -> bool:
        """Whether some loaded policy or constraint can judge ``kind`` (pipeline: any kind)."""
        if self.remote is not None:
            return True  # a remote OPA's policies are unknown here: it sees every kind sent
        bundle, templates = self._current()
        return bool((bundle and bundle.applies_to(kind)) or (templates and templates.may_match_kind(kind)))

    def _current(self) -> tuple[rego.CompiledPolicies | None, gatekeeper.GatekeeperSet | None]:
        return (
            self.bundle.current if self.bundle else None,
            self.templates.current if self.templates else None,
        )

    def _install(self) -> _Version:
        """Send the current policy version to the workers, once per version."""
        current = self._current()
        if self._installed is not None and all(a is b for a, b in zip(current, self._installed, strict=True)):
            return self._installed
        generation = self.pool.configure(worker_spec(*current, strict=self.settings.strict_builtin_errors))
        self._versions = {g: v for g, v in self._versions.items() if g >= generation - 2}
        self._versions[generation] = current
        self._installed = current
        return current

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            await self.reload()

    async def reload(self) -> bool:
        """Recompile changed policies off the event loop; True when something new was installed."""
        changed = False
        for source in (self.bundle, self.templates):
            if source is not None:
                changed |= await asyncio.to_thread(source.reload_if_changed)
        if changed:
            self._install()
        return changed

    async def run(self, pods: Sequence[PodSpecRef], ctx: RequestContext) -> CheckResult:
        too_big = bounds.pods_over_bounds(pods, self.settings.max_containers)
        if too_big:
            self.over_bounds += 1
            return CheckResult(violations=[Violation(CHECK_ID, too_big)])
        document = policy_input.build(ctx, pods)
        if self.remote is not None:
            sent = bounds.within(document, self.settings.max_input_bytes)  # the embedded engine's bounds
            if isinstance(sent, str):
                self.over_bounds += 1
                return CheckResult(violations=[Violation(CHECK_ID, sent)])
            return to_result(await self.remote.evaluate(document, ctx.deadline), self.settings.failure_mode)
        version = self._install() if (self.bundle or self.templates) else self._current()
        synced = self.sync.document if self.sync is not None else None
        prepared = _prepare(version, ctx, document, self.settings.max_input_bytes, synced)
        if prepared is None:
            return CheckResult()
        if isinstance(prepared, str):
            self.over_bounds += 1
            return CheckResult(violations=[Violation(CHECK_ID, prepared)])
        bound = ctx.deadline.cap(self.settings.timeout)
        started = asyncio.get_running_loop().time()
        try:
            worker = await self.pool.acquire(bound)
            held = self._versions.get(worker.generation, version)
            if held is not version:  # a reload is under way: this worker holds the previous version
                again = _prepare(held, ctx, document, self.settings.max_input_bytes, synced)
                if not isinstance(again, _Prepared):
                    self.pool.release(worker)
                    return CheckResult() if again is None else CheckResult(violations=[Violation(CHECK_ID, again)])
                prepared = again
            waited = asyncio.get_running_loop().time() - started
            # A cold pool (used without ``start``) may wait past the bound for its first worker.
            left = bound - waited if waited < bound else bound
            answer = await self.pool.exchange(worker, prepared.payload, left)
        except (isolation.PolicyTimeout, isolation.WorkerDied, isolation.WorkersUnavailable) as exc:
            return self._overrun(f"{exc} ({_names(*version)})", *version)
        return to_result(decode_answer(answer, prepared.policies, prepared.constraints), self.settings.failure_mode)

    def _overrun(
        self, reason: str, bundle: rego.CompiledPolicies | None, templates: gatekeeper.GatekeeperSet | None
    ) -> CheckResult:
        """Which policy overran is unknown: the strictest failure mode among them applies."""
        policies = list(bundle.policies if bundle else ())
        modes = [p.failure_mode or self.settings.failure_mode for p in policies]
        if templates and templates.constraints:
            modes.append(self.settings.failure_mode)
        ids = _ids(bundle, templates)
        context = {"policies": ids, "failed": ids}  # none of them answered (CI exits 2 on it)
        if FailureMode.DENY in modes:
            message = f"{reason}; denied by failure mode 'deny'"
            return CheckResult(violations=[Violation(CHECK_ID, message)], context=context)
        return CheckResult(warnings=[f"[{CHECK_ID}] {reason}; allowed by failure mode 'allow'"], context=context)


_Version = tuple[rego.CompiledPolicies | None, gatekeeper.GatekeeperSet | None]


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One evaluation request for the workers of one policy version."""

    payload: bytes
    policies: list[rego.Policy]
    constraints: list[gatekeeper.Constraint]


def _prepare(
    version: _Version, ctx: RequestContext, document: dict[str, Any], max_bytes: int, synced: Any = None
) -> _Prepared | str | None:
    """The request for ``version``'s workers; None when none of its policies applies, a denial
    message when the input is beyond ``policy.max_input_bytes``. ``synced`` (``data.inventory``)
    goes along when a referential template is among the matching ones; it is cluster state, not
    the requester's input, so it does not count against the bound."""
    bundle, templates = version
    run_bundle = bundle is not None and bool(bundle.policies) and bundle.applies_to(ctx.kind)
    review = policy_input.review(ctx)
    namespace = review.get("_unstable", {}).get("namespace")
    matching = templates.matching(review, namespace) if templates else []
    if not matching and not run_bundle:
        return None
    request = {
        "document": bundle.readable(document) if run_bundle and bundle is not None else None,
        "review": review if matching else None,
        "constraints": [c.id for c in matching],
    }
    payload = bounds.within(request, max_bytes)
    referential = templates is not None and any(templates.templates[c.kind].referential for c in matching)
    if isinstance(payload, bytes) and synced is not None and referential:
        payload = bounds.within({**request, "inventory": synced}, None)  # cluster state: not bounded
    if isinstance(payload, str):  # judged like an input over the bounds, not an internal error
        return payload
    policies = list(bundle.policies) if run_bundle and bundle is not None else []
    return _Prepared(payload, policies, matching)


def worker_spec(
    bundle: rego.CompiledPolicies | None, templates: gatekeeper.GatekeeperSet | None, *, strict: bool
) -> dict[str, Any]:
    """The load message for ``policy.worker``: the very sources the parent compiled."""
    spec: dict[str, Any] = {"strict": strict, "rego": None, "templates": {}, "constraints": {}}
    if bundle is not None:
        spec["rego"] = [[m.name, m.source] for m in bundle.modules]
    if templates is not None:
        spec["templates"] = {
            kind: {
                "file": t.file,
                "entrypoint": t.entrypoint,
                "referential": t.referential,
                "modules": [[m.name, m.source] for m in t.compiled.modules],
            }
            for kind, t in templates.templates.items()
        }
        spec["constraints"] = {c.id: {"kind": c.kind, "parameters": c.parameters} for c in templates.constraints}
    return spec


def decode_answer(
    answer: Any, policies: Sequence[rego.Policy], constraints: Sequence[gatekeeper.Constraint]
) -> list[PolicyResult]:
    """A worker's answer as results of the parent's own policies. Shape-checked: the worker
    evaluates attacker-supplied input, and is trusted no further than its answer's shape."""
    named = [*policies, *(c.policy for c in constraints)]
    raw = [*_entries(answer, "bundle", len(policies)), *_entries(answer, "constraints", len(constraints))]
    out: list[PolicyResult] = []
    for policy, entry in zip(named, raw, strict=True):
        if isinstance(entry, str):
            out.append(PolicyResult(policy, error=entry))
            continue
        deny, warn, error = entry
        if isinstance(error, str):
            out.append(PolicyResult(policy, error=error))
        else:
            out.append(PolicyResult(policy, _items(deny), _items(warn)))
    return out


def _entries(answer: Any, key: str, n: int) -> list[Any]:
    bad = f"the policy worker answered with a malformed {key!r} list"
    value = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(value, list) or len(value) != n:
        return [bad] * n
    return [e if isinstance(e, list) and len(e) == 3 else bad for e in value]


def _items(raw: Any) -> tuple[rego.Item, ...]:
    if not isinstance(raw, list):
        return ()
    out = []
    for item in raw:
        if isinstance(item, list) and len(item) == 3 and isinstance(item[0], str):
            check, path = item[1], item[2]
            out.append(
                rego.Item(item[0], check if isinstance(check, str) else None, path if isinstance(path, str) else None)
            )
    return tuple(out)


def _ids(bundle: rego.CompiledPolicies | None, templates: gatekeeper.GatekeeperSet | None) -> list[str]:
    return [*(bundle.policy_ids if bundle else ()), *(templates.policy_ids if templates else ())]


def _names(bundle: rego.CompiledPolicies | None, templates: gatekeeper.GatekeeperSet | None) -> str:
    ids = _ids(bundle, templates)
    shown = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
    return f"policies: {shown}"


def to_result(results: Sequence[PolicyResult], default_failure: FailureMode) -> CheckResult:
    """Findings of every policy as one check result (pure: shared by webhook, CI and tests)."""
    out = CheckResult()
    evaluated: list[str] = []
    failed: list[str] = []
    for result in results:
        policy = result.policy
        evaluated.append(policy.id)
        if result.error is not None:
            failed.append(policy.id)
            _failure(out, result, policy.failure_mode or default_failure)
            continue
        for item in result.deny:
            out.violations.append(_violation(policy, item, policy.mode))
        warn_mode = decision.weaker(policy.mode, Mode.WARN)
        for item in result.warn:
            out.violations.append(_violation(policy, item, warn_mode))
    out.context = {"policies": evaluated, "failed": failed}
    return out


def _failure(out: CheckResult, result: PolicyResult, failure_mode: FailureMode) -> None:
    if failure_mode is FailureMode.ALLOW:
        out.warnings.append(f"[{CHECK_ID}] {result.error}; allowed by failure mode 'allow'")
    else:
        message = f"{result.error}; denied by failure mode 'deny'"
        out.violations.append(Violation(CHECK_ID, message, mode=result.policy.mode))


def _violation(policy: rego.Policy, item: rego.Item, mode: Mode | None) -> Violation:
    name = f"{policy.id}/{item.check}" if item.check else policy.id
    return Violation(CHECK_ID, f"{name}: {item.msg}", path=item.path, mode=mode)


def build(config: Config, services: Services) -> Check | None:
    """The rego check, or None when ``policy:`` configures nothing.

    Compiles the policies now, so a broken policy fails start-up (and ``portcullis check``)
    with file and line instead of admitting everything.
    """
    settings = config.policy
    if not settings.configured:
        return None
    check_settings: Any = config.checks.get(CHECK_ID)
    failure_mode = check_settings.failure_mode if check_settings is not None else settings.failure_mode
    if settings.engine == "opa":
        assert settings.opa_url is not None  # checked by PolicyConfig
        remote = opa.OpaEngine(settings.opa_url, settings.opa_path, timeout=settings.timeout, token=settings.opa_token)
        return RegoCheck(settings, failure_mode=failure_mode, remote=remote)
    strict = settings.strict_builtin_errors
    bundle = None
    if settings.directory is not None:
        bundle = rego.engine(
            [config.resolve_path(settings.directory)], strict_builtins=strict, probe=settings.crash_probe
        )
        bundle.load()
    templates = None
    if settings.gatekeeper:
        paths = [config.resolve_path(p) for p in settings.gatekeeper]
        templates = gatekeeper.reloadable(paths, strict_builtins=strict, probe=settings.crash_probe)
        templates.load()
    sync = None
    if settings.sync and services.kube_api is not None and not services.ci:
        kinds = [inventory.SyncedKind(k.group, k.version, k.kind, k.resource) for k in settings.sync]
        sync = inventory.InventorySync(services.kube_api, config.kubernetes, kinds)
    return RegoCheck(settings, failure_mode=failure_mode, bundle=bundle, templates=templates, sync=sync)
