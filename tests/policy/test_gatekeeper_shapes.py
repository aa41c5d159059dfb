"""Gatekeeper documents with ill-typed fields are refused at load with the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook import errors
from webhook.policy import gatekeeper, probe

TEMPLATE = """\
apiVersion: templates.gatekeeper.sh/v1
kind: ConstraintTemplate
metadata: {name: k8sdeny}
spec:
  crd: {spec: {names: {kind: K8sDeny}}}
  targets:
    - target: admission.k8s.gatekeeper.sh
      rego: |
        package k8sdeny
        violation[{"msg": m}] { m := "x" }
"""


def _load(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gk.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(errors.PolicyLoadError) as info:
        gatekeeper.load([path])
    return str(info.value)


def _constraint(spec: str) -> str:
    return f"---\napiVersion: constraints.gatekeeper.sh/v1beta1\nkind: K8sDeny\nmetadata: {{name: d}}\nspec: {spec}\n"


def test_a_valid_template_and_constraint_still_load(tmp_path: Path) -> None:
    path = tmp_path / "gk.yaml"
    path.write_text(TEMPLATE + _constraint("{match: {kinds: [{apiGroups: [''], kinds: [Pod]}]}}"), encoding="utf-8")
    loaded = gatekeeper.load([path])
    assert loaded.policy_ids == ("K8sDeny/d",)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("{match: {kinds: [{kinds: [1]}]}}", "spec.match.kinds[0].kinds[0] must be a string, not int"),
        ("{match: {namespaces: default}}", "spec.match.namespaces must be a list, not str"),
        ("{match: {scope: [x]}}", "spec.match.scope ['x']"),
        ("{match: {labelSelector: {matchLabels: {a: [b]}}}}", "spec.match.labelSelector.matchLabels.a must be"),
        ("{match: {namespaceSelector: {matchExpressions: [{key: a, operator: Bad}]}}}", "operator 'Bad'"),
        ("{enforcementAction: [deny]}", "spec.enforcementAction ['deny']"),
        ("[1]", "spec must be a mapping, not list"),
    ],
)
def test_an_ill_typed_constraint_field_is_named_with_its_line(tmp_path: Path, spec: str, field: str) -> None:
    message = _load(tmp_path, TEMPLATE + _constraint(spec))
    assert "gk.yaml:12: constraint" in message
    assert field in message


def test_ill_typed_template_libs_are_named(tmp_path: Path) -> None:
    message = _load(tmp_path, TEMPLATE + "      libs: [1]\n")
    assert "gk.yaml:1: spec.targets[0].libs[0] must be a string, not int" in message


def test_an_impossible_timestamp_names_its_line(tmp_path: Path) -> None:
    message = _load(tmp_path, "kind: ConstraintTemplate\nmetadata:\n  labels: {day: 2001-13-01}\n")
    assert "gk.yaml:3: invalid YAML value" in message
    assert "quote it" in message


def test_nesting_too_deep_is_a_load_error(tmp_path: Path) -> None:
    assert "nested too deeply" in _load(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n")


def test_the_webhook_compiles_the_very_templates_the_crash_probe_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit landing between the crash probe (a child process) and the webhook's own compile
    would install a template no probe ever ran, and the crash the probe guards against would
    then take the webhook down: the edit waits for the next reload, probed in its turn."""
    path = tmp_path / "gk.yaml"
    path.write_text(TEMPLATE + _constraint("{}"), encoding="utf-8")
    probed: list[list[tuple[str, str]]] = []

    def edit_after_probe(kind: str, paths: object, **kwargs: object) -> None:
        sources = kwargs["sources"]
        assert isinstance(sources, list)
        probed.append(sources)
        path.write_text(TEMPLATE.replace("k8sdeny", "edited") + _constraint("{}"), encoding="utf-8")

    monkeypatch.setattr(probe, "check", edit_after_probe)
    loaded = gatekeeper.reloadable([tmp_path]).load()
    assert probed == [[(str(path), TEMPLATE + _constraint("{}"))]]
    assert loaded.templates["K8sDeny"].entrypoint == "k8sdeny/violation"


def test_the_crash_probe_child_loads_the_templates_it_is_given(tmp_path: Path) -> None:
    """The probe reads the sources the parent will compile from stdin, not the files again."""
    (tmp_path / "gk.yaml").write_text("not: [a template", encoding="utf-8")  # what the files say now
    probe.check("gatekeeper", [tmp_path], sources=[(str(tmp_path / "gk.yaml"), TEMPLATE + _constraint("{}"))])
    broken = TEMPLATE.replace('m := "x"', "m := ")
    with pytest.raises(errors.PolicyLoadError, match=r"gk\.yaml:\d+"):
        probe.check("gatekeeper", [tmp_path], sources=[(str(tmp_path / "gk.yaml"), broken)])
