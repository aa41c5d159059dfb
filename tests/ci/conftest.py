"""Helpers for ``portcullis check`` tests: run the CLI in-process or as a real subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "manifests"
GOLDEN = ROOT / "tests" / "golden" / "check"


def run_check(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Run ``portcullis check`` in-process; returns (exit code, stdout, stderr)."""
    from webhook import cli

    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(["check", *args])
    finally:
        sys.stdin = old_stdin
    return code, out.getvalue(), err.getvalue()


def run_subprocess(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "webhook", "check", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )


def golden(name: str, actual: str) -> None:
    """Compare with tests/golden/check/<name>; UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8"), f"output differs from {path} (UPDATE_GOLDEN=1 to accept)"
