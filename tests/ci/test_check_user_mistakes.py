"""``portcullis check`` mistakes a user makes get a clean error (exit 2) naming what to fix,
never ``internal error`` and never a green run that checked nothing."""

from __future__ import annotations

from pathlib import Path

from .conftest import FIXTURES, run_check

GOOD = str(FIXTURES / "app")


def test_an_empty_directory_is_an_error_not_zero_objects_checked(tmp_path: Path) -> None:
    code, out, err = run_check(str(tmp_path))
    assert code == 2
    assert f"portcullis: error: no Kubernetes objects found in {tmp_path}" in err
    assert "internal error" not in err
    assert "0 objects checked" not in out


def test_a_directory_without_manifests_next_to_good_ones_is_named_and_the_rest_checked(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a manifest\n")
    (tmp_path / "empty.yaml").write_text("---\n")
    code, out, _ = run_check(str(tmp_path), GOOD)
    assert code == 2
    assert f"error: {tmp_path}: no Kubernetes objects found" in out
    assert "Deployment shop/web" in out  # still checked


def test_empty_stdin_is_an_error() -> None:
    code, _, err = run_check("-", stdin="")
    assert code == 2
    assert "no Kubernetes objects found in stdin" in err


def test_counts_are_singular_for_one() -> None:
    _, out, _ = run_check(str(FIXTURES / "app" / "deploy.yaml"), "--level", "baseline")
    assert "summary: 1 object checked;" in out
    assert "; 1 object no check applies to" in out


def test_output_into_a_missing_directory_is_a_clean_error_before_any_work(tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "x.sarif"
    code, out, err = run_check(GOOD, "--format", "sarif", "--output", str(target))
    assert code == 2
    assert err.strip() == f"portcullis: error: --output {target}: directory {target.parent} does not exist"
    assert out == ""


def test_output_that_cannot_be_written_names_the_file_and_the_reason(tmp_path: Path) -> None:
    target = tmp_path / "a-directory"
    target.mkdir()
    code, _, err = run_check(GOOD, "--output", str(target))
    assert code == 2
    assert f"portcullis: error: cannot write the report to {target}: Is a directory" in err
    assert "internal error" not in err
