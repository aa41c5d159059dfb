"""Render ``ReportData`` as HTML (one self-contained file), JSON, CSV or Markdown."""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import math
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any

from webhook import __version__
from webhook.audit import report_charts
from webhook.audit.report import Evidence, ReportData, days, top
from webhook.core import shown

FORMATS = ("html", "json", "csv", "md")
_RESULTS = ("allowed", "warned", "denied", "skipped", "invalid", "audit_failure")
_PRIORITIES = ("Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug")


def render(data: ReportData, fmt: str) -> str:
    """The report in ``fmt``, always encodable as UTF-8 (a log directory named by undecodable
    bytes is shown as ``\\xNN``)."""
    text = shown.unicode({"html": to_html, "json": to_json, "csv": to_csv, "md": to_markdown}[fmt](data))
    return shown.without_log_commands(text, _LOG_BRACKET[fmt])


# How a CI log is kept from running a ``##vso[`` logging command in a report printed to it: the
# same text to an HTML or JSON reader; Markdown already escapes ``#`` and ``[``; CSV has no
# escape, so the cell shows a visible ``\x5b``.
_LOG_BRACKET = {"html": "&#91;", "json": "\\u005b", "csv": "\\x5b", "md": "\\["}


# --- JSON -----------------------------------------------------------------------------------------


def _evidence_json(e: Evidence) -> dict[str, Any]:
    return {
        "log": e.log,
        "index": e.index,
        "time": e.time,
        "summary": e.summary,
        "detail": e.detail,
        "prove": e.prove_command(),
    }


def to_dict(data: ReportData) -> dict[str, Any]:
    def counts(c: Counter[str]) -> dict[str, int]:
        return dict(sorted(c.items()))

    return {
        "version": 1,
        "window": {"from": data.window.start, "to": data.window.end, "namespace": data.window.namespace},
        "integrity": [dataclasses.asdict(i) for i in data.integrity],
        "records": {"total": data.records, "in_window": data.in_window},
        "admission": {
            "decisions": counts(data.decisions),
            "decisions_by_day": {d: counts(c) for d, c in sorted(data.decisions_by_day.items())},
            "denials_by_check": counts(data.denials_by_check),
            "denials_by_namespace": counts(data.denials_by_namespace),
            "denials_by_user": counts(data.denials_by_user),
            "top_violating_workloads": [{"workload": w, "denials": n} for w, n in top(data.violating_workloads, 20)],
            "would_have_denied_by_check": counts(data.would_deny),
            "dry_runs": data.dry_runs,
            "denials": [_evidence_json(e) for e in data.denials],
            "exemptions": [_evidence_json(e) for e in data.exemptions],
            "warn_audit_findings": [_evidence_json(e) for e in data.soft_findings],
        },
        "images": {
            "by_registry": {r: counts(c) for r, c in sorted(data.images_by_registry.items())},
            "not_verified": [_evidence_json(e) for e in data.unsigned],
        },
        "gpu": {
            "usage_by_day": {
                d: {s: {"used": _finite(u), "limit": _finite(lim)} for s, (u, lim) in sorted(v.items())}
                for d, v in sorted(data.gpu_by_day.items())
            }
        },
        "runtime": {
            "alerts_by_priority": counts(data.alerts_by_priority),
            "alerts_by_rule": counts(data.alerts_by_rule),
            "alerts_by_day": {d: counts(c) for d, c in sorted(data.alerts_by_day.items())},
            "alerts_by_node": counts(data.alerts_by_node),
            "alerts_by_namespace": counts(data.alerts_by_namespace),
            "alerts_by_pod": counts(data.alerts_by_pod),
            "alerts_by_image": counts(data.alerts_by_image),
            "alerts": [_evidence_json(e) for e in data.alerts],
        },
    }


def _finite(value: float) -> float | None:
    """JSON has no Infinity or NaN (a sum of huge recorded values overflows): unknown is null."""
    return value if math.isfinite(value) else None


