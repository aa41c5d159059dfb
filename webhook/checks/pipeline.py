"""One review through every check to a verdict: shared by the webhook server and ``portcullis check``.

Order: skip what must not be judged (other subresources; on UPDATE, each check whose declared
reads did not change, see ``checks.changes``), resolve exemptions and modes, run the checks
inside the request's deadline (those that do I/O concurrently), turn upstream failures into
each check's failure mode, combine, and ``settle`` what checks hold for the request (GPU
reservations are kept only for a pod the combined verdict admits).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from webhook import errors
from webhook.checks import changes, limits
from webhook.checks.base import Check
from webhook.config import Config
from webhook.core import decision, workloads
from webhook.core.deadline import Deadline
from webhook.core.decision import CheckResult, FailureMode, Finding, Mode, Verdict, Violation, combine
from webhook.core.request import RequestContext
from webhook.core.workloads import PodSpecRef

log = logging.getLogger("portcullis.admission")

# Subresources whose requests carry a pod spec to judge; every other one passes untouched.
_JUDGED_SUBRESOURCES = frozenset({"", "ephemeralcontainers"})
_JUDGED_OPERATIONS = frozenset({"CREATE", "UPDATE"})
_NONE: frozenset[str] = frozenset()


class NamespaceLabels(Protocol):
    """Where namespace labels come from: the API server's namespace watch, or config."""

    def labels(self, namespace: str) -> Mapping[str, str] | None: ...


class Subject(msgspec.Struct, frozen=True):
    """What is being admitted, independent of how it arrived (webhook review or CI manifest).

    A frozen ``msgspec.Struct`` (built per review; see ``RequestContext`` for why not a dataclass).
    """

    operation: str
    kind: str
    namespace: str
    name: str
    object: Mapping[str, Any]
    old_object: Mapping[str, Any] | None = None
    subresource: str = ""
    username: str = ""
    groups: tuple[str, ...] = ()
    uid: str = ""
    dry_run: bool = False
    admission_request: Mapping[str, Any] | None = None  # the review's ``request``, verbatim


class Outcome(msgspec.Struct, frozen=True):
    """A verdict plus what the checks learnt (for the audit record and Rego); a frozen
    ``msgspec.Struct``, like ``Subject``."""

    verdict: Verdict
    pods: tuple[PodSpecRef, ...]
    context: Mapping[str, Any]
    checks_run: tuple[str, ...]
    # Checks that could not finish (upstream down, deadline, internal error) and why: their
    # failure mode decided instead (background scans report these as ``error``).
    errors: Mapping[str, str] = msgspec.field(default_factory=dict)
    # The namespace labels the checks judged with (recorded so a replay judges with the same).
    namespace_labels: Mapping[str, str] = msgspec.field(default_factory=dict)
    # Each check's findings (a finding's ``violation.check`` may name a sub-rule, e.g. "pss:privileged").
    findings_by_check: Mapping[str, tuple[Finding, ...]] = msgspec.field(default_factory=dict)
    # The checks that apply to the object's kind (before exemptions and modes): a check outside
    # it has nothing to say about the object (scans report nothing for it, not "skip").
    applicable: tuple[str, ...] = ()

    @property
    def result(self) -> str:
        """One word for metrics and the audit record: skipped, denied, warned or allowed."""
        verdict = self.verdict
        if verdict.skipped_reason:
            return "skipped"
        if not verdict.allowed:
            return "denied"
        return "warned" if verdict.warnings else "allowed"


