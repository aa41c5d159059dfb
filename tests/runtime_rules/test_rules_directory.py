"""``--rules DIR``: a directory's rules files load in sorted order, a mounted ConfigMap included,
and the default rules ship inside the package (``rules.DEFAULT_RULES``).

The ConfigMap layout is the one the kubelet's atomic writer makes: the data lives in a
timestamped ``..2024_...`` directory, ``..data`` links to it, and each visible name links through
``..data``; an update writes a new timestamped directory and swaps ``..data``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from webhook.runtime import monitor_commands, rules
from webhook.runtime.engine import Engine
from webhook.runtime.rules import loader

REPO = Path(__file__).resolve().parents[2]
EVENT = {"evt.num": 7, "evt.type": "openat", "proc.name": "cat", "fd.name": "/etc/shadow", "fd.num": 3}


def rule(name: str, cond: str, output: str = "hit %proc.name") -> dict[str, str]:
    return {"rule": name, "desc": "d", "condition": cond, "output": output, "priority": "WARNING"}


def configmap(root: Path, files: dict[str, object], stamp: str = "..2024_01_01_00_00_00.000000001") -> Path:
    """Write ``files`` as the kubelet mounts a ConfigMap volume at ``root`` (or update it)."""
    root.mkdir(exist_ok=True)
    data = root / stamp
    data.mkdir()
    for name, content in files.items():
        (data / name).write_text(content if isinstance(content, str) else json.dumps(content))
    tmp = root / "..data_tmp"
    tmp.symlink_to(stamp)
    tmp.replace(root / "..data")  # the atomic swap
    for name in files:
        link = root / name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / name)
    return root


def test_a_configmap_directory_loads_each_rules_file_once_in_sorted_order(tmp_path: Path) -> None:
    root = configmap(
        tmp_path / "rules",
        {
            "b_overrides.yaml": [{"list": "l", "items": ["cat"], "override": {"items": "append"}},
                                 {"rule": "R", "output": "from b %proc.name", "override": {"output": "replace"}}],
            "a_base.yml": [{"list": "l", "items": ["ls"]}, rule("R", "evt.type = openat and proc.name in (l)")],
            "README.txt": "not rules",
        },
    )  # fmt: skip
    assert [p.name for p in loader.expand([root])[0]] == ["a_base.yml", "b_overrides.yaml"]
    engine = Engine.load([root])
    (alert,) = engine.process(EVENT)
    assert alert.output.endswith("from b cat")  # b came after a, and a's list was appended to once
    assert not engine.warnings


def test_an_updated_configmap_is_read_through_the_swapped_link(tmp_path: Path) -> None:
    root = configmap(tmp_path / "rules", {"r.yaml": [rule("Old", "evt.type = openat")]})
    configmap(root, {"r.yaml": [rule("New", "evt.type = openat")]}, stamp="..2024_01_02_00_00_00.000000002")
    assert [r.name for r in rules.load([root]).rules] == ["New"]


def test_dot_entries_subdirectories_and_other_suffixes_are_skipped(tmp_path: Path) -> None:
    (tmp_path / ".hidden.yaml").write_text("not: [valid")
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "r.yaml").write_text(json.dumps([rule("R", "evt.type = openat")]))
    assert loader.expand([tmp_path]) == ([tmp_path / "r.yaml"], [])


def test_files_and_directories_mix_in_the_order_given(tmp_path: Path) -> None:
    first = tmp_path / "first.yaml"
    first.write_text(json.dumps([{"list": "l", "items": ["cat"]}]))
    d = tmp_path / "d"
    d.mkdir()
    (d / "r.yaml").write_text(json.dumps([rule("R", "evt.type = openat and proc.name in (l)")]))
    assert Engine.load([first, d]).process(EVENT)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p.mkdir(), "no rules files (*.yaml, *.yml) in this directory"),
        (lambda p: (p.mkdir(), (p / "gone.yaml").symlink_to(p / "nowhere.yaml")), "gone.yaml: cannot read"),
        (lambda p: None, "cannot read rules file"),
        (lambda p: (p.mkdir(), os.mkfifo(p / "pipe.yaml")), "rules: pipe.yaml: not a regular file"),
    ],
    ids=["empty", "dangling-link", "missing", "fifo"],
)
def test_a_directory_without_rules_is_an_error_naming_it(tmp_path: Path, setup: object, message: str) -> None:
    target = tmp_path / "rules"
    setup(target)  # type: ignore[operator]
    with pytest.raises(rules.RulesError, match=r"rules") as info:
        rules.load([target])
    assert message in str(info.value)


def test_the_default_rules_are_a_directory_inside_the_package() -> None:
    assert monitor_commands.DEFAULT_RULES == rules.DEFAULT_RULES
    assert rules.DEFAULT_RULES.is_relative_to(REPO / "webhook")
    assert rules.load([rules.DEFAULT_RULES]).rules
    # The repository's rules/ and the chart's files/rules/ are links to the very same files.
    for copy in (REPO / "rules", REPO / "charts" / "portcullis" / "files" / "rules"):
        assert {p.name: p.read_bytes() for p in loader.expand([copy])[0]} == {
            p.name: p.read_bytes() for p in loader.expand([rules.DEFAULT_RULES])[0]
        }


def _portcullis(*argv: str, cwd: Path = REPO, path: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run(
        [sys.executable, "-m", "webhook", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_readme_commands_take_the_rules_directory(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({**EVENT, "evt.type": "open", "evt.is_open_read": True}) + "\n")
    done = _portcullis("rules", "validate", "rules/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Ok:")
    done = _portcullis("monitor", "--rules", "rules/", "--source", "jsonl", "--input", str(events))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rule"] == "Read of shadow password file"
    done = _portcullis("rules", "test", "rules/", "--events", str(events))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rule"] == "Read of shadow password file"


@pytest.mark.slow
def test_a_built_package_carries_the_default_rules(tmp_path: Path) -> None:
    """What a non-editable ``pip install .`` installs (setuptools' build_py: packages and package
    data) is run from a directory outside the repository, with no ``--rules``."""
    build = tmp_path / "build"
    subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py", "-d", str(build)],
        cwd=REPO, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert (build / "webhook" / "runtime" / "rules" / "default" / "portcullis_rules.yaml").is_file()
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({**EVENT, "evt.type": "open", "evt.is_open_read": True}) + "\n")
    done = _portcullis("monitor", "--source", "jsonl", "--input", str(events), cwd=tmp_path, path=build)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rule"] == "Read of shadow password file"
    imported = subprocess.run(
        [sys.executable, "-c", "import webhook; print(webhook.__file__)"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(build)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(imported.stdout.strip()).is_relative_to(build)
