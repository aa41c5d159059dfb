"""Recorded events for ``rules test``: lines whose type no rule matches are skipped before they are
decoded, with the very same alerts as decoding every line, and bad lines still named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook import errors
from webhook.runtime.engine import Engine
from webhook.runtime.sources import recorded

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "falco"
RULE_FILES = [
    DATA / "rules" / n for n in ("falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml")
]
ENGINE = Engine.load(RULE_FILES, clock=lambda: 0)
TRACES = sorted(p.stem for p in (DATA / "events").glob("*.jsonl"))


def alerts(engine: Engine, path: Path | str, prefilter: bool) -> list[dict[str, Any]]:
    reader = recorded.Reader(str(path), engine.can_match_type if prefilter else None)
    return [a.to_falco_json("h") for e in reader for a in engine.process(e)]


@pytest.mark.parametrize("trace", TRACES)
def test_skipping_by_type_gives_the_alerts_of_decoding_every_line(trace: str) -> None:
    path = DATA / "events" / f"{trace}.jsonl"
    assert alerts(ENGINE, path, True) == alerts(ENGINE, path, False)


def test_most_conformance_events_are_skipped_undecoded() -> None:
    reader = recorded.Reader(str(DATA / "events" / "run_as_user_0_container.jsonl"), ENGINE.can_match_type)
    kept = sum(1 for _ in reader)
    assert reader.lines == 3796
    assert reader.skipped + kept == reader.lines
    assert reader.skipped > 0.9 * reader.lines


def test_a_type_is_skipped_only_when_no_rule_can_match_it() -> None:
    for trace in TRACES:
        for line in (DATA / "events" / f"{trace}.jsonl").read_bytes().splitlines():
            event = orjson.loads(line)
            if not ENGINE.can_match_type(event.get("evt.type")):
                assert ENGINE.process(event) == []


RULES = [
    {"rule": "Exec", "desc": "d", "condition": "evt.type = execve and proc.name = sh", "output": "x %proc.name",
     "priority": "WARNING"},
    {"rule": "No type", "desc": "d", "condition": "proc.name = orphan", "output": "o %proc.name",
     "priority": "WARNING"},
]  # fmt: skip


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    path = tmp_path_factory.mktemp("r") / "rules.yaml"
    path.write_text(json.dumps(RULES))
    return Engine.load([path], clock=lambda: 0)


@pytest.mark.parametrize(
    "line",
    [
        b'{"evt.type":"brk","proc.name":"sh","evt.type":"execve"}',  # duplicate key: the last counts
        b'{"evt\\u002etype":"execve","proc.name":"sh"}',  # the key spelled with an escape
        b'{"proc.name":"sh","evt.type":"exec\\u0076e"}',  # the value spelled with an escape
        b'  {"evt.type" : "execve" , "proc.name":"sh"}  ',
        b'{"nested":{"evt.type":"brk"},"evt.type":"execve","proc.name":"sh"}',
    ],
)
def test_spellings_of_a_matching_type_are_never_skipped(engine: Engine, tmp_path: Path, line: bytes) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(line + b"\n")
    assert [a["rule"] for a in alerts(engine, path, True)] == ["Exec"]


def test_events_without_a_type_or_of_another_json_type_reach_the_engine(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"proc.name":"orphan"}\n{"evt.type":null,"proc.name":"orphan"}\n{"evt.type":["x"]}\n')
    assert [a["rule"] for a in alerts(engine, path, True)] == ["No type", "No type"]
    assert alerts(engine, path, True) == alerts(engine, path, False)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"evt.type":"brk","proc.name":"x"', "e.jsonl:2: invalid JSON"),  # truncated, of a skipped type
        (b'["evt.type","brk"]', "e.jsonl:2: an event must be a JSON object"),
        (b'{"evt.type":"brk","proc.name":"\xff"}', "e.jsonl:2: invalid JSON"),  # not UTF-8
        (b'{"evt.type":"brk"} trailing', "e.jsonl:2: invalid JSON"),
    ],
)
def test_a_bad_line_of_a_skipped_type_is_still_an_error_naming_the_line(
    engine: Engine, tmp_path: Path, line: bytes, message: str
) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"evt.type":"brk"}\n' + line + b"\n\n")
    with pytest.raises(errors.InputError, match=message):
        list(recorded.Reader(str(path), engine.can_match_type))


def test_blank_lines_are_ignored(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'\n   \n{"evt.type":"execve","proc.name":"sh"}\n\n')
    assert [a["rule"] for a in alerts(engine, path, True)] == ["Exec"]


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=5), st.lists(st.text(max_size=2))
)
_events = st.dictionaries(
    st.sampled_from(["evt.type", "proc.name", "fd.name", "evt.num", "proc.pname", "user.name", "fd.typechar"]),
    st.one_of(st.sampled_from(["execve", "open", "openat", "brk", "sh", "connect", "/etc/shadow"]), _values),
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(_events, max_size=6))
def test_skipping_never_changes_the_alerts_of_any_events(tmp_path_factory: pytest.TempPathFactory, events: Any) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    assert alerts(ENGINE, path, True) == alerts(ENGINE, path, False)
