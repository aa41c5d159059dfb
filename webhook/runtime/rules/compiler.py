"""Resolved condition trees → fast Python (called by ``resolve`` and the engine).

Each leaf check becomes a Python expression over the event mapping ``e`` (``g = e.get``):
lists become frozensets or prefix tables, globs and regexes are compiled once, common shapes
are inlined and the rest call a predicate from ``checks``. ``compile_bucket`` emits one function
for all the rules that can match one event type: sub-conditions shared by several rules are
evaluated at most once per event, rules that start with the same conjunct (a macro such as
``open_write``) are nested under one test of it, and ``or``-ed checks of one field merge into
one set lookup or one ``startswith((...))`` call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from webhook.runtime.rules import checks, fields
from webhook.runtime.rules.checks import Prepared
from webhook.runtime.rules.fields import FieldType
from webhook.runtime.rules.parser import And, Check, Expr, FieldRef, Not, Or

__all__ = ["And", "Or", "compile_bucket", "compile_condition", "field_constants", "referenced_fields"]

Event = Mapping[str, Any]


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
        code = self._expr(node)
        if cache is None:
            return code
        return f"({cache} if {cache} is not None else ({cache} := {code}))"

    def _expr(self, node: Expr) -> str:
        if isinstance(node, And):
            return "(" + " and ".join(self.expr(c) for c in node.children) + ")"
        if isinstance(node, Or):
            return "(" + " or ".join(self.or_parts(node)) + ")"
        if isinstance(node, Not):
            return f"(not {self.expr(node.child)})"
        if isinstance(node, Check):
            return self.leaf(node)
        raise checks.CompileError(f"macro '{node.name}' is not defined", node.pos)

    def or_parts(self, node: Or) -> list[str]:
        """The alternatives of an ``or``, with plain checks of one field and one operator merged:
        ``fd.name startswith /a or fd.name startswith /b`` → one ``startswith((a, b))`` call,
        ``x = a or x in (b, c)`` → one set lookup (no side effects, so the order is free)."""
        groups: dict[tuple[str, str], list[Check]] = {}
        order: list[Expr | tuple[str, str]] = []
        for child in node.children:
            key = self._mergeable(child)
            if key is None:
                order.append(child)
                continue
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(child)  # type: ignore[arg-type]
        parts = []
        for item in order:
            if not isinstance(item, tuple):
                parts.append(self.expr(item))
                continue
            members = groups[item]
            if len(members) == 1:
                parts.append(self.expr(members[0]))
                continue
            field_key, kind = item
            values: list[Any] = []
            for m in members:
                v = checks.prepare(m).value
                values.extend(v if isinstance(v, tuple) else (v,))
            if kind == "eq":
                parts.append(f"(g({field_key!r}) in {self.const(frozenset(values), ('set', frozenset(values)))})")
            else:
                parts.append(f"g({field_key!r}, '').{kind}({self.const(tuple(values))})")
        return parts

    def _mergeable(self, node: Expr) -> tuple[str, str] | None:
        if not isinstance(node, Check) or id(node) in self.shared or node.field.transformers:
            return None
        if isinstance(node.value, FieldRef) or (node.field.arg is None and fields.derived_values(node.field.name)):
            return None
        info = fields.lookup(node.field.name, node.field.arg)
        if not isinstance(info, fields.FieldInfo):
            return None
        key = fields.field_key(node.field.name, node.field.arg)
        if info.type in (FieldType.STR, FieldType.NUM) and node.op in ("=", "in", "intersects"):
            return key, "eq"
        if info.type is FieldType.STR and node.op in ("startswith", "endswith") and node.value:
            return key, node.op
        return None

    def value_code(self, ref: FieldRef) -> tuple[str, bool]:
        """Code reading the field, and whether it yields a tuple of values (multi-valued)."""
        multi = fields.derived_values(ref.name) if ref.arg is None else None
        if multi is not None:
            code = f"{self.const(multi, ('multi', ref.name))}(e)"
            if ref.transformers:
                tr = self.const(checks.transform(ref.transformers), ("tr", ref.transformers))
                code = f"tuple(map({tr}, {code} or ()))"
            return code, True
        code = f"g({fields.field_key(ref.name, ref.arg)!r})"
        if ref.transformers:
            code = f"{self.const(checks.transform(ref.transformers), ('tr', ref.transformers))}({code})"
        return code, False

    def leaf(self, check: Check) -> str:
        p = checks.prepare(check)
        ref, op = check.field, check.op
        read, multi = self.value_code(ref)
        if op == "exists":
            return f"({read} is not None)" if not multi else f"bool({read})"
        if isinstance(p.value, FieldRef):
            rhs, rmulti = self.value_code(p.value)
            pair = self.const(checks.PAIR_OPS[op], ("pair", op))
            if multi or rmulti:
                rhs_vals = rhs if rmulti else f"(({rhs}),)"
                lhs_vals = read if multi else f"(({read}),)"
                return (
                    f"any({pair}(_a, _b) for _a in ({lhs_vals} or ()) if _a is not None "
                    f"for _b in ({rhs_vals} or ()) if _b is not None)"
                )
            return f"((_v := {read}) is not None and (_w := {rhs}) is not None and {pair}(_v, _w))"
        if multi:
            if op == "!=" and ref.name in checks.NE_ALL:
                eq_pred = self.const(checks.predicate(Prepared(Check(ref, "=", check.value), p.ftype, p.value, None)))
                return f"((_v := {read}) is not None and not any(map({eq_pred}, _v)))"
            pred = self.const(checks.predicate(p))
            return f"((_v := {read}) is not None and any(map({pred}, _v)))"
        return self.fast_leaf(p, read)

    def fast_leaf(self, p: Prepared, read: str) -> str:
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
        if t is FieldType.STR and op in ("contains", "startswith", "endswith") and c and read.endswith("')"):
            # a missing field reads as "", which neither contains nor starts/ends with a non-empty c
            text = f"{read[:-1]}, '')"
            return f"({self.const(c)} in {text})" if op == "contains" else f"{text}.{op}({self.const(c)})"
        if t is FieldType.STR and op == "contains":
            return f"((_v := {read}) is not None and {self.const(c)} in _v)"
        if t is FieldType.STR and op in ("startswith", "endswith"):
            return f"((_v := {read}) is not None and _v.{op}({self.const(c)}))"
        if t is FieldType.STR and op == "icontains":
            return f"((_v := {read}) is not None and {self.const(c)} in _v.lower())"
        if t is FieldType.STR and op in ("glob", "iglob", "regex"):
            return f"((_v := {read}) is not None and {self.const(checks.matcher(op, c), (op, c))}(_v) is not None)"
        if t is FieldType.STR and op == "pmatch":
            return f"((_v := {read}) is not None and {self.const(checks.PrefixSet(c), ('pm', c))}(_v))"
        return f"((_v := {read}) is not None and {self.const(checks.predicate(p))}(_v))"


def _build(body: str, consts: dict[str, Any], name: str) -> Callable[..., Any]:
    """Define ``name(e)`` from its body inside a factory whose parameters are the constants, so
    the generated code reads them as closure cells (no per-call copying, unlike defaults)."""
    params = ", ".join(consts)
    source = f"def _factory({params}):\n    def {name}(e):\n{body}\n    return {name}\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<rules:{name}>", "exec"), {}, namespace)
    fn: Callable[..., Any] = namespace["_factory"](**consts)
    return fn


def compile_condition(expr: Expr) -> Callable[[Event], bool]:
    """One condition as a function event → bool (no event-type folding)."""
    gen = _Codegen()
    body = gen.expr(expr)
    return _build(f"        g = e.get\n        return bool({body})", gen.consts, "_cond")


_CHEAP_OPS = frozenset(
    ("=", "!=", "<", "<=", ">", ">=", "exists", "in", "intersects", "contains", "startswith", "endswith")
)


def _costly(check: Check) -> bool:
    """Worth caching when shared: anything beyond one dict lookup and one comparison."""
    ref = check.field
    return (
        check.op not in _CHEAP_OPS
        or bool(ref.transformers)
        or isinstance(check.value, FieldRef)
        or (ref.arg is None and fields.derived_values(ref.name) is not None)
        or not isinstance(fields.lookup(ref.name, ref.arg), fields.FieldInfo)
        or fields.lookup(ref.name, ref.arg).type not in (FieldType.STR, FieldType.NUM, FieldType.BOOL)  # type: ignore[union-attr]
    )


def _subtrees(node: Expr, out: Counter[int], seen_in_rule: set[int]) -> None:
    """Count, by identity, in how many rules each subtree worth caching occurs."""
    if id(node) in seen_in_rule:
        return
    seen_in_rule.add(id(node))
    if isinstance(node, And | Or | Not):
        out[id(node)] += 1
        for c in node.children if isinstance(node, And | Or) else (node.child,):
            _subtrees(c, out, seen_in_rule)
    elif isinstance(node, Check) and _costly(node):
        out[id(node)] += 1


def _groups(live: list[tuple[int, Expr | bool]]) -> list[tuple[Expr | None, list[tuple[int, Expr | bool]]]]:
    """Rules whose conditions start with the same (shared) conjunct, e.g. the ``open_read``
    macro, go under one ``if`` on it: when it is false the whole group costs one test."""
    by_first: dict[int, list[tuple[int, Expr | bool]]] = {}
    heads: dict[int, Expr] = {}
    order: list[int | tuple[int, Expr | bool]] = []
    for idx, cond in live:
        if isinstance(cond, And):
            head = cond.children[0]
            if id(head) not in by_first:
                by_first[id(head)] = []
                heads[id(head)] = head
                order.append(id(head))
            by_first[id(head)].append((idx, cond))
        else:
            order.append((idx, cond))
    out: list[tuple[Expr | None, list[tuple[int, Expr | bool]]]] = []
    for item in order:
        if isinstance(item, tuple):
            out.append((None, [item]))
            continue
        members = by_first[item]
        if len(members) == 1:
            out.append((None, members))
            continue
        rests: list[tuple[int, Expr | bool]] = []
        for idx, cond in members:
            tail = cond.children[1:]  # type: ignore[union-attr]
            rests.append((idx, tail[0] if len(tail) == 1 else And(tail)))
        out.append((heads[item], rests))
    return out


_MAX_NESTING = 24  # Python's parser allows 100 indentation levels; stay far below


def _emit_groups(gen: _Codegen, members: list[tuple[int, Expr | bool]], indent: str, lines: list[str]) -> None:
    """Emit rule tests, nesting rules that share leading conjuncts under one ``if`` per level."""
    groups = _groups(members) if len(indent) < 4 * _MAX_NESTING else [(None, [m]) for m in members]
    for guard, group in groups:
        if guard is not None:
            lines.append(f"{indent}if {gen.expr(guard)}:")
            _emit_groups(gen, group, indent + "    ", lines)
            continue
        for idx, cond in group:
            lines.append(f"{indent}if {gen.expr(cond)}:")
            lines.append(f"{indent}    if r is None:\n{indent}        r = [{idx}]")
            lines.append(f"{indent}    else:\n{indent}        r.append({idx})")


def compile_bucket(rules: list[tuple[int, Expr | bool]], *, first: bool) -> Callable[[Event], Any]:
    """One function for the rules of one event type: event → list of rule ids that match (or None).

    Sub-conditions that occur in two or more of these rules are cached in locals, so a macro
    shared by many rules costs one evaluation per event.
    """
    gen = _Codegen()
    live: list[tuple[int, Expr | bool]] = [(i, c) for i, c in rules if c is not False]
    counts: Counter[int] = Counter()
    for _, cond in live:
        if not isinstance(cond, bool):
            _subtrees(cond, counts, set())
    shared = [n for n, k in counts.items() if k > 1]
    gen.shared = {n: f"_s{j}" for j, n in enumerate(shared)}
    lines = [f"    {name} = None" for name in gen.shared.values()]
    lines.append("    g = e.get")
    lines.append("    r = None")
    if first:
        for idx, cond in live:
            lines.append(f"    if {gen.expr(cond)}:\n        return [{idx}]")
    else:
        _emit_groups(gen, live, "    ", lines)
        lines.append("    if r is not None and len(r) > 1:\n        r.sort()")
    lines.append("    return r")
    body = "\n".join("    " + line for line in "\n".join(lines).split("\n"))
    return _build(body, gen.consts, "_bucket")


def referenced_fields(node: Expr) -> set[str]:
    """Falco field names the condition reads (as written, plus what derived fields read)."""
    out: set[str] = set()

    def add(ref: FieldRef) -> None:
        out.add(ref.key if ref.arg is None else fields.field_key(ref.name, ref.arg))
        out.update(fields.DERIVED_FROM.get(ref.name, ()))

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


def field_constants(node: Expr, name: str) -> set[str]:
    """The string constants the condition compares field ``name`` with (``=``, ``in``, ...)."""
    out: set[str] = set()

    def walk(n: Expr) -> None:
        if isinstance(n, Check):
            if n.field.name == name and n.field.arg is None and not isinstance(n.value, FieldRef):
                values = n.value if isinstance(n.value, tuple) else (n.value,)
                out.update(v for v in values if isinstance(v, str))
        elif isinstance(n, Not):
            walk(n.child)
        elif isinstance(n, And | Or):
            for c in n.children:
                walk(c)

    walk(node)
    return out
