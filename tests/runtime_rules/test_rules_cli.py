"""``portcullis rules validate`` and ``portcullis rules test`` end to end.

The parser is built from ``webhook.runtime.rules.commands.register`` alone, with the same error
mapping as ``webhook.cli.main`` (PortcullisError → exit 2), so these tests do not depend on the
other faces' commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from webhook import errors
from webhook.runtime.rules import commands


class cli:
    @staticmethod
    def main(argv: Sequence[str]) -> int:
        parser = argparse.ArgumentParser(prog="portcullis")
        commands.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(argv)
        try:
            return int(args.func(args))
        except errors.PortcullisError as exc:
            print(f"portcullis: error: {exc}", file=sys.stderr)
            return 2


DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "falco"
RULE_FILES = [
    str(DATA / "rules" / n) for n in ("falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml")
]
RULES = """
- rule: Cat runs
  desc: d
  condition: evt.type = execve and proc.name = cat
  output: cat ran (%proc.cmdline)
  priority: NOTICE
"""


def test_validate_upstream_files_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["rules", "validate", *RULE_FILES]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("Ok: 93 rules (81 enabled)")
    assert "warning: " in out.err


def test_validate_reports_errors_with_file_line_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES.replace("proc.name = cat", "proc.nam = cat"), encoding="utf-8")
    assert cli.main(["rules", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"error: {bad}:4: rule 'Cat runs': unknown field 'proc.nam'" in err
    assert cli.main(["rules", "validate", "--format", "json", str(bad)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == 1
    assert not doc["ok"]
    assert doc["errors"][0]["line"] == 4
    assert "proc.nam = cat" in doc["errors"][0]["text"]


def test_test_prints_one_falco_json_alert_per_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules_file = tmp_path / "r.yaml"
    rules_file.write_text(RULES, encoding="utf-8")
    assert (
        cli.main(
            ["rules", "test", str(rules_file), "--events", str(DATA / "events" / "cat_write.jsonl"), "--hostname", "h1"]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    alerts = [json.loads(line) for line in lines]
    assert [a["output_fields"]["evt.num"] for a in alerts] == [131]  # the execve exit event
    assert alerts[0]["hostname"] == "h1"
    assert alerts[0]["priority"] == "Notice"
    assert alerts[0]["output"] == "00:00:00.000000000: Notice cat ran (cat /dev/null)"
    assert list(alerts[0]) == sorted(alerts[0])


def test_test_with_upstream_rules_finds_the_udp_traffic(capsys: pytest.CaptureFixture[str]) -> None:
    events = DATA / "events" / "test_ipv6_client.jsonl"
    assert cli.main(["rules", "test", *RULE_FILES, "--events", str(events), "--match", "first"]) == 0
    alerts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(a["rule"], a["output_fields"]["evt.num"]) for a in alerts] == [
        ("Unexpected UDP Traffic", 227),
        ("Unexpected UDP Traffic", 231),
    ]


def test_test_condition_prints_matching_event_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    events = DATA / "events" / "connect_localhost.jsonl"
    argv = ["rules", "test", "--condition", "fd.ip = 127.0.0.1 and evt.type = connect", "--events", str(events)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == ["187"]
    argv = [
        "rules",
        "test",
        "--condition",
        "spawned_process",
        "--rules",
        RULE_FILES[0],
        "--events",
        str(DATA / "events" / "cat_write.jsonl"),
    ]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == ["131"]


def test_bad_input_exits_2_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "e.jsonl"
    events.write_text('{"evt.num": 1}\nnot json\n', encoding="utf-8")
    assert cli.main(["rules", "test", "--condition", "evt.num = 1", "--events", str(events)]) == 2
    assert f"{events}:2: invalid JSON" in capsys.readouterr().err
    assert cli.main(["rules", "test", "--condition", "evt.num = (", "--events", str(events)]) == 2
    assert "<condition>:1: condition: expected a string value" in capsys.readouterr().err
    assert cli.main(["rules", "test", "--events", str(events)]) == 2
    assert cli.main(["rules", "test", "--condition", "evt.num = 1", "--events", str(tmp_path / "no")]) == 2
    assert "cannot read events" in capsys.readouterr().err
