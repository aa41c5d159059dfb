"""Reports for security teams over one or more audit logs (``portcullis audit report``).

One pass over the records (stream, never load the log whole) fills ``ReportData``; renderers
(``report_render``) turn it into HTML, JSON, CSV or Markdown. Every finding keeps its log and
leaf index so it can be proved with ``portcullis audit prove``.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from webhook import errors
from webhook.audit import log as audit_log
from webhook.audit import note, verify
from webhook.core import imagename

MAX_ITEMS = 200  # rows kept per evidence list (counts stay exact)


@dataclass(frozen=True, slots=True)
class Window:
    start: str | None  # RFC 3339, inclusive
    end: str | None  # RFC 3339, exclusive
    namespace: str | None


@dataclass(frozen=True, slots=True)
class Integrity:
    log: str
    origin: str | None
    tree_size: int
    root_hash: str
    checkpoint_size: int | None
    signature_valid: bool | None  # None: no public key given
    verified: bool | None
    problems: tuple[str, ...]
    cosigners: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Evidence:
    """One record worth a look, with where to prove it."""

    log: str
    index: int
    time: str
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)

    def prove_command(self) -> str:
        return f"portcullis audit prove --log {self.log} --index {self.index}"


@dataclass
class ReportData:
    window: Window
    integrity: list[Integrity] = field(default_factory=list)
    records: int = 0
    in_window: int = 0
    # admission
    decisions: Counter[str] = field(default_factory=Counter)  # result -> n
    decisions_by_day: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    denials_by_check: Counter[str] = field(default_factory=Counter)
    denials_by_namespace: Counter[str] = field(default_factory=Counter)
    denials_by_user: Counter[str] = field(default_factory=Counter)
    violating_workloads: Counter[str] = field(default_factory=Counter)
    would_deny: Counter[str] = field(default_factory=Counter)  # warn/audit findings by check
    dry_runs: int = 0
    denials: list[Evidence] = field(default_factory=list)
    exemptions: list[Evidence] = field(default_factory=list)
    soft_findings: list[Evidence] = field(default_factory=list)
    images_by_registry: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    unsigned: list[Evidence] = field(default_factory=list)
    # GPU: (day, team-or-namespace) -> (max used, limit)
    gpu_by_day: dict[str, dict[str, tuple[float, float]]] = field(default_factory=lambda: defaultdict(dict))
    # runtime
    alerts_by_priority: Counter[str] = field(default_factory=Counter)
    alerts_by_rule: Counter[str] = field(default_factory=Counter)
    alerts_by_day: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    alerts_by_node: Counter[str] = field(default_factory=Counter)
    alerts_by_namespace: Counter[str] = field(default_factory=Counter)
    alerts_by_pod: Counter[str] = field(default_factory=Counter)
    alerts_by_image: Counter[str] = field(default_factory=Counter)
    alerts: list[Evidence] = field(default_factory=list)
    # admissions that ADMITTED something, by ("pod", ns, name) and ("image", ns, repository),
    # in time order, to link each alert to the record that let its pod in (see _link_alerts)
    _admitted: dict[tuple[str, str, str], list[Evidence]] = field(default_factory=lambda: defaultdict(list))


def build(
    logs: Sequence[Path],
    *,
    window: Window,
    public_keys: Sequence[str] = (),
    verify_logs: bool = True,
) -> ReportData:
    """Verify each log (when keys are given) and aggregate its records inside ``window``."""
    data = ReportData(window)
    verifiers = [note.load_verifier(k) for k in public_keys]
    for directory in logs:
        if not directory.is_dir():
            raise errors.AuditFormatError(f"{directory}: not an audit log directory")
        data.integrity.append(_integrity(directory, verifiers, verify_logs))
        _scan(directory, data)
    _link_alerts(data)  # after every log: alerts and admissions usually live in different logs
    return data


def _integrity(directory: Path, verifiers: Sequence[note.Verifier], run: bool) -> Integrity:
    if not run:
        return Integrity(str(directory), None, 0, "", None, None, None, (), ())
    key = verify.key_for(directory, verifiers) if verifiers else None  # several, none its origin's: an error
    result = verify.verify(directory, key)
    signature_ok = None
    if key is not None:
        signature_ok = not any("signature" in p.message for p in result.problems)
    return Integrity(
        log=str(directory),
        origin=result.origin,
        tree_size=result.size,
        root_hash=result.root.hex(),
        checkpoint_size=result.checkpoint_size,
        signature_valid=signature_ok,
        verified=result.ok if key is not None else None,
        problems=tuple(str(p.message) for p in result.ordered()[:20]),
        cosigners=tuple(result.cosigners),
    )


def _day(time: str) -> str:
    return time[:10]


def _scan(directory: Path, data: ReportData) -> None:
    start, end, namespace = data.window.start, data.window.end, data.window.namespace
    name = str(directory)
    for index, record in audit_log.read_records(directory):
        data.records += 1
        time = record.get("time", "")
        if (start and time < start) or (end and time >= end):
            continue
        content = record.get("content")
        if not isinstance(content, dict):
            continue
        kind = record.get("kind")
        if kind == "admission":
            if namespace and content.get("namespace") != namespace:
                continue
            data.in_window += 1
            _admission(name, index, time, content, data)
        elif kind == "alert":
            fields = content.get("output_fields") or {}
            if namespace and fields.get("k8s.ns.name") != namespace:
                continue
            data.in_window += 1
            _alert(name, index, time, content, data)


def _admission(log: str, index: int, time: str, c: dict[str, Any], data: ReportData) -> None:
    result = str(c.get("result", "allowed" if c.get("allowed") else "denied"))
    data.decisions[result] += 1
    data.decisions_by_day[_day(time)][result] += 1
    if c.get("dry_run"):
        data.dry_runs += 1
    ns, kind, name = str(c.get("namespace", "")), str(c.get("kind", "")), str(c.get("name", ""))
    workload = f"{ns}/{kind}/{name}"
    findings = [f for f in c.get("findings") or [] if isinstance(f, dict)]
    summary = f"{result} {workload} by {c.get('user', '?')}"
    detail = {"findings": findings[:10], "dry_run": bool(c.get("dry_run")), "reasons": denial_reasons(c)}
    evidence = Evidence(log, index, time, summary, detail)
    if result == "denied":
        data.denials_by_namespace[ns] += 1
        data.denials_by_user[str(c.get("user", ""))] += 1
        data.violating_workloads[workload] += 1
        for check in {f.get("check", "?") for f in findings if f.get("mode") == "enforce"}:
            data.denials_by_check[check] += 1
        _keep(data.denials, evidence)
    soft = [f for f in findings if f.get("mode") in ("warn", "audit")]
    for f in soft:
        data.would_deny[str(f.get("check", "?"))] += 1
    if soft:
        _keep(data.soft_findings, evidence)
    if c.get("exempt"):
        _keep(data.exemptions, Evidence(log, index, time, f"{workload}: {c['exempt']}", {}))
    _images(log, index, time, c, workload, data)
    _gpu(time, c, data)


def denial_reasons(c: dict[str, Any]) -> list[str]:
    """Why a decision denied: its enforcing findings ("check: message"), else its warnings."""
    if c.get("allowed") is not False and c.get("result") != "denied":
        return []
    findings = [f for f in c.get("findings") or [] if isinstance(f, dict)]
    reasons = [f"{f.get('check', '?')}: {f.get('message', '')}" for f in findings if f.get("mode") == "enforce"]
    if not reasons:
        reasons = [str(w) for w in c.get("warnings") or []] or ["(no reason recorded)"]
    if c.get("findings_truncated"):
        reasons.append(f"... and {c['findings_truncated']} more findings")
    return reasons[:10]


def _admits(c: dict[str, Any]) -> bool:
    """Whether this record let the object in (a denial or a dry run admitted nothing)."""
    return c.get("allowed") is True and c.get("result") != "denied" and not c.get("dry_run")


def _images(log: str, index: int, time: str, c: dict[str, Any], workload: str, data: ReportData) -> None:
    context = c.get("context") or {}
    entries = (context.get("images") or {}).get("images") if isinstance(context.get("images"), dict) else None
    ns = str(c.get("namespace", ""))
    summary = f"{c.get('result', '?')} {workload}"
    admits = _admits(c)
    if admits and c.get("kind") == "Pod" and c.get("name"):
        data._admitted[("pod", ns, str(c["name"]))].append(Evidence(log, index, time, summary, {"images": entries}))
    for e in entries or []:
        image = str(e.get("image", ""))
        outcome = _image_outcome(e)
        data.images_by_registry[registry_of(image)][outcome] += 1
        if outcome != "verified":
            _keep(data.unsigned, Evidence(log, index, time, f"{image}: {outcome}", {"reason": e.get("reason")}))
        if admits:
            detail = {"digest": e.get("digest"), "verified": bool(e.get("verified"))}
            data._admitted[("image", ns, repository_of(image))].append(Evidence(log, index, time, summary, detail))
    if entries or not admits:
        return
    for image in c.get("images") or []:
        detail = {"digest": None, "verified": None}
        data._admitted[("image", ns, repository_of(str(image)))].append(Evidence(log, index, time, summary, detail))


def _image_outcome(entry: dict[str, Any]) -> str:
    if entry.get("verified"):
        return "verified"
    if entry.get("error"):
        return "error"
    reason = str(entry.get("reason") or "").lower()
    if "identity" in reason or "untrusted" in reason or "wrong key" in reason or "does not verify" in reason:
        return "untrusted identity"
    if "no signature" in reason or "unsigned" in reason or "not signed" in reason or "missing" in reason:
        return "unsigned"
    if entry.get("pattern") is None:
        return "no policy"
    return "rejected"


def _gpu(time: str, c: dict[str, Any], data: ReportData) -> None:
    context = c.get("context") or {}
    gpu = context.get("gpu") if isinstance(context, dict) else None
    if not isinstance(gpu, dict):
        return
    for q in gpu.get("quotas") or []:
        scope = f"{q.get('scope', '?')}:{q.get('key', '?')}"
        used = (
            _number(q.get("used")) + _number(q.get("reserved")) + (_number(q.get("asked")) if c.get("allowed") else 0)
        )
        limit = _number(q.get("limit"))
        day = data.gpu_by_day[_day(time)]
        before = day.get(scope, (0.0, limit))
        day[scope] = (max(before[0], used), limit)


def _number(value: Any) -> float:
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an integer past float range
            return 0.0
    if isinstance(value, str):
        try:
            return float(Fraction(value))
        except (ValueError, ZeroDivisionError, OverflowError):  # "1e999" too: no count of GPUs
            return 0.0
    return 0.0


def _alert(log: str, index: int, time: str, c: dict[str, Any], data: ReportData) -> None:
    fields = c.get("output_fields") or {}
    priority = str(c.get("priority", "?"))
    rule = str(c.get("rule", "?"))
    data.alerts_by_priority[priority] += 1
    data.alerts_by_rule[rule] += 1
    data.alerts_by_day[_day(time)][priority] += 1
    data.alerts_by_node[str(c.get("hostname", "?"))] += 1
    ns = fields.get("k8s.ns.name")
    pod = fields.get("k8s.pod.name")
    image = fields.get("container.image.repository") or fields.get("container.image")
    if ns:
        data.alerts_by_namespace[str(ns)] += 1
    if pod:
        data.alerts_by_pod[f"{ns}/{pod}"] += 1
    if image:
        data.alerts_by_image[str(image)] += 1
    detail: dict[str, Any] = {"priority": priority, "rule": rule, "output": c.get("output", "")}
    keys = [("pod", str(ns), str(pod))] if ns and pod else []
    keys += [("image", str(ns), repository_of(str(image)))] if ns and image else []
    detail["_keys"] = keys
    detail["_repo"] = repository_of(str(image)) if image else None
    _keep(data.alerts, Evidence(log, index, time, f"{priority} {rule} on {c.get('hostname', '?')}", detail))


def _link_alerts(data: ReportData) -> None:
    """Each alert gets the newest record at or before it that ADMITTED its pod (by pod name,
    else by namespace and image repository); never a later record, never a denial."""
    for lists in data._admitted.values():
        lists.sort(key=lambda e: e.time)
    for alert in data.alerts:
        keys = alert.detail.pop("_keys", [])
        repo = alert.detail.pop("_repo", None)
        for key in keys:
            admitted = data._admitted.get(key) or []
            at = bisect.bisect_right([e.time for e in admitted], alert.time)
            if not at:
                continue
            found = admitted[at - 1]
            digest, verified = found.detail.get("digest"), found.detail.get("verified")
            if key[0] == "pod":  # the admitted pod's entry for the alerting container's image
                same = [e for e in found.detail.get("images") or [] if repository_of(str(e.get("image"))) == repo]
                digest, verified = (same[0].get("digest"), bool(same[0].get("verified"))) if same else (None, None)
            alert.detail["admission"] = {
                "log": found.log,
                "index": found.index,
                "time": found.time,
                "matched_by": key[0],
                "digest": digest,
                "verified": verified,
            }
            break


def _keep(items: list[Evidence], evidence: Evidence) -> None:
    if len(items) < MAX_ITEMS:
        items.append(evidence)


def registry_of(image: str) -> str:
    """The registry host of an image reference (Docker Hub when none is named)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def repository_of(image: str) -> str:
    """Image reference without tag or digest, with the registry (for matching alerts to admissions)."""
    return imagename.split_tag(image)[0]


def parse_time(text: str | None, *, end: bool = False) -> str | None:
    """``2026-11-01`` or RFC 3339 → a comparable RFC 3339 UTC string (``end`` dates are exclusive)."""
    if not text:
        return None
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            if end:
                day += dt.timedelta(days=1)
            moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        else:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise errors.InputError(f"time {text!r}: use a date (2026-11-01) or RFC 3339 (2026-11-01T12:00:00Z)") from exc
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def top(counter: Counter[str], n: int = 10) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def days(data: ReportData) -> list[str]:
    found: Iterable[str] = set(data.decisions_by_day) | set(data.alerts_by_day) | set(data.gpu_by_day)
    return sorted(found)
