"""Rules reading fields the event source cannot produce: disabled (dead) or warned (partial), by
name and never silently, in ``portcullis monitor`` and ``portcullis rules validate --source``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from webhook import errors
from webhook.runtime import events, monitor_commands
from webhook.runtime.engine import Engine
from webhook.runtime.rules import commands, coverage, fields

RULES = [
    {"rule": "Traversal", "desc": "d", "priority": "WARNING", "output": "t %fd.name",
     "condition": "evt.type = openat and proc.sname contains '..' and fd.name startswith /etc"},
    {"rule": "Upper layer or tmp", "desc": "d", "priority": "WARNING", "output": "u %proc.name",
     "condition": "evt.type = execve and (proc.exepath startswith /tmp or proc.env contains LD_PRELOAD)"},
    {"rule": "Not privileged", "desc": "d", "priority": "WARNING", "output": "p %proc.name",
     "condition": "evt.type = execve and not group.name = root"},
    {"rule": "In namespace", "desc": "d", "priority": "WARNING", "output": "n %proc.name %container.image.repository",
     "condition": "evt.type = execve and k8s.ns.name = prod"},
    {"rule": "Plain", "desc": "d", "priority": "WARNING", "output": "x %proc.name %container.start_ts",
     "condition": "evt.type = execve and proc.name = sh"},
]  # fmt: skip


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(json.dumps(RULES))
    return path


def by_rule(engine: Engine) -> dict[str, coverage.RuleCoverage]:
    return {c.rule: c for c in engine.coverage}


def test_a_rule_that_cannot_fire_without_a_field_is_left_out_and_named(rules_file: Path) -> None:
    engine = Engine.load([rules_file], producible=fields.producible_fields("ebpf"))
    report = by_rule(engine)
    assert report["Traversal"].dead
    assert report["Traversal"].missing == ("proc.sname",)
    assert "Traversal" not in {r.name for r in engine.rules}
    message = report["Traversal"].message("ebpf")
    assert f"{rules_file}:1: rule 'Traversal' is disabled" in message
    assert "cannot produce proc.sname" in message


def test_a_rule_that_loses_only_a_branch_stays_enabled_with_a_warning(rules_file: Path) -> None:
    engine = Engine.load([rules_file], producible=fields.producible_fields("ebpf"))
    report = by_rule(engine)
    for name, field in (("Upper layer or tmp", "proc.env"), ("Not privileged", "group.name")):
        assert not report[name].dead
        assert report[name].missing == (field,)
        assert "runs without" in report[name].message("ebpf")
    enabled = {r.name for r in engine.rules}
    assert {"Upper layer or tmp", "Not privileged", "Plain"} <= enabled
    alerts = engine.process({"evt.type": "execve", "proc.exepath": "/tmp/x", "proc.name": "x"})
    assert {a.rule for a in alerts} == {"Upper layer or tmp", "Not privileged"}


def test_output_only_fields_are_reported_but_never_disable(rules_file: Path) -> None:
    report = by_rule(Engine.load([rules_file], producible=fields.producible_fields("ebpf")))
    assert report["Plain"].output_missing == ("container.start_ts",)
    assert not report["Plain"].dead
    assert not report["Plain"].missing


def test_pod_fields_come_with_the_kubelet(rules_file: Path) -> None:
    bare = Engine.load([rules_file], producible=fields.producible_fields("ebpf"))
    assert by_rule(bare)["In namespace"].dead
    with_pods = Engine.load([rules_file], producible=fields.producible_fields("ebpf", pod_metadata=True))
    assert "In namespace" not in by_rule(with_pods)
    assert "In namespace" in {r.name for r in with_pods.rules}


def test_a_recorded_stream_may_carry_any_field(rules_file: Path) -> None:
    assert fields.producible_fields("jsonl") is None
    engine = Engine.load([rules_file], producible=fields.producible_fields("jsonl"))
    assert engine.coverage == []
    assert len(engine.rules) == len(RULES)


def test_the_ebpf_table_is_what_the_event_builder_builds() -> None:
    """Where the rules engine meets the event source: a field the builder learns must be added to
    ``fields.producible_fields('ebpf')`` (and a field listed there must really be built)."""
    have = fields.producible_fields("ebpf")
    assert have is not None
    built = set(getattr(events, "_ALL_FIELDS", ())) | set(getattr(events, "_PROC_GETTERS", {}))
    assert built, (
        "runtime/events.py no longer lists the fields it builds: compare fields.producible_fields('ebpf') "
        "with what it builds now, and update this test to read that list"
    )
    assert all(have.has(f.partition("[")[0], f.partition("[")[2][:-1] or None) for f in built)
    engine_made = {"evt.num", *fields.DERIVED, "fs.path.name", "fs.path.source", "fs.path.target"}
    ancestors = {n for n in have.names if n in have.indexed}
    assert have.names - built - engine_made - ancestors == set()


# -- the commands ------------------------------------------------------------------------------


def validate(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="portcullis")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["rules", "validate", *argv])
    return int(args.func(args))


def test_validate_reports_per_rule_what_the_source_cannot_produce(
    rules_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert validate([str(rules_file), "--source", "ebpf"]) == 0
    out = capsys.readouterr()
    assert (
        f"warning: {rules_file}:1: rule 'Traversal' is disabled: the ebpf source cannot produce proc.sname" in out.err
    )
    assert "rule 'Not privileged' runs without group.name" in out.err
    assert "On the ebpf source: 2 enabled rule(s) disabled" in out.out  # Traversal, In namespace

    assert validate([str(rules_file), "--source", "ebpf", "--pod-metadata", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    listed = {c["rule"]: c for c in doc["fields_not_produced"]}
    assert doc["source"] == "ebpf"
    assert listed["Traversal"] == {
        "rule": "Traversal", "file": str(rules_file), "line": 1, "disabled": True,
        "condition_fields": ["proc.sname"], "output_fields": [],
    }  # fmt: skip
    assert "In namespace" not in listed

    assert validate([str(rules_file), "--source", "jsonl", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["fields_not_produced"] == []


def test_the_monitor_says_at_start_up_which_rules_it_disables(
    rules_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tetragon's export carries no ``proc.sname``: the monitor names the rule and why, then runs."""
    empty = tmp_path / "events.json"
    empty.write_text("")
    code = monitor_commands.main(["--rules", str(rules_file), "--source", "tetragon", "--input", str(empty)])
    assert code == 0
    err = capsys.readouterr().err
    assert "portcullis monitor: warning: " in err
    assert "rule 'Traversal' is disabled: the tetragon source cannot produce proc.sname" in err


def test_the_monitor_refuses_to_run_when_no_rule_can_fire(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dead.yaml"
    path.write_text(json.dumps(RULES[:1]))
    code = monitor_commands.main(["--rules", str(path), "--source", "tetragon", "--input", str(path)])
    assert code == 2
    assert "no enabled rule can fire on the tetragon source" in capsys.readouterr().err


def test_report_coverage_raises_only_when_every_rule_is_dead(rules_file: Path, tmp_path: Path) -> None:
    engine = Engine.load([rules_file], producible=fields.producible_fields("ebpf"))
    monitor_commands.report_coverage(engine, "ebpf")  # some rules left: runs
    path = tmp_path / "two.yaml"
    path.write_text(json.dumps([RULES[0], RULES[4]]))
    dead = Engine.load([path], producible=fields.Producible(frozenset({"evt.type"})))
    with pytest.raises(errors.RuleLoadError):
        monitor_commands.report_coverage(dead, "ebpf")
