"""Check validation and the runtime meaning of each operator (used by ``compiler`` and ``evttypes``).

A check is validated against the field catalog (``fields``): the operator must suit the field's
type and every value must convert to it. ``predicate`` gives the check as a function of one
present value, the generic path the compiler falls back on when it cannot inline the check.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook import errors
from webhook.runtime.rules import fields
from webhook.runtime.rules.fields import FieldInfo, FieldType
from webhook.runtime.rules.parser import Check, FieldRef, ListRef, MacroRef

__all__ = [
    "NE_ALL",
    "PAIR_OPS",
    "CompileError",
    "PrefixSet",
    "Prepared",
    "matcher",
    "predicate",
    "prepare",
    "transform",
    "validate",
]

Event = Mapping[str, Any]
_STR_OPS = frozenset(
    (
        "=",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "contains",
        "icontains",
        "startswith",
        "endswith",
        "glob",
        "iglob",
        "regex",
        "in",
        "intersects",
        "pmatch",
        "bcontains",
        "bstartswith",
        "exists",
    )
)
_NUM_OPS = frozenset(("=", "!=", "<", "<=", ">", ">=", "in", "intersects", "exists"))
_EQ_OPS = frozenset(("=", "!=", "in", "intersects", "exists"))
_ALLOWED = {
    FieldType.STR: _STR_OPS,
    FieldType.NUM: _NUM_OPS,
    FieldType.BOOL: _EQ_OPS,
    FieldType.IP: _EQ_OPS,
    FieldType.NET: _EQ_OPS,
    FieldType.LIST: frozenset(("in", "intersects", "exists")),
}
_LIST_VALUE_OPS = frozenset(("in", "intersects", "pmatch"))
NE_ALL = frozenset(("fd.ip", "fd.port", "fd.net"))  # '!=' true only if every value differs


class CompileError(errors.RuleLoadError):
    """A check is invalid (unknown field, operator or value); ``pos`` locates it."""

    def __init__(self, message: str, pos: int, *, unknown_field: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.unknown_field = unknown_field


# --------------------------------------------------------------------------------------------
# validation and typed values


def field_type(ref: FieldRef, pos: int) -> tuple[FieldInfo, FieldType]:
    info = fields.lookup(ref.name, ref.arg)
    if isinstance(info, str):
        raise CompileError(info, pos, unknown_field=info.startswith("unknown field"))
    ftype = info.type
    for tr in ref.transformers:
        accepts = (FieldType.STR, FieldType.LIST) if tr == "len" else (FieldType.STR,)
        if ftype not in accepts:
            raise CompileError(f"transformer '{tr}' needs a string field, '{ref.key}' is {ftype.value}", pos)
        ftype = FieldType.NUM if tr == "len" else ftype
    return info, ftype


def _typed(text: str, ftype: FieldType, op: str, pos: int) -> Any:
    """Convert one right-hand-side value to the field's type (CompileError if it does not fit)."""
    try:
        if op in ("bcontains", "bstartswith"):
            return bytes.fromhex(text)
        if ftype is FieldType.NUM:
            if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
                return int(text, 16)
            number = float(text) if re.search(r"[.eE]", text) else int(text)
            return int(number) if number == int(number) else number
        if ftype is FieldType.BOOL:
            if text not in ("true", "false"):
                raise ValueError("expected true or false")
            return text == "true"
        if ftype is FieldType.IP:
            ip = fields.parse_ip(text)
            if ip is None:
                raise ValueError("not an IP address")
            return ip
        if ftype is FieldType.NET:
            return fields.parse_net(text)
    except ValueError as exc:
        hint = {
            FieldType.NUM: "a number",
            FieldType.BOOL: "true or false",
            FieldType.IP: "an IP address",
            FieldType.NET: "a CIDR such as 10.0.0.0/8 or 2001:db8::/32",
        }.get(ftype, "hex bytes")
        raise CompileError(f"invalid {ftype.value} value '{text}' (expected {hint})", pos) from exc
    if op == "icontains":
        return text.lower()
    return text


def validate(check: Check) -> None:
    """Raise CompileError when the check cannot be compiled (field, operator, values)."""
    prepare(check)


@dataclass(frozen=True, slots=True)
class Prepared:
    check: Check
    ftype: FieldType
    value: Any  # typed constant, tuple of them (list ops), FieldRef (val()) or None
    rhs_type: FieldType | None


def prepare(check: Check) -> Prepared:
    _, ftype = field_type(check.field, check.pos)
    if check.op not in _ALLOWED[ftype]:
        raise CompileError(f"operator '{check.op}' is not supported on {ftype.value} field '{check.field}'", check.pos)
    value: Any = check.value
    rhs_type = None
    if isinstance(value, MacroRef | ListRef):
        raise CompileError(f"list '{value.name}' is not defined", check.pos)
    if isinstance(value, FieldRef):
        if check.op in _LIST_VALUE_OPS:
            raise CompileError(f"operator '{check.op}' needs a list, not val()", check.pos)
        _, rhs_type = field_type(value, check.pos)
        if rhs_type != ftype and {rhs_type, ftype} != {FieldType.IP} and ftype is not FieldType.NET:
            raise CompileError(
                f"field '{check.field}' ({ftype.value}) and val({value}) ({rhs_type.value}) have different types",
                check.pos,
            )
    elif isinstance(value, tuple):
        if check.op not in _LIST_VALUE_OPS:
            raise CompileError(f"operator '{check.op}' does not take a list", check.pos)
        value = tuple(_typed(v, ftype, check.op, check.pos) for v in value)
    elif isinstance(value, str):
        if check.op in _LIST_VALUE_OPS:  # `in x` with a bare value is not valid Falco
            raise CompileError(f"operator '{check.op}' needs a list", check.pos)
        value = _typed(value, ftype, check.op, check.pos)
        if check.op in ("glob", "iglob", "regex"):
            try:
                matcher(check.op, value)
            except re.error as exc:
                raise CompileError(f"invalid {check.op} pattern '{value}': {exc}", check.pos) from exc
    return Prepared(check, ftype, value, rhs_type)


