"""Condition grammar: precedence, operators, values, escapes, transformers and syntax errors."""

from __future__ import annotations

import pytest

from webhook.runtime.rules import parser
from webhook.runtime.rules.parser import And, Check, FieldRef, ListRef, MacroRef, Not, Or


def test_not_binds_tighter_than_and_which_binds_tighter_than_or() -> None:
    tree = parser.parse("a or not b and c")
    assert tree == Or((MacroRef("a", 0), And((Not(MacroRef("b", 9)), MacroRef("c", 15)))))


def test_repeated_not_toggles_like_libs() -> None:
    assert parser.parse("not not a") == MacroRef("a", 8)
    assert isinstance(parser.parse("not(a)"), Not)


def test_every_operator_parses() -> None:
    for op in (
        "=",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "contains",
        "icontains",
        "bcontains",
        "startswith",
        "bstartswith",
        "endswith",
        "glob",
        "iglob",
        "regex",
    ):
        value = "1" if op in ("<", "<=", ">", ">=") else "x"
        check = parser.parse(f"fd.name {op} {value}")
        assert isinstance(check, Check)
        assert check.op == op
    assert parser.parse("fd.name == x") == Check(FieldRef("fd.name"), "=", "x", 0)
    assert parser.parse("fd.name exists").op == "exists"  # type: ignore[union-attr]
    for op in ("in", "intersects", "pmatch"):
        assert parser.parse(f"fd.name {op} (a, 'b c', \"d\")").value == ("a", "b c", "d")  # type: ignore[union-attr]


def test_list_operand_by_name_and_empty_list() -> None:
    assert parser.parse("proc.name in shell_binaries").value == ListRef("shell_binaries")  # type: ignore[union-attr]
    assert parser.parse("proc.name in ()").value == ()  # type: ignore[union-attr]


def test_field_arguments_bare_and_quoted() -> None:
    assert parser.parse("proc.aname[2] = x").field == FieldRef("proc.aname", "2")  # type: ignore[union-attr]
    dest = parser.parse('container.mount.dest["/proc*"] exists')
    assert dest.field == FieldRef("container.mount.dest", "/proc*")  # type: ignore[union-attr]
    assert parser.parse("evt.arg.flags contains O_RDONLY").field.name == "evt.arg.flags"  # type: ignore[union-attr]


def test_transformers_nest_and_val_reads_another_field() -> None:
    check = parser.parse("toupper(tolower(proc.name)) = val(proc.pname)")
    assert check == Check(FieldRef("proc.name", None, ("tolower", "toupper")), "=", FieldRef("proc.pname"), 0)
    assert parser.parse("len(proc.cmdline) > 10").field.transformers == ("len",)  # type: ignore[union-attr]


def test_quoted_string_escapes_follow_libs() -> None:
    assert parser.parse(r'proc.args contains "\ "').value == "\\"  # type: ignore[union-attr]
    assert parser.parse(r"fd.name = 'a\'b'").value == "a'b"  # type: ignore[union-attr]
    assert parser.parse(r'fd.name = "\x27\x5c"').value == "'\\"  # type: ignore[union-attr]
    assert parser.parse(r'fd.name = "tab\there"').value == "tab\there"  # type: ignore[union-attr]
    with pytest.raises(parser.ConditionSyntaxError, match="escape"):
        parser.parse(r'fd.name = "\q"')


@pytest.mark.parametrize(
    ("text", "message", "pos"),
    [
        ("proc.name = ", "expected a string value", 12),
        ("proc.name foo x", "expected a valid check operator", 10),
        ("(proc.name = x", "expected a '\\)' token", 14),
        ("proc.name = x andy", "expected blank or '\\(' after 'and'", 17),
        ("fd.num > abc", "expected a number value", 9),
        ("proc.name in x,", "unexpected token", 14),
        ("fd.name = 'open", "unterminated", 10),
        ("", "empty", 0),
    ],
)
def test_syntax_errors_say_what_and_where(text: str, message: str, pos: int) -> None:
    with pytest.raises(parser.ConditionSyntaxError, match=message) as info:
        parser.parse(text)
    assert info.value.pos == pos


def test_depth_limit_stops_runaway_nesting() -> None:
    with pytest.raises(parser.ConditionSyntaxError, match="depth"):
        parser.parse("(" * 200 + "a" + ")" * 200)


def test_parenthesised_and_or_after_keyword_without_blank() -> None:
    tree = parser.parse("a and(b or c)or(d)")
    assert tree == Or((And((MacroRef("a", 0), Or((MacroRef("b", 6), MacroRef("c", 11))))), MacroRef("d", 16)))