class Pipeline:
    """The configured checks and how to run them; one per server (or CI run)."""

    def __init__(self, config: Config, checks: Sequence[Check], namespaces: NamespaceLabels | None = None) -> None:
        self.config = config
        self.checks = tuple(checks)
        self._namespaces = namespaces
        # ``lookup(namespace, deadline)``: a live GET on a miss; only sources with an API client have one.
        self._lookup: Callable[[str, Deadline], Awaitable[Mapping[str, str] | None]] | None = getattr(
            namespaces, "lookup", None
        )
        # Checks whose run may await I/O start first and overlap; the rest run inline.
        self._io_checks = tuple(c for c in self.checks if getattr(c, "does_io", False) and c.id != "rego")
        self._inline_checks = tuple(c for c in self.checks if c not in self._io_checks and c.id != "rego")
        self._late_checks = tuple(c for c in self.checks if c.id == "rego")  # sees the others' context
        # Modes in a namespace without labels (no mode label to apply): the same for every request.
        self._static_modes = {c.id: config.mode_for(c.id, {}) for c in self.checks}
        # Whether any check judges by kind (``applies_to``, Rego); without one, which checks apply
        # depends only on whether the kind carries pod specs.
        self._kind_generic = any(callable(getattr(c, "applies_to", None)) for c in self.checks)
        self.unjudged_kinds: dict[str, int] = {}  # reviews of a kind no check applies to (allowed)

    def _components(self) -> list[object]:
        """What has a lifecycle: the namespace directory first (checks read it), then the checks."""
        return [c for c in (self._namespaces, *self.checks) if c is not None]

    async def start(self) -> None:
        for component in self._components():
            start = getattr(component, "start", None)
            if start is not None:
                await start()

    async def close(self) -> None:
        for component in reversed(self._components()):
            close = getattr(component, "close", None)
            if close is not None:
                await close()

    def ready(self) -> bool:
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        """What is not ready yet, by name (for /readyz: the reason, not a guess)."""
        waiting: list[str] = []
        for component in self._components():
            if not getattr(component, "ready", lambda: True)():
                name = getattr(component, "id", None)
                # A check waits for its first state (cluster lists, warm policy workers); the
                # only other component is the namespace watch.
                waiting.append(f"the {name} check to start" if name else "the first list of namespaces")
        return waiting

    def _default_labels(self, namespace: str) -> Mapping[str, str]:
        settings = self.config.namespaces.get(namespace)
        return settings.labels if settings is not None else {}

    async def _looked_up_labels(self, namespace: str, deadline: Deadline) -> tuple[Mapping[str, str], str]:
        """Labels of a namespace the watch has not delivered yet (cache miss), plus what went wrong.

        Like Pod Security Admission, a miss GETs the namespace (half the remaining budget: the
        checks need the rest). Unlike it, a failed GET does not deny by itself: the checks judge
        with the config's labels for the namespace (the cluster admin's baseline) and the verdict
        carries a warning naming the failure (see SECURITY.md, "A namespace not seen yet").
        A namespace that does not exist (404) gets the same defaults, without a warning.
        """
        if self._lookup is None or not namespace:
            return self._default_labels(namespace), ""
        left = deadline.remaining()
        budget = deadline if left == float("inf") else Deadline.after(left / 2)
        try:
            labels = await self._lookup(namespace, budget)
        except errors.UpstreamError as exc:
            log.warning("namespace %r: labels unavailable: %s", namespace, exc)
            return self._default_labels(namespace), f"labels of namespace {namespace!r} unavailable ({exc})"
        return (labels if labels is not None else self._default_labels(namespace)), ""

    async def evaluate(self, subject: Subject, deadline: Deadline, *, only: frozenset[str] | None = None) -> Outcome:
        """Judge one subject of any kind. Raises ``ReviewError`` only for content that cannot be judged.

        ``only`` limits the checks that run (``/mutate`` runs just those that pin images).
        """
        if subject.subresource not in _JUDGED_SUBRESOURCES:
            return _skipped(f"subresource {subject.subresource!r} is not judged")
        if subject.operation not in _JUDGED_OPERATIONS:
            return _skipped(f"operation {subject.operation} is not judged")
        # Any kind is judged: pod checks by kinds that carry pod specs, kind-generic checks
        # (Rego, Gatekeeper) by the kinds their policies select; no check applies: allowed.
        carries_pods = workloads.carries_pod_spec(subject.kind)
        if not carries_pods and _hidden_pod_template(subject.object):
            # A workload kind we do not know (Argo Rollout, a CRD): its pods would pass unjudged.
            raise errors.ReviewError(
                f"{subject.kind!r} carries a pod template where portcullis cannot find pod specs; "
                f"remove it from the webhook's rules (known kinds: {', '.join(sorted(workloads.WORKLOAD_KINDS))})"
            )
        if self._kind_generic:
            judging = [c for c in self.checks if _applies(c, subject.kind, carries_pods)]
        else:  # only pod checks: they apply exactly when the kind carries pod specs
            judging = list(self.checks) if carries_pods else []
        if not judging:
            self.unjudged_kinds[subject.kind] = self.unjudged_kinds.get(subject.kind, 0) + 1
            return _skipped(f"no check applies to kind {subject.kind!r}")
        pods = workloads.pod_specs(subject.object, subject.kind) if carries_pods else []
        limits.check(pods, self.config.limits)  # bounded input bounds the CPU the checks take
        update: changes.Update | None = None
        if subject.operation == "UPDATE" and subject.old_object is not None:
            old_pods = workloads.pod_specs(subject.old_object, subject.kind) if carries_pods else []
            update = changes.Update(subject.kind, pods, old_pods, subject.object, subject.old_object)
            # each check re-judges what it reads; one that declares nothing (Rego) any change but
            # the API server's bookkeeping
            if not any(changes.must_judge(c, update) for c in judging if only is None or c.id in only):
                return _skipped("the update changes nothing a check looks at", pods)
        # Hot path: a dict lookup; only a namespace the watch has not delivered yet awaits a GET.
        found = self._namespaces.labels(subject.namespace) if self._namespaces is not None else None
        labels, unavailable = (
            (found, "") if found is not None else await self._looked_up_labels(subject.namespace, deadline)
        )
        ctx = RequestContext(
            operation=subject.operation,
            kind=subject.kind,
            namespace=subject.namespace,
            name=subject.name,
            namespace_labels=labels,
            username=subject.username,
            groups=subject.groups,
            uid=subject.uid,
            dry_run=subject.dry_run,
            subresource=subject.subresource,
            deadline=deadline,
            object=subject.object,
            old_object=subject.old_object,
            admission_request=subject.admission_request,
        )
        exempt, reason = self._exemptions(ctx, pods) if self.config.exemptions else (_NONE, "")
        modes = self._static_modes if not labels else {c.id: self.config.mode_for(c.id, labels) for c in self.checks}
        active = [
            c
            for c in judging
            if c.id not in exempt
            and modes[c.id] is not Mode.OFF
            and (only is None or c.id in only)
            and (update is None or changes.must_judge(c, update))  # each check re-judges what it reads
        ]
        failed: dict[str, str] = {}
        try:
            results = await self._run(active, pods, ctx, failed)
            verdict = combine(results, modes)
        except BaseException:
            _settle(active, ctx, admitted=False)
            raise
        _settle(active, ctx, admitted=verdict.allowed)
        if unavailable:
            note = f"[portcullis] {unavailable}; judged with the config's default labels"
            verdict = dataclasses.replace(verdict, warnings=(note, *verdict.warnings))
        if reason:
            verdict = _with_exempt_reason(verdict, reason)
        return Outcome(
            verdict,
            tuple(pods),
            ctx.shared,
            tuple(results),
            failed,
            dict(labels),
            _by_check(results, verdict),
            tuple(c.id for c in judging),
        )

    async def _run(
        self, active: Sequence[Check], pods: Sequence[PodSpecRef], ctx: RequestContext, failed: dict[str, str]
    ) -> dict[str, CheckResult]:
        results: dict[str, CheckResult] = {}
        tasks = {
            c.id: asyncio.ensure_future(self._guarded(c, pods, ctx, failed)) for c in self._io_checks if c in active
        }
        try:
            for check in self._inline_checks:
                if check in active:
                    results[check.id] = await self._guarded(check, pods, ctx, failed)
            for check_id, task in tasks.items():
                results[check_id] = await task
        except BaseException:
            # the review ends here (unjudgeable, or cancelled): no check may go on in the background
            # and reserve GPUs after the verdict was settled
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise
        for check in self._late_checks:
            if check in active:
                results[check.id] = await self._guarded(check, pods, ctx, failed)
        return {c.id: results[c.id] for c in self.checks if c.id in results}  # stable report order

    async def _guarded(
        self, check: Check, pods: Sequence[PodSpecRef], ctx: RequestContext, failed: dict[str, str]
    ) -> CheckResult:
        """Run one check; an outside failure or the deadline becomes its failure mode."""
        try:
            if getattr(check, "does_io", False):
                result = await ctx.deadline.run(check.run(pods, ctx), f"{check.id} check")
            elif ctx.deadline.expired:  # a CPU-only check never waits: no timer task needed for it
                raise errors.DeadlineExceeded(f"{check.id} check: no time left in the request's budget")
            else:
                result = await check.run(pods, ctx)
        except errors.UpstreamError as exc:
            failed[check.id] = str(exc)
            return self._failure(check, str(exc))
        except errors.ReviewError:
            raise
        except errors.InputError as exc:
            # The object itself is malformed where this check looks (e.g. a quantity that is not
            # one): it cannot be judged, so it is denied with the reason, whatever the failure mode.
            return CheckResult(violations=[Violation(check.id, f"cannot judge the pod: {exc}")])
        except Exception as exc:  # a bug in one check must not crash the webhook or allow silently
            log.exception("check %s failed unexpectedly", check.id)
            failed[check.id] = f"internal error: {type(exc).__name__}: {exc}"
            return self._failure(check, f"internal error: {type(exc).__name__}: {exc}")
        if len(result.violations) > limits.MAX_FINDINGS:
            result.violations = limits.bounded(result.violations)
        if result.context:
            ctx.shared[check.id] = result.context
        return result

    def _failure(self, check: Check, reason: str) -> CheckResult:
        settings = self.config.checks.get(check.id)
        failure_mode = settings.failure_mode if settings is not None else check.failure_mode
        if failure_mode is FailureMode.ALLOW:
            return CheckResult(warnings=[f"[{check.id}] could not finish, allowed by failure mode: {reason}"])
        message = f"could not finish ({reason}); denied by failure mode 'deny'"
        return CheckResult(violations=[Violation(check.id, message)])

    def _exemptions(self, ctx: RequestContext, pods: Sequence[PodSpecRef]) -> tuple[set[str], str]:
        # Only string values can match a selector; anything else (ill-typed input) matches nothing.
        runtime_classes = {_text(p.spec.get("runtimeClassName")) for p in pods}
        service_accounts = {_text(p.spec.get("serviceAccountName")) or "default" for p in pods}
        exempt: set[str] = set()
        reasons: list[str] = []
        all_ids = {c.id for c in self.checks}
        for rule in self.config.exemptions:
            if rule.namespaces and ctx.namespace not in rule.namespaces:
                continue
            if rule.usernames and ctx.username not in rule.usernames:
                continue
            # Pod selectors match only objects with pods: one without (a Service, a ConfigMap under
            # a Rego policy) has no runtime class or service account, and the empty set of them
            # would be a subset of any list, exempting every such object from every check.
            if rule.runtime_classes and not (pods and runtime_classes <= set(rule.runtime_classes)):
                continue
            if rule.service_accounts and not (pods and service_accounts <= set(rule.service_accounts)):
                continue
            checks = set(rule.checks) if rule.checks else all_ids
            exempt |= checks
            reasons.append(rule.reason or f"exempted from {', '.join(sorted(checks))}")
        return exempt, "; ".join(reasons)


