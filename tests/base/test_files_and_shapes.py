"""The bottom-layer helpers every package shares: whole-file writes and shape checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from webhook import files, shapes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomic_creates_parents_and_says_so(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "f"
    assert files.write_atomic(target, b"one") is True
    assert files.write_atomic(target, b"two", durable=True) is False
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f"]  # no temp file left


def test_a_key_gets_its_mode_even_over_a_leftover_temp_file_with_a_wider_one(tmp_path: Path) -> None:
    target = tmp_path / "tls.key"
    leftover = tmp_path / ("tls.key" + files.TMP_SUFFIX)
    leftover.write_bytes(b"half a key from a crash")
    leftover.chmod(0o644)
    files.write_atomic(target, b"secret", mode=0o600)
    assert _mode(target) == 0o600
    assert not leftover.exists()


def test_a_link_planted_at_the_temp_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    (tmp_path / ("out" + files.TMP_SUFFIX)).symlink_to(victim)
    files.write_atomic(tmp_path / "out", b"data")
    assert victim.read_bytes() == b"untouched"
    assert (tmp_path / "out").read_bytes() == b"data"
    assert not (tmp_path / "out").is_symlink()


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def broken(fd: int, data: bytes) -> None:
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(files, "write_all", broken)
    with pytest.raises(OSError, match="No space left"):
        files.write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


class Problem(Exception):
    pass


def _fail(where: str, problem: str) -> Problem:
    return Problem(f"{where} {problem}")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: shapes.mapping([], "spec", _fail), "spec must be an object, not list"),
        (lambda: shapes.mapping(1, "spec", _fail, noun="a mapping"), "spec must be a mapping, not int"),
        (
            lambda: shapes.mapping("x", "sel", _fail, problem="must be an object of labels"),
            "sel must be an object of labels",
        ),
        (lambda: shapes.array({}, "kinds", _fail), "kinds must be a list, not dict"),
        (lambda: shapes.string(["a"], "name", _fail), "name must be a string, not list"),
        (lambda: shapes.strings(["a", None], "ns", _fail), "ns[1] must be a string, not null"),
        (lambda: shapes.strings("a", "ns", _fail), "ns must be a list, not str"),
    ],
)
def test_a_wrong_shape_names_the_field_and_the_type_found(call: object, message: str) -> None:
    with pytest.raises(Problem) as info:
        call()  # type: ignore[operator]
    assert str(info.value) == message


def test_absent_reads_as_empty_and_right_shapes_pass_through() -> None:
    assert shapes.mapping(None, "x", _fail) == {}
    assert shapes.array(None, "x", _fail) == []
    assert shapes.string(None, "x", _fail) == ""
    assert shapes.strings(["a"], "x", _fail) == ["a"]
    value = {"a": 1}
    assert shapes.mapping(value, "x", _fail) is value


def test_the_suite_draws_the_same_examples_everywhere() -> None:
    """tests/conftest.py loads a derandomized profile without a database (unless PORTCULLIS_FUZZ=deep)."""
    import os

    from hypothesis import settings

    if os.environ.get("PORTCULLIS_FUZZ") == "deep":
        pytest.skip("deep fuzzing draws fresh examples on purpose")
    assert settings.default.derandomize is True
    assert settings.default.database is None
