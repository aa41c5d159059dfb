"""Which Pod Security level and version apply in a namespace, and the plan that evaluates them.

Label semantics follow Pod Security Admission's ``PolicyToEvaluate``: the six
``pod-security.kubernetes.io/{enforce,warn,audit}[-version]`` labels override the defaults; an
invalid enforce level fails closed (restricted), an invalid warn or audit level fails open
(privileged), an invalid version means ``latest``; when only the enforce level is labelled and it
is stricter than the warn level, warn follows it. One extension: ``hardened`` is accepted as a
level (restricted plus the hardened checks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from webhook.checks.pss import registry
from webhook.checks.pss.registry import STRICTNESS, Level
from webhook.checks.pss.screen import Screen, compile_screen
from webhook.checks.pss.view import CheckFn, Stamp, view
from webhook.core.decision import Mode, Violation
from webhook.core.workloads import PodSpecRef

LABEL_PREFIX = "pod-security.kubernetes.io/"
_MODES = ("enforce", "warn", "audit")


@dataclass(frozen=True, slots=True)
class LevelVersion:
    """A level at a policy version; ``version`` stays as written ("latest" or "v1.N")."""

    level: Level
    version: str = "latest"

    @property
    def minor(self) -> int:
        return registry.parse_version(self.version)

    def __str__(self) -> str:
        return f"{self.level}:{self.version}"


@dataclass(frozen=True, slots=True)
class Policy:
    """The level and version for each mode in one namespace."""

    enforce: LevelVersion
    warn: LevelVersion
    audit: LevelVersion

    def describe(self) -> dict[str, str]:
        return {"enforce": str(self.enforce), "warn": str(self.warn), "audit": str(self.audit)}


def parse_level(text: str) -> Level:
    """A level name → ``Level``; raise ``ValueError`` naming the allowed ones."""
    try:
        return Level(text)
    except ValueError:
        allowed = ", ".join(level.value for level in Level)
        raise ValueError(f"invalid Pod Security level {text!r}: must be one of {allowed}") from None


def from_labels(labels: Mapping[str, str], defaults: Policy) -> tuple[Policy, list[str]]:
    """Apply a namespace's Pod Security labels to ``defaults``; return the policy and one
    warning per invalid label (the label is then read the way Pod Security Admission does)."""
    if not labels or not any(LABEL_PREFIX + m in labels or f"{LABEL_PREFIX}{m}-version" in labels for m in _MODES):
        return defaults, []
    problems: list[str] = []
    modes = {"enforce": defaults.enforce, "warn": defaults.warn, "audit": defaults.audit}
    enforce_labelled = False
    for mode in _MODES:
        level, version = modes[mode].level, modes[mode].version
        level_text = labels.get(LABEL_PREFIX + mode)
        if level_text is not None:
            try:
                level = parse_level(level_text)
                enforce_labelled = enforce_labelled or mode == "enforce"
            except ValueError as exc:
                # PSA: an unreadable enforce level fails closed, warn and audit fail open.
                level = Level.RESTRICTED if mode == "enforce" else Level.PRIVILEGED
                problems.append(f"namespace label {LABEL_PREFIX}{mode}: {exc}; using {level}")
        version_text = labels.get(f"{LABEL_PREFIX}{mode}-version")
        if version_text is not None:
            try:
                registry.parse_version(version_text)
                version = version_text
            except ValueError as exc:
                version = "latest"
                problems.append(f"namespace label {LABEL_PREFIX}{mode}-version: {exc}; using latest")
        modes[mode] = LevelVersion(level, version)
    warn = modes["warn"]
    if (
        enforce_labelled
        and LABEL_PREFIX + "warn" not in labels
        and STRICTNESS[modes["enforce"].level] > STRICTNESS[warn.level]
    ):
        version = warn.version if f"{LABEL_PREFIX}warn-version" in labels else modes["enforce"].version
        modes["warn"] = LevelVersion(modes["enforce"].level, version)
    return Policy(modes["enforce"], modes["warn"], modes["audit"]), problems


@dataclass(frozen=True, slots=True)
class Plan:
    """A policy compiled into check functions: one group per mode, each function run once.

    A function already run for a stronger mode is not run again for a weaker one (same function
    means same version of the same check, so the same findings); findings of different versions
    of one check are kept once, at the strongest mode.
    """

    groups: tuple[tuple[tuple[CheckFn, ...], Stamp], ...]
    # One pass answering "would every function above find nothing?" (``pss.screen``); a pod it
    # passes is skipped, any other is judged by the functions. None: every pod is judged.
    screen: Screen | None = None
    # The same question per group, asked of a pod the plan's screen did not pass when there are
    # several groups: a group it passes (a pod clean at the enforce level but not at the warn
    # level: most pods under the defaults) is skipped; a skipped group would have found nothing,
    # so it neither adds findings nor hides any of a later group.
    group_screens: tuple[Screen | None, ...] = ()

    def evaluate(self, pods: Sequence[PodSpecRef]) -> list[Violation]:
        """Every finding for ``pods``, strongest mode first."""
        out: list[Violation] = []
        screen = self.screen
        group_screens = self.group_screens if len(self.groups) > 1 else ()
        for pod in pods:
            spec, metadata = pod.spec, pod.metadata
            # decoded JSON only (a PodSpecRef built by hand with other types is judged in full,
            # and fails where the view fails)
            screenable = type(spec) is dict and type(metadata) is dict and type(pod.path) is str
            if screenable and screen is not None and screen(spec, metadata):
                continue  # the functions would find nothing in it: skip building its view
            pod_view = view(pod)
            seen: set[tuple[str, str | None]] | None = None
            for index, (fns, stamp) in enumerate(self.groups):
                if screenable and group_screens:
                    group_screen = group_screens[index]
                    if group_screen is not None and group_screen(spec, metadata):
                        continue
                start = len(out)
                for fn in fns:
                    found = fn(pod_view, stamp)
                    if found:
                        out.extend(found)
                if index and seen:
                    out[start:] = [v for v in out[start:] if (v.check, v.path) not in seen]
                if index + 1 < len(self.groups) and len(out) > start:
                    seen = seen or set()
                    seen.update((v.check, v.path) for v in out[start:])
        return _bounded(out) if len(out) > MAX_FINDINGS_PER_CHECK else out


# A pod built to produce a finding per volume or container (tens of thousands) must not cost the
# webhook seconds of judging and megabytes of response; past this many findings of one check id
# the rest are summed up in one finding at the strongest mode among them.
MAX_FINDINGS_PER_CHECK = 100
_MODE_RANK = {None: 0, Mode.OFF: 0, Mode.AUDIT: 1, Mode.WARN: 2, Mode.ENFORCE: 3}


def _bounded(found: list[Violation]) -> list[Violation]:
    kept: list[Violation] = []
    counts: dict[str, int] = {}
    dropped: dict[str, list[Violation]] = {}
    for v in found:
        n = counts.get(v.check, 0)
        counts[v.check] = n + 1
        if n < MAX_FINDINGS_PER_CHECK:
            kept.append(v)
        else:
            dropped.setdefault(v.check, []).append(v)
    for check, rest in dropped.items():
        strongest = max(rest, key=lambda v: _MODE_RANK[v.mode])
        kept.append(
            Violation(
                check,
                f"and {len(rest)} more {check} findings like the ones above (only the first "
                f"{MAX_FINDINGS_PER_CHECK} are listed); fix them all",
                mode=strongest.mode,
            )
        )
    return kept


def compile_plan(
    policy: Policy,
    *,
    hardened: Sequence[CheckFn] = (),
    always: Sequence[CheckFn] = (),
    modes: bool = True,
) -> Plan:
    """Compile ``policy``; ``hardened`` runs at level hardened, ``always`` at every level but
    privileged. With ``modes=False`` only the enforce level is compiled, findings without a mode."""
    groups: list[tuple[tuple[CheckFn, ...], Stamp]] = []
    done: set[CheckFn] = set()
    pairs = ((policy.enforce, Mode.ENFORCE), (policy.warn, Mode.WARN), (policy.audit, Mode.AUDIT))
    for level_version, mode in pairs if modes else pairs[:1]:
        fns = list(registry.checks_for(level_version.level, level_version.minor))
        if level_version.level is not Level.PRIVILEGED:
            fns += [fn for fn in always if fn not in fns]
        if level_version.level is Level.HARDENED:
            fns += [fn for fn in hardened if fn not in fns]
        fresh = tuple(fn for fn in fns if fn not in done)
        done.update(fresh)
        if fresh:
            groups.append((fresh, Stamp(str(level_version), mode if modes else None)))
    screens = tuple(compile_screen(fns) for fns, _ in groups) if len(groups) > 1 else ()
    return Plan(tuple(groups), compile_screen(fn for fns, _ in groups for fn in fns), screens)
