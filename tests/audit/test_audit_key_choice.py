"""Which public key a log is verified with, the same for ``audit verify`` and ``audit report``:
the only key given, or the one named after the checkpoint's origin; with several keys and none of
that name, an error naming the origin (never a guess that calls a sound log forged)."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook import errors
from webhook.audit import note, report, verify


def _log(tmp_path: Path, origin: str) -> Path:
    directory = tmp_path / "log"
    directory.mkdir()
    (directory / verify.CHECKPOINT).write_text(f"{origin}\n3\nAAAA\n", encoding="utf-8")
    return directory


def _key(name: str) -> note.Verifier:
    return note.generate(name).verifier


def test_the_key_named_after_the_origin_is_chosen(tmp_path: Path) -> None:
    directory = _log(tmp_path, "portcullis/b")
    a, b = _key("portcullis/a"), _key("portcullis/b")
    assert verify.key_for(directory, [a, b]) is b


def test_a_single_key_is_used_whatever_its_name(tmp_path: Path) -> None:
    only = _key("portcullis/other")
    assert verify.key_for(_log(tmp_path, "portcullis/b"), [only]) is only


def test_several_keys_and_none_of_the_origin_is_an_error_naming_it(tmp_path: Path) -> None:
    directory = _log(tmp_path, "portcullis/c")
    with pytest.raises(errors.InputError, match=r"no log key is named after its origin 'portcullis/c'"):
        verify.key_for(directory, [_key("portcullis/a"), _key("portcullis/b")])


def test_the_report_chooses_the_same_way(tmp_path: Path) -> None:
    directory = _log(tmp_path, "portcullis/c")
    keys = [_key("portcullis/a").vkey(), _key("portcullis/b").vkey()]
    with pytest.raises(errors.InputError, match="portcullis/c"):
        report.build([directory], window=report.Window(None, None, None), public_keys=keys)
