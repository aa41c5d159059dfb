"""How the ``portcullis`` command reports failures: a user's mistake is a clean ``error:`` with
exit 2; an unexpected failure is an ``internal error`` (exit 2) whose traceback ``-v`` shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook import cli


def _boom(_args: object) -> int:
    raise RuntimeError("something broke inside")


def test_an_internal_error_says_so_and_hints_at_minus_v(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("webhook.ci.commands._run", _boom)
    assert cli.main(["check", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "portcullis: internal error: RuntimeError: something broke inside" in err
    assert "Traceback" not in err
    assert "-v" in err


def test_minus_v_adds_the_traceback_of_an_internal_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("webhook.ci.commands._run", _boom)
    assert cli.main(["-v", "check", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err
    assert "in _boom" in err
    assert err.rstrip().endswith("portcullis: internal error: RuntimeError: something broke inside")


def test_a_missing_rules_file_is_named_without_a_line_number(capsys: pytest.CaptureFixture[str]) -> None:
    missing = "/nonexistent-portcullis/rules.yaml"
    assert cli.main(["rules", "validate", missing]) != 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert f"{missing}: cannot read rules file: No such file or directory" in text
    assert ":0:" not in text
    assert "internal error" not in text


def test_a_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--config", str(tmp_path / "nope.yaml"), str(tmp_path)]) == 2
    assert f"cannot read config file {tmp_path / 'nope.yaml'}: No such file or directory" in capsys.readouterr().err
