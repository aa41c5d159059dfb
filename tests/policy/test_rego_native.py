"""The regopy boundary (real rego-cpp): the fast input copy, result reading, interpreter reuse."""

from __future__ import annotations

import enum
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import regopy

from webhook.checks import rego as rego_check
from webhook.core.decision import FailureMode, Mode
from webhook.policy import modules, native, rego

ROOT = Path(__file__).resolve().parents[2]

ECHO = rego.compile_modules(
    [modules.parse("echo.rego", "package echo\nimport rego.v1\nvalue := input\ndeny := set()\n")],
    extra_entrypoints=["echo/value"],
)


class Colour(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def echoed(document: Any, *, via_regopy: bool = False) -> Any:
    interpreter = native.interpreter()
    if via_regopy:
        interpreter.set_input(regopy.Input(document))
    else:
        native.set_input(interpreter, document)
    return native.query(interpreter, ECHO.bundle, "echo/value")


DOCUMENTS = {
    "scalars": {"s": "x", "i": -7, "f": 2.5, "t": True, "f0": False, "n": None},
    "nested": {"a": {"b": [{"c": [1, [2, {"d": "e"}]]}, []], "empty": {}}},
    "unicode": {"ümlaut": "日本語 ☃", "quote": 'say "hi"', "backslash": "a\\nb"},
    "pod": {"pods": [{"path": "spec", "metadata": {"labels": {"team": "a"}}, "spec": {"containers": [{"name": "c"}]}}]},
    "array root": [1, "two", None],
    "int64 bounds": {"lo": -(2**63), "hi": 2**63 - 1},
}


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_fast_input_gives_the_same_value_as_regopy_input(name: str) -> None:
    document = DOCUMENTS[name]
    if name == "unicode":  # regopy.Input loses backslashes (see the next test); compare the rest
        document = {k: v for k, v in document.items() if k != "backslash"}
    assert echoed(document) == echoed(document, via_regopy=True)


def test_backslashes_in_input_strings_survive_unlike_with_regopy_input() -> None:
    """rego-cpp unescapes input strings when a built-in reads them; ``native.set_input`` escapes
    backslashes first, so ``a\\nb`` stays four characters and a regex ``\\.`` from parameters
    is not an "Invalid escape sequence". regopy.Input passes them raw."""
    document = {"backslash": "a\\nb", "regex": "^a\\.b$"}
    assert echoed(document) == document
    assert echoed({"backslash": "a\\nb"}, via_regopy=True) == {"backslash": "a\nb"}


def test_plain_document_round_trips_exactly() -> None:
    document = DOCUMENTS["nested"] | DOCUMENTS["scalars"] | DOCUMENTS["unicode"]
    assert echoed(document) == document


def test_subclasses_sets_tuples_and_mappings_become_json_values() -> None:
    document = {
        "colour": Colour.RED,
        "level": Level.HIGH,
        "tags": frozenset({"b", "a"}),
        "pair": ("x", 1),
        "view": MappingProxyType({"k": "v"}),
    }
    assert echoed(document) == {"colour": "red", "level": 3, "tags": ["a", "b"], "pair": ["x", 1], "view": {"k": "v"}}


def test_integer_beyond_64_bits_is_approximated_not_wrapped() -> None:
    assert echoed({"big": 2**70})["big"] == pytest.approx(2.0**70)
    with pytest.raises(native.PolicyEvalError, match="cannot be passed"):
        native.set_input(native.interpreter(), {"huge": 10**400})


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"s": "\ud800"}, "cannot be passed to the engine"),
        ({"b": b"bytes"}, "holds a bytes"),
        ({"o": object()}, "holds a object"),
    ],
)
def test_unrepresentable_input_is_an_error(document: dict[str, Any], reason: str) -> None:
    with pytest.raises(native.PolicyEvalError, match=reason):
        native.set_input(native.interpreter(), document)


def test_input_nested_too_deep_is_an_error() -> None:
    deep: Any = "leaf"
    for _ in range(300):
        deep = {"d": deep}
    with pytest.raises(native.PolicyEvalError, match="nested deeper than"):
        native.set_input(native.interpreter(), deep)


def test_unrepresentable_input_fails_every_policy_by_its_failure_mode() -> None:
    library = rego.load_directory([ROOT / "policies"])
    results = library.evaluate({"pods": [{"spec": {"bad": "\udcff"}}], "request": {"object": {}}})
    assert len(results) == len(library.policies)
    assert all("cannot be passed to the engine" in (r.error or "") for r in results)
    decided = rego_check.to_result(results, FailureMode.DENY)
    assert len(decided.violations) == len(library.policies)
    assert decided.context["failed"] == list(library.policy_ids)


def test_results_without_strings_are_read_from_the_json_text() -> None:
    compiled = rego.compile_modules(
        [modules.parse("n.rego", "package n\nimport rego.v1\nvalue := [1, 2.5, true, null, [], [[3]]]\n")],
        extra_entrypoints=["n/value"],
    )
    interpreter = native.interpreter()
    native.set_input(interpreter, {})
    expected = [1, 2.5, True, None, [], [[3]]]
    assert native.query(interpreter, compiled.bundle, "n/value") == expected
    assert native.query(interpreter, compiled.bundle, "n/value", json_shortcut=False) == expected


def test_strings_with_quotes_and_brackets_are_read_exactly(tmp_path: Path) -> None:
    # Such results take the value-tree path: the engine's JSON text leaves quotes unescaped.
    (tmp_path / "q.rego").write_text(
        'package q\nimport rego.v1\ndeny contains "plain [x], {y}"\ndeny contains input.name\n'
    )
    (result,) = rego.load_directory([tmp_path]).evaluate({"name": 'a", "b'})
    assert sorted(i.msg for i in result.deny) == ['a", "b', "plain [x], {y}"]


def test_reused_interpreter_gives_the_answers_of_a_fresh_one(tmp_path: Path) -> None:
    (tmp_path / "l.rego").write_text(
        "# METADATA\n# custom:\n#   mode: warn\n"
        'package l\nimport rego.v1\ndeny contains "no team" if not input.request.object.metadata.labels.team\n'
    )
    compiled = rego.load_directory([tmp_path])
    bad: dict[str, Any] = {"request": {"object": {"metadata": {}}}}
    good = {"request": {"object": {"metadata": {"labels": {"team": "a"}}}}}
    answers = [compiled.evaluate(d) for d in (bad, good, bad, good)]
    fresh = [rego.load_directory([tmp_path]).evaluate(d) for d in (bad, good)]
    assert answers == fresh + fresh
    assert answers[0][0].deny == (rego.Item("no team"),)
    assert answers[0][0].policy.mode is Mode.WARN


def test_an_interpreter_is_reused_only_after_a_clean_run(tmp_path: Path) -> None:
    (tmp_path / "c.rego").write_text("package c\nimport rego.v1\ndeny := input.x\ndeny := 3 if input.x\n")
    compiled = rego.load_directory([tmp_path])
    idle = compiled._interpreters._idle
    (failed,) = compiled.evaluate({"x": ["a"]})
    assert failed.error is not None
    assert "multiple outputs" in failed.error
    assert idle.qsize() == 0
    (clean,) = compiled.evaluate({})
    assert clean.error is None
    assert idle.qsize() == 1
    compiled.evaluate({})
    assert idle.qsize() == 1
