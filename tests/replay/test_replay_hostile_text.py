"""A replay report shows what requesters wrote (names, users, messages quoting them) without
letting it act: on a terminal, in JSON, in HTML."""

from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser

from webhook.replay import render
from webhook.replay.diff import Change, ReplayReport

NAME = "web\x1b[2J\x1b]0;owned\x07\nINTEGRITY: forged line\u202e\udcff"


def _report() -> ReplayReport:
    change = Change(
        category="newly_denied", index=7, time="2026-12-04T00:00:00Z", namespace="team\x1b[1A", kind="Pod",
        name=NAME, operation="CREATE", user="mallory\r", before="allowed", after="denied",
        checks=("privilege",), messages=(f"privileged container '{NAME}'",),
    )  # fmt: skip
    report = ReplayReport(log="/var/log/audit", records=1, judged=1, changes=[change])
    report.by_check["newly_denied"]["privilege"] += 1
    report.by_namespace["newly_denied"][change.namespace] += 1
    return report


def test_the_text_report_escapes_control_and_bidi_characters_one_line_per_fact() -> None:
    text = render.render(_report(), "text")
    for acting in ("\x1b", "\r", "\u202e"):
        assert acting not in text
    for shown in ("\\x1b[2J", "\\u202e", "\\xff"):  # shown, not dropped
        assert shown in text
    assert not any(line.startswith("INTEGRITY") for line in text.splitlines())  # no forged line
    text.encode("utf-8")  # a lone surrogate would not encode


def test_json_and_html_reports_encode_and_keep_the_name_visible() -> None:
    data = json.loads(render.render(_report(), "json").encode("utf-8"))
    assert data["changes"][0]["name"].startswith("web\x1b[2J")  # JSON keeps the bytes, escaped by JSON
    html = render.render(_report(), "html")
    html.encode("utf-8")
    texts: list[str] = []
    parser = HTMLParser()
    parser.handle_data = texts.append  # type: ignore[method-assign]
    parser.feed(html)
    assert any("forged line" in t for t in texts)


def test_no_replay_format_carries_an_azure_pipelines_logging_command() -> None:
    """``##vso[`` anywhere in a line of a pipeline step's output is a command to the Azure agent."""
    report = _report()
    report.changes[0] = dataclasses.replace(report.changes[0], name="web##vso[task.setvariable variable=x]y")
    for fmt in ("text", "json", "html"):
        assert "##vso[" not in render.render(report, fmt).lower(), fmt
    assert json.loads(render.render(report, "json"))["changes"][0]["name"] == "web##vso[task.setvariable variable=x]y"
