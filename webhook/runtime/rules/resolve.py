"""Collected items → self-contained rule conditions (between ``loader`` and ``compiler``).

Does what Falco's rule compiler does before building filters: expands lists inside lists,
parses every macro and rule, turns exceptions into ``and not (...)``, substitutes list names
in list operands and macro names by their (shared) parsed trees, validates every field,
operator and value, and derives each rule's event types. Errors and warnings carry
file:line and the offending text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook import errors
from webhook.runtime.rules import checks, compiler, evttypes, output, parser
from webhook.runtime.rules.model import Collection, Diagnostic, ExceptionDef, Loc, RuleDef, Text
from webhook.runtime.rules.parser import And, Check, Expr, FieldRef, ListRef, MacroRef, Not, Or

__all__ = ["SOURCES", "Rule", "RuleSet", "RulesError", "resolve"]

SOURCES = frozenset(("syscall",))


class RulesError(errors.RuleLoadError):
    """Rules files cannot be loaded; ``errors`` lists every problem (file:line: message)."""

    def __init__(self, errs: list[Diagnostic], warnings: list[Diagnostic]) -> None:
        self.errors = errs
        self.warnings = warnings
        head = f"{len(errs)} error(s) in rules files"
        super().__init__(head + "\n" + "\n".join(e.detail() for e in errs))


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule ready to compile: its condition has no macros, lists or exceptions left."""

    name: str
    condition: Expr
    event_types: evttypes.TypeSet
    output: output.OutputFormat
    priority: str
    tags: tuple[str, ...]
    source: str
    enabled: bool
    desc: str
    loc: Loc
    fields: frozenset[str]


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...]
    warnings: tuple[Diagnostic, ...]


class _Problem(Exception):
    def __init__(self, message: str, text: Text, pos: int, *, unknown_field: bool = False) -> None:
        super().__init__(message)
        self.message, self.text, self.pos, self.unknown_field = message, text, pos, unknown_field


def _excerpt(text: str, pos: int) -> str:
    start = max(0, pos - 50)
    line = " ".join(text[start : pos + 50].split("\n"))
    return f"{line}\n{' ' * (pos - start)}^"


