"""Where the embedded engine (rego-cpp 1.x) still differs from OPA, documented as tests: each one
asserts today's behaviour and what OPA returns, so an engine upgrade that fixes it fails here and
the entry in docs/policies.md ("Differences from OPA") can go.

Fixed in our layer (and tested elsewhere): v0 partial-set heads, ``re_match``, ``x[_]`` inside a
call's arguments (hoisted; rego-cpp refuses it), a body line opening with ``(`` (rego-cpp reads
it as a call of the line before), ``data.inventory`` (passed with each evaluation), ``%v`` of
composites (unescaped when read).
"""

from __future__ import annotations

from webhook.policy import modules, rego


def _messages(body: str, document: dict[str, object] | None = None) -> list[str]:
    source = f"package t\nimport rego.v1\n{body}\n"
    compiled = rego.compile_modules([modules.parse("t.rego", source)], prune_input=False)
    (result,) = compiled.evaluate(document or {})
    return [item.msg for item in result.deny]


def test_sprintf_v_of_a_composite_reads_as_opa_prints_it() -> None:
    """rego-cpp leaves the text JSON-escaped (``{\\"a\\"}``); the result reader unescapes it
    (``native._string``), so messages read as OPA's (fixed in our layer)."""
    found = _messages(
        'deny contains sprintf("set %v", [{"a", "b"}])\n'
        'deny contains sprintf("object %v", [{"k": "v"}])\n'
        'deny contains sprintf("array %v", [["a", 1]])'
    )
    assert sorted(found) == sorted(['set {"a", "b"}', 'object {"k": "v"}', 'array ["a", 1]'])


def test_a_computed_string_inside_sprintf_keeps_json_quotes() -> None:
    """A string returned by a function and formatted with ``%v`` comes out quoted (OPA: bare)."""
    found = _messages(
        'where(x) := concat(" ", [x, "securityContext"])\ndeny contains sprintf("at %v.", [where("pod")])'
    )
    assert found == ['at "pod securityContext".']  # OPA: ["at pod securityContext."]


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


def test_an_escaped_regex_from_the_input_works_as_in_opa() -> None:
    """Fixed in our layer: input strings reach the engine with backslashes escaped."""
    found = _messages(
        'deny contains "dot" if regex.match(input.pattern, "a.b")\n'
        'deny contains "literal" if not regex.match(input.pattern, "axb")',
        {"pattern": "^a\\.b$"},
    )
    assert sorted(found) == ["dot", "literal"]
