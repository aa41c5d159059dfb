"""Runs each atheris harness briefly (coverage-guided, 2,000 inputs) as the CI smoke of the
libFuzzer targets; run them longer by hand: ``python tests/fuzz/atheris/fuzz_review.py -runs=200000``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HARNESSES = sorted((Path(__file__).parent / "atheris").glob("fuzz_*.py"))
RUNS = 2000


def test_there_are_harnesses() -> None:
    assert {h.stem for h in HARNESSES} >= {"fuzz_review", "fuzz_condition", "fuzz_config", "fuzz_audit"}


@pytest.mark.slow
@pytest.mark.parametrize("harness", HARNESSES, ids=[h.stem for h in HARNESSES])
def test_harness_finds_no_new_crash(harness: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(harness), f"-runs={RUNS}", "-seed=1", f"-artifact_prefix={tmp_path}/"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert not crashes, f"{harness.name}: {crashes}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, proc.stderr[-4000:]
