"""Recorded admissions judged again under a candidate pipeline, and how the answers moved
(evaluate + decide stages of replay; the pipeline is the admission webhook's own).

Each record is judged as it arrived: the same operation, object and old object, user and
groups, and the namespace labels the checks saw then. The recorded verdict is compared with
the candidate's: *newly denied* (was allowed), *newly allowed* (was denied), *newly warned*
(allowed both times, with warnings from checks that did not warn before). Each change names
the checks responsible and the record's index, so ``portcullis audit prove`` can show the
record is in the signed log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook import errors
from webhook.checks.pipeline import Outcome, Pipeline, Subject
from webhook.core.deadline import Deadline
from webhook.core.decision import Mode
from webhook.replay.source import Recorded, Unreplayable

CATEGORIES = ("newly_denied", "newly_allowed", "newly_warned")
INTEGRITY = frozenset({"tampered", "missing"})


class RecordedLabels:
    """Namespace labels as each record saw them (``current`` is set before each judgement)."""

    def __init__(self) -> None:
        self.current: Mapping[str, str] | None = None

    def labels(self, namespace: str) -> Mapping[str, str] | None:
        return self.current


@dataclass(frozen=True, slots=True)
class Change:
    category: str
    index: int
    time: str
    namespace: str
    kind: str
    name: str
    operation: str
    user: str
    before: str  # the recorded result word
    after: str  # the candidate's
    checks: tuple[str, ...]
    messages: tuple[str, ...]

    def to_json(self, log: str) -> dict[str, Any]:
        return {
            "category": self.category,
            "index": self.index,
            "time": self.time,
            "namespace": self.namespace,
            "kind": self.kind,
            "name": self.name,
            "operation": self.operation,
            "user": self.user,
            "before": self.before,
            "after": self.after,
            "checks": list(self.checks),
            "messages": list(self.messages),
            "prove": prove_command(log, self.index),
        }


def prove_command(log: str, index: int) -> str:
    return f"portcullis audit prove --log {log} --index {index}"


@dataclass
class ReplayReport:
    log: str
    start: str | None = None
    end: str | None = None
    records: int = 0  # admission records in the window
    judged: int = 0
    unchanged: int = 0
    outside_window: int = 0
    changes: list[Change] = field(default_factory=list)
    by_check: dict[str, Counter[str]] = field(default_factory=lambda: {c: Counter() for c in CATEGORIES})
    by_namespace: dict[str, Counter[str]] = field(default_factory=lambda: {c: Counter() for c in CATEGORIES})
    problems: list[Unreplayable] = field(default_factory=list)  # tampered or missing objects
    not_replayable: Counter[str] = field(default_factory=Counter)  # redacted | no-object
    errors: list[tuple[int, str]] = field(default_factory=list)  # records the candidate cannot judge
    # ``portcullis audit verify`` of the log itself, when a public key was given (None: not checked)
    log_verified: bool | None = None
    log_problems: list[str] = field(default_factory=list)

    def count(self, category: str) -> int:
        return sum(1 for c in self.changes if c.category == category)

    @property
    def exit_code(self) -> int:
        """1 when the candidate would deny something new, or the log or an object was tampered with."""
        return 1 if self.count("newly_denied") or self.problems or self.log_verified is False else 0


async def replay(
    pipeline: Pipeline,
    labels: RecordedLabels,
    items: Iterable[Recorded | Unreplayable],
    report: ReplayReport,
    *,
    budget_seconds: float = 30.0,
) -> ReplayReport:
    """Judge every replayable record with ``pipeline`` (built over ``labels``) into ``report``."""
    for item in items:
        report.records += 1
        if isinstance(item, Unreplayable):
            if item.problem in INTEGRITY:
                report.problems.append(item)
            else:
                report.not_replayable[item.problem] += 1
            continue
        content = item.content
        recorded = content.get("namespace_labels")
        labels.current = (
            {k: v for k, v in recorded.items() if isinstance(v, str)} if isinstance(recorded, Mapping) else None
        )
        try:
            outcome = await pipeline.evaluate(_subject(item), Deadline.after(budget_seconds))
        except errors.ReviewError as exc:
            report.errors.append((item.index, str(exc)))
            continue
        report.judged += 1
        change = compare(item, outcome)
        if change is None:
            report.unchanged += 1
            continue
        report.changes.append(change)
        for check in change.checks:
            report.by_check[change.category][check] += 1
        report.by_namespace[change.category][change.namespace] += 1
    return report


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _subject(item: Recorded) -> Subject:
    c = item.content
    subresource = _text(c.get("subresource"))
    kind = "Pod" if subresource == "ephemeralcontainers" else _text(c.get("kind"))
    groups = c.get("groups")
    return Subject(
        operation=_text(c.get("operation")),
        kind=kind,
        namespace=_text(c.get("namespace")),
        name=_text(c.get("name")),
        object=item.object or {},
        old_object=item.old_object,
        subresource=subresource,
        username=_text(c.get("user")),
        groups=tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else (),
        uid=_text(c.get("uid")),
        dry_run=bool(c.get("dry_run")),
    )


def _recorded_checks(content: Mapping[str, Any], mode: str) -> set[str]:
    findings = content.get("findings")
    if not isinstance(findings, list):
        return set()
    return {
        f["check"]
        for f in findings
        if isinstance(f, Mapping) and f.get("mode") == mode and isinstance(f.get("check"), str)
    }


def compare(item: Recorded, outcome: Outcome) -> Change | None:
    """How the candidate's verdict differs from the recorded one (None: no difference that matters)."""
    content = item.content
    verdict = outcome.verdict
    was_allowed = content.get("allowed") is not False
    before_enforce = _recorded_checks(content, "enforce")
    before_warn = _recorded_checks(content, "warn")
    now_enforce = {f.violation.check: f for f in verdict.findings if f.mode is Mode.ENFORCE}
    now_warn = {f.violation.check: f for f in verdict.findings if f.mode is Mode.WARN}
    if was_allowed and not verdict.allowed:
        category = "newly_denied"
        checks = sorted(set(now_enforce) - before_enforce) or sorted(now_enforce)
        messages = [now_enforce[c].violation.describe() for c in checks]
    elif not was_allowed and verdict.allowed:
        category = "newly_allowed"
        checks = sorted(before_enforce - set(now_enforce)) or sorted(before_enforce)
        messages = []
    elif verdict.allowed and set(now_warn) - before_warn:
        category = "newly_warned"
        checks = sorted(set(now_warn) - before_warn)
        messages = [now_warn[c].violation.describe() for c in checks]
    else:
        return None
    return Change(
        category,
        item.index,
        item.time,
        _text(content.get("namespace")),
        _text(content.get("kind")),
        _text(content.get("name")),
        _text(content.get("operation")),
        _text(content.get("user")),
        _text(content.get("result")),
        outcome.result,
        tuple(checks),
        tuple(messages),
    )
