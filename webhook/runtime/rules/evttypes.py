"""Which event types a condition can match (Falco's ``evt.type`` index) and folding of
``evt.type`` checks for one known type (used by the engine to build its per-type functions)."""

from __future__ import annotations

from dataclasses import dataclass

from webhook.runtime.rules import checks
from webhook.runtime.rules.parser import And, Check, Expr, FieldRef, Not, Or

__all__ = ["ALL", "UNKNOWN", "TypeSet", "event_types", "named_types", "requires_success", "specialize"]


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


def specialize(node: Expr, evtype: str | _Unknown | None, memo: dict[int, Expr | bool]) -> Expr | bool:
    """Fold ``evt.type`` checks for events of one type (None: no evt.type; UNKNOWN: unnamed type).

    ``memo`` (by node identity) makes a macro shared by several rules fold to one shared object,
    which ``compile_bucket`` then evaluates once.
    """
    key = id(node)
    if key not in memo:
        memo[key] = _specialize(node, evtype, memo)
    return memo[key]


def _specialize(node: Expr, evtype: str | _Unknown | None, memo: dict[int, Expr | bool]) -> Expr | bool:
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
        if node.op == "exists":
            return True
        return checks.predicate(checks.prepare(node))(evtype)
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


def named_types(node: Expr) -> set[str]:
    """Every event type an ``evt.type`` check of the condition names. The engine builds one
    function per named type: ``specialize(..., UNKNOWN)`` is only valid for the other types."""
    if isinstance(node, Check):
        if _is_evttype(node) and isinstance(node.value, str | tuple):
            return {node.value} if isinstance(node.value, str) else set(node.value)
        return set()
    if isinstance(node, Not):
        return named_types(node.child)
    if isinstance(node, And | Or):
        return set().union(*(named_types(c) for c in node.children))
    return set()


# Event types whose fd.num is the syscall's result (-1 on failure), so ``fd.num >= 0`` means success.
_FD_RESULT_TYPES = frozenset(
    ("open", "openat", "openat2", "creat", "socket", "accept", "accept4", "memfd_create", "dup", "dup2", "dup3")
)


def requires_success(node: Expr | bool, evtype: str) -> bool:
    """Whether the (specialized) condition can only be true for a successful syscall of ``evtype``
    (it requires ``evt.rawres >= 0``, ``evt.res = SUCCESS``, ``evt.failed = false``, or for a
    syscall returning an fd ``fd.num >= 0``). A sound under-estimate: when unsure, False; the
    eBPF source then drops failed calls of the type in the kernel only when every rule says so."""
    if node is False:
        return True
    if node is True:
        return False
    if isinstance(node, And):
        return any(requires_success(c, evtype) for c in node.children)
    if isinstance(node, Or):
        return all(requires_success(c, evtype) for c in node.children)
    if not isinstance(node, Check) or node.field.transformers or node.field.arg is not None:
        return False
    if isinstance(node.value, FieldRef | tuple):
        return False
    try:
        value = checks.prepare(node).value
    except checks.CompileError:
        return False
    name, op = node.field.name, node.op
    numeric = isinstance(value, int) and not isinstance(value, bool)
    if name == "evt.rawres" or (name == "fd.num" and evtype in _FD_RESULT_TYPES):
        return numeric and ((op == ">=" and value >= 0) or (op == ">" and value >= -1))
    if name == "evt.res":
        return op == "=" and value == "SUCCESS"
    if name == "evt.failed":
        return (op == "=" and value is False) or (op == "!=" and value is True)
    return False
