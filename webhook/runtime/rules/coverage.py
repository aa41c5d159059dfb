"""Which loaded rules an event source can evaluate: the fields each rule reads that the source
never fills in, and whether the rule can fire at all without them.

A field the source cannot produce is absent from every event, so each check on it always gives
the answer it gives for a missing field (false for comparisons and ``exists``). Folding those
answers into the condition tells a rule that can never be true (``dead``: the monitor disables it
and says so) from one that only loses some branches (it stays enabled, with a warning). Called by
``portcullis monitor`` at start-up and by ``portcullis rules validate --source``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from webhook.runtime.rules import compiler, fields
from webhook.runtime.rules.model import Loc
from webhook.runtime.rules.parser import And, Check, Expr, FieldRef, Not, Or
from webhook.runtime.rules.resolve import Rule

__all__ = ["RuleCoverage", "assess", "dead_rules"]

_ALWAYS = frozenset(("evt.time",))  # the engine fills it in from its clock when the event has none


@dataclass(frozen=True, slots=True)
class RuleCoverage:
    """One rule that reads fields its source does not produce."""

    rule: str
    loc: Loc
    missing: tuple[str, ...]  # condition fields never produced, sorted
    dead: bool  # the condition is false on every event without them: the rule is disabled
    output_missing: tuple[str, ...]  # output fields never produced (rendered <NA>)

    def message(self, source: str) -> str:
        """One line for people, naming the rule, where it is defined and the fields."""
        what = ", ".join(self.missing or self.output_missing)
        if self.dead:
            return (
                f"{self.loc}: rule '{self.rule}' is disabled: the {source} source cannot produce {what}, "
                "so its condition can never be true"
            )
        if self.missing:
            return (
                f"{self.loc}: rule '{self.rule}' runs without {what} (the {source} source cannot produce them; "
                "checks on them see a missing field)"
            )
        return f"{self.loc}: rule '{self.rule}' outputs {what} as <NA> (the {source} source cannot produce them)"


def _refs(check: Check) -> list[FieldRef]:
    return [check.field, check.value] if isinstance(check.value, FieldRef) else [check.field]


def _fold(node: Expr, missing: set[str], have: fields.Producible) -> Expr | bool:
    """The condition with every check on an unproduced field replaced by its missing-field answer."""
    if isinstance(node, Check):
        gone = [r for r in _refs(node) if not have.has(r.name, r.arg)]
        if not gone:
            return node
        missing.update(r.key for r in gone)
        try:
            return compiler.compile_condition(node)({})
        except (TypeError, ValueError, AttributeError):  # no constant answer: keep the check
            return node
    if isinstance(node, Not):
        child = _fold(node.child, missing, have)
        return (not child) if isinstance(child, bool) else Not(child)
    if isinstance(node, And | Or):
        is_and = isinstance(node, And)
        kept: list[Expr] = []
        decided = False
        for c in node.children:
            folded = _fold(c, missing, have)  # every child, so every missing field is named
            if folded is (not is_and):
                decided = True
            elif not isinstance(folded, bool):
                kept.append(folded)
        if decided:
            return not is_and
        if not kept:
            return is_and
        return kept[0] if len(kept) == 1 else (And(tuple(kept)) if is_and else Or(tuple(kept)))
    return node


def assess(rules: Iterable[Rule], have: fields.Producible | None) -> list[RuleCoverage]:
    """The rules (in order) that read a field ``have`` lacks; [] when the source has every field."""
    if have is None:
        return []
    out = []
    for rule in rules:
        missing: set[str] = set()
        folded = _fold(rule.condition, missing, have)
        shown = {
            p[2] for p in rule.output.parts if isinstance(p, tuple) and p[0] not in _ALWAYS and not have.has(p[0], p[1])
        }
        if missing or shown:
            out.append(RuleCoverage(rule.name, rule.loc, tuple(sorted(missing)), folded is False, tuple(sorted(shown))))
    return out


def dead_rules(report: Iterable[RuleCoverage]) -> frozenset[str]:
    """Names of the rules that can never fire on the source (to leave out of the engine)."""
    return frozenset(c.rule for c in report if c.dead)
