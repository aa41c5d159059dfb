"""The least-privilege check: Pod Security Standards (baseline, restricted, every version) plus the
hardened profile, per namespace (evaluate stage; built by ``checks.registry``, used by the
webhook and ``portcullis check``).

Findings carry the mode they were found for: violations of the enforce level have mode
``enforce``, those found only at the warn level ``warn``, only at the audit level ``audit``.
The check ids are listed in ``webhook.checks.pss``. Verdicts per pod spec are Pod Security
Admission's, and so is when they are made: a Pod UPDATE is judged again only when PSA's
significance rule says so (``pss.updates``), and workload templates are judged as PSA does, at
the warn and audit levels only, unless ``privilege.workload_templates: enforce`` (then a template
that breaks the enforce level is denied, and its UPDATEs follow the same significance rule).
``portcullis check`` (CI) has no pods to refuse later: it judges templates at the enforce level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import msgspec

from webhook import errors
from webhook.checks import changes
from webhook.checks.pss import hardened, policy, registry, updates
from webhook.checks.pss.policy import LevelVersion, Plan, Policy
from webhook.checks.services import Services
from webhook.config import Config
from webhook.config.privilege import ALL_HARDENED, NamespacePrivilege, PrivilegeConfig
from webhook.core.decision import CheckResult, FailureMode, Mode, Violation
from webhook.core.request import RequestContext
from webhook.core.workloads import PodSpecRef

CHECK_ID = "privilege"
LEVELS: tuple[str, ...] = tuple(level.value for level in registry.Level)
NEWEST_VERSION = f"v1.{registry.NEWEST_MINOR}"
_PLAN_CACHE_LIMIT = 64  # distinct (namespace policy) plans kept; label sets in a cluster are few
_RESOLVED_CACHE_LIMIT = 4096  # namespaces whose resolved policy is kept (then all are dropped and re-read)
# The namespace labels ``policy.from_labels`` reads: their values (or absence) decide the policy.
_POLICY_LABELS = tuple(
    f"{policy.LABEL_PREFIX}{mode}{suffix}" for mode in ("enforce", "warn", "audit") for suffix in ("", "-version")
)
_ABSENT = object()


def evaluate(
    pods: Sequence[PodSpecRef],
    level: str = "restricted",
    version: str = "latest",
    *,
    hardened_checks: Sequence[str] = ALL_HARDENED,
    required_limits: Sequence[str] = ("cpu", "memory"),
) -> list[Violation]:
    """Every violation of ``level`` at ``version`` in ``pods`` (mode left unset).

    A pure function for CI and tests. Raises ``ConfigError`` for an unknown level or version.
    """
    plan = _single_level_plan(level, version, tuple(hardened_checks), tuple(required_limits))
    return plan.evaluate(pods)


@lru_cache(maxsize=_PLAN_CACHE_LIMIT)
def _single_level_plan(level: str, version: str, hardened_checks: tuple[str, ...], limits: tuple[str, ...]) -> Plan:
    """The compiled plan for one level (memoised: compiling costs more than judging a pod)."""
    try:
        registry.parse_version(version)
        lv = LevelVersion(policy.parse_level(level), version)
    except ValueError as exc:
        raise errors.ConfigError(str(exc)) from exc
    return policy.compile_plan(Policy(lv, lv, lv), hardened=hardened.checks(hardened_checks, limits), modes=False)


def with_level(config: Config, level: str | None, version: str | None = None) -> Config:
    """``config`` with the enforce level and version pinned everywhere (``portcullis check
    --level/--pss-version``). Raises ``ConfigError`` for an unknown level or version."""
    try:
        if level is not None:
            policy.parse_level(level)
        if version is not None:
            registry.parse_version(version)
    except ValueError as exc:
        raise errors.ConfigError(str(exc)) from exc
    current = config.privilege
    changes: dict[str, object] = {"pinned": True}
    if level is not None:
        changes["level"] = level
    if version is not None:
        changes["version"] = version
    return msgspec.structs.replace(config, privilege=msgspec.structs.replace(current, **changes))


class PrivilegeCheck:
    """Pod Security per namespace: config defaults, then labels, then per-namespace overrides."""

    id = CHECK_ID
    failure_mode = FailureMode.DENY
    default_mode = Mode.ENFORCE
    does_io = False

    def __init__(self, config: PrivilegeConfig, *, ci: bool = False) -> None:
        self._config = config
        self._enforce_templates = ci or config.workload_templates == "enforce"
        self._hardened = hardened.checks(config.hardened_checks, config.required_limits)
        self._always = hardened.checks(config.always_checks, config.required_limits)
        self._defaults = Policy(
            LevelVersion(registry.Level(config.level), config.version),
            LevelVersion(registry.Level(config.warn_level), config.warn_version),
            LevelVersion(registry.Level(config.audit_level), config.audit_version),
        )
        self._plans: dict[Policy, Plan] = {}
        # (plan, description) of the defaults for pods [False] and for warn-only templates [True]
        templates = _warn_only(self._defaults)
        self._default_compiled = {
            False: (self._plan(self._defaults), self._defaults.describe()),
            True: (self._plan(templates), templates.describe()),
        }
        # (namespace, template?, its policy labels) -> (plan, description, warnings): labelled
        # namespaces are judged on every review, and resolving their labels costs more than
        # screening a clean pod. The key holds everything ``policy_for`` reads.
        self._resolved: dict[tuple[object, ...], tuple[Plan, dict[str, str], tuple[str, ...]]] = {}

    def policy_for(self, namespace: str, labels: Mapping[str, str]) -> tuple[Policy, list[str]]:
        """The policy in ``namespace`` with these labels, and warnings about invalid labels."""
        config = self._config
        if config.pinned:
            return self._defaults, []
        found: Policy = self._defaults
        problems: list[str] = []
        if config.namespace_labels and labels:
            found, problems = policy.from_labels(labels, self._defaults)
        override = config.namespaces.get(namespace)
        if override is not None:
            found = _apply(found, override)
        return found, problems

    def significant_update(self, update: changes.Update) -> bool:
        """Whether an UPDATE is judged again.

        Pods: Pod Security Admission's ``isSignificantPodUpdate``, exactly. Templates: PSA judges
        every UPDATE for its warnings, and so does this check while templates only warn; when
        they are enforced, a change to the template's spec or annotations (a template, unlike a
        pod, is mutable throughout), so relabelling a legacy Deployment is never refused.
        """
        if len(update.new_pods) != len(update.old_pods):
            return True
        if update.kind == "Pod":
            return any(updates.significant(n, o) for n, o in zip(update.new_pods, update.old_pods, strict=True))
        if not self._enforce_templates:
            return True
        return update.changed("spec") or any(
            n.metadata.get("annotations") != o.metadata.get("annotations")
            for n, o in zip(update.new_pods, update.old_pods, strict=True)
        )

    async def run(self, pods: Sequence[PodSpecRef], ctx: RequestContext) -> CheckResult:
        template = ctx.kind != "Pod" and not self._enforce_templates
        labels, namespace, config = ctx.namespace_labels, ctx.namespace, self._config
        if config.pinned or (not (labels and config.namespace_labels) and namespace not in config.namespaces):
            # hot path: no labels, no override: the defaults, compiled once
            plan, described = self._default_compiled[template]
            warnings: tuple[str, ...] = ()
        else:
            plan, described, warnings = self._resolve(namespace, labels, template)
        return CheckResult(plan.evaluate(pods), list(warnings), context={"pss": dict(described)})

    def _resolve(
        self, namespace: str, labels: Mapping[str, str], template: bool
    ) -> tuple[Plan, dict[str, str], tuple[str, ...]]:
        """``policy_for`` compiled, remembered per namespace and policy labels."""
        key = (namespace, template, *(labels.get(k, _ABSENT) for k in _POLICY_LABELS))
        try:
            hit = self._resolved.get(key)
            remember = True
        except TypeError:  # a label value that does not hash (never from the API): not remembered
            hit, remember = None, False
        if hit is not None:
            return hit
        found, problems = self.policy_for(namespace, labels)
        if found is self._defaults:
            plan, described = self._default_compiled[template]
        else:
            if template:
                found = _warn_only(found)
            plan, described = self._plan(found), found.describe()
        hit = (plan, described, tuple(f"[{CHECK_ID}] {p}" for p in problems))
        if remember:
            if len(self._resolved) >= _RESOLVED_CACHE_LIMIT:
                self._resolved.clear()
            self._resolved[key] = hit
        return hit

    def _plan(self, found: Policy) -> Plan:
        plan = self._plans.get(found)
        if plan is None:
            if len(self._plans) >= _PLAN_CACHE_LIMIT:
                self._plans.clear()
            plan = policy.compile_plan(found, hardened=self._hardened, always=self._always)
            self._plans[found] = plan
        return plan


def _warn_only(found: Policy) -> Policy:
    """How Pod Security Admission judges a workload template: the warn and audit levels only."""
    return Policy(LevelVersion(registry.Level.PRIVILEGED, found.enforce.version), found.warn, found.audit)


def _apply(found: Policy, override: NamespacePrivilege) -> Policy:
    def one(current: LevelVersion, level: str | None, version: str | None) -> LevelVersion:
        if level is None and version is None:
            return current
        return LevelVersion(
            registry.Level(level) if level is not None else current.level,
            version if version is not None else current.version,
        )

    return Policy(
        one(found.enforce, override.level, override.version),
        one(found.warn, override.warn_level, override.warn_version),
        one(found.audit, override.audit_level, override.audit_version),
    )


def build(config: Config, services: Services) -> PrivilegeCheck:
    """The privilege check for ``config.privilege`` (``services`` tells CI apart: the check does no I/O)."""
    return PrivilegeCheck(config.privilege, ci=services.ci and not services.admission_semantics)