def _settle(active: Sequence[Check], ctx: RequestContext, *, admitted: bool) -> None:
    """Tell the checks that hold something for this request (GPU reservations) the final verdict."""
    for check in active:
        settle = getattr(check, "settle", None)
        if settle is not None:
            settle(ctx, admitted)


def _by_check(results: Mapping[str, CheckResult], verdict: Verdict) -> dict[str, tuple[Finding, ...]]:
    if not verdict.findings:
        return {}
    owner = {id(v): check_id for check_id, result in results.items() for v in result.violations}
    out: dict[str, list[Finding]] = {}
    for finding in verdict.findings:
        out.setdefault(owner.get(id(finding.violation), finding.violation.check), []).append(finding)
    return {k: tuple(v) for k, v in out.items()}


_POD_TEMPLATE_PATHS = (
    ("spec", "template", "spec"),
    ("spec", "jobTemplate", "spec", "template", "spec"),
    ("template", "spec"),
)


def _hidden_pod_template(obj: Mapping[str, Any]) -> bool:
    """Whether an object of a kind without known pod specs has one where workloads keep theirs."""
    for path in _POD_TEMPLATE_PATHS:
        node: Any = obj
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping):
            return True
    return False


def _applies(check: Check, kind: str, carries_pods: bool) -> bool:
    """Whether ``check`` judges objects of ``kind``: a kind-generic check (one with ``applies_to``,
    e.g. Rego) when one of its policies selects the kind, any other check (PSS, runtime class,
    images, GPU) when the kind carries pod specs. A check that applies to nothing reports nothing."""
    applies_to = getattr(check, "applies_to", None)
    return bool(applies_to(kind)) if callable(applies_to) else carries_pods


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _skipped(reason: str, pods: Sequence[PodSpecRef] = ()) -> Outcome:
    verdict = Verdict(True, (), (), {}, (), skipped_reason=reason)
    return Outcome(verdict, tuple(pods), {}, ())


def _with_exempt_reason(verdict: Verdict, reason: str) -> Verdict:
    annotations = {**verdict.audit_annotations, decision.annotation_key("exempt"): reason}
    return Verdict(
        verdict.allowed,
        verdict.findings,
        verdict.warnings,
        annotations,
        verdict.patches,
        exempt_reason=reason,
        skipped_reason=verdict.skipped_reason,
    )
