"""Compiled Falco rules, indexed by event type: event → alerts (the last stage of the rules engine).

``Engine.load`` runs ``rules.load`` (loader → resolve) and compiles, for every event type some
rule names, one function holding exactly the rules that can match that type, with their
``evt.type`` checks folded away and shared sub-conditions evaluated once. Rules that can match
any type also go to a default function used for types no rule names. Called by the monitor
and by ``portcullis rules test``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from webhook.runtime import rules
from webhook.runtime.rules import compiler, coverage, evttypes, fields, kernelfilter, output
from webhook.runtime.rules.model import Diagnostic
from webhook.runtime.rules.resolve import Rule

__all__ = ["Alert", "Engine"]

Event = Mapping[str, Any]
Match = Literal["first", "all"]


@dataclass(frozen=True, slots=True)
class Alert:
    """One rule match, as Falco reports it."""

    rule: str
    priority: str
    source: str
    output: str
    output_fields: dict[str, Any] = field(hash=False)
    tags: tuple[str, ...]
    time: int  # nanoseconds since the epoch (evt.time, or the engine clock when absent)

    def to_falco_json(self, hostname: str) -> dict[str, Any]:
        """The alert in Falco's JSON output shape (what falcosidekick and friends read)."""
        return {
            "hostname": hostname,
            "output": self.output,
            "output_fields": dict(self.output_fields),
            "priority": self.priority,
            "rule": self.rule,
            "source": self.source,
            "tags": sorted(self.tags),
            "time": output.iso_time(self.time),
        }


def _select(
    ruleset: rules.RuleSet, disabled_tags: Collection[str], enabled_rules: Collection[str] | None
) -> list[Rule]:
    tags = frozenset(disabled_tags)
    chosen = []
    for r in ruleset.rules:
        on = r.enabled if enabled_rules is None else r.name in enabled_rules
        if on and not tags.intersection(r.tags):
            chosen.append(r)
    return chosen