def to_json(data: ReportData) -> str:
    return shown.json_document(to_dict(data))


# --- CSV: one row per counted fact ------------------------------------------------------------------


# A spreadsheet runs a cell that starts like a formula; record fields are attacker-chosen (pod
# names, users, messages). OWASP's CSV injection advice: prefix such cells with a single quote.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
# Looked past before the test: spaces of any kind, controls and invisible format characters
# (NBSP, ideographic space, zero-width space, BOM), which an importer may trim or a reader miss.
_INVISIBLE = ("Zs", "Zl", "Zp", "Cc", "Cf")


def _lstrip_invisible(text: str) -> str:
    for index, ch in enumerate(text):
        if unicodedata.category(ch) not in _INVISIBLE or ch in "\t\r":
            return text[index:]
    return ""


def csv_cell(value: Any) -> Any:
    """A cell safe to open in a spreadsheet: numbers stay numbers, risky text gets a quote."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = str(value)
        stripped = _lstrip_invisible(text)
        if stripped.startswith(_FORMULA_START) or (stripped != text and stripped[:1] in ("'", '"')):
            return "'" + text
        return text
    return value


def to_csv(data: ReportData) -> str:
    """Long format (section, dimension, key, subkey, count, detail) so spreadsheets can pivot it;
    evidence rows (denials with their reasons, alerts with the admission that let the pod in)
    carry ``log#index`` as key and the details in ``detail``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow(["section", "dimension", "key", "subkey", "count", "detail"])
    rows: list[tuple[str, str, str, str, float | None, str]] = []

    def flat(section: str, dimension: str, counter: Counter[str]) -> None:
        rows.extend((section, dimension, k, "", v, "") for k, v in sorted(counter.items()))

    flat("admission", "result", data.decisions)
    for day, c in sorted(data.decisions_by_day.items()):
        rows.extend(("admission", "result_by_day", day, k, v, "") for k, v in sorted(c.items()))
    flat("admission", "denials_by_check", data.denials_by_check)
    flat("admission", "denials_by_namespace", data.denials_by_namespace)
    flat("admission", "denials_by_user", data.denials_by_user)
    flat("admission", "denials_by_workload", data.violating_workloads)
    flat("admission", "would_have_denied_by_check", data.would_deny)
    for registry, c in sorted(data.images_by_registry.items()):
        rows.extend(("images", "outcome_by_registry", registry, k, v, "") for k, v in sorted(c.items()))
    for day, usage in sorted(data.gpu_by_day.items()):
        for scope, (used, limit) in sorted(usage.items()):
            rows.append(("gpu", "used_by_day", day, scope, _finite(used), ""))
            rows.append(("gpu", "limit_by_day", day, scope, _finite(limit), ""))
    flat("runtime", "alerts_by_priority", data.alerts_by_priority)
    flat("runtime", "alerts_by_rule", data.alerts_by_rule)
    for day, c in sorted(data.alerts_by_day.items()):
        rows.extend(("runtime", "alerts_by_day", day, k, v, "") for k, v in sorted(c.items()))
    flat("runtime", "alerts_by_node", data.alerts_by_node)
    flat("runtime", "alerts_by_namespace", data.alerts_by_namespace)
    flat("runtime", "alerts_by_pod", data.alerts_by_pod)
    flat("runtime", "alerts_by_image", data.alerts_by_image)
    for dimension, items in (("denial", data.denials), ("exemption", data.exemptions), ("alert", data.alerts)):
        rows.extend(("evidence", dimension, f"{e.log}#{e.index}", e.time, 1, _detail_text(e)) for e in items)
    writer.writerows([csv_cell(c) for c in row] for row in rows)
    return out.getvalue()


