"""Falco condition text → syntax tree (the second stage of the rules engine, after ``loader``).

The grammar is the one of falcosecurity/libs ``filter/parser.cpp``: ``or`` binds loosest, then
``and``, then ``not``; a check is ``field [op value]``, a macro name, or a parenthesised
expression. Field transformers (``tolower(...)``) and ``val(field)`` right-hand sides follow
newer libs. Positions are character offsets into the condition text, for error messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from webhook import errors

__all__ = [
    "LIST_OPS",
    "OPERATORS",
    "And",
    "Check",
    "ConditionSyntaxError",
    "Expr",
    "FieldRef",
    "ListRef",
    "MacroRef",
    "Not",
    "Or",
    "parse",
    "parse_field",
]

MAX_DEPTH = 100
TRANSFORMERS = ("tolower", "toupper", "b64", "basename", "len")
NUM_OPS = ("<=", "<", ">=", ">")
EQ_OPS = ("==", "=", "!=")
WORD_OPS = (
    "glob",
    "iglob",
    "contains",
    "icontains",
    "bcontains",
    "startswith",
    "bstartswith",
    "endswith",
    "regex",
)
LIST_OPS = ("intersects", "in", "pmatch")
OPERATORS = frozenset(("exists", *NUM_OPS, *EQ_OPS, *WORD_OPS, *LIST_OPS))

_BLANK = " \t\b\r\n"
_RE_NOT = re.compile(r"not[ \t\b\r\n]+")
_RE_IDENT = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*")
_RE_FIELD = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*(?:\.[a-zA-Z0-9_]+)+")
_RE_FIELD_ARG = re.compile(r"[^ \t\b\r\n\[\]\"']+")
_RE_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|[+\-]?[0-9]+\.?[0-9]*(?:[eE][+\-][0-9]+)?")
_RE_BARE = re.compile(r"[^ \t\b\r\n(),=\"']+")
_RE_WORD_OP = re.compile("(" + "|".join(sorted(WORD_OPS, key=len, reverse=True)) + r")(?=[ \t\b\r\n])")
_RE_LIST_OP = re.compile(r"(intersects|in|pmatch)(?=[ \t\b\r\n(])")
_RE_TRANSFORMER = re.compile("(" + "|".join(TRANSFORMERS) + r")\(")
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", " ": "\\", "\\": "\\", "/": "/"}


class ConditionSyntaxError(errors.RuleLoadError):
    """A condition does not parse; ``pos`` is the character offset of the problem."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A field with its optional ``[arg]`` and transformers (innermost first)."""

    name: str
    arg: str | None = None
    transformers: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The event-dict key of the untransformed field, e.g. ``proc.aname[2]``."""
        return self.name if self.arg is None else f"{self.name}[{self.arg}]"

    def __str__(self) -> str:
        text = self.key
        for name in self.transformers:
            text = f"{name}({text})"
        return text


@dataclass(frozen=True, slots=True)
class ListRef:
    """A list operand given by name only (``in shell_binaries``); the loader expands it."""

    name: str


@dataclass(frozen=True, slots=True)
class Check:
    """``field op value``. ``value``: None (exists), str, tuple of str (list), FieldRef (val())."""

    field: FieldRef
    op: str
    value: str | tuple[str, ...] | FieldRef | ListRef | None
    pos: int = 0


@dataclass(frozen=True, slots=True)
class MacroRef:
    name: str
    pos: int = 0


@dataclass(frozen=True, slots=True)
class Not:
    child: Expr


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Expr, ...]


Expr = Check | MacroRef | Not | And | Or


def unescape(quoted: str, pos: int) -> str:
    """Unquote a '...' or "..." token the way libs' ``unescape_str`` does (plus ``\\xNN``)."""
    delim, body, out, i = quoted[0], quoted[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
        elif nxt in "\"'":
            if nxt != delim:
                raise ConditionSyntaxError(f"invalid \\{nxt} escape in {delim}-quoted string", pos + i)
            out.append(nxt)
        elif nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[i + 2 : i + 4]):
            out.append(chr(int(body[i + 2 : i + 4], 16)))
            i += 2
        else:
            raise ConditionSyntaxError(f"unsupported string escape sequence: \\{nxt}", pos + i)
        i += 2
    return "".join(out)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.depth = 0

    # -- lexing helpers ------------------------------------------------------------------
    def fail(self, message: str) -> ConditionSyntaxError:
        return ConditionSyntaxError(message, self.i)

    def blank(self) -> bool:
        start = self.i
        while self.i < len(self.text) and self.text[self.i] in _BLANK:
            self.i += 1
        return self.i > start

    def lit(self, s: str) -> bool:
        if self.text.startswith(s, self.i):
            self.i += len(s)
            return True
        return False

    def rgx(self, pattern: re.Pattern[str]) -> str | None:
        m = pattern.match(self.text, self.i)
        if m is None or m.end() == self.i:
            return None
        self.i = m.end()
        return m.group(0)

    def quoted(self) -> str | None:
        if self.i >= len(self.text) or self.text[self.i] not in "'\"":
            return None
        delim, start, j, prev = self.text[self.i], self.i, self.i + 1, ""
        while j < len(self.text):
            ch = self.text[j]
            if ch == delim and prev != "\\":
                self.i = j + 1
                return unescape(self.text[start : j + 1], start + 1)
            prev = "" if (prev == "\\" and ch == "\\") else ch
            j += 1
        raise ConditionSyntaxError("unterminated quoted string", start)

    def push(self) -> None:
        self.depth += 1
        if self.depth >= MAX_DEPTH:
            raise self.fail(f"exceeded max depth limit of {MAX_DEPTH}")

    # -- grammar -------------------------------------------------------------------------
    def parse(self) -> Expr:
        if not self.text.strip():
            raise ConditionSyntaxError("condition is empty", 0)
        expr = self.parse_or()
        if self.i != len(self.text):
            raise self.fail("unexpected token, expecting 'or', 'and' or the end of the condition")
        return expr

    def parse_bool(self, word: str, sub: str) -> Expr:
        self.push()
        self.blank()
        children = [self.parse_and() if sub == "and" else self.parse_not()]
        self.blank()
        while self.lit(word):
            if self.blank():
                children.append(self.parse_and() if sub == "and" else self.parse_not())
            elif self.lit("("):
                children.append(self.embedded())
            else:
                raise self.fail(f"expected blank or '(' after '{word}'")
            self.blank()
        self.depth -= 1
        if len(children) == 1:
            return children[0]
        return Or(tuple(children)) if word == "or" else And(tuple(children))

    def parse_or(self) -> Expr:
        return self.parse_bool("or", "and")

    def parse_and(self) -> Expr:
        return self.parse_bool("and", "not")

    def parse_not(self) -> Expr:
        self.push()
        self.blank()
        negate = False
        while self.rgx(_RE_NOT):
            negate = not negate
        if self.lit("not("):
            negate = not negate
            child = self.embedded()
        else:
            child = self.parse_check()
        self.depth -= 1
        return Not(child) if negate else child

    def embedded(self) -> Expr:
        self.push()
        self.blank()
        child = self.parse_or()
        self.blank()
        if not self.lit(")"):
            raise self.fail("expected a ')' token")
        self.depth -= 1
        return child

    def parse_field(self) -> FieldRef | None:
        """A field, possibly wrapped in transformers; None if there is none here."""
        m = _RE_TRANSFORMER.match(self.text, self.i)
        if m:
            self.i = m.end()
            self.blank()
            inner = self.parse_field()
            if inner is None:
                raise self.fail(f"expected a field or a transformer inside '{m.group(1)}('")
            self.blank()
            if not self.lit(")"):
                raise self.fail("expected a ')' token")
            return FieldRef(inner.name, inner.arg, (*inner.transformers, m.group(1)))
        name = self.rgx(_RE_FIELD)
        if name is None:
            return None
        arg = None
        if self.lit("["):
            arg = self.quoted()
            if arg is None:
                arg = self.rgx(_RE_FIELD_ARG)
            if arg is None:
                raise self.fail("expected a valid field argument: a quoted string or a bare string")
            if not self.lit("]"):
                raise self.fail("expected a ']' token")
        return FieldRef(name, arg)

    def parse_check(self) -> Expr:
        self.push()
        self.blank()
        start = self.i
        if self.lit("("):
            child = self.embedded()
            self.depth -= 1
            return child
        field = self.parse_field()
        if field is None:
            ident = self.rgx(_RE_IDENT)
            if ident is None:
                raise self.fail("expected a '(' token, a field check, or an identifier")
            self.depth -= 1
            return MacroRef(ident, start)
        self.blank()
        check = self.parse_operation(field, start)
        self.depth -= 1
        return check

    def parse_operation(self, field: FieldRef, start: int) -> Check:
        if self.lit("exists"):
            return Check(field, "exists", None, start)
        for op in NUM_OPS:
            if self.lit(op):
                return Check(field, op, self.num_or_field(), start)
        for op in EQ_OPS:
            if self.lit(op):
                return Check(field, "=" if op == "==" else op, self.str_or_field(), start)
        word = self.rgx(_RE_WORD_OP)
        if word:
            return Check(field, word, self.str_or_field(), start)
        listop = self.rgx(_RE_LIST_OP)
        if listop:
            return Check(field, listop, self.list_value(), start)
        ops = ", ".join(f"'{o}'" for o in sorted(OPERATORS))
        raise self.fail(f"expected a valid check operator: one of {ops}")

    def rhs_field(self) -> FieldRef | None:
        if not self.lit("val("):
            return None
        self.blank()
        field = self.parse_field()
        if field is None:
            raise self.fail("expected a field inside 'val('")
        self.blank()
        if not self.lit(")"):
            raise self.fail("expected a ')' token")
        return field

    def num_or_field(self) -> str | FieldRef:
        self.blank()
        value = self.rhs_field() or self.rgx(_RE_NUMBER)
        if value is None:
            raise self.fail("expected a number value")
        return value

    def str_value(self) -> str | None:
        value = self.quoted()
        return value if value is not None else self.rgx(_RE_BARE)

    def str_or_field(self) -> str | FieldRef:
        self.blank()
        value = self.rhs_field() or self.str_value()
        if value is None:
            raise self.fail("expected a string value")
        return value

    def list_value(self) -> tuple[str, ...] | ListRef:
        self.blank()
        if self.lit("("):
            self.blank()
            items: list[str] = []
            first = self.str_value()
            if first is not None:
                items.append(first)
                self.blank()
                while self.lit(","):
                    self.blank()
                    item = self.str_value()
                    if item is None:
                        raise self.fail("expected a string value")
                    items.append(item)
                    self.blank()
            if not self.lit(")"):
                raise self.fail("expected a ')' token")
            return tuple(items)
        ident = self.rgx(_RE_IDENT)
        if ident is None:
            raise self.fail("expected a list or an identifier")
        return ListRef(ident)


def parse_field(text: str) -> FieldRef:
    """A lone field such as ``proc.aname[2]`` (exception ``fields``); raises ConditionSyntaxError."""
    p = _Parser(text.strip())
    ref = p.parse_field()
    if ref is None or p.i != len(p.text):
        raise ConditionSyntaxError(f"'{text}' is not a field name", p.i)
    return ref


def parse(text: str) -> Expr:
    """Parse a condition; raises ``ConditionSyntaxError`` with the offset of the problem."""
    return _Parser(text).parse()
