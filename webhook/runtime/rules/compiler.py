"""Resolved condition trees → fast Python (the third stage, called by the loader and the engine).

Each leaf check is validated against the field catalog (``fields``), then turned into a
Python expression over the event mapping ``e`` (``g = e.get``). Lists become frozensets or
prefix tables, globs and regexes are compiled once. ``compile_bucket`` emits one function for
all the rules that can match one event type: ``evt.type`` checks are folded to constants for
that type, and sub-conditions shared by several rules are evaluated at most once per event.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook import errors
from webhook.runtime.rules import fields
from webhook.runtime.rules.fields import FieldInfo, FieldType
from webhook.runtime.rules.parser import And, Check, Expr, FieldRef, ListRef, MacroRef, Not, Or

__all__ = ["CompileError", "TypeSet", "compile_bucket", "compile_condition", "event_types", "validate"]

Event = Mapping[str, Any]
_STR_OPS = frozenset(
    ("=", "!=", "<", "<=", ">", ">=", "contains", "icontains", "startswith", "endswith", "glob", "iglob",
     "regex", "in", "intersects", "pmatch", "bcontains", "bstartswith", "exists")
)  # fmt: skip
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
_NE_ALL = frozenset(("fd.ip", "fd.port", "fd.net"))  # '!=' true only if every value differs


class CompileError(errors.RuleLoadError):
    """A check is invalid (unknown field, operator or value); ``pos`` locates it."""

    def __init__(self, message: str, pos: int, *, unknown_field: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.unknown_field = unknown_field


# --------------------------------------------------------------------------------------------
# validation and typed values


def _field_type(ref: FieldRef, pos: int) -> tuple[FieldInfo, FieldType]:
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
        hint = {FieldType.NUM: "a number", FieldType.BOOL: "true or false", FieldType.IP: "an IP address",
                FieldType.NET: "a CIDR such as 10.0.0.0/8 or 2001:db8::/32"}.get(ftype, "hex bytes")  # fmt: skip
        raise CompileError(f"invalid {ftype.value} value '{text}' (expected {hint})", pos) from exc
    if op == "icontains":
        return text.lower()
    return text


def validate(check: Check) -> None:
    """Raise CompileError when the check cannot be compiled (field, operator, values)."""
    _prepare(check)


@dataclass(frozen=True, slots=True)
class _Prepared:
    check: Check
    ftype: FieldType
    value: Any  # typed constant, tuple of them (list ops), FieldRef (val()) or None
    rhs_type: FieldType | None


def _prepare(check: Check) -> _Prepared:
    _, ftype = _field_type(check.field, check.pos)
    if check.op not in _ALLOWED[ftype]:
        raise CompileError(f"operator '{check.op}' is not supported on {ftype.value} field '{check.field}'",
                           check.pos)  # fmt: skip
    value: Any = check.value
    rhs_type = None
    if isinstance(value, MacroRef | ListRef):
        raise CompileError(f"list '{value.name}' is not defined", check.pos)
    if isinstance(value, FieldRef):
        if check.op in _LIST_VALUE_OPS:
            raise CompileError(f"operator '{check.op}' needs a list, not val()", check.pos)
        _, rhs_type = _field_type(value, check.pos)
        if rhs_type != ftype and {rhs_type, ftype} != {FieldType.IP} and ftype is not FieldType.NET:
            raise CompileError(f"field '{check.field}' ({ftype.value}) and val({value}) ({rhs_type.value}) "
                               "have different types", check.pos)  # fmt: skip
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
                _matcher(check.op, value)
            except re.error as exc:
                raise CompileError(f"invalid {check.op} pattern '{value}': {exc}", check.pos) from exc
    return _Prepared(check, ftype, value, rhs_type)


# --------------------------------------------------------------------------------------------
# runtime helpers used by generated code


def _matcher(op: str, pattern: str) -> Callable[[str], Any]:
    if op == "regex":
        return re.compile(pattern, re.DOTALL).fullmatch
    flags = re.DOTALL | (re.IGNORECASE if op == "iglob" else 0)
    return re.compile(fnmatch.translate(pattern), flags).match


class _PrefixSet:
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


def _transform(names: tuple[str, ...]) -> Callable[[Any], Any]:
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


def _as_list(v: Any) -> tuple[Any, ...]:
    return tuple(v) if isinstance(v, list | tuple) else tuple(str(v).split())


def _as_bytes(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape")


def _predicate(p: _Prepared) -> Callable[[Any], bool]:
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
            return lambda v: all(x in s for x in _as_list(v))
        return lambda v: any(x in s for x in _as_list(v))
    if op in ("in", "intersects"):
        s = frozenset(c)
        return lambda v: v in s
    if op == "pmatch":
        pm = _PrefixSet(c)
        return lambda v: pm(str(v))
    if op in ("glob", "iglob", "regex"):
        m = _matcher(op, c)
        return lambda v: m(str(v)) is not None
    if op == "bcontains":
        return lambda v: c in _as_bytes(v)
    if op == "bstartswith":
        return lambda v: _as_bytes(v).startswith(c)
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


_PAIR_OPS: dict[str, Callable[[Any, Any], bool]] = {
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
    "glob": lambda a, b: _matcher("glob", str(b))(str(a)) is not None,
    "iglob": lambda a, b: _matcher("iglob", str(b))(str(a)) is not None,
    "regex": lambda a, b: _matcher("regex", str(b))(str(a)) is not None,
    "bcontains": lambda a, b: _as_bytes(b) in _as_bytes(a),
    "bstartswith": lambda a, b: _as_bytes(a).startswith(_as_bytes(b)),
}


# --------------------------------------------------------------------------------------------
# code generation


class _Codegen:
    """Collects constants and emits Python expression text for resolved condition trees."""

    def __init__(self) -> None:
        self.consts: dict[str, Any] = {}
        self._ids: dict[Any, str] = {}
        self.shared: dict[int, str] = {}  # id(subtree) → cache variable (set by compile_bucket)

    def const(self, value: Any, key: Any = None) -> str:
        k = key if key is not None else (type(value).__name__, value)
        try:
            name = self._ids.get(k)
        except TypeError:  # unhashable: never shared
            k, name = id(value), None
        if name is None:
            name = f"_k{len(self.consts)}"
            self.consts[name] = value
            self._ids[k] = name
        return name

    def expr(self, node: Expr | bool) -> str:
        if node is True or node is False:
            return str(node)
        cache = self.shared.get(id(node))
        code = self._expr(node)  # type: ignore[arg-type]
        if cache is None:
            return code
        return f"({cache} if {cache} is not None else ({cache} := {code}))"

    def _expr(self, node: Expr) -> str:
        if isinstance(node, And):
            return "(" + " and ".join(self.expr(c) for c in node.children) + ")"
        if isinstance(node, Or):
            return "(" + " or ".join(self.expr(c) for c in node.children) + ")"
        if isinstance(node, Not):
            return f"(not {self.expr(node.child)})"
        if isinstance(node, Check):
            return self.leaf(node)
        raise CompileError(f"macro '{node.name}' is not defined", node.pos)

    def value_code(self, ref: FieldRef) -> tuple[str, bool]:
        """Code reading the field, and whether it yields a tuple of values (multi-valued)."""
        multi = fields.derived_values(ref.name) if ref.arg is None else None
        if multi is not None:
            code = f"{self.const(multi, ('multi', ref.name))}(e)"
            if ref.transformers:
                tr = self.const(_transform(ref.transformers), ("tr", ref.transformers))
                code = f"tuple(map({tr}, {code} or ()))"
            return code, True
        code = f"g({fields.field_key(ref.name, ref.arg)!r})"
        if ref.transformers:
            code = f"{self.const(_transform(ref.transformers), ('tr', ref.transformers))}({code})"
        return code, False

    def leaf(self, check: Check) -> str:
        p = _prepare(check)
        ref, op = check.field, check.op
        read, multi = self.value_code(ref)
        if op == "exists":
            if not multi and not ref.transformers:
                return f"({fields.field_key(ref.name, ref.arg)!r} in e)"
            return f"({read} is not None)" if not multi else f"bool({read})"
        if isinstance(p.value, FieldRef):
            rhs, rmulti = self.value_code(p.value)
            pair = self.const(_PAIR_OPS[op], ("pair", op))
            if multi or rmulti:
                rhs_vals = rhs if rmulti else f"(({rhs}),)"
                lhs_vals = read if multi else f"(({read}),)"
                return (f"any({pair}(_a, _b) for _a in ({lhs_vals} or ()) if _a is not None "
                        f"for _b in ({rhs_vals} or ()) if _b is not None)")  # fmt: skip
            return f"((_v := {read}) is not None and (_w := {rhs}) is not None and {pair}(_v, _w))"
        if multi:
            if op == "!=" and ref.name in _NE_ALL:
                eq_pred = self.const(_predicate(_Prepared(Check(ref, "=", check.value), p.ftype, p.value, None)))
                return f"((_v := {read}) is not None and not any(map({eq_pred}, _v)))"
            pred = self.const(_predicate(p))
            return f"((_v := {read}) is not None and any(map({pred}, _v)))"
        return self.fast_leaf(p, read)

    def fast_leaf(self, p: _Prepared, read: str) -> str:
        """Inline code for the common shapes; a predicate call for the rest."""
        op, c, t = p.check.op, p.value, p.ftype
        plain = t in (FieldType.STR, FieldType.NUM)
        if plain and op == "=":
            return f"({read} == {self.const(c)})"
        if t is FieldType.BOOL and op in ("=", "!="):
            return f"({read} is {(c if op == '=' else not c)!r})"
        if plain and op in ("in", "intersects"):
            return f"({read} in {self.const(frozenset(c), ('set', frozenset(c)))})"
        if plain and op in ("!=", "<", "<=", ">", ">="):
            return f"((_v := {read}) is not None and _v {op} {self.const(c)})"
        if t is FieldType.STR and op == "contains":
            return f"((_v := {read}) is not None and {self.const(c)} in _v)"
        if t is FieldType.STR and op in ("startswith", "endswith"):
            return f"((_v := {read}) is not None and _v.{op}({self.const(c)}))"
        if t is FieldType.STR and op == "icontains":
            return f"((_v := {read}) is not None and {self.const(c)} in _v.lower())"
        if t is FieldType.STR and op in ("glob", "iglob", "regex"):
            return f"((_v := {read}) is not None and {self.const(_matcher(op, c), (op, c))}(_v) is not None)"
        if t is FieldType.STR and op == "pmatch":
            return f"((_v := {read}) is not None and {self.const(_PrefixSet(c), ('pm', c))}(_v))"
        return f"((_v := {read}) is not None and {self.const(_predicate(p))}(_v))"


def _build(source: str, consts: dict[str, Any], name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<rules:{name}>", "exec"), dict(consts), namespace)  # noqa: S102
    fn: Callable[..., Any] = namespace[name]
    return fn


def compile_condition(expr: Expr) -> Callable[[Event], bool]:
    """One condition as a function event → bool (no event-type folding)."""
    gen = _Codegen()
    body = gen.expr(expr)
    params = "".join(f", {k}={k}" for k in gen.consts)
    src = f"def _cond(e{params}):\n    g = e.get\n    return bool({body})\n"
    return _build(src, gen.consts, "_cond")


# --------------------------------------------------------------------------------------------
# event types


@dataclass(frozen=True, slots=True)
class TypeSet:
    """A set of event types, or (``neg``) every type except ``names``. "" stands for "no evt.type"."""

    names: frozenset[str]
    neg: bool

    def __contains__(self, name: object) -> bool:
        return (name in self.names) != self.neg

    def __or__(self, o: TypeSet) -> TypeSet:
        if not self.neg and not o.neg:
            return TypeSet(self.names | o.names, False)
        if self.neg and o.neg:
            return TypeSet(self.names & o.names, True)
        pos, neg = (self, o) if not self.neg else (o, self)
        return TypeSet(neg.names - pos.names, True)

    def __and__(self, o: TypeSet) -> TypeSet:
        return ~(~self | ~o)

    def __invert__(self) -> TypeSet:
        return TypeSet(self.names, not self.neg)


ALL = TypeSet(frozenset(), True)
NONE = TypeSet(frozenset(), False)


def _is_evttype(node: Check) -> bool:
    return node.field.name == "evt.type" and node.field.arg is None and not node.field.transformers


def _types(node: Expr) -> tuple[TypeSet, TypeSet]:
    """(types where the node may be true, types where it may be false): a sound over-estimate."""
    if isinstance(node, Check):
        if not _is_evttype(node) or isinstance(node.value, FieldRef):
            return ALL, ALL
        if node.op == "=" and isinstance(node.value, str):
            s = frozenset((node.value,))
            return TypeSet(s, False), TypeSet(s, True)
        if node.op in ("in", "intersects") and isinstance(node.value, tuple):
            s = frozenset(node.value)
            return TypeSet(s, False), TypeSet(s, True)
        if node.op == "!=" and isinstance(node.value, str):
            s = frozenset((node.value, ""))
            return TypeSet(s, True), TypeSet(s, False)
        if node.op == "exists":
            return TypeSet(frozenset(("",)), True), TypeSet(frozenset(("",)), False)
        return ALL, ALL
    if isinstance(node, Not):
        t, f = _types(node.child)
        return f, t
    if isinstance(node, And | Or):
        parts = [_types(c) for c in node.children]
        t, f = parts[0]
        for ct, cf in parts[1:]:
            t, f = (t & ct, f | cf) if isinstance(node, And) else (t | ct, f & cf)
        return t, f
    return ALL, ALL


def event_types(expr: Expr) -> TypeSet:
    """The event types (Falco's ``evt.type`` index) on which the condition can be true."""
    return _types(expr)[0]


class _Unknown:
    """Stands for an event type named by no rule (the engine's default bucket)."""


UNKNOWN = _Unknown()


def specialize(node: Expr, evtype: str | None | _Unknown, memo: dict[int, Expr | bool]) -> Expr | bool:
    """Fold ``evt.type`` checks for events of one type (None: no evt.type; UNKNOWN: unnamed type).

    ``memo`` (by node identity) makes a macro shared by several rules fold to one shared object,
    which ``compile_bucket`` then evaluates once.
    """
    key = id(node)
    if key not in memo:
        memo[key] = _specialize(node, evtype, memo)
    return memo[key]


def _specialize(node: Expr, evtype: str | None | _Unknown, memo: dict[int, Expr | bool]) -> Expr | bool:
    if isinstance(node, Check):
        if not _is_evttype(node) or isinstance(node.value, FieldRef):
            return node
        if evtype is None:
            return False
        if isinstance(evtype, _Unknown):
            if node.op in ("=", "in", "intersects"):
                return False
            if node.op in ("!=", "exists"):
                return True
            return node
        return _predicate(_prepare(node))(evtype)
    if isinstance(node, Not):
        child = specialize(node.child, evtype, memo)
        return (not child) if isinstance(child, bool) else Not(child)
    if isinstance(node, And | Or):
        is_and = isinstance(node, And)
        kept: list[Expr] = []
        for c in node.children:
            s = specialize(c, evtype, memo)
            if s is (not is_and):  # False in an and, True in an or: decides the node
                return s
            if not isinstance(s, bool):
                kept.append(s)
        if not kept:
            return is_and
        return kept[0] if len(kept) == 1 else (And(tuple(kept)) if is_and else Or(tuple(kept)))
    return node


def _subtrees(node: Expr, out: Counter[int], seen_in_rule: set[int]) -> None:
    """Count, by identity, in how many rules each non-trivial subtree occurs."""
    if id(node) in seen_in_rule:
        return
    seen_in_rule.add(id(node))
    if isinstance(node, And | Or | Not):
        out[id(node)] += 1
        for c in node.children if isinstance(node, And | Or) else (node.child,):
            _subtrees(c, out, seen_in_rule)
    elif isinstance(node, Check) and (node.op not in ("=", "exists") or isinstance(node.value, FieldRef)):
        out[id(node)] += 1


def compile_bucket(rules: list[tuple[int, Expr | bool]], *, first: bool) -> Callable[[Event], Any]:
    """One function for the rules of one event type: event → list of rule ids that match (or None).

    Sub-conditions that occur in two or more of these rules are cached in locals, so a macro
    shared by many rules costs one evaluation per event.
    """
    gen = _Codegen()
    live = [(i, c) for i, c in rules if c is not False]
    counts: Counter[int] = Counter()
    for _, cond in live:
        if not isinstance(cond, bool):
            _subtrees(cond, counts, set())
    shared = [n for n, k in counts.items() if k > 1]
    gen.shared = {n: f"_s{j}" for j, n in enumerate(shared)}
    lines = [f"    {name} = None" for name in gen.shared.values()]
    lines.append("    g = e.get")
    lines.append("    r = None")
    for idx, cond in live:
        test = gen.expr(cond)
        if first:
            lines.append(f"    if {test}:\n        return [{idx}]")
        else:
            lines.append(f"    if {test}:\n        if r is None:\n            r = [{idx}]\n"
                         f"        else:\n            r.append({idx})")  # fmt: skip
    lines.append("    return r")
    params = "".join(f", {k}={k}" for k in gen.consts)
    src = f"def _bucket(e{params}):\n" + "\n".join(lines) + "\n"
    return _build(src, gen.consts, "_bucket")


def referenced_fields(node: Expr) -> set[str]:
    """Falco field names the condition reads (as written, plus what derived fields read)."""
    out: set[str] = set()

    def add(ref: FieldRef) -> None:
        out.add(ref.key if ref.arg is None else fields.field_key(ref.name, ref.arg))
        if ref.name in ("fd.ip", "fd.port", "fd.net"):
            out.update(("fd.type", "fd.cip", "fd.sip", "fd.cport", "fd.sport"))
        elif ref.name in ("fd.cnet", "fd.snet", "fd.lnet", "fd.rnet"):
            out.add(f"fd.{ref.name[3]}ip")

    def walk(n: Expr) -> None:
        if isinstance(n, Check):
            add(n.field)
            if isinstance(n.value, FieldRef):
                add(n.value)
        elif isinstance(n, Not):
            walk(n.child)
        elif isinstance(n, And | Or):
            for c in n.children:
                walk(c)

    walk(node)
    return out