class _Resolver:
    def __init__(self, col: Collection) -> None:
        self.col = col
        self.errors: list[Diagnostic] = list(col.errors)
        self.warnings: list[Diagnostic] = list(col.warnings)
        self.lists: dict[str, tuple[str, ...]] = {}
        self.macro_ast: dict[str, Expr | None] = {}
        self.macro_resolved: dict[str, Expr] = {}
        self.origin: dict[int, tuple[Text, int]] = {}  # id(check) → (text it was parsed from, pos)
        self.resolving: list[str] = []

    # -- lists and parsing ---------------------------------------------------------------
    def expand_lists(self) -> None:
        """Items naming an earlier list are replaced by its (already expanded) items."""
        for name, ld in self.col.lists.items():
            out: list[str] = []
            for item in ld.items:
                if item in self.lists:
                    self.col.lists[item].used = True
                    out.extend(self.lists[item])
                else:
                    out.append(_list_item(item))
            self.lists[name] = tuple(out)

    def parse(self, text: Text, what: str) -> Expr:
        try:
            tree = parser.parse(text.text)
        except parser.ConditionSyntaxError as exc:
            raise _Problem(f"{what}: {exc.message}", text, exc.pos) from exc
        self.register(tree, text)
        return tree

    def register(self, node: Expr, text: Text) -> None:
        if isinstance(node, Check | MacroRef):
            self.origin[id(node)] = (text, node.pos)
        elif isinstance(node, Not):
            self.register(node.child, text)
        elif isinstance(node, And | Or):
            for c in node.children:
                self.register(c, text)

    def parse_macros(self) -> None:
        for name, md in self.col.macros.items():
            try:
                self.macro_ast[name] = self.parse(md.condition, f"macro '{name}'")
            except _Problem as p:
                self.macro_ast[name] = None
                self.report(p)

    # -- resolution ----------------------------------------------------------------------
    def resolve(self, node: Expr) -> Expr:
        if isinstance(node, MacroRef):
            return self.macro(node)
        if isinstance(node, Check):
            return self.check_lists(node)
        if isinstance(node, Not):
            child = self.resolve(node.child)
            return node if child is node.child else Not(child)
        if isinstance(node, And | Or):
            kids = tuple(self.resolve(c) for c in node.children)
            if all(a is b for a, b in zip(kids, node.children, strict=True)):
                return node
            return And(kids) if isinstance(node, And) else Or(kids)
        return node

    def macro(self, ref: MacroRef) -> Expr:
        text, pos = self.origin.get(id(ref), (Text(ref.name, [(0, Loc("?", 0))]), ref.pos))
        md = self.col.macros.get(ref.name)
        if md is None:
            raise _Problem(f"undefined macro '{ref.name}' used in filter", text, pos)
        md.used = True
        if ref.name in self.macro_resolved:
            return self.macro_resolved[ref.name]
        if ref.name in self.resolving:
            chain = " -> ".join([*self.resolving, ref.name])
            raise _Problem(f"macro '{ref.name}' refers to itself ({chain})", text, pos)
        tree = self.macro_ast.get(ref.name)
        if tree is None:
            raise _Problem(f"macro '{ref.name}' has an invalid condition", text, pos)
        self.resolving.append(ref.name)
        try:
            resolved = self.resolve(tree)
        finally:
            self.resolving.pop()
        self.macro_resolved[ref.name] = resolved
        return resolved

    def check_lists(self, check: Check) -> Check:
        value = check.value
        if isinstance(value, ListRef):
            if value.name not in self.lists:
                text, pos = self.origin[id(check)]
                raise _Problem(f"undefined list '{value.name}' used in filter", text, pos)
            self.col.lists[value.name].used = True
            new: Any = self.lists[value.name]
        elif isinstance(value, tuple) and any(v in self.lists for v in value):
            items: list[str] = []
            for v in value:
                if v in self.lists:
                    self.col.lists[v].used = True
                    items.extend(self.lists[v])
                else:
                    items.append(v)
            new = tuple(items)
        else:
            return check
        out = Check(check.field, check.op, new, check.pos)
        self.origin[id(out)] = self.origin[id(check)]
        return out

    # -- exceptions ----------------------------------------------------------------------
    def exception(self, ex: ExceptionDef, rule: str) -> Expr | None:
        text = Text(f"exception {ex.name}", [(0, ex.loc)])
        if not ex.values:
            return None

        def fail(msg: str) -> _Problem:
            return _Problem(f"rule '{rule}': exception '{ex.name}': {msg}", text, 0)

        def field(name: Any) -> FieldRef:
            try:
                return parser.parse_field(str(name))
            except parser.ConditionSyntaxError as exc:
                raise fail(exc.message) from exc

        def check(ref: FieldRef, comp: str, value: Any) -> Check:
            if comp not in parser.OPERATORS or comp == "exists":
                raise fail(f"invalid comparison operator '{comp}'")
            if comp in parser.LIST_OPS:
                if isinstance(value, list):
                    v: Any = tuple(_scalar(x) for x in value)
                else:
                    v = ListRef(str(value)) if str(value) in self.lists else (_scalar(value),)
            elif isinstance(value, list):
                raise fail(f"operator '{comp}' takes one value, not a list")
            else:
                v = _scalar(value)
            c = Check(ref, comp, v, 0)
            self.origin[id(c)] = (text, 0)
            return c

        if isinstance(ex.fields, list):
            refs = [field(f) for f in ex.fields]
            comps = ex.comps if ex.comps is not None else ["="] * len(refs)
            if not isinstance(comps, list) or len(comps) != len(refs):
                raise fail("'comps' must be a list as long as 'fields'")
            alts: list[Expr] = []
            for row in ex.values:
                if not isinstance(row, list) or len(row) != len(refs):
                    raise fail(f"each value must be a list of {len(refs)} item(s), got {row!r}")
                parts = [check(r, str(c), v) for r, c, v in zip(refs, comps, row, strict=True)]
                alts.append(parts[0] if len(parts) == 1 else And(tuple(parts)))
            return alts[0] if len(alts) == 1 else Or(tuple(alts))
        if not isinstance(ex.fields, str):
            raise fail("'fields' must be a field name or a list of field names")
        comp = str(ex.comps) if ex.comps is not None else "in"
        ref = field(ex.fields)
        if comp in parser.LIST_OPS:
            return check(ref, comp, list(ex.values))
        ors: list[Expr] = [check(ref, comp, v) for v in ex.values]
        return ors[0] if len(ors) == 1 else Or(tuple(ors))

    # -- rules ---------------------------------------------------------------------------
    def rule(self, rd: RuleDef) -> Rule | None:
        if rd.source not in SOURCES:
            self.warnings.append(
                Diagnostic(
                    rd.loc,
                    f"rule '{rd.name}' skipped: unknown source '{rd.source}' "
                    f"(this engine evaluates: {', '.join(sorted(SOURCES))})",
                )
            )
            return None
        tree = self.parse(rd.condition, f"rule '{rd.name}'")
        excs = [e for e in (self.exception(ex, rd.name) for ex in rd.exceptions) if e is not None]
        if excs:
            tree = And((tree, Not(excs[0] if len(excs) == 1 else Or(tuple(excs)))))
        resolved = self.resolve(tree)
        fmt = output.OutputFormat.parse(rd.output)
        try:
            self.validate(resolved)
            problem = fmt.invalid_field()
            if problem:
                raise _Problem(
                    f"rule '{rd.name}': output: {problem}",
                    Text(rd.output, [(0, rd.loc)]),
                    0,
                    unknown_field=problem.startswith("unknown field"),
                )
        except _Problem as p:
            if p.unknown_field and rd.skip_if_unknown_filter:
                self.warnings.append(Diagnostic(rd.loc, f"rule '{rd.name}' skipped: {p.message}"))
                return None
            raise
        types = evttypes.event_types(resolved)
        if types.neg and rd.warn_evttypes and rd.enabled:
            self.warnings.append(
                Diagnostic(
                    rd.loc,
                    f"rule '{rd.name}' matches too many evt.type values "
                    "(no event-type restriction): it runs on every event, which "
                    "costs performance; add an evt.type check",
                )
            )
        return Rule(
            name=rd.name,
            condition=resolved,
            event_types=types,
            output=fmt,
            priority=rd.priority,
            tags=tuple(rd.tags),
            source=rd.source,
            enabled=rd.enabled,
            desc=rd.desc,
            loc=rd.loc,
            fields=frozenset(compiler.referenced_fields(resolved) | fmt.fields()),
        )

    def validate(self, node: Expr) -> None:
        if isinstance(node, Check):
            try:
                checks.validate(node)
            except checks.CompileError as exc:
                text, pos = self.origin.get(id(node), (Text(str(node), [(0, Loc("?", 0))]), 0))
                raise _Problem(exc.message, text, pos, unknown_field=exc.unknown_field) from exc
            if node.value == "<NA>" or (isinstance(node.value, tuple) and "<NA>" in node.value):
                origin = self.origin.get(id(node))
                if origin is not None:
                    text = origin[0]
                    self.warnings.append(
                        Diagnostic(
                            text.loc_at(node.pos),
                            f"unsafe <NA> comparison in condition: '{node.field}' compared with \"<NA>\"",
                        )
                    )
        elif isinstance(node, Not):
            self.validate(node.child)
        elif isinstance(node, And | Or):
            for c in node.children:
                self.validate(c)

    def report(self, p: _Problem, prefix: str = "") -> None:
        loc = p.text.loc_at(p.pos)
        self.errors.append(Diagnostic(loc, prefix + p.message, _excerpt(p.text.text, p.pos)))

    def run(self) -> RuleSet:
        self.expand_lists()
        self.parse_macros()
        rules: list[Rule] = []
        for rd in self.col.rules.values():
            try:
                r = self.rule(rd)
            except _Problem as p:
                prefix = "" if p.message.startswith("rule '") else f"rule '{rd.name}': "
                self.report(p, prefix)
                continue
            if r is not None:
                rules.append(r)
        for name, md in self.col.macros.items():
            if not md.used:
                self.warnings.append(Diagnostic(md.loc, f"macro '{name}' is not referred to by any rule or macro"))
        for name, ld in self.col.lists.items():
            if not ld.used:
                self.warnings.append(Diagnostic(ld.loc, f"list '{name}' is not referred to by any rule, macro or list"))
        warnings = list(dict.fromkeys(self.warnings))  # a macro shared by many rules warns once
        if self.errors:
            raise RulesError(self.errors, warnings)
        return RuleSet(tuple(rules), tuple(warnings))


def _list_item(item: str) -> str:
    """A list item as Falco reads it once substituted into a condition: a quoted item is unquoted."""
    if len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"":
        try:
            return parser.unescape(item, 0)
        except parser.ConditionSyntaxError:
            return item
    return item


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def compile_condition(col: Collection, text: str) -> Callable[[Mapping[str, Any]], bool]:
    """A lone condition using the collection's macros and lists (``rules test --condition``)."""
    r = _Resolver(col)
    r.expand_lists()
    r.parse_macros()
    try:
        tree = r.resolve(r.parse(Text(text, [(0, Loc("<condition>", 1))]), "condition"))
        r.validate(tree)
    except _Problem as p:
        r.report(p)
    if r.errors:
        raise RulesError(r.errors, r.warnings)
    return compiler.compile_condition(tree)


def resolve(col: Collection) -> RuleSet:
    """Resolve and validate a collection; raises RulesError listing every error."""
    return _Resolver(col).run()
