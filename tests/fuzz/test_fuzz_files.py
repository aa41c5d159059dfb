"""Fuzzing the file parsers: the config file, manifests for ``portcullis check``, Gatekeeper
templates and Rego modules, Falco rules files (YAML level).

Contract: each raises its own ``InputError`` subclass naming file and line (``manifests.load``
reports problems as data and raises nothing), never a Python error from YAML or from a value of
an unexpected type. Two YAML-level crashes affect every loader and are pinned below.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from webhook import config as config_mod
from webhook import errors
from webhook.ci import manifests
from webhook.policy import gatekeeper, modules
from webhook.runtime import rules

from . import strategies as S

# -- config -------------------------------------------------------------------------------------

_SECTIONS = ["server", "checks", "exemptions", "namespaces", "privilege", "runtimeclass", "images", "quota",
             "policy", "audit", "monitor", "default_namespace", "mode_label_prefix", "bogus"]  # fmt: skip
config_docs = st.one_of(
    S.awkward,
    st.dictionaries(st.sampled_from(_SECTIONS), S.awkward, max_size=4),
    st.fixed_dictionaries(
        {},
        optional={
            "server": S.obj(timeout_seconds=S.awkward, max_in_flight=S.awkward, listen=S.awkward),
            "checks": S.maybe(st.dictionaries(st.sampled_from(["privilege", "gpu", "x"]), S.obj(mode=S.awkward))),
            "exemptions": S.lst(S.obj(namespaces=S.lst(S.maybe(st.just("kube-system"))), checks=S.awkward)),
            "privilege": S.obj(level=S.maybe(st.sampled_from(["baseline", "x"])), version=S.awkward),
            "images": S.obj(
                policies=S.lst(S.obj(pattern=S.awkward, keys=S.awkward, keyless=S.lst(S.obj(issuer_regex=S.awkward)))),
                credentials=S.lst(S.obj(registry=S.awkward, username=S.awkward, password=S.awkward)),
            ),
            "quota": S.obj(
                resources=S.maybe(
                    st.dictionaries(S.resource_names, S.maybe(st.sampled_from(["1/7", "0.5", "1/0", "-1"])))
                ),
                quotas=S.lst(S.obj(name=S.awkward, limit=S.awkward, per=S.awkward)),
                per_pod=S.obj(max_gpus=S.awkward),
            ),
        },
    ),
)


@settings(S.FUZZ, max_examples=S.examples(300))
@given(config_docs)
def test_config_parse_raises_only_config_error(doc: Any) -> None:
    try:
        config_mod.parse(doc, source="fuzz.yaml")
    except errors.ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml")  # noqa: PT017 (fuzz: the error may not occur)


# -- YAML text for every YAML loader ------------------------------------------------------------

_YAML_LINES = [
    "apiVersion: v1", "kind: Pod", "kind: Deployment", "kind: ConstraintTemplate", "metadata:", "  name: x",
    "spec:", "  containers:", "  - name: a", "    image: nginx", "    securityContext: {privileged: true}",
    "---", "...", "- rule: r", "  condition: evt.type=open", "  priority: INFO", "  output: o", "- macro: m",
    "a: &x [1, 2]", "b: *x", "c: *nope", "d: !!binary aGVsbG8=", "e: !!python/object:os.system x", "f: !custom x",
    "g: 0x1F", "h: .inf", "i: ~", "j: 'unterminated", 'k: "\\u00e9\\x"', "l: [1, {a: b}", "m: |", "  block",
    "n: >-", "? complex", ": key", "\t- tab", "  - item", "o: {a: 1, a: 2}", "p: 1e400", "q: 12:30:45",
    "r: 2001-12-14t21:59:43.10-05:00", "s: yes", "t: =", "%YAML 1.1", "#comment", "", "  ",
]  # fmt: skip
yaml_texts = st.one_of(
    st.lists(st.sampled_from(_YAML_LINES), max_size=10).map("\n".join),
    st.text(max_size=80),
    st.lists(S.json_values, max_size=2).map(lambda docs: "\n---\n".join(orjson.dumps(d).decode() for d in docs)),
)


def _write(tmp: pytest.TempPathFactory, name: str, text: str) -> Path:
    path = tmp.mktemp("fuzz") / name
    path.write_text(text, encoding="utf-8")
    return path


@settings(S.FUZZ, max_examples=S.examples(200))
@given(yaml_texts)
def test_config_load_raises_only_config_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    # (text is written as UTF-8; the non-UTF-8 case is pinned in the regressions below)
    try:
        config_mod.load(_write(tmp_path_factory, "portcullis.yaml", text))
    except errors.ConfigError as exc:
        assert "portcullis.yaml" in str(exc)  # noqa: PT017 (fuzz: the error may not occur)


@settings(S.FUZZ, max_examples=S.examples(200))
@given(yaml_texts)
def test_manifests_load_reports_problems_and_never_raises(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    loaded = manifests.load([str(_write(tmp_path_factory, "m.yaml", text))])
    for problem in loaded.problems:
        assert problem.message


@settings(S.FUZZ, max_examples=S.examples(150))
@given(yaml_texts)
def test_gatekeeper_load_raises_only_policy_load_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    with contextlib.suppress(errors.PolicyLoadError):
        gatekeeper.load([_write(tmp_path_factory, "t.yaml", text)])


@settings(S.FUZZ, max_examples=S.examples(150))
@given(yaml_texts)
def test_rules_loader_raises_only_rule_load_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    with contextlib.suppress(errors.RuleLoadError):
        rules.load([_write(tmp_path_factory, "r.yaml", text)])


# Gatekeeper documents with the right outline and ill-typed insides.
template_docs = S.obj(
    apiVersion=S.maybe(st.just("templates.gatekeeper.sh/v1")),
    kind=st.just("ConstraintTemplate"),
    metadata=S.obj(name=S.maybe(st.just("k8sdeny"))),
    spec=S.obj(
        crd=S.obj(spec=S.obj(names=S.obj(kind=S.maybe(st.just("K8sDeny"))))),
        targets=S.lst(S.obj(target=S.maybe(st.just("admission.k8s.gatekeeper.sh")), rego=S.maybe(
            st.sampled_from(["package k8sdeny\nviolation[{\"msg\": m}] { m := \"x\" }", "package", "", "x"])),
            libs=S.awkward)),
    ),
)  # fmt: skip
constraint_docs = S.obj(
    apiVersion=st.just("constraints.gatekeeper.sh/v1beta1"),
    kind=S.maybe(st.just("K8sDeny")),
    metadata=S.obj(name=S.maybe(st.just("deny"))),
    spec=S.obj(
        enforcementAction=S.maybe(st.sampled_from(["deny", "warn", "dryrun", "x"])),
        match=S.obj(kinds=S.lst(S.obj(apiGroups=S.awkward, kinds=S.awkward)), namespaces=S.awkward,
                    excludedNamespaces=S.awkward, labelSelector=S.awkward, namespaceSelector=S.awkward,
                    scope=S.awkward),
        parameters=S.awkward,
    ),
)  # fmt: skip


@settings(S.FUZZ, max_examples=S.examples(100), phases=[Phase.explicit, Phase.generate])
@given(st.lists(st.one_of(template_docs, constraint_docs), min_size=1, max_size=3))
def test_gatekeeper_documents_of_any_shape_raise_only_policy_load_error(
    tmp_path_factory: pytest.TempPathFactory, docs: list[Any]
) -> None:
    text = "\n---\n".join(orjson.dumps(d).decode() for d in docs)
    with contextlib.suppress(errors.PolicyLoadError):
        gatekeeper.load([_write(tmp_path_factory, "gk.yaml", text)])


_REGO = ["package p", "package", "import future.keywords", "import rego.v1", "deny[msg] {", "deny contains msg if {",
         "}", "{", "msg := \"x\"", "# METADATA", "# title: t", "# custom:", "#   severity: high", "`raw", "\"str",
         "re_match(\"a\", x)", "test_x { true }", "default allow := false", "\\", "[", "]"]  # fmt: skip


@settings(S.FUZZ, max_examples=S.examples(200))
@given(st.one_of(st.text(max_size=80), st.lists(st.sampled_from(_REGO), max_size=10).map("\n".join)))
def test_rego_module_parse_raises_only_policy_load_error(text: str) -> None:
    with contextlib.suppress(errors.PolicyLoadError):
        modules.parse("fuzz.rego", text)


# -- regression tests ---------------------------------------------------------------------------

# PyYAML's SafeLoader builds ``datetime.date(2001, 13, 1)`` for a timestamp-shaped scalar and
# raises ValueError (not YAMLError); nesting deeper than the recursion limit raises RecursionError.
BAD_TIMESTAMP = "apiVersion: v1\nkind: Pod\nmetadata: {name: x, labels: {day: 2001-13-01}}\nspec: {containers: []}\n"
DEEP = "a: " + "[" * 5000 + "]" * 5000 + "\n"
_TS = "ValueError from PyYAML's timestamp constructor ('2001-13-01') is not caught (only YAMLError is)"
_DEEP = "RecursionError on YAML nested 5000 levels deep is not caught"


def _config_load(path: Path) -> None:
    with contextlib.suppress(errors.ConfigError):
        config_mod.load(path)


def _manifests_load(path: Path) -> None:
    loaded = manifests.load([str(path)])
    assert loaded.problems


def _gatekeeper_load(path: Path) -> None:
    with contextlib.suppress(errors.PolicyLoadError):
        gatekeeper.load([path])


def _rules_load(path: Path) -> None:
    with contextlib.suppress(errors.RuleLoadError):
        rules.load([path])


RULE_WITH_BAD_TAG = (
    "- rule: x\n  desc: d\n  condition: evt.type=open\n  output: o\n  priority: INFO\n  tags: [2001-13-01]\n"
)
YAML_REGRESSIONS = [
    ("config-timestamp", _config_load, BAD_TIMESTAMP, None),
    ("config-deep", _config_load, DEEP, None),
    ("manifests-timestamp", _manifests_load, BAD_TIMESTAMP, None),
    ("manifests-deep", _manifests_load, DEEP, None),
    ("gatekeeper-timestamp", _gatekeeper_load, "kind: ConstraintTemplate\nx: 2001-13-01\n", None),
    ("gatekeeper-deep", _gatekeeper_load, DEEP, None),
    ("rules-timestamp", _rules_load, RULE_WITH_BAD_TAG, None),
    ("gatekeeper-spec-bool", _gatekeeper_load, "kind: ConstraintTemplate\nspec: true\n", None),
    ("gatekeeper-metadata-bool", _gatekeeper_load,
     "apiVersion: constraints.gatekeeper.sh/v1beta1\nkind: K8sDeny\nmetadata: true\n", None),
    ("gatekeeper-kind-list", _gatekeeper_load,
     "apiVersion: constraints.gatekeeper.sh/v1beta1\nkind: [K8sDeny]\nmetadata: {name: x}\n", None),
    ("rules-deep", _rules_load, "- rule: x\n  desc: " + DEEP[3:], None),
]  # fmt: skip


def test_regression_non_utf8_config_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "portcullis.yaml"
    path.write_bytes(b"\x00\x00\xfa")
    with pytest.raises(errors.ConfigError):
        config_mod.load(path)


@pytest.mark.parametrize(
    ("load", "text"),
    # An entry whose reason is None is fixed: it must pass (no xfail mark).
    [
        pytest.param(f, t, id=i, marks=[pytest.mark.xfail(strict=True, reason=r)] if r else [])
        for i, f, t, r in YAML_REGRESSIONS
    ],
)
def test_regression_yaml_edge_cases_become_input_errors(tmp_path: Path, load: Any, text: str) -> None:
    path = tmp_path / "input.yaml"
    path.write_text(text, encoding="utf-8")
    load(path)


def test_the_yaml_regressions_really_are_pyyaml_edge_cases() -> None:
    with pytest.raises(ValueError, match="month"):
        yaml.safe_load(BAD_TIMESTAMP)
    with pytest.raises(RecursionError):
        yaml.safe_load(DEEP)
