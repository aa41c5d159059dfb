"""Which parts of ``input`` a compiled bundle can read, found in its plan (OPA IR) at compile
time, so each review copies only those into rego-cpp. Used by ``policy.rego``.

Why: copying the input is the largest cost of an evaluation after the policies themselves,
and the documented input carries every pod spec twice (``request.object`` and ``pods``) plus
``oldObject``; a library that reads pods through ``input.pods`` never looks at the copy under
``request.object.spec``. Policies see exactly the same values at every path they can reach.

The analysis is conservative: it follows ``input`` only through constant-key ``DotStmt``
chains and plain assignments. Any other use of an input value (a scan, a built-in call, a
comparison, a dynamic key, a return) keeps that whole subtree, and any such use of the
document root (``walk(input)``, ``with input...``, an unknown statement) disables pruning.
A path that is only tested for existence keeps its whole value too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from webhook.policy import plan

Path = tuple[str, ...]
_MAX_ROUNDS = 50


@dataclass(slots=True)
class _Node:
    whole: bool = False
    children: dict[str, _Node] = field(default_factory=dict)


class _WholeInput(Exception):
    """Some statement may read the entire input document."""


@dataclass(frozen=True, slots=True)
class InputReads:
    """The readable part of ``input`` as a tree of keys; ``prune`` keeps exactly that part."""

    _root: _Node

    def prune(self, document: Any) -> Any:
        """``document`` without the subtrees no policy can read (shares the kept values)."""
        if not self._root.children and type(document) is dict:
            return {}  # nothing reads input (a use of the whole root disables pruning)
        return _prune(document, self._root)

    def paths(self) -> list[str]:
        """Kept paths, dotted, ``.*`` for a whole subtree (for tests and diagnostics)."""
        return sorted(_describe(self._root, ())) if self._root.children else []


def analyse(program: plan.Program) -> InputReads | None:
    """What the plans and functions of ``program`` can read from ``input``; None when they
    may read all of it."""
    root = _Node()
    try:
        for body in program.bodies:
            if body.input_local is not None:
                _Body(program, root, body.input_local).run(body.blocks)
    except _WholeInput:
        return None
    return InputReads(root)


class _Body:
    """One plan or function: which locals may hold which input paths (a may-alias union,
    grown to a fixpoint so statement order does not matter)."""

    def __init__(self, program: plan.Program, root: _Node, input_local: int) -> None:
        self.program = program
        self.root = root
        self.held: dict[int, set[Path]] = {input_local: {()}}
        self.changed = False

    def run(self, blocks: plan.Blocks) -> None:
        for _ in range(_MAX_ROUNDS):
            self.changed = False
            self._blocks(blocks)
            if not self.changed:
                return
        raise _WholeInput  # no fixpoint: give up pruning rather than guess

    def _blocks(self, blocks: plan.Blocks) -> None:
        for block in blocks:
            for stmt in block:
                self._stmt(stmt)

    def _stmt(self, stmt: plan.Statement) -> None:
        if isinstance(stmt, plan.Dot):
            self._dot(stmt)
        elif isinstance(stmt, plan.Assign):
            source = stmt.source.local
            if source in self.held:
                self._hold(stmt.target, self.held[source])
        elif isinstance(stmt, plan.Call):
            for i, arg in enumerate(stmt.args):
                # A rule or function of the bundle gets input as argument 0; its own body is
                # analysed with that parameter as the input, so passing the root is no read.
                passed = self.held.get(arg.local) if arg.local is not None else None
                if i == 0 and stmt.func in self.program.functions and passed == {()}:
                    continue
                self._read(arg.local)
        else:
            for local in stmt.reads:
                self._read(local)
            self._blocks(stmt.blocks)

    def _dot(self, stmt: plan.Dot) -> None:
        source = stmt.source.local
        self._read(stmt.key.local)  # a key computed from input reads that value whole
        if source not in self.held:
            return
        name = self.program.strings[stmt.key.index] if stmt.key.kind == plan.STRING else None
        if name is None or '"' in name or "\\" in name:
            self._whole(source)  # dynamic or ambiguous key: any child may be read
            return
        paths = {(*p, name) for p in self.held[source]}
        for path in paths:
            self._node(path)
        self._hold(stmt.target, paths)

    def _read(self, local: int | None) -> None:
        if local is not None and local in self.held:
            self._whole(local)

    def _whole(self, local: int) -> None:
        for path in self.held[local]:
            if not path:
                raise _WholeInput
            node = self._node(path)
            if not node.whole:
                node.whole = True
                self.changed = True

    def _hold(self, local: int, paths: set[Path]) -> None:
        held = self.held.setdefault(local, set())
        if not paths <= held:
            held |= paths
            self.changed = True

    def _node(self, path: Path) -> _Node:
        node = self.root
        for name in path:
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _Node()
                self.changed = True
            node = child
        return node


def _prune(value: Any, node: _Node) -> Any:
    if node.whole or not node.children or type(value) is not dict:
        return value
    out = {key: _prune(value[key], child) for key, child in node.children.items() if key in value}
    for key, child in node.children.items():
        # rego-cpp compares keys by their quoted form, so `input.a` also finds a key written
        # `"a"` (with the quotes); keep those too so the engine sees what it would have seen.
        quoted = f'"{key}"'
        if quoted in value:
            out[quoted] = _prune(value[quoted], child)
    return out


def _describe(node: _Node, path: Path) -> Iterator[str]:
    if node.whole or not node.children:
        yield ".".join(path) + ".*" if path else "*"
        return
    for name, child in node.children.items():
        yield from _describe(child, (*path, name))
