"""Reports of ``portcullis check``: text, JSON, SARIF 2.1.0, JUnit XML and PolicyReport.

Machine formats are contracts: sorted keys, stable names, no timestamps, byte-identical output for
the same input. Names, messages and file names are attacker-chosen: every format stays well-formed
for a strict parser whatever they hold, and shows them (escaped where the format cannot hold a
character, see ``core.shown``) instead of dropping them.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree as ET

from webhook import __version__
from webhook.ci.check import Finding, NotJudged, ObjectResult, Report
from webhook.core import shown
from webhook.core.decision import Mode

FORMATS = ("text", "json", "sarif", "junit", "policyreport")
DOCS = "https://github.com/portcullis-dev/portcullis/blob/main/docs/checks.md"

# Help for rule families (check ids are "<family>" or "<family>:<detail>").
_FAMILY_HELP = {
    "pss": "Pod Security Standards (Kubernetes Pod Security Admission semantics, baseline/restricted).",
    "privilege": "Least-privilege settings of the pod (Pod Security Standards).",
    "hardened": "Hardening beyond the Pod Security Standards (the `hardened` profile).",
    "runtimeclass": "Runtime class rules: GPU pods use the GPU runtime, untrusted namespaces a sandbox.",
    "images": "Image signatures and trust policy: every image must be signed by a trusted authority.",
    "gpu": "GPU quota and per-pod GPU rules.",
    "rego": "Custom Rego policy.",
}


def render(report: Report, fmt: str, *, color: bool = False, base_dir: str | None = None) -> str:
    renderers: dict[str, Callable[[], str]] = {
        "text": lambda: text(report, color=color),
        "json": lambda: to_json(report),
        "sarif": lambda: sarif(report, base_dir=base_dir),
        "junit": lambda: junit(report),
        "policyreport": lambda: policy_report(report),
    }
    return renderers[fmt]()


# --- text -----------------------------------------------------------------------------------------

_COLORS = {Mode.ENFORCE: "\033[31m", Mode.WARN: "\033[33m", Mode.AUDIT: "\033[36m"}
_RESET, _BOLD, _GREEN = "\033[0m", "\033[1m", "\033[32m"


def text(report: Report, *, color: bool = False) -> str:
    """Lines for a terminal: every field passes through ``shown.terminal`` (a pod named with an
    escape sequence must not clear the screen or rewrite the verdict line above it)."""

    def paint(code: str, s: str) -> str:
        return f"{code}{s}{_RESET}" if color else s

    t = shown.terminal
    lines: list[str] = []
    for result in report.results:
        if not result.findings and not result.warnings and not result.not_judged:
            continue
        status = paint(_GREEN, "allowed") if result.allowed else paint("\033[31m", "DENIED")
        head = (
            f"{_line_start_path(t(result.file))}:{result.manifest.line}: {t(result.kind)} "
            f"{t(result.namespace)}/{t(result.name)}: {status}"
        )
        lines.append(paint(_BOLD, head) if color else head)
        for f in result.findings:
            where = f" [{t(f.container)}]" if f.container else ""
            path = f" ({t(f.path)})" if f.path else ""
            lines.append(
                f"  {f.line}: {paint(_COLORS.get(f.mode, ''), f.mode.value)} {t(f.check)}{where}: {t(f.message)}{path}"
            )
        for warning in result.warnings:
            lines.append(f"  warning: {t(warning)}")
        noted = " ".join(result.warnings)
        for n in result.not_judged:
            if n.image not in noted:  # the check's own warning usually says it already
                lines.append(f"  {n.line}: not judged {t(n.check)}: image {t(n.image)}: {t(n.reason)}")
    for problem in report.problems:
        lines.append(f"error: {t(str(problem))}")
    lines.append(_summary(report))
    return "\n".join(lines) + "\n"


def _line_start_path(path: str) -> str:
    """A path that begins a line of CI log: CI runners obey lines starting with ``::`` (GitHub
    Actions workflow commands: ``::add-mask::``, ``::error::``, ``::stop-commands::``) or ``##[``,
    and a shell glob passes a file of that name as given. ``./`` names the same file."""
    if path.lstrip().startswith(("::", "##")):
        return "./" + path
    return path


def _summary(report: Report) -> str:
    parts = [
        _count(len(report.results), "object") + " checked",
        f"{report.denied} denied",
        f"{report.count(Mode.ENFORCE)} enforce, {report.count(Mode.WARN)} warn, "
        f"{report.count(Mode.AUDIT)} audit findings",
        _count(report.skipped_objects, "object") + " no check applies to",
    ]
    if report.problems:
        parts.append(_count(len(report.problems), "input error"))
    if report.skipped_checks:
        parts.append(f"checks skipped: {shown.terminal(', '.join(report.skipped_checks))}")
    if report.not_judged:
        allowed = " (allowed by --allow-unverified)" if report.allow_unverified else ""
        parts.append(
            f"checks not judged: images ({len(report.not_judged)} images unverified: registry errors){allowed}"
        )
    return "summary: " + "; ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- JSON -----------------------------------------------------------------------------------------


def _violation_json(f: Finding) -> dict[str, Any]:
    return {
        "check": f.check,
        "container": f.container,
        "path": f.path,
        "message": f.message,
        "mode": f.mode.value,
        "line": f.line,
    }


def _not_judged_json(n: NotJudged) -> dict[str, Any]:
    return {"check": n.check, "image": n.image, "reason": n.reason, "path": n.path, "line": n.line}


def to_json(report: Report) -> str:
    """One JSON array of objects: {file, kind, namespace, name, allowed, violations, not_judged}.

    ``not_judged`` lists the images a check could not judge (registry unreachable): an object
    with an empty ``violations`` and a non-empty ``not_judged`` has not passed.
    """
    items = [
        {
            "file": r.file,
            "line": r.manifest.line,
            "kind": r.kind,
            "namespace": r.namespace,
            "name": r.name,
            "allowed": r.allowed,
            "violations": [_violation_json(f) for f in r.findings],
            "not_judged": [_not_judged_json(n) for n in r.not_judged],
        }
        for r in report.results
    ]
    return _dumps(items)


def _dumps(doc: Any) -> str:
    """JSON any strict parser reads: no lone surrogates (an undecodable file name's bytes are
    shown as ``\\xNN``), no NaN or Infinity."""
    return shown.json_document(doc)


# --- SARIF 2.1.0 ----------------------------------------------------------------------------------

_SARIF_LEVEL = {Mode.ENFORCE: "error", Mode.WARN: "warning", Mode.AUDIT: "note"}


def _rule_help(rule_id: str) -> str:
    family = rule_id.split(":", 1)[0].split(".", 1)[0].split("/", 1)[0]
    return _FAMILY_HELP.get(family, f"Portcullis check {family}.")


SRCROOT = "%SRCROOT%"  # the uriBaseId of relative artifact URIs: the directory `check` ran in


def _artifact(path: str, base_dir: str | None) -> dict[str, str]:
    """A SARIF artifactLocation (§3.4): ``uri`` must be a URI reference, so a file name's spaces,
    ``%``, ``#``, ``?``, backslashes and non-UTF-8 bytes are percent-encoded (as bytes), a file
    under ``base_dir`` is a relative reference against ``%SRCROOT%`` (what code scanning maps to
    the checkout), and one outside it an absolute ``file:`` URI rather than a ``../`` climb."""
    if path == "<stdin>":
        return {"uri": "stdin"}
    full = os.path.normpath(path if os.path.isabs(path) or not base_dir else os.path.join(base_dir, path))
    if base_dir:
        try:
            relative = os.path.relpath(full, base_dir)
        except ValueError:  # another drive (Windows)
            relative = ""
        if relative and relative != os.pardir and not relative.startswith(os.pardir + os.sep):
            return {"uri": _quote(relative), "uriBaseId": SRCROOT}
    if os.path.isabs(full):
        return {"uri": "file://" + _quote(full if full.startswith("/") else "/" + full)}
    return {"uri": _quote(full), "uriBaseId": SRCROOT}


_LINK_CLOSE = re.compile(r"(\\*)\]\(")


def _plain(text: str) -> str:
    """A SARIF plain-text message (§3.11.6) turns ``[text](target)`` into a link viewers make
    clickable; names and messages are attacker-chosen, so every ``](`` gets its ``]`` escaped
    (backslashes before it doubled, so one cannot cancel the escape). Other brackets stay as
    they are (``[baseline:latest]`` is no link)."""
    return _LINK_CLOSE.sub(lambda m: m.group(1) * 2 + "\\](", text)


def _quote(path: str) -> str:
    """Percent-encode a file path's bytes for a URI (``:`` too: ``c:x.yaml`` is no scheme)."""
    return urllib.parse.quote_from_bytes(os.fsencode(path.replace(os.sep, "/")), safe="/")


