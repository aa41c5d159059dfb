"""Manifests → findings with the very checks and config of the webhook (evaluate stage of CI)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from webhook import errors
from webhook.checks.pipeline import Pipeline, Subject
from webhook.ci.manifests import InputProblem, Loaded, Manifest
from webhook.core import workloads
from webhook.core.deadline import Deadline
from webhook.core.decision import Mode
from webhook.policy import inventory


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    message: str
    mode: Mode
    container: str | None
    path: str | None
    line: int


@dataclass(frozen=True, slots=True)
class NotJudged:
    """An image a check could not judge (its registry failed): neither passed nor failed."""

    check: str
    image: str
    reason: str
    path: str | None
    line: int


@dataclass(slots=True)
class ObjectResult:
    manifest: Manifest
    kind: str
    namespace: str
    name: str
    allowed: bool
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # informational, not tied to a violation
    not_judged: list[NotJudged] = field(default_factory=list)
    exempt: str | None = None

    @property
    def file(self) -> str:
        return self.manifest.file


@dataclass(slots=True)
class Report:
    results: list[ObjectResult] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)
    skipped_objects: int = 0  # objects no check applies to (no pod spec, no policy selects the kind)
    files: int = 0
    checks: tuple[str, ...] = ()
    skipped_checks: tuple[str, ...] = ()
    not_judged: dict[str, str] = field(default_factory=dict)  # image -> why the images check could not judge it
    allow_unverified: bool = False  # `--allow-unverified`: not judged is reported, but not an error
    # policy id -> the first object it could not judge (it errored): a broken policy is not a pass,
    # even when its failure mode would admit at the webhook (CI exits 2, like an image not judged)
    policy_errors: dict[str, str] = field(default_factory=dict)

    def count(self, mode: Mode) -> int:
        return sum(1 for r in self.results for f in r.findings if f.mode is mode)

    @property
    def denied(self) -> int:
        return sum(1 for r in self.results if not r.allowed)


async def check(
    loaded: Loaded,
    pipeline: Pipeline,
    *,
    default_namespace: str,
    budget_seconds: float = 30.0,
    skipped_checks: Sequence[str] = (),
) -> Report:
    """Judge every manifest as a CREATE by the pipeline, whatever its kind (pod checks judge kinds
    with pod specs, Rego/Gatekeeper the kinds their policies select); objects no check applies to
    are counted as skipped, as are kinds we cannot read pod specs of."""
    report = Report(problems=list(loaded.problems), files=loaded.files, skipped_checks=tuple(skipped_checks))
    report.checks = tuple(c.id for c in pipeline.checks)
    for manifest in loaded.manifests:
        kind = _string(manifest.obj.get("kind"))
        meta = manifest.obj.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        # kubectl puts a namespaced object without a namespace in the default one; cluster-scoped
        # kinds (Namespace, ClusterRole, ...) have none, as their admission requests show
        cluster_scoped = kind in inventory.CLUSTER_SCOPED
        namespace = "" if cluster_scoped else _string(meta.get("namespace")) or default_namespace
        name = _string(meta.get("name")) or _string(meta.get("generateName")) or "<unnamed>"
        subject = Subject("CREATE", kind, namespace, name, manifest.obj)
        try:
            outcome = await pipeline.evaluate(subject, Deadline.after(budget_seconds))
        except errors.ReviewError as exc:
            if not workloads.carries_pod_spec(kind):  # a workload kind we cannot read (a CRD): skipped
                report.skipped_objects += 1
                continue
            report.problems.append(InputProblem(manifest.file, manifest.line, f"{kind}/{name}: {exc}"))
            continue
        if not outcome.applicable:  # no check judges this kind
            report.skipped_objects += 1
            continue
        verdict = outcome.verdict
        where = f"{manifest.file}:{manifest.line} {kind}/{name}"
        for policy_id in (outcome.context.get("rego") or {}).get("failed") or ():
            report.policy_errors.setdefault(str(policy_id), where)
        if "rego" in outcome.errors:  # the check itself could not finish (a remote OPA's error)
            report.policy_errors.setdefault("rego", where)
        result = ObjectResult(manifest, kind, namespace, name, verdict.allowed, exempt=verdict.exempt_reason)
        for entry in (outcome.context.get("images") or {}).get("not_judged", ()):
            report.not_judged.setdefault(entry["image"], entry["reason"])
            path = entry.get("path")
            line = manifest.line_of(path) if path else manifest.line
            result.not_judged.append(NotJudged("images", entry["image"], entry["reason"], path, line))
        for finding in verdict.findings:
            v = finding.violation
            line = manifest.line_of(v.path)
            result.findings.append(Finding(v.check, v.message, finding.mode, v.container, v.path, line))
        described = {f.violation.describe() for f in verdict.findings}
        result.warnings = [w for w in verdict.warnings if w not in described]
        report.results.append(result)
    return report


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""
