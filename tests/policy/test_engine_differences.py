"""Where the embedded engine (rego-cpp 1.x) still differs from OPA, documented as tests: each one
asserts today's behaviour and what OPA returns, so an engine upgrade that fixes it fails here and
the entry in docs/policies.md ("Differences from OPA") can go.

Fixed in our layer (and tested elsewhere): v0 partial-set heads, ``re_match``, ``x[_]`` inside a
call's arguments (hoisted; rego-cpp refuses it), ``data.inventory`` (passed with each evaluation).
"""

from __future__ import annotations

from webhook.policy import modules, rego


def _messages(body: str, document: dict[str, object] | None = None) -> list[str]:
    source = f"package t\nimport rego.v1\n{body}\n"
    compiled = rego.compile_modules([modules.parse("t.rego", source)], prune_input=False)
    (result,) = compiled.evaluate(document or {})
    return [item.msg for item in result.deny]


def test_sprintf_v_of_a_composite_escapes_its_quotes() -> None:
    opa = ['set {"a", "b"}', 'object {"k": "v"}', 'array ["a", 1]']
    found = _messages(
        'deny contains sprintf("set %v", [{"a", "b"}])\n'
        'deny contains sprintf("object %v", [{"k": "v"}])\n'
        'deny contains sprintf("array %v", [["a", 1]])'
    )
    assert sorted(found) == sorted(m.replace('"', '\\"') for m in opa)  # OPA: no backslashes


def test_sprintf_v_of_a_string_and_a_number_match_opa() -> None:
    found = _messages('deny contains sprintf("%v|%s|%d|%v", [input.s, input.s, 3, 1.5])', {"s": "computed"})
    assert found == ["computed|computed|3|1.5"]


def test_regex_case_insensitive_flag_never_matches() -> None:
    """RE2's ``(?i)`` (OPA) is not understood: the match is false, so a deny guarded by it is
    silently skipped. Write ``[Pp]assword`` or ``lower(x)`` instead."""
    found = _messages(
        'deny contains "flag" if regex.match("(?i)password", "PASSWORD")\n'
        'deny contains "class" if regex.match("[Pp]assword", "Password")'
    )
    assert found == ["class"]  # OPA: ["class", "flag"]