def _detail_text(e: Evidence) -> str:
    """One line: the summary, why it was denied, and which admission let an alerting pod in."""
    parts = [e.summary]
    if e.detail.get("reasons"):
        parts.append("denied: " + "; ".join(e.detail["reasons"]))
    admission = e.detail.get("admission")
    if admission:
        parts.append(f"admitted by {admission['log']}#{admission['index']} at {admission.get('time', '?')}")
    return " | ".join(parts)


# --- Markdown ---------------------------------------------------------------------------------------


def _md_table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    headers = list(headers)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_text(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(data: ReportData) -> str:
    parts = ["# Portcullis audit report", "", _window_text(data), "", "## Integrity", ""]
    parts.append(
        _md_table(
            ["log", "origin", "tree size", "root hash", "signature", "verify"],
            [
                (i.log, i.origin, i.tree_size, i.root_hash[:16] + "…", _tri(i.signature_valid), _tri(i.verified))
                for i in data.integrity
            ],
        )
    )
    parts += ["", "## Admission", "", _md_table(["result", "count"], sorted(data.decisions.items())), ""]
    parts += ["### Denials by check", "", _md_table(["check", "denials"], top(data.denials_by_check, 50)), ""]
    parts += ["### Denials by namespace", "", _md_table(["namespace", "denials"], top(data.denials_by_namespace)), ""]
    parts += ["### Denials by user", "", _md_table(["user", "denials"], top(data.denials_by_user)), ""]
    parts += ["### Top violating workloads", "", _md_table(["workload", "denials"], top(data.violating_workloads)), ""]
    parts += ["### Would have been denied (warn/audit)", "", _md_table(["check", "findings"], top(data.would_deny, 50))]
    parts += ["", "## Images", ""]
    parts.append(
        _md_table(
            ["registry", "outcome", "count"],
            [(r, o, n) for r, c in sorted(data.images_by_registry.items()) for o, n in sorted(c.items())],
        )
    )
    parts += ["", "## Runtime alerts", "", _md_table(["priority", "alerts"], top(data.alerts_by_priority))]
    parts += ["", _md_table(["rule", "alerts"], top(data.alerts_by_rule, 50))]
    parts += ["", "## Evidence", ""]
    for e in data.denials[:50] + data.alerts[:50]:
        parts.append(f"- `{e.time}` {_md_text(_detail_text(e))} — `{e.prove_command()}`")
    return "\n".join(parts) + "\n"


def _md_text(text: str) -> str:
    """Record text inside Markdown: no markup, links or HTML of its own."""
    out = text.replace("\\", "\\\\").replace("\n", " ").replace("\r", " ")
    for ch in "`*_[]<>|#!~&":
        out = out.replace(ch, "\\" + ch)
    return out


def _tri(value: bool | None) -> str:
    return "n/a (no key)" if value is None else ("valid" if value else "INVALID")


def _window_text(data: ReportData) -> str:
    w = data.window
    ns = f", namespace {w.namespace}" if w.namespace else ""
    return f"Window: {w.start or 'beginning'} to {w.end or 'now'}{ns}. Records read: {data.records}, in window: {data.in_window}."


# --- HTML -------------------------------------------------------------------------------------------

_CSS = """
:root{--fg:#1c2330;--muted:#5b6576;--line:#d9dee7;--ok:#2e7d32;--bad:#c62828;--warn:#b26a00}
*{box-sizing:border-box}body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);
margin:0 auto;max-width:1100px;padding:16px}h1{font-size:1.6em;margin:.2em 0}h2{border-bottom:2px solid var(--line);
padding-bottom:4px;margin-top:1.6em}h3{font-size:1.05em;margin:1.2em 0 .4em}.muted{color:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px}.card{border:1px solid var(--line);
border-radius:8px;padding:10px}.card b{display:block;font-size:1.5em}.ok{color:var(--ok)}.bad{color:var(--bad)}
.warn{color:var(--warn)}table{border-collapse:collapse;width:100%;margin:.4em 0;font-size:.92em}
th,td{border-bottom:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f4f6f9}td.n{text-align:right;font-variant-numeric:tabular-nums}.scroll{overflow-x:auto}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:16px}
figure{margin:.6em 0}figure svg{width:100%;height:auto}code{font-size:.85em;word-break:break-all}
@media print{body{max-width:none;font-size:11px}h2{break-after:avoid}figure,table{break-inside:avoid}}
"""


def _e(value: Any) -> str:
    """Escaped for HTML text and attributes; NUL and the other characters XML cannot hold are
    shown as ``\\xNN`` (an HTML parser drops NUL: the reader would not see it)."""
    return html.escape(shown.xml(str(value)), quote=True)


def _table(headers: list[str], rows: Iterable[Iterable[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{_e(c)}</td>' if i in numeric else f"<td>{c if isinstance(c, _Raw) else _e(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>')
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


class _Raw(str):
    """Already-escaped HTML."""


def _evidence_rows(items: list[Evidence]) -> list[tuple[Any, ...]]:
    rows = []
    for e in items:
        extra = ""
        if e.detail.get("reasons"):
            reasons = "".join(f"<li>{_e(r)}</li>" for r in e.detail["reasons"])
            extra += f'<ul class="reasons">{reasons}</ul>'
        admission = e.detail.get("admission")
        if admission:
            verified = {True: "verified", False: "NOT verified", None: "unknown"}[admission.get("verified")]
            extra += (
                f"<br><span class=muted>admitted by {_e(admission['log'])}#{admission['index']} "
                f"at {_e(admission.get('time', '?'))}: digest {_e(admission.get('digest') or '?')} ({verified})</span>"
            )
        proof = f'<code title="{_e(e.prove_command())}">audit prove --index {e.index}</code>'
        rows.append((e.time[:19].replace("T", " "), _Raw(_e(e.summary) + extra), _Raw(proof)))
    return rows


def to_html(data: ReportData) -> str:
    all_days = days(data)
    integrity_ok = all(i.verified for i in data.integrity) and bool(data.integrity)
    status = (
        '<b class="ok">verified</b>'
        if integrity_ok
        else '<b class="bad">NOT verified</b>'
        if any(i.verified is False for i in data.integrity)
        else '<b class="warn">not checked (no public key)</b>'
    )
    cards = [
        ("Integrity", _Raw(status)),
        ("Decisions", sum(data.decisions.values())),
        ("Denied", data.decisions.get("denied", 0)),
        ("Warned", data.decisions.get("warned", 0)),
        ("Runtime alerts", sum(data.alerts_by_priority.values())),
        (
            "Images not verified",
            sum(n for c in data.images_by_registry.values() for o, n in c.items() if o != "verified"),
        ),
    ]
    card_html = "".join(
        f'<div class="card"><span class="muted">{_e(t)}</span>{v if isinstance(v, _Raw) else f"<b>{_e(v)}</b>"}</div>'
        for t, v in cards
    )
    integrity_rows = [
        (
            i.log,
            i.origin or "?",
            i.tree_size,
            _Raw(f"<code>{_e(i.root_hash)}</code>"),
            i.checkpoint_size,
            _tri(i.signature_valid),
            _tri(i.verified),
            "; ".join(i.problems[:3]) or "—",
        )
        for i in data.integrity
    ]
    decisions_chart = report_charts.stacked_bars(
        "Admission decisions per day", all_days, data.decisions_by_day, _RESULTS
    )
    alerts_chart = report_charts.stacked_bars(
        "Runtime alerts per day by priority", all_days, data.alerts_by_day, _PRIORITIES
    )
    gpu_chart = report_charts.usage_lines("GPU use vs quota (daily peak)", all_days, data.gpu_by_day)
    image_rows = [(r, o, n) for r, c in sorted(data.images_by_registry.items()) for o, n in sorted(c.items())]
    sections = [
        f"<h1>Portcullis audit report</h1><p class=muted>{_e(_window_text(data))} Generated by portcullis {__version__}.</p>",
        f'<section id="summary"><div class="cards">{card_html}</div></section>',
        '<section id="integrity"><h2>Integrity</h2>'
        + _table(
            ["log", "origin", "tree size", "root hash", "checkpoint", "signature", "verify", "problems"],
            integrity_rows,
            {2, 4},
        )
        + "</section>",
        '<section id="admission"><h2>Admission</h2>'
        f'<figure id="chart-decisions">{decisions_chart}</figure><div class="grid2">'
        f"<div><h3>Denials by check</h3>{_table(['check', 'denials'], top(data.denials_by_check, 30), {1})}</div>"
        f"<div><h3>Denials by namespace</h3>{_table(['namespace', 'denials'], top(data.denials_by_namespace), {1})}</div>"
        f"<div><h3>Denials by user</h3>{_table(['user', 'denials'], top(data.denials_by_user), {1})}</div>"
        f"<div><h3>Top violating workloads</h3>{_table(['workload', 'denials'], top(data.violating_workloads), {1})}</div>"
        f"<div><h3>Would have been denied (warn / audit mode)</h3>{_table(['check', 'findings'], top(data.would_deny, 30), {1})}</div>"
        f"</div><h3>Exemptions used</h3>{_table(['time', 'what', 'prove'], _evidence_rows(data.exemptions[:20]))}"
        f"<h3>Denials (evidence)</h3>{_table(['time', 'what', 'prove'], _evidence_rows(data.denials[:50]))}</section>",
        '<section id="images"><h2>Image signatures</h2>'
        f"{_table(['registry', 'outcome', 'images'], image_rows, {2})}"
        f"<h3>Not verified (evidence)</h3>{_table(['time', 'what', 'prove'], _evidence_rows(data.unsigned[:50]))}</section>",
        f'<section id="gpu"><h2>GPU usage vs quota</h2><figure id="chart-gpu">{gpu_chart}</figure></section>',
        '<section id="runtime"><h2>Runtime alerts</h2>'
        f'<figure id="chart-alerts">{alerts_chart}</figure><div class="grid2">'
        f"<div><h3>By priority</h3>{_table(['priority', 'alerts'], top(data.alerts_by_priority), {1})}</div>"
        f"<div><h3>By rule</h3>{_table(['rule', 'alerts'], top(data.alerts_by_rule, 30), {1})}</div>"
        f"<div><h3>By node</h3>{_table(['node', 'alerts'], top(data.alerts_by_node), {1})}</div>"
        f"<div><h3>By namespace</h3>{_table(['namespace', 'alerts'], top(data.alerts_by_namespace), {1})}</div>"
        f"<div><h3>By pod</h3>{_table(['pod', 'alerts'], top(data.alerts_by_pod), {1})}</div>"
        f"<div><h3>By image</h3>{_table(['image', 'alerts'], top(data.alerts_by_image), {1})}</div>"
        f"</div><h3>Alerts (evidence, with the alerting pod's admission)</h3>"
        f"{_table(['time', 'what', 'prove'], _evidence_rows(data.alerts[:50]))}</section>",
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Portcullis audit report</title><style>{_CSS}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )


# -- the report's look, for other reports (``portcullis replay --format html``) -----------------


def escape(value: Any) -> str:
    """HTML-escaped text."""
    return _e(value)


def table(headers: list[str], rows: Iterable[Iterable[Any]], numeric: set[int] | None = None) -> str:
    """A table in the report's style; cells are escaped (``numeric`` columns align right)."""
    return _table(headers, rows, numeric)


def cards(items: Iterable[tuple[str, Any]]) -> str:
    """The summary cards row of the report."""
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><span class="muted">{_e(t)}</span><b>{_e(v)}</b></div>' for t, v in items)
        + "</div>"
    )


def page(title: str, sections: Iterable[str]) -> str:
    """A whole self-contained HTML page with the report's stylesheet around ``sections``."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>" + "\n".join(sections) + "</body></html>\n"
    )
