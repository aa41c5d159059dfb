"""Violations, modes and how they combine into one verdict (decide stage of admission and CI)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Mode(StrEnum):
    """What a violation does: deny, warn the user, or only annotate the audit record."""

    ENFORCE = "enforce"
    WARN = "warn"
    AUDIT = "audit"
    OFF = "off"


class FailureMode(StrEnum):
    """What a check that cannot finish (timeout, upstream down) yields: fail closed by default."""

    DENY = "deny"
    ALLOW = "allow"


@dataclass(frozen=True, slots=True)
class Violation:
    """One finding of one check: which check, where, and how to fix it.

    ``mode`` is set only when the check decides it itself (e.g. a PSS level evaluated for
    ``warn``, an image pattern with its own mode); otherwise the check's resolved mode applies.
    """

    check: str
    message: str
    container: str | None = None
    path: str | None = None
    mode: Mode | None = None

    def describe(self) -> str:
        where = f"{self.container}: " if self.container else ""
        field_ = f" ({self.path})" if self.path else ""
        return f"[{self.check}] {where}{self.message}{field_}"

    def to_json(self, mode: Mode | None = None) -> dict[str, Any]:
        return {
            "check": self.check,
            "container": self.container,
            "path": self.path,
            "message": self.message,
            "mode": str(mode or self.mode or Mode.ENFORCE),
        }


@dataclass(slots=True)
class CheckResult:
    """What one check returns: findings plus what it learnt for the mutation, Rego and audit."""

    violations: list[Violation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # informational, never deny (e.g. 80% of quota)
    patches: list[dict[str, Any]] = field(default_factory=list)  # JSON Patch ops for /mutate
    context: dict[str, Any] = field(default_factory=dict)  # exposed to Rego input and the audit record


@dataclass(frozen=True, slots=True)
class Finding:
    """A violation with its resolved mode."""

    violation: Violation
    mode: Mode


@dataclass(frozen=True, slots=True)
class Verdict:
    """The combined answer for one review."""

    allowed: bool
    findings: tuple[Finding, ...]
    warnings: tuple[str, ...]
    audit_annotations: Mapping[str, str]
    patches: tuple[dict[str, Any], ...]
    exempt_reason: str | None = None
    skipped_reason: str | None = None

    @property
    def denials(self) -> tuple[Violation, ...]:
        return tuple(f.violation for f in self.findings if f.mode is Mode.ENFORCE)

    def deny_message(self) -> str:
        denials = self.denials
        lines = _listed([v.describe() for v in denials[:_MAX_LISTED]], len(denials))
        noun = "violation" if len(denials) == 1 else "violations"
        return f"denied by portcullis: {len(denials)} {noun}: {lines}"


_MAX_WARNINGS = 50  # the apiserver truncates long warning lists; keep ours readable
# The API server stores a webhook's audit annotation under "<webhook name>/<key>" and drops any
# whose combined key is not a qualified name (apiserver admission ``checkKeyFormat``): exactly
# one '/', so our key is a bare name part, at most 63 characters of [A-Za-z0-9-_.].
_ANNOTATION_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
# Violations named in one denial or audit annotation. A crafted pod can carry 100,000+ of them
# (thousands of containers, each wrong in every way): listing all made multi-MB responses.
_MAX_LISTED = 200


def annotation_key(name: str) -> str:
    """The audit annotation key for ``name`` (a check id, ``exempt``): a valid name part.

    The API server prefixes the webhook's name and a '/', so a key holding a '/' itself (or
    otherwise not a qualified name's name part) would be dropped with only a log line. Any
    other character becomes '-' and the key is cut to 63 characters.
    """
    if _ANNOTATION_NAME.match(name):
        return name
    cleaned = re.sub(r"[^-A-Za-z0-9_.]", "-", name)[:63].strip("-_.")
    return cleaned or "finding"


def _listed(lines: list[str], total: int) -> str:
    text = "; ".join(lines)
    return f"{text}; and {total - len(lines)} more" if total > len(lines) else text


def combine(
    results: Mapping[str, CheckResult],
    modes: Mapping[str, Mode],
    *,
    exempt_checks: frozenset[str] = frozenset(),
) -> Verdict:
    """Combine the results of every check into one verdict.

    ``modes`` maps check id to its resolved mode for this request; a violation's own mode, when
    set, is capped by it (a check set to ``warn`` never denies, one set to ``off`` says nothing).
    """
    # Most reviews are clean: nothing found, warned or patched anywhere, and the slow path below
    # would yield exactly this (a check set to off or exempted contributes nothing either way).
    for result in results.values():
        if result.violations or result.warnings or result.patches:
            break
    else:
        return Verdict(True, (), (), {}, ())
    findings: list[Finding] = []
    audit_lines: dict[str, list[str]] = {}  # keyed by check id: a valid annotation key name
    audit_counts: dict[str, int] = {}
    warnings: list[str] = []
    annotations: dict[str, str] = {}
    patches: list[dict[str, Any]] = []
    for check_id, result in results.items():
        check_mode = modes.get(check_id, Mode.ENFORCE)
        if check_mode is Mode.OFF or check_id in exempt_checks:
            continue
        warnings.extend(result.warnings)
        patches.extend(result.patches)
        for violation in result.violations:
            mode = weaker(violation.mode, check_mode)
            if mode is Mode.OFF:
                continue
            findings.append(Finding(violation, mode))
            if mode is Mode.WARN:
                if len(warnings) < 4 * _MAX_WARNINGS:  # enough to fill the list after dedupe
                    warnings.append(violation.describe())
            elif mode is Mode.AUDIT:
                lines = audit_lines.setdefault(check_id, [])
                audit_counts[check_id] = audit_counts.get(check_id, 0) + 1
                if len(lines) < _MAX_LISTED:
                    lines.append(violation.describe())
    for check_id, lines in audit_lines.items():
        annotations[annotation_key(check_id)] = _listed(lines, audit_counts[check_id])
    allowed = not any(f.mode is Mode.ENFORCE for f in findings)
    return Verdict(
        allowed=allowed,
        findings=tuple(findings),
        warnings=tuple(_dedupe(warnings))[:_MAX_WARNINGS],
        audit_annotations=annotations,
        patches=tuple(patches) if allowed else (),
    )


_STRENGTH = {Mode.OFF: 0, Mode.AUDIT: 1, Mode.WARN: 2, Mode.ENFORCE: 3}


def weaker(own: Mode | None, configured: Mode) -> Mode:
    """The weaker of two modes (``off`` < ``audit`` < ``warn`` < ``enforce``); ``None`` yields the other."""
    if own is None:
        return configured
    return own if _STRENGTH[own] <= _STRENGTH[configured] else configured


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
