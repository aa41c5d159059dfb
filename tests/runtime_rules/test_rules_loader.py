"""Loading rules files: multi-file append/override, exceptions, and diagnostics with file:line."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from webhook.runtime import rules
from webhook.runtime.engine import Engine

BASE = """
- list: shells
  items: [bash, sh]
- macro: spawned
  condition: evt.type = execve
- rule: Shell spawned
  desc: a shell
  condition: spawned and proc.name in (shells)
  output: shell %proc.name (parent=%proc.pname)
  priority: WARNING
  tags: [shell]
"""


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    def make(text: str, name: str = "rules.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return make


def fired(paths: list[Path], event: dict[str, Any], **kw: Any) -> list[str]:
    return [a.rule for a in Engine.load(paths, **kw).process(event)]


def errors_of(paths: list[Path]) -> list[str]:
    with pytest.raises(rules.RulesError) as info:
        rules.load(paths)
    return [str(e) for e in info.value.errors]


EXECVE_BASH = {"evt.type": "execve", "proc.name": "bash", "proc.pname": "sshd", "evt.num": 7}


def test_a_later_file_appends_to_a_list_with_override(write: Callable[..., Path]) -> None:
    local = write("- list: shells\n  items: [zsh]\n  override:\n    items: append\n", "local.yaml")
    assert fired([write(BASE), local], {**EXECVE_BASH, "proc.name": "zsh"}) == ["Shell spawned"]
    assert fired([write(BASE), local], EXECVE_BASH) == ["Shell spawned"]


def test_a_later_list_definition_replaces_the_earlier_one(write: Callable[..., Path]) -> None:
    local = write("- list: shells\n  items: [zsh]\n", "local.yaml")
    assert fired([write(BASE), local], EXECVE_BASH) == []


def test_override_condition_append_and_output_replace(write: Callable[..., Path]) -> None:
    local = write(
        """
        - rule: Shell spawned
          condition: and proc.pname != sshd
          output: replaced %proc.name
          override:
            condition: append
            output: replace
        """,
        "local.yaml",
    )
    paths = [write(BASE), local]
    assert fired(paths, EXECVE_BASH) == []
    alerts = Engine.load(paths).process({**EXECVE_BASH, "proc.pname": "cron"})
    assert alerts[0].output.endswith("Warning replaced bash")


def test_override_of_a_key_not_listed_is_an_error(write: Callable[..., Path]) -> None:
    local = write(
        """
        - rule: Shell spawned
          condition: and proc.pname != sshd
          priority: ERROR
          override:
            condition: append
        """,
        "local.yaml",
    )
    (err,) = errors_of([write(BASE), local])
    assert err.startswith(f"{local}:3: key 'priority' must be listed in 'override'")


def test_override_cannot_append_priority(write: Callable[..., Path]) -> None:
    local = write("- rule: Shell spawned\n  priority: ERROR\n  override:\n    priority: append\n", "l.yaml")
    (err,) = errors_of([write(BASE), local])
    assert "cannot be overridden with 'append'" in err


def test_deprecated_append_true_still_works_and_warns(write: Callable[..., Path]) -> None:
    local = write("- rule: Shell spawned\n  append: true\n  condition: and proc.pname != sshd\n", "l.yaml")
    ruleset = rules.load([write(BASE), local])
    assert any(str(w).startswith(f"{local}:1: the 'append' key is deprecated") for w in ruleset.warnings)
    assert fired([write(BASE), local], EXECVE_BASH) == []


def test_a_rule_can_be_disabled_by_name_from_a_later_file(write: Callable[..., Path]) -> None:
    local = write("- rule: Shell spawned\n  enabled: false\n", "local.yaml")
    assert fired([write(BASE), local], EXECVE_BASH) == []
    assert fired([write(BASE), local], EXECVE_BASH, enabled_rules={"Shell spawned"}) == ["Shell spawned"]


def test_disabled_tags_turn_rules_off(write: Callable[..., Path]) -> None:
    assert fired([write(BASE)], EXECVE_BASH, disabled_tags={"shell"}) == []


def test_exceptions_become_and_not(write: Callable[..., Path]) -> None:
    path = write(
        BASE
        + """
- rule: Write below etc
  desc: w
  condition: evt.type = open and fd.name startswith /etc
  output: write %fd.name
  priority: ERROR
  exceptions:
    - name: known_writers
      fields: [proc.name, fd.name]
      comps: [=, startswith]
      values:
        - [apt, /etc/apt]
        - [dpkg, /etc]
    - name: by_parent
      fields: proc.pname
      values: [shells, cron]