# --------------------------------------------------------------------------------------------
# runtime helpers used by generated code


def matcher(op: str, pattern: str) -> Callable[[str], Any]:
    if op == "regex":
        return re.compile(pattern, re.DOTALL).fullmatch
    flags = re.DOTALL | (re.IGNORECASE if op == "iglob" else 0)
    return re.compile(fnmatch.translate(pattern), flags).match


class PrefixSet:
    """``pmatch``: true if the path is one of the prefixes or lies below one (by components)."""

    __slots__ = ("prefixes", "root")

    def __init__(self, items: Iterable[str]) -> None:
        cleaned = {p.rstrip("/") for p in items}
        self.root = "" in cleaned and any(p.startswith("/") for p in items)
        self.prefixes = frozenset(p for p in cleaned if p)

    def __call__(self, value: str) -> bool:
        pre = self.prefixes
        if value.rstrip("/") in pre:
            return True
        i = value.find("/", 1)
        while i != -1:
            if value[:i] in pre:
                return True
            i = value.find("/", i + 1)
        return self.root and value.startswith("/")


def transform(names: tuple[str, ...]) -> Callable[[Any], Any]:
    def apply(v: Any) -> Any:
        if v is None:
            return None
        for name in names:
            if name == "tolower":
                v = str(v).lower()
            elif name == "toupper":
                v = str(v).upper()
            elif name == "basename":
                v = str(v).rsplit("/", 1)[-1]
            elif name == "len":
                v = len(v) if isinstance(v, str | list | tuple | bytes) else len(str(v))
            elif name == "b64":
                try:
                    v = base64.b64decode(str(v), validate=True).decode("utf-8", "replace")
                except (binascii.Error, ValueError):
                    return None
        return v

    return apply


def as_list(v: Any) -> tuple[Any, ...]:
    return tuple(v) if isinstance(v, list | tuple) else tuple(str(v).split())


def as_bytes(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape")


def predicate(p: Prepared) -> Callable[[Any], bool]:
    """The check as a function of one present value (generic path, any type)."""
    op, c, t = p.check.op, p.value, p.ftype
    if t is FieldType.IP:
        consts = c if isinstance(c, tuple) else (c,)

        def ip_eq(v: Any) -> bool:
            a = v if not isinstance(v, str) else fields.parse_ip(v)
            return a is not None and any(fields.ip_equal(a, k) for k in consts)

        if op == "!=":
            return lambda v: (v if not isinstance(v, str) else fields.parse_ip(v)) is not None and not ip_eq(v)
        return ip_eq
    if t is FieldType.NET:
        nets = c if isinstance(c, tuple) else (c,)

        def in_net(v: Any) -> bool:
            a = v if not isinstance(v, str) else fields.parse_ip(v)
            return a is not None and any(a.version == n.version and a in n for n in nets)

        return (lambda v: not in_net(v)) if op == "!=" else in_net
    if t is FieldType.LIST:
        s = frozenset(c)
        if op == "in":
            return lambda v: all(x in s for x in as_list(v))
        return lambda v: any(x in s for x in as_list(v))
    if op in ("in", "intersects"):
        s = frozenset(c)
        return lambda v: v in s
    if op == "pmatch":
        pm = PrefixSet(c)
        return lambda v: pm(str(v))
    if op in ("glob", "iglob", "regex"):
        m = matcher(op, c)
        return lambda v: m(str(v)) is not None
    if op == "bcontains":
        return lambda v: c in as_bytes(v)
    if op == "bstartswith":
        return lambda v: as_bytes(v).startswith(c)
    simple: dict[str, Callable[[Any], bool]] = {
        "=": lambda v: v == c,
        "!=": lambda v: v != c,
        "<": lambda v: v < c,
        "<=": lambda v: v <= c,
        ">": lambda v: v > c,
        ">=": lambda v: v >= c,
        "contains": lambda v: c in str(v),
        "icontains": lambda v: c in str(v).lower(),
        "startswith": lambda v: str(v).startswith(c),
        "endswith": lambda v: str(v).endswith(c),
    }
    return simple[op]


PAIR_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "contains": lambda a, b: str(b) in str(a),
    "icontains": lambda a, b: str(b).lower() in str(a).lower(),
    "startswith": lambda a, b: str(a).startswith(str(b)),
    "endswith": lambda a, b: str(a).endswith(str(b)),
    "glob": lambda a, b: matcher("glob", str(b))(str(a)) is not None,
    "iglob": lambda a, b: matcher("iglob", str(b))(str(a)) is not None,
    "regex": lambda a, b: matcher("regex", str(b))(str(a)) is not None,
    "bcontains": lambda a, b: as_bytes(b) in as_bytes(a),
    "bstartswith": lambda a, b: as_bytes(a).startswith(as_bytes(b)),
}
