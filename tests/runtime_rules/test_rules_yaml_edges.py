"""YAML that PyYAML itself cannot build (an impossible date, nesting past the recursion limit)
is a rules-file error naming file and line, and the other items still load."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook import errors
from webhook.runtime import rules

GOOD = "- rule: ok\n  desc: d\n  condition: evt.type=open\n  output: o\n  priority: INFO\n"


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(errors.RuleLoadError) as info:
        rules.load([path])
    return str(info.value)


def test_an_impossible_date_in_tags_names_its_line(tmp_path: Path) -> None:
    bad = "- rule: x\n  desc: d\n  condition: evt.type=open\n  output: o\n  priority: INFO\n  tags: [2001-13-01]\n"
    message = _error(tmp_path, GOOD + bad)
    assert "r.yaml:11: invalid YAML value: month must be in 1..12" in message
    assert "1 error(s)" in message  # the good rule before it loaded without complaint


def test_deep_nesting_names_the_line_where_it_gave_up(tmp_path: Path) -> None:
    message = _error(tmp_path, GOOD + "- rule: x\n  desc: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "r.yaml:7: YAML nested too deeply" in message


def test_a_sequence_as_an_item_key_is_read_as_text_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(GOOD + "- ? [a]\n  : b\n", encoding="utf-8")
    assert rules.load([path])  # the odd item is an unknown item (a warning), the rule loads