"""
    )
    event = {"evt.type": "open", "fd.name": "/etc/apt/x", "proc.name": "apt", "proc.pname": "init"}
    assert fired([path], event) == []
    assert fired([path], {**event, "fd.name": "/etc/passwd"}) == ["Write below etc"]
    assert fired([path], {**event, "proc.name": "dpkg", "fd.name": "/etc/passwd"}) == []
    assert fired([path], {**event, "fd.name": "/etc/passwd", "proc.pname": "sh"}) == []  # list name expanded
    assert fired([path], {**event, "fd.name": "/etc/passwd", "proc.pname": "cron"}) == []


def test_exception_values_are_appended_by_override(write: Callable[..., Path]) -> None:
    base = write(
        """
        - rule: R
          desc: d
          condition: evt.type = open
          output: o
          priority: INFO
          exceptions:
            - name: procs
              fields: [proc.name]
              values: [[cat]]
        """
    )
    local = write(
        """
        - rule: R
          exceptions:
            - name: procs
              values: [[vi]]
            - name: dirs
              fields: fd.directory
              comps: pmatch
              values: [/tmp]
          override:
            exceptions: append
        """,
        "local.yaml",
    )
    open_ = {"evt.type": "open", "proc.name": "less", "fd.directory": "/var"}
    assert fired([base, local], open_) == ["R"]
    assert fired([base, local], {**open_, "proc.name": "cat"}) == []
    assert fired([base, local], {**open_, "proc.name": "vi"}) == []
    assert fired([base, local], {**open_, "fd.directory": "/tmp/x"}) == []


def test_macro_override_replace_and_append(write: Callable[..., Path]) -> None:
    local = write("- macro: spawned\n  condition: evt.type = execveat\n  override:\n    condition: replace\n", "l.yaml")
    assert fired([write(BASE), local], EXECVE_BASH) == []
    assert fired([write(BASE), local], {**EXECVE_BASH, "evt.type": "execveat"}) == ["Shell spawned"]


def test_every_error_is_reported_with_file_line_and_text(write: Callable[..., Path]) -> None:
    path = write(
        """
        - rule: Bad field
          desc: d
          condition: evt.type = open and proc.nme = x
          output: o
          priority: INFO
        - rule: Bad macro
          desc: d
          condition: evt.type = open and not_a_macro
          output: o
          priority: INFO
        - rule: Bad syntax
          desc: d
          condition: evt.type = open and (
          output: o
          priority: INFO
        - rule: Bad priority
          desc: d
          condition: evt.type = open
          output: o
          priority: LOUD
        - rule: Missing keys
          condition: evt.type = open
        - rule: Bad output field
          desc: d
          condition: evt.type = open
          output: file %fd.nam
          priority: INFO
        - rule: Bad number
          desc: d
          condition: fd.num > 3 and fd.num = three
          output: o
          priority: INFO
        """
    )
    with pytest.raises(rules.RulesError) as info:
        rules.load([path])
    got = [str(e) for e in info.value.errors]
    assert got == [
        f"{path}:20: invalid priority 'LOUD': one of emergency, alert, critical, error, warning, notice, "
        "informational, info, debug",
        f"{path}:21: rule 'Missing keys' is missing required key(s): output, desc, priority",
        f"{path}:3: rule 'Bad field': unknown field 'proc.nme'",
        f"{path}:8: rule 'Bad macro': undefined macro 'not_a_macro' used in filter",
        f"{path}:13: rule 'Bad syntax': expected a '(' token, a field check, or an identifier",
        f"{path}:23: rule 'Bad output field': output: unknown field 'fd.nam'",
        f"{path}:30: rule 'Bad number': invalid number value 'three' (expected a number)",
    ]
    field_err = info.value.errors[2]
    assert "proc.nme = x" in field_err.snippet
    assert "^" in field_err.snippet
    assert "Bad field" in str(info.value)


def test_warnings_unused_items_no_evttype_and_na(write: Callable[..., Path]) -> None:
    path = write(
        """
        - list: never_used
          items: [a]
        - macro: unused_macro
          condition: proc.name = a
        - rule: Every event
          desc: d
          condition: proc.name = "<NA>"
          output: o
          priority: INFO
        - rule: Quiet
          desc: d
          condition: proc.name = x
          output: o
          priority: INFO
          warn_evttypes: false
        - weird: item
        """
    )
    warnings = [str(w) for w in rules.load([path]).warnings]
    assert f"{path}:16: unknown rules file item with keys ['weird'] (ignored)" in warnings
    assert f"{path}:7: unsafe <NA> comparison in condition: 'proc.name' compared with \"<NA>\"" in warnings
    assert any(w.startswith(f"{path}:5: rule 'Every event' matches too many evt.type values") for w in warnings)
    assert not any("'Quiet'" in w for w in warnings)
    assert f"{path}:3: macro 'unused_macro' is not referred to by any rule or macro" in warnings
    assert f"{path}:1: list 'never_used' is not referred to by any rule, macro or list" in warnings


def test_skip_if_unknown_filter_skips_with_a_warning(write: Callable[..., Path]) -> None:
    path = write(
        """
        - rule: Future field
          desc: d
          condition: evt.type = open and proc.future_thing = 1
          output: o
          priority: INFO
          skip-if-unknown-filter: true
        """
    )
    ruleset = rules.load([path])
    assert ruleset.rules == ()
    assert [str(w) for w in ruleset.warnings] == [
        f"{path}:1: rule 'Future field' skipped: unknown field 'proc.future_thing'"
    ]


def test_required_engine_and_plugin_versions(write: Callable[..., Path]) -> None:
    ok = write(
        "- required_engine_version: 0.10.0\n- required_plugin_versions:\n  - name: container\n    version: 0.1.0\n"
    )
    assert rules.load([ok]).rules == ()
    assert rules.load([write("- required_engine_version: 17\n", "old.yaml")]).rules == ()  # 0.17.0
    assert "engine version 99" in errors_of([write("- required_engine_version: 99\n", "old99.yaml")])[0]
    new = write("- required_engine_version: 99.0.0\n", "new.yaml")
    assert errors_of([new]) == [f"{new}:1: rules require engine version 99.0.0, this engine is 0.57.0"]
    plug = write("- required_plugin_versions:\n  - name: k8saudit\n    version: 0.1.0\n", "p.yaml")
    assert "plugin 'k8saudit' version 0.1.0 is required" in errors_of([plug])[0]
    alt = write(
        "- required_plugin_versions:\n  - name: k8saudit\n    version: 0.1.0\n    alternatives:\n"
        "      - name: container\n        version: 0.2.0\n",
        "alt.yaml",
    )
    assert rules.load([alt]).rules == ()


def test_yaml_errors_and_non_list_files(write: Callable[..., Path]) -> None:
    bad = write("- rule: x\n  desc: [unclosed\n", "bad.yaml")
    (err,) = errors_of([bad])
    assert err.startswith(f"{bad}:3: invalid YAML")
    notlist = write("rule: x\n", "map.yaml")
    assert errors_of([notlist]) == [f"{notlist}:1: rules file must be a YAML list of items"]
    missing = Path(bad.parent / "nope.yaml")
    assert errors_of([missing]) == [f"{missing}: cannot read rules file: No such file or directory"]


def test_unknown_source_is_skipped_with_a_warning(write: Callable[..., Path]) -> None:
    path = write(
        "- rule: Audit\n  desc: d\n  condition: ka.verb = create\n  output: o\n  priority: INFO\n  source: k8s_audit\n"
    )
    ruleset = rules.load([path])
    assert ruleset.rules == ()
    assert "unknown source 'k8s_audit'" in str(ruleset.warnings[0])


def test_macro_cycles_are_errors(write: Callable[..., Path]) -> None:
    path = write(
        """
        - macro: a
          condition: b
        - macro: b
          condition: a
        - rule: R
          desc: d
          condition: evt.type = open and a
          output: o
          priority: INFO
        """
    )
    assert "refers to itself (a -> b -> a)" in errors_of([path])[0]


def test_redefined_rule_replaces_in_place_and_first_match_follows_load_order(write: Callable[..., Path]) -> None:
    path = write(
        BASE
        + """
- rule: Any exec
  desc: d
  condition: evt.type = execve
  output: o
  priority: DEBUG
"""
    )
    assert fired([path], EXECVE_BASH) == ["Shell spawned", "Any exec"]
    assert fired([path], EXECVE_BASH, match="first") == ["Shell spawned"]