def sarif(report: Report, *, base_dir: str | None = None) -> str:
    rule_ids = sorted({f.check for r in report.results for f in r.findings})
    index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    example: dict[str, str] = {}
    for r in report.results:
        for f in r.findings:
            example.setdefault(f.check, f.message)
    rules = [
        {
            "id": rule_id,
            "name": rule_id.replace(":", "/"),
            "shortDescription": {"text": _rule_help(rule_id)},
            "fullDescription": {"text": f"{_rule_help(rule_id)} Example finding: {_plain(example[rule_id])}"},
            "help": {
                "text": f"{_rule_help(rule_id)} See {DOCS} for how to fix it.",
                "markdown": f"{_rule_help(rule_id)} See [the checks reference]({DOCS}).",
            },
            "helpUri": DOCS,
            "defaultConfiguration": {"level": "error"},
        }
        for rule_id in rule_ids
    ]
    results = []
    for r in report.results:
        for f in r.findings:
            container = f"/{f.container}" if f.container else ""
            results.append(
                {
                    "ruleId": f.check,
                    "ruleIndex": index[f.check],
                    "level": _SARIF_LEVEL[f.mode],
                    "message": {"text": _plain(f"{r.kind} {r.namespace}/{r.name}{container}: {f.message}")},
                    "locations": [
                        {
                            "physicalLocation": {
                                "artifactLocation": _artifact(r.file, base_dir),
                                "region": {"startLine": max(1, f.line)},
                            },
                            "logicalLocations": [
                                {"fullyQualifiedName": f"{r.kind}/{r.namespace}/{r.name}{container}", "kind": "object"}
                            ],
                        }
                    ],
                    "properties": {"mode": f.mode.value, "path": f.path or ""},
                }
            )
    notifications = [
        {
            "level": "error",
            "message": {"text": _plain(p.message)},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": _artifact(p.file, base_dir),
                        "region": {"startLine": max(1, p.line)},
                    }
                }
            ],
        }
        for p in report.problems
    ]
    # SARIF §3.58: what the tool could not do goes to toolExecutionNotifications, not results
    # (a result is a finding; an image nobody judged is neither a finding nor a pass).
    level = "warning" if report.allow_unverified else "error"
    for r in report.results:
        for n in r.not_judged:
            notifications.append(
                {
                    "level": level,
                    "descriptor": {"id": n.check},
                    "message": {
                        "text": _plain(f"{r.kind} {r.namespace}/{r.name}: image {n.image} not judged: {n.reason}")
                    },
                    "locations": [
                        {
                            "physicalLocation": {
                                "artifactLocation": _artifact(r.file, base_dir),
                                "region": {"startLine": max(1, n.line)},
                            }
                        }
                    ],
                    "properties": {"image": n.image, "path": n.path or ""},
                }
            )
    successful = not report.problems and not any(r.not_judged for r in report.results)
    doc = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "portcullis",
                        "version": __version__,
                        "informationUri": DOCS,
                        "rules": rules,
                    }
                },
                "results": results,
                "invocations": [{"executionSuccessful": successful, "toolExecutionNotifications": notifications}],
            }
        ],
    }
    return _dumps(doc)


