"""The README stays true for a newcomer with a fresh clone: two set-up commands, links that exist
in the clone, and the example commands that need no cluster, root or Helm run as written."""

from __future__ import annotations

import glob
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from webhook import cli

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def test_set_up_is_exactly_two_commands() -> None:
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert [b.strip() for b in _blocks(setup)] == [
        "pip install -e . && portcullis demo",
        "pip install -e '.[test]' && python -m pytest",
    ]


def test_links_point_into_the_clone() -> None:
    assert "../shared" not in README
    assert "DESIGN.md" not in README
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
    for doc in re.findall(r"`(docs/[a-z-]+\.md)`", README):
        assert (ROOT / doc).exists(), doc


def _runnable() -> list[str]:
    """README command lines that need nothing a clone lacks (no cluster, root, Helm, own files)."""
    lines = []
    for block in _blocks(README):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith(("portcullis check webhook/", "portcullis rules ")) or (
                line.startswith("portcullis monitor") and "--source jsonl" in line
            ):
                lines.append(line)
    return lines


def test_the_examples_are_found() -> None:
    commands = _runnable()
    assert any(c.startswith("portcullis monitor") for c in commands)
    assert any(c.startswith("portcullis rules test") for c in commands)
    assert any(c.startswith("portcullis check") for c in commands)
    assert (ROOT / "examples" / "events.jsonl").is_file()


@pytest.mark.parametrize("line", _runnable())
def test_readme_command_runs_as_written(
    line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("rules", "examples", "webhook"):  # a clone's layout; whatever a command writes lands here
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    argv = [a for word in shlex.split(line)[1:] for a in (sorted(glob.glob(word)) if "*" in word else [word])]
    code = cli.main(argv)
    out = capsys.readouterr()
    assert "error:" not in out.err, out.err
    if argv[0] == "check":
        assert code == 1  # the bundled examples include workloads that are denied
        assert "DENIED" in out.out or (tmp_path / "portcullis.sarif").is_file()
    else:
        assert code == 0
    if argv[0] == "monitor" or argv[:2] == ["rules", "test"]:
        assert "Shell spawned by a web or model server" in out.out


def test_license_is_an_spdx_string_for_setuptools_77() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"]
