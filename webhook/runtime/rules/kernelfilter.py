"""Which successful opens some loaded rule could match, as a test the kernel can run (the eBPF
source drops the others before they are printed: bpftrace's per-event output is the monitor's
main cost, see ``bench/bench_monitor.py``).

A rule condition specialized to one open type is over-approximated by a ``Gate``: a set of
alternatives, each an access-mode set (``flags & O_ACCMODE``) and optionally a constraint on the
last path component (``fd.name``'s basename: one of some names, or ending with some suffix).
Only facts that hold for every way a process can spell the path are used: the last component of
``fd.name`` (normalized, absolute) is the last component of the path as passed unless that is
``.``, ``..`` or empty, whatever ``..``, ``//``, ``.`` or a relative path comes before it; the
kernel side passes those spellings, long paths and directories unconditionally. Anything else
(``startswith``, ``contains``, ``glob``, negations, other fields) is unconstrained: when in
doubt, the event passes. Used by ``engine.Engine`` (``open_filters``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from webhook.runtime.rules import checks
from webhook.runtime.rules.parser import And, Check, Expr, FieldRef, Or

__all__ = ["ALL_ACCESS", "FD_TABLE_TYPES", "OPEN_TYPES", "Alt", "Gate", "gate", "union"]

OPEN_TYPES = frozenset(("open", "openat", "openat2", "creat"))
# Events whose fd fields come from the process table's entry for an fd number a dropped open may
# have reused (events.EventBuilder._fd); directory fds (fchdir, relative opens) always pass.
FD_TABLE_TYPES = frozenset(("dup", "dup2", "dup3", "fchmod", "finit_module"))
ALL_ACCESS = frozenset((0, 1, 2, 3))  # flags & O_ACCMODE
_READ = frozenset((0, 2))  # evt.is_open_read (as events.py computes it)
_WRITE = frozenset((1, 2))  # evt.is_open_write
_NAME_FIELDS = frozenset(("fd.name", "fd.nameraw", "fd.filename"))
# Names the kernel side compares as bpftrace string literals: anything else is left unconstrained.
_SAFE = re.compile(r"[A-Za-z0-9._+@:,~=-]{1,60}")
_MAX_ALTS = 64


@dataclass(frozen=True, slots=True)
class Alt:
    """Access modes, and (unless ``any_name``) basename in ``names`` or ending in a ``suffixes``."""

    access: frozenset[int]
    names: frozenset[str] = frozenset()
    suffixes: frozenset[str] = frozenset()
    any_name: bool = True


Gate = tuple[Alt, ...]  # the event may match only if some alternative holds; () never
TOP: Gate = (Alt(ALL_ACCESS),)


def gate(node: Expr | bool) -> Gate:
    """An over-approximation of ``node`` (already specialized to one open type) as a ``Gate``."""
    if node is True:
        return TOP
    if node is False:
        return ()
    if isinstance(node, Or):
        out: list[Alt] = []
        for c in node.children:
            out.extend(gate(c))
        return _simplify(out)
    if isinstance(node, And):
        result: Gate = TOP
        for c in node.children:
            g = gate(c)
            product = [m for a in result for b in g if (m := _meet(a, b)) is not None]
            # past _MAX_ALTS, one side alone (each conjunct is itself an over-approximation)
            result = min(result, g, key=len) if len(product) > _MAX_ALTS else _simplify(product)
        return result
    if isinstance(node, Check):
        return _leaf(node)
    return TOP  # Not, macros: unconstrained


def _leaf(node: Check) -> Gate:
    f = node.field
    if f.transformers or f.arg is not None or isinstance(node.value, FieldRef) or node.value is None:
        return TOP
    try:
        value = checks.prepare(node).value
    except checks.CompileError:
        return TOP
    name, op = f.name, node.op
    if name in ("evt.is_open_read", "evt.is_open_write") and isinstance(value, bool) and op in ("=", "!="):
        modes = _READ if name == "evt.is_open_read" else _WRITE
        want = value if op == "=" else not value
        return (Alt(modes if want else ALL_ACCESS - modes),)
    if name not in _NAME_FIELDS:
        return TOP
    if op in ("=", "in") and isinstance(value, str | tuple):
        names: set[str] = set()
        for v in (value,) if isinstance(value, str) else value:
            base = v.rsplit("/", 1)[-1] if isinstance(v, str) else ""
            if not _SAFE.fullmatch(base) or base in (".", ".."):
                return TOP  # "/", "dir/", odd bytes: not worth deciding in the kernel
            names.add(base)
        return (Alt(ALL_ACCESS, frozenset(names), any_name=False),)
    if op == "endswith" and isinstance(value, str):
        if "/" in value:
            if name == "fd.filename":
                return TOP
            base = value.rsplit("/", 1)[-1]
            if not _SAFE.fullmatch(base) or base in (".", ".."):
                return TOP
            return (Alt(ALL_ACCESS, frozenset((base,)), any_name=False),)
        if not _SAFE.fullmatch(value):
            return TOP
        return (Alt(ALL_ACCESS, suffixes=frozenset((value,)), any_name=False),)
    return TOP


def _meet(a: Alt, b: Alt) -> Alt | None:
    access = a.access & b.access
    if not access:
        return None
    if a.any_name:
        return Alt(access, b.names, b.suffixes, b.any_name)
    if b.any_name:
        return Alt(access, a.names, a.suffixes, False)
    # both constrain the name: either alone is necessary; keep the narrower
    keep = a if len(a.names) + len(a.suffixes) <= len(b.names) + len(b.suffixes) else b
    return Alt(access, keep.names, keep.suffixes, False)


def _simplify(alts: list[Alt]) -> Gate:
    out: list[Alt] = []
    for a in alts:
        if a not in out:
            out.append(a)
    if any(a.any_name and a.access == ALL_ACCESS for a in out):
        return TOP
    return tuple(out)


def union(gates: list[Gate]) -> Gate:
    """Any of the rules may match: the alternatives of all of them."""
    return _simplify([a for g in gates for a in g])