class Engine:
    """Enabled rules compiled into per-event-type functions. Build with ``Engine.load``."""

    def __init__(
        self,
        ruleset: rules.RuleSet,
        *,
        match: Match = "all",
        disabled_tags: Collection[str] = (),
        enabled_rules: Collection[str] | None = None,
        clock: Callable[[], int] = time.time_ns,
        producible: fields.Producible | None = None,
    ) -> None:
        if match not in ("first", "all"):
            raise ValueError(f"match must be 'first' or 'all', not {match!r}")
        self.ruleset = ruleset
        self.warnings: list[Diagnostic] = list(ruleset.warnings)
        selected = _select(ruleset, disabled_tags, enabled_rules)
        # Rules reading fields the source never fills in: the dead ones are left out (the caller
        # says so, per rule, from this report); see rules/coverage.py.
        self.coverage: list[coverage.RuleCoverage] = coverage.assess(selected, producible)
        dead = coverage.dead_rules(self.coverage)
        self.rules: tuple[Rule, ...] = tuple(r for r in selected if r.name not in dead)
        self.match: Match = match
        self._clock = clock
        self.eval_errors = 0  # events whose values could not be evaluated even after coercion
        positive: set[str] = set()
        named: set[str] = set()
        for r in self.rules:
            named |= r.event_types.names | evttypes.named_types(r.condition)
            if not r.event_types.neg:
                positive |= r.event_types.names
        positive.discard("")
        named.discard("")
        self.matches_all_types: bool = any(r.event_types.neg for r in self.rules)
        self.event_types: frozenset[str] = frozenset(positive)
        self.required_fields: frozenset[str] = frozenset({"evt.num", "evt.time"}.union(*(r.fields for r in self.rules)))
        # Host names the rules compare fd.sip.name with (resolved by the live source's builder).
        self.sip_names: frozenset[str] = frozenset().union(
            *(compiler.field_constants(r.condition, "fd.sip.name") for r in self.rules)
        )
        # Every named type (and "no evt.type", None) gets an entry, None when no rule can match:
        # such events must never reach the default function, where `evt.type != x` folds to true.
        self._dispatch: dict[str | None, Callable[[Event], Any] | None] = {
            name: self._bucket(name) for name in sorted(named)
        }
        self._dispatch[None] = self._bucket(None)
        # Types whose failed calls no rule can match: the eBPF source drops those in the kernel.
        self.success_only_types: frozenset[str] = frozenset(t for t in positive if self._success_only(t))
        # Successful opens no rule can match, as a kernel-side test (rules/kernelfilter.py); a type
        # absent here passes whole. Sound only with success_only (the gate reads the opened file).
        # A dropped open leaves the process table's entry for its fd number stale, so no filter
        # when a rule reads fd fields of an event that takes its fd from that table.
        stale_ok = not any(
            any(f.startswith("fd.") for f in r.fields) for r in self.rules
            if any(t in r.event_types for t in kernelfilter.FD_TABLE_TYPES)
        )  # fmt: skip
        self.open_filters: dict[str, kernelfilter.Gate] = {
            t: g for t in sorted(positive & kernelfilter.OPEN_TYPES & self.success_only_types)
            if stale_ok and (g := self._open_gate(t)) != kernelfilter.TOP
        }  # fmt: skip
        self._default = self._bucket(evttypes.UNKNOWN)
        self.process: Callable[[Event], list[Alert]] = self._make_process()

    @classmethod
    def load(
        cls,
        paths: Sequence[Path | str],
        *,
        match: Match = "all",
        disabled_tags: Collection[str] = (),
        enabled_rules: Collection[str] | None = None,
        clock: Callable[[], int] = time.time_ns,
        producible: fields.Producible | None = None,
    ) -> Engine:
        """Load and compile rules files (or directories) in order; raises ``rules.RulesError``
        listing every error. With ``producible`` (the source's fields), rules that can never fire
        on that source are left out and listed in ``coverage``."""
        ruleset = rules.load(paths)
        return cls(
            ruleset, match=match, disabled_tags=disabled_tags, enabled_rules=enabled_rules, clock=clock,
            producible=producible,
        )  # fmt: skip

    def _bucket(self, evtype: str | object | None) -> Callable[[Event], Any] | None:
        memo: dict[int, Any] = {}
        members: list[tuple[int, Any]] = []
        for idx, r in enumerate(self.rules):
            key = "" if evtype is None else evtype
            if isinstance(key, str) and key not in r.event_types:
                continue
            if not isinstance(key, str) and not r.event_types.neg:
                continue
            cond = evttypes.specialize(r.condition, evtype, memo)  # type: ignore[arg-type]
            if cond is not False:
                members.append((idx, cond))
        if not members:
            return None
        return compiler.compile_bucket(members, first=self.match == "first")

    def _success_only(self, evtype: str) -> bool:
        memo: dict[int, Any] = {}
        for r in self.rules:
            if evtype not in r.event_types:
                continue
            cond = evttypes.specialize(r.condition, evtype, memo)
            if not evttypes.requires_success(cond, evtype):
                return False
        return True

    def _open_gate(self, evtype: str) -> kernelfilter.Gate:
        memo: dict[int, Any] = {}
        gates = []
        for r in self.rules:
            if evtype in r.event_types:
                gates.append(kernelfilter.gate(evttypes.specialize(r.condition, evtype, memo)))
        return kernelfilter.union(gates)

    def _make_process(self) -> Callable[[Event], list[Alert]]:
        dispatch, default, alert = self._dispatch, self._default, self._alert

        def process(event: Event) -> list[Alert]:
            """Alerts of the enabled rules matching this event (Falco field name → value)."""
            try:
                fn = dispatch.get(event.get("evt.type"), default)
                if fn is None:
                    return []
                hits = fn(event)
            except (TypeError, AttributeError, ValueError):  # a value of the wrong type
                event, hits = self._retry(event)
            if hits is None:
                return []
            return [alert(i, event) for i in hits]

        return process

    def fields_for_type(self, evtype: str) -> frozenset[str]:
        """The fields an event of ``evtype`` needs: those of the rules ``process`` can evaluate on
        it (conditions and outputs), plus what dispatch and alerts read. An event builder making
        only these gives the same alerts as one making all of ``required_fields``."""
        base = {"evt.num", "evt.time"} | ({"evt.type"} & self.required_fields)
        return frozenset(base.union(*(r.fields for r in self.rules if evtype in r.event_types)))

    def can_match_type(self, evtype: object) -> bool:
        """False only when ``process`` returns no alert for any event whose ``evt.type`` is
        ``evtype`` (None: no ``evt.type``), whatever its other fields: such events need not even
        be decoded. A value of another type than str may be coerced by ``process``: True."""
        if evtype is not None and not isinstance(evtype, str):
            return True
        return self._dispatch.get(evtype, self._default) is not None

    def _retry(self, event: Event) -> tuple[Event, Any]:
        """Evaluate again with values coerced to their fields' types; count events that still fail."""
        fixed = fields.normalize(event)
        try:
            fn = self._dispatch.get(fixed.get("evt.type"), self._default)
            return fixed, (fn(fixed) if fn is not None else None)
        except (TypeError, AttributeError, ValueError):
            self.eval_errors += 1
            return fixed, None

    def _alert(self, idx: int, event: Event) -> Alert:
        r = self.rules[idx]
        values = r.output.values(event)
        t = event.get("evt.time")
        when = t if isinstance(t, int) else self._clock()
        text = r.output.render({**values, "evt.time": when})
        fields_out = {**values, "evt.time": when}
        if "evt.num" in event:
            fields_out["evt.num"] = event["evt.num"]
        return Alert(
            rule=r.name,
            priority=r.priority,
            source=r.source,
            output=f"{output.format_time(when)}: {r.priority} {text}",
            output_fields=fields_out,
            tags=r.tags,
            time=when,
        )

    def matcher(self, rule_name: str) -> Callable[[Event], bool]:
        """One loaded rule (enabled or not) as event → bool, with no event-type prefiltering."""
        for r in self.ruleset.rules:
            if r.name == rule_name:
                return compiler.compile_condition(r.condition)
        raise KeyError(rule_name)
