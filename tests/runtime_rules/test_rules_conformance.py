"""Conformance: the three upstream Falco rules files and our conditions against sysdig's answers.

Data: ``../shared/conformance/falco`` (see its README). Each rule and each condition is evaluated
on every event line, enter and exit alike, without event-type prefiltering, and must give exactly
the recorded ``evt.num`` lists. The engine's indexed path (``Engine.process``) must agree too.
No case is skipped: the one sysdig quirk that shows in the data (how addresses of different
families compare, e.g. ``fd.ip = "::1"`` on an unbound IPv4 socket) is emulated in
``fields.ip_equal`` rather than listed as a difference.
"""

from __future__ import annotations

import json
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from webhook.runtime import rules
from webhook.runtime.engine import Engine

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "falco"
RULE_FILES = [
    DATA / "rules" / n for n in ("falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml")
]
TRACES = sorted(p.stem for p in (DATA / "events").glob("*.jsonl"))
# Differences from sysdig that the README documents as sysdig limitations: none are needed.
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {}

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="conformance data not present")


@cache
def events(trace: str) -> list[dict[str, Any]]:
    with open(DATA / "events" / f"{trace}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@cache
def expected(trace: str) -> dict[str, Any]:
    return json.loads((DATA / "expected" / f"{trace}.json").read_text(encoding="utf-8"))


@cache
def engine() -> Engine:
    return Engine.load(RULE_FILES)


def conditions() -> list[tuple[str, str]]:
    out = []
    for line in (DATA / "conditions.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            cid, text = line.split(None, 1)
            out.append((cid, text.strip()))
    return out


def test_upstream_rules_files_load_without_errors() -> None:
    ruleset = rules.load(RULE_FILES)
    names = {r.name for r in ruleset.rules}
    listed = json.loads((DATA / "expected" / "rules.json").read_text(encoding="utf-8"))["rules"]
    assert names == {r["rule"] for r in listed}
    assert {r.name for r in ruleset.rules if r.enabled} == {r["rule"] for r in listed if r["enabled"]}


@pytest.mark.parametrize("trace", TRACES)
def test_every_accepted_rule_matches_exactly_what_sysdig_matched(trace: str) -> None:
    exp = expected(trace)
    assert len(events(trace)) == exp["events"]
    for rule, nums in exp["matches"].items():
        match = engine().matcher(rule)
        got = [e["evt.num"] for e in events(trace) if match(e)]
        assert got == nums, f"{rule} on {trace}"


@pytest.mark.parametrize(("cid", "text"), conditions(), ids=[c for c, _ in conditions()])
def test_every_condition_matches_exactly_what_sysdig_matched(cid: str, text: str) -> None:
    exp = json.loads((DATA / "expected" / "conditions.json").read_text(encoding="utf-8"))[cid]
    match = rules.condition(text)
    for trace in TRACES:
        got = [e["evt.num"] for e in events(trace) if match(e)]
        assert got == exp[trace], f"{cid} on {trace}"


def test_flattened_rule_conditions_match_like_the_rules_themselves() -> None:
    """rules.json's flattened text parses to the same answers as the loaded rule."""
    listed = json.loads((DATA / "expected" / "rules.json").read_text(encoding="utf-8"))["rules"]
    trace = "single_ipv6_conn"
    for r in listed:
        if r["sysdig"] != "accepted":
            continue
        flat = rules.condition(r["condition"])
        got = [e["evt.num"] for e in events(trace) if flat(e)]
        assert got == expected(trace)["matches"][r["rule"]], r["rule"]


def test_indexed_engine_gives_the_same_matches_as_unfiltered_evaluation() -> None:
    """All 93 rules through Engine.process (evt.type index, folding, shared work)."""
    every = Engine.load(RULE_FILES, enabled_rules={r.name for r in rules.load(RULE_FILES).rules})
    for trace in TRACES:
        got: dict[str, list[int]] = defaultdict(list)
        for e in events(trace):
            for alert in every.process(e):
                got[alert.rule].append(alert.output_fields["evt.num"])
        for rule, nums in expected(trace)["matches"].items():
            assert got.get(rule, []) == nums, f"{rule} on {trace}"
