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
from collections.abc import Sequence
from typing import Any

from webhook.checks.base import Check
from webhook.checks.services import Services
from webhook.config import Config
from webhook.config.policy import PolicyConfig
from webhook.core import decision
from webhook.core.decision import CheckResult, FailureMode, Mode, Violation
from webhook.core.request import RequestContext
from webhook.core.workloads import PodSpecRef
from webhook.policy import gatekeeper, lifecycle, opa, rego
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
    ) -> None:
        self.settings = settings
        self.failure_mode = failure_mode
        self.bundle = bundle
        self.templates = templates
        self.remote = remote
        self.does_io = remote is not None
        self.pool = lifecycle.BoundedPool(settings.workers)
        self._reloader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.remote is not None:
            await self.remote.start()
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
        self.pool.close()

    def ready(self) -> bool:
        return self.remote is not None or self.pool.ready()

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
        return changed

    async def run(self, pods: Sequence[PodSpecRef], ctx: RequestContext) -> CheckResult:
        document = policy_input.build(ctx, pods)
        if self.remote is not None:
            return to_result(await self.remote.evaluate(document, ctx.deadline), self.settings.failure_mode)
        bundle = self.bundle.current if self.bundle else None
        templates = self.templates.current if self.templates else None
        if not (bundle and bundle.policies) and not (templates and templates.constraints):
            return CheckResult()
        labels = dict(ctx.namespace_labels)

        def evaluate() -> list[PolicyResult]:
            found = bundle.evaluate(document) if bundle else []
            return found + (templates.evaluate(document["request"], labels) if templates else [])

        bound = ctx.deadline.cap(self.settings.timeout)
        # The hop to a worker costs ~40-80 µs of a ~0.5 ms review (bench/bench_rego.py) and is
        # the only bound on an overrunning policy: rego-cpp cannot be interrupted, and its C
        # API has no statement limit, so an inline evaluation could stall the event loop.
        try:
            results = await self.pool.run(evaluate, bound, _names(bundle, templates))
        except lifecycle.PolicyTimeout as exc:
            return self._overrun(str(exc), bundle, templates)
        return to_result(results, self.settings.failure_mode)

    def _overrun(
        self, reason: str, bundle: rego.CompiledPolicies | None, templates: gatekeeper.GatekeeperSet | None
    ) -> CheckResult:
        """Which policy overran is unknown: the strictest failure mode among them applies."""
        policies = list(bundle.policies if bundle else ())
        modes = [p.failure_mode or self.settings.failure_mode for p in policies]
        if templates and templates.constraints:
            modes.append(self.settings.failure_mode)
        if FailureMode.DENY in modes:
            return CheckResult(violations=[Violation(CHECK_ID, f"{reason}; denied by failure mode 'deny'")])
        return CheckResult(warnings=[f"[{CHECK_ID}] {reason}; allowed by failure mode 'allow'"])


def _names(bundle: rego.CompiledPolicies | None, templates: gatekeeper.GatekeeperSet | None) -> str:
    ids = [*(bundle.policy_ids if bundle else ()), *(templates.policy_ids if templates else ())]
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
    return RegoCheck(settings, failure_mode=failure_mode, bundle=bundle, templates=templates)
