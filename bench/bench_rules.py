"""Throughput of the Falco rules engine: all enabled rules of the three upstream files.

The conformance events (every trace, enter and exit) are decoded once and replicated to about
one million dicts; then, in the same run, we time (CPU time, best of --repeat) (a) just iterating them, (b) iterating and
calling a no-op function per event (the floor for any per-event Python call), (c) ``engine.process``
on each, and (d) ``engine.process`` on the rule-relevant events alone (a type some enabled rule can
match): the headline, since 96% of the mix has a type no rule uses and costs only the type-index
lookup. The skip rate is printed beside it. Figures are events/s and ratios to the baselines.

    python bench/bench_rules.py [--events N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from webhook.runtime.engine import Engine

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "conformance" / "falco"
RULE_FILES = [
    DATA / "rules" / n for n in ("falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml")
]


def load_events(total: int) -> list[dict[str, Any]]:
    base: list[dict[str, Any]] = []
    for path in sorted((DATA / "events").glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            base.extend(json.loads(line) for line in fh if line.strip())
    reps = total // len(base) + 1
    return (base * reps)[:total]


def best(fn: Any, repeat: int) -> float:
    """Best of ``repeat`` runs in CPU seconds of this process (other load on a shared machine
    then skews the figures less than wall-clock time would)."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    t0 = time.perf_counter()
    engine = Engine.load(RULE_FILES)
    load_s = time.perf_counter() - t0
    events = load_events(args.events)
    n = len(events)
    process = engine.process

    def iterate() -> None:
        for _e in events:
            pass

    def noop_call() -> None:
        f = _noop
        for e in events:
            f(e)

    def run() -> None:
        for e in events:
            process(e)

    # Rule-relevant: events whose type some enabled rule can match (the engine's type index sends
    # every other event straight back, so timing them mostly measures the skip).
    can_match = engine.can_match_type
    hot = [e for e in events if can_match(e.get("evt.type"))]

    def run_hot() -> None:
        for e in hot:
            process(e)

    it = best(iterate, args.repeat)
    hot_s = best(run_hot, args.repeat) if hot else 0.0
    nc = best(noop_call, args.repeat)
    pr = best(run, args.repeat)
    alerts = Counter(a.rule for e in events for a in process(e))
    skipped = n - len(hot)

    print(
        f"rules loaded+compiled: {len(engine.rules)} enabled in {load_s * 1000:.0f} ms; "
        f"{len(engine.event_types)} indexed event types, matches_all_types={engine.matches_all_types}"
    )
    print(
        f"events: {n:,} (conformance traces replicated, pre-decoded dicts); alerts: {sum(alerts.values()):,} "
        f"from {len(alerts)} rule(s)"
    )
    if hot:
        print(
            f"HEADLINE rule-relevant events/s: {len(hot) / hot_s:,.0f} ({hot_s * 1e9 / len(hot):.0f} ns/event) over the "
            f"{len(hot):,} events of a type some rule matches"
        )
    print(
        f"skip rate: {skipped / n:.1%} of the mix ({skipped:,} events) have a type no rule matches and never reach a "
        "rule (type index)"
    )
    print(f"whole mix, engine.process: {n / pr:14,.0f} events/s  ({pr * 1e9 / n:6.1f} ns/event)")
    print(f"baseline iterate only    : {n / it:14,.0f} events/s  ({it * 1e9 / n:6.1f} ns/event)")
    print(f"baseline iterate + no-op : {n / nc:14,.0f} events/s  ({nc * 1e9 / n:6.1f} ns/event)")
    print(f"ratio whole mix process/iterate time: {pr / it:.1f}x   process/no-op-call time: {pr / nc:.2f}x")
    if hot:
        print(f"ratio rule-relevant event cost / no-op call: {hot_s / len(hot) / (nc / n):.1f}x")
    print(
        f"whole mix vs the 1.7M events/s goal: {n / pr / 1.7e6:.2f}x (CPU time; varies with load on a shared machine)"
    )


def _noop(_e: dict[str, Any]) -> None:
    return None


if __name__ == "__main__":
    main()