# --- JUnit XML ------------------------------------------------------------------------------------


def junit(report: Report) -> str:
    """One test case per object × check; enforce findings fail, warn/audit go to system-out.

    A check that could not judge an image is an ``<error>`` (``<skipped>`` with
    ``--allow-unverified``), never a passing case.
    """
    suites = ET.Element("testsuites", name="portcullis")
    total = failures = errors_ = skipped_ = 0
    by_file: dict[str, list[ObjectResult]] = {}
    for r in report.results:
        by_file.setdefault(r.file, []).append(r)
    for file, results in by_file.items():
        suite = ET.SubElement(suites, "testsuite", name=file)
        cases = fails = errs = skips = 0
        for r in results:
            for check in report.checks or sorted({f.check.split(":")[0] for f in r.findings}):
                found = [f for f in r.findings if _family_of(f.check, report.checks) == check]
                case = ET.SubElement(
                    suite, "testcase", classname=f"{r.kind}.{r.namespace}.{r.name}", name=check, file=file
                )
                case.set("line", str(r.manifest.line))
                cases += 1
                denied = [f for f in found if f.mode is Mode.ENFORCE]
                unjudged = [n for n in r.not_judged if n.check == check]
                if denied:
                    fails += 1
                    failure = ET.SubElement(case, "failure", message=denied[0].message, type=denied[0].check)
                    failure.text = "\n".join(f"{f.line}: {f.check}: {f.message}" for f in denied)
                elif unjudged:
                    # JUnit has no "unknown": an error (the check could not run) unless allowed.
                    tag = "skipped" if report.allow_unverified else "error"
                    skips, errs = (skips + 1, errs) if report.allow_unverified else (skips, errs + 1)
                    first = unjudged[0]
                    element = ET.SubElement(
                        case, tag, message=f"image {first.image} not judged: {first.reason}", type="NotJudged"
                    )
                    element.text = "\n".join(f"{n.line}: image {n.image} not judged: {n.reason}" for n in unjudged)
                others = [f"{f.mode.value}: {f.check}: {f.message}" for f in found if f.mode is not Mode.ENFORCE]
                if denied:  # the failure wins the case; what was not judged is still said
                    others += [f"not judged: image {n.image}: {n.reason}" for n in unjudged]
                if others:
                    ET.SubElement(case, "system-out").text = "\n".join(others)
        suite.set("tests", str(cases))
        suite.set("failures", str(fails))
        suite.set("errors", str(errs))
        if skips:
            suite.set("skipped", str(skips))
        total += cases
        failures += fails
        errors_ += errs
        skipped_ += skips
    if report.problems:
        suite = ET.SubElement(suites, "testsuite", name="input", tests=str(len(report.problems)))
        suite.set("failures", "0")
        suite.set("errors", str(len(report.problems)))
        for p in report.problems:
            case = ET.SubElement(suite, "testcase", classname="input", name=f"{p.file}:{p.line}")
            ET.SubElement(case, "error", message=p.message, type="InputError")
    suites.set("tests", str(total + len(report.problems)))
    suites.set("failures", str(failures))
    suites.set("errors", str(errors_ + len(report.problems)))
    if skipped_:
        suites.set("skipped", str(skipped_))
    for element in suites.iter():  # XML 1.0 cannot hold NUL, most C0 controls or U+FFFE: escape them
        if element.text:
            element.text = shown.xml(element.text)
        for key, value in element.attrib.items():
            element.set(key, shown.xml(value))
    ET.indent(suites)
    return shown.without_log_commands(ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n", "&#91;")


def _family_of(check: str, families: tuple[str, ...]) -> str:
    """Map a finding's check id to the check that produced it (e.g. 'pss:privileged' → 'privilege')."""
    if check in families:
        return check
    prefix = check.split(":", 1)[0]
    if prefix in families:
        return prefix
    if prefix in ("pss", "hardened"):
        return "privilege"
    return prefix


# --- PolicyReport (wgpolicyk8s.io/v1alpha2) --------------------------------------------------------

_POLICY_RESULT = {Mode.ENFORCE: "fail", Mode.WARN: "warn", Mode.AUDIT: "warn"}


def policy_report(report: Report) -> str:
    """A ``ClusterPolicyReport`` (a ``PolicyReport`` per namespace would need one doc per namespace)."""
    results: list[dict[str, Any]] = []
    summary = {"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0}
    for r in report.results:
        resource = {
            "apiVersion": r.manifest.obj.get("apiVersion", ""),
            "kind": r.kind,
            "name": r.name,
            "namespace": r.namespace,
        }
        failed = {_family_of(f.check, report.checks) for f in r.findings}
        unjudged_outcome = "skip" if report.allow_unverified else "error"
        for n in r.not_judged:
            summary[unjudged_outcome] += 1
            results.append(
                {
                    "policy": n.check,
                    "rule": n.check,
                    "result": unjudged_outcome,
                    "message": f"image {n.image} not judged: {n.reason}",
                    "source": "portcullis",
                    "resources": [resource],
                    "properties": {"image": n.image, "path": n.path or ""},
                }
            )
        failed |= {n.check for n in r.not_judged}
        for f in r.findings:
            outcome = _POLICY_RESULT[f.mode]
            summary[outcome] += 1
            results.append(
                {
                    "policy": _family_of(f.check, report.checks),
                    "rule": f.check,
                    "result": outcome,
                    "severity": "high" if f.mode is Mode.ENFORCE else "medium",
                    "message": f.message,
                    "source": "portcullis",
                    "resources": [resource],
                    "properties": {"container": f.container or "", "path": f.path or ""},
                }
            )
        for check in report.checks:
            if check not in failed:
                summary["pass"] += 1
                results.append({"policy": check, "result": "pass", "source": "portcullis", "resources": [resource]})
    doc = {
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "ClusterPolicyReport",
        "metadata": {"name": "portcullis-check"},
        "summary": summary,
        "results": results,
    }
    return _dumps(doc)
