"""Fuzzing the runtime monitor's parsers: Falco conditions, rules files, event lines (JSON lines
and Tetragon export) and the engine on events whose fields hold values of any JSON type.

Contract: conditions and rules files fail with ``RuleLoadError`` (file:line), event lines with
``InputError``; the engine never raises on an event, whatever its values (it counts them).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from webhook import errors
from webhook.runtime import rules
from webhook.runtime.engine import Engine
from webhook.runtime.rules import parser
from webhook.runtime.sources import jsonl, tetragon

from . import known
from . import strategies as S

CONFORMANCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "falco"
RULES = CONFORMANCE / "rules" / "falco_rules.yaml"

# Pieces of the condition grammar, glued at random into plausible and broken conditions.
_TOKENS = [
    "evt.type", "proc.name", "proc.aname[2]", "fd.name", "fd.net", "evt.arg.flags", "container.id", "user.uid",
    "=", "!=", "<", ">=", "in", "pmatch", "contains", "startswith", "endswith", "glob", "exists", "intersects",
    "and", "or", "not", "(", ")", "[", "]", ",", "'", '"', "\\", "execve", "open", "127.0.0.1/8", "sh",
    "spawned_process", "shell_binaries", "0", "-1", "1e9", "val(", "tolower(", "b64(", "%", "${", " ",
]  # fmt: skip
conditions = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=12).map(" ".join),
    st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=12).map("".join),
)


@settings(S.FUZZ, max_examples=S.examples(300))
@given(conditions)
def test_condition_parser_raises_only_rule_load_error(text: str) -> None:
    with contextlib.suppress(errors.RuleLoadError):
        parser.parse(text)


@settings(S.FUZZ, max_examples=S.examples(150))
@given(conditions)
def test_condition_compile_raises_only_rule_load_error(text: str) -> None:
    with contextlib.suppress(errors.RuleLoadError):
        rules.condition(text)


# Rules-file items with keys of any type (the loader must name file and line for each problem).
_scalar_or = S.maybe
rule_items = st.one_of(
    S.obj(list=_scalar_or(st.just("shell_binaries")), items=S.lst(S.maybe(st.sampled_from(["sh", "bash"])))),
    S.obj(macro=_scalar_or(st.just("spawned_process")), condition=S.maybe(conditions)),
    S.obj(
        rule=_scalar_or(st.sampled_from(["R", "Terminal shell"])),
        desc=S.awkward,
        condition=S.maybe(conditions),
        output=S.maybe(st.sampled_from(["%proc.name %fd.name", "%nope", "x %evt.time", "%"])),
        priority=S.maybe(st.sampled_from(["WARNING", "critical", "bogus"])),
        enabled=S.awkward,
        tags=S.lst(S.maybe(st.just("t"))),
        exceptions=S.lst(S.obj(name=S.maybe(st.just("e")), fields=S.awkward, comps=S.awkward, values=S.awkward)),
        override=st.one_of(
            S.obj(condition=S.maybe(st.sampled_from(["append", "replace"])), exceptions=S.awkward),
            st.dictionaries(st.sampled_from(["", "condition", "output", "tags", "items"]), S.awkward, max_size=2),
        ),
        append=S.awkward,
        source=S.maybe(st.sampled_from(["syscall", "k8s_audit"])),
    ),
    S.obj(required_engine_version=S.awkward),
    S.obj(required_plugin_versions=S.awkward),
    S.awkward,
)
rules_documents = st.one_of(
    st.lists(rule_items, max_size=5).map(lambda items: orjson.dumps(items).decode()),  # JSON is YAML
    st.text(max_size=120),
    st.lists(st.sampled_from(["- rule: r", "  condition: evt.type=open", "  output: x", "  priority: INFO",
                              "- macro: m", "- list: l", "  items: [a, b", "  desc: &a *a", "!!python/object x",
                              "\t", ":", "- {", "  override: {condition: append}", "  append: true"]),
             max_size=8).map("\n".join),
)  # fmt: skip


@settings(S.FUZZ, max_examples=S.examples(200))
@given(rules_documents)
@example('[{"rule": "R", "override": {"": []}}]')  # found by a session: internal error TypeError
@example('[{"required_plugin_versions": [{"name": [], "version": "1"}]}]')
def test_rules_files_load_or_raise_rule_load_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("rules") / "custom.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        ruleset = rules.load([path])
    except errors.RuleLoadError as exc:
        assert str(exc)  # noqa: PT017 (fuzz: the error may not occur)
        return
    Engine(ruleset)


# Every node of a valid rules file, replaced in turn by every awkward value: the loader must name
# file and line (RuleLoadError) or load, never crash. Exhaustive, so no example is left to chance.
_AWKWARD = [None, True, False, 0, -1, 1.5, 2**64 - 1, "", "x", [], {}, [[]], [{}], [None], ["x"], [["x"]],
            {"": {}}, {"": []}, {"a": [1]}, {"name": "x"}]  # fmt: skip
_VALID_ITEMS: list[dict[str, Any]] = [
    {"required_engine_version": "0.10.0"},
    {"required_plugin_versions": [{"name": "container", "version": "0.1.0",
                                   "alternatives": [{"name": "k", "version": "1"}]}]},
    {"list": "l", "items": ["a", "b"]},
    {"macro": "m", "condition": "evt.type in (open, openat)"},
    {"rule": "R", "desc": "d", "condition": "m and proc.name in (l)", "output": "o %proc.name", "priority": "INFO",
     "tags": ["t"], "enabled": True, "source": "syscall",
     "exceptions": [{"name": "e", "fields": ["proc.name", "fd.name"], "comps": ["=", "startswith"],
                     "values": [["x", "/tmp"]]}]},
    {"list": "l", "items": ["c"], "override": {"items": "append"}},
    {"macro": "m", "condition": "or evt.type=creat", "override": {"condition": "append"}},
    {"rule": "R", "condition": "and proc.name=x", "output": "more",
     "override": {"condition": "append", "output": "replace"}},
    {"rule": "R", "exceptions": [{"name": "e", "values": [["y", "/var"]]}], "override": {"exceptions": "append"}},
    {"rule": "R", "exceptions": [{"name": "f", "fields": "proc.name", "values": ["z"]}], "append": True},
    {"rule": "R", "enabled": False},
]  # fmt: skip


def _node_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _node_paths(child, (*prefix, key))


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    out = copy.deepcopy(value)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return out


def test_the_valid_rules_file_of_the_exhaustive_test_loads(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes(orjson.dumps(_VALID_ITEMS))
    (rule,) = rules.load([path]).rules
    assert (rule.name, rule.enabled) == ("R", False)


@pytest.mark.parametrize("index", range(len(_VALID_ITEMS)))
def test_every_node_of_a_rules_file_of_any_type_loads_or_names_file_and_line(tmp_path: Path, index: int) -> None:
    path = tmp_path / "r.yaml"
    item = _VALID_ITEMS[index]
    for node in _node_paths(item):
        for value in _AWKWARD:
            doc = [*_VALID_ITEMS[:index], _replaced(item, node, value), *_VALID_ITEMS[index + 1 :]]
            path.write_bytes(orjson.dumps(doc))
            try:
                Engine.load([path])
            except errors.RuleLoadError as exc:
                assert f"{path}:" in str(exc), (node, value)  # noqa: PT017


def test_an_override_naming_a_list_is_a_load_error_with_file_and_line(tmp_path: Path) -> None:
    """Reported: ``override: {condition: [append]}`` was ``internal error: TypeError``."""
    path = tmp_path / "custom.yaml"
    path.write_text("- rule: R\n  condition: and proc.name=x\n  override: {condition: [append]}\n")
    with pytest.raises(errors.RuleLoadError, match=r"custom\.yaml:3: .*override"):
        rules.load([path])


def test_the_conformance_rules_load() -> None:
    assert Engine.load([RULES]).rules


# -- events ------------------------------------------------------------------------------------


@settings(S.FUZZ, max_examples=S.examples(150))
@given(st.lists(st.binary(max_size=40), max_size=4))
def test_jsonl_lines_decode_or_raise_input_error(lines: list[bytes]) -> None:
    try:
        out = jsonl.decode_lines(lines, name="events.jsonl", first_line=1)
    except errors.InputError as exc:
        assert "events.jsonl:" in str(exc)  # noqa: PT017 (fuzz: the error may not occur)
        return
    assert all(isinstance(o, dict) for o in out)


def _base_events() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((CONFORMANCE / "events").glob("*.jsonl")):
        for line in path.read_bytes().splitlines()[:40]:
            if line.strip():
                out.append(orjson.loads(line))
    return out


# A rule that matches every event and renders many fields, so alert output is fuzzed too.
ALWAYS = """
- rule: Fuzz everything
  desc: matches every event
  condition: evt.num exists or not evt.num exists
  output: "%evt.time %evt.num %proc.name %proc.aname[2] %fd.name %fd.cip %user.uid %container.id %evt.args"
  priority: WARNING
"""


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> list[Engine]:
    path = tmp_path_factory.mktemp("always") / "always.yaml"
    path.write_text(ALWAYS, encoding="utf-8")
    return [ENGINE, Engine.load([path])]


BASE_EVENTS = _base_events()
ENGINE = Engine.load([RULES])
FIELD_NAMES = sorted(ENGINE.required_fields | {"evt.time", "evt.num", "evt.args", "fd.cip", "proc.aname[2]"})


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A real event from the conformance data with some fields replaced by any JSON value."""
    event = dict(draw(st.sampled_from(BASE_EVENTS))) if BASE_EVENTS else {}
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=5)):
        event[name] = draw(S.awkward)
    return event


@settings(S.FUZZ, max_examples=S.examples(300))
@given(events())
def test_engine_never_raises_on_ill_typed_events(engines: list[Engine], event: dict[str, Any]) -> None:
    for engine in engines:
        try:
            alerts = engine.process(event)
        except Exception as exc:
            if known.is_known(exc):
                continue
            raise
        for alert in alerts:
            orjson.dumps(alert.to_falco_json("host"), default=str)


# The extremes an event line can carry: orjson decodes integers up to 2**64 - 1 and turns larger
# ones into floats (a float evt.time is ignored for the clock).
@pytest.mark.parametrize("when", [2**64 - 1, -(2**63), 1e30])
def test_an_event_time_beyond_datetime_range_still_renders_an_alert(engines: list[Engine], when: float) -> None:
    assert engines[1].process({"evt.num": 1, "evt.type": "open", "evt.time": when})


# Tetragon export records: the three kinds mapped, with every nested field possibly ill-typed.
process = S.obj(
    binary=S.maybe(st.just("/bin/sh")), arguments=S.awkward, pid=S.awkward, tid=S.awkward, cwd=S.awkward,
    uid=S.awkward, auid=S.maybe(st.integers(0, 2**33)), docker=S.awkward,
    pod=S.obj(namespace=S.awkward, name=S.awkward,
              container=S.obj(id=S.maybe(st.just("containerd://abc")), name=S.awkward, image=S.obj(name=S.awkward))),
)  # fmt: skip
kprobe = S.obj(
    process=process, parent=process, function_name=S.maybe(st.sampled_from(["__x64_sys_openat", "tcp_connect"])),
    args=S.lst(S.obj(file_arg=S.obj(path=S.awkward), sock_arg=S.obj(family=S.awkward, protocol=S.awkward),
                     string_arg=S.awkward)),
    **{"return": S.obj(int_arg=S.awkward)},
)  # fmt: skip
tetragon_records = S.obj(
    process_exec=S.obj(process=process, parent=process),
    process_exit=S.obj(process=process),
    process_kprobe=kprobe,
    time=S.maybe(st.sampled_from(["2024-01-01T00:00:00.123456789Z", "bad", "", "2024-13-01T00:00:00Z"])),
    node_name=S.awkward,
)


def _tetragon(record: Any) -> None:
    """What ``TetragonSource`` does with one decoded line (a dict, as ``jsonl`` guarantees)."""
    if not isinstance(record, dict):
        return
    fields = tetragon.to_fields(record)
    if fields is not None:
        ENGINE.process(fields)


@settings(S.FUZZ, max_examples=S.examples(200), phases=[Phase.explicit, Phase.generate])
@given(tetragon_records)
def test_tetragon_records_map_or_raise_input_error(record: Any) -> None:
    with contextlib.suppress(errors.PortcullisError):
        _tetragon(record)


TETRAGON_REGRESSIONS = [
    ({"process_exec": []}, "to_fields: body.get() on a non-object process_exec"),
    ({"process_exec": {"process": {"binary": 1}}}, "_process: binary.rsplit() on a non-string binary"),
    ({"process_exec": {"process": {"cwd": 1}}}, "_process: cwd.endswith() on a non-string cwd"),
    ({"process_exec": {"process": {"auid": "x"}}}, "_process: auid >= 1 << 31 on a string auid"),
    ({"process_exec": {"process": {}}, "time": "bad"}, "_time: datetime.fromisoformat('bad') raises ValueError"),
    ({"process_kprobe": {"args": [1]}}, "_kprobe: 'file_arg' in 1 on a non-object argument"),
    ({"process_kprobe": {"return": {"int_arg": "x"}}}, "_kprobe: ret >= 0 on a string int_arg"),
]


@pytest.mark.parametrize(
    "record", [pytest.param(r, id=why.split(":")[0]) for r, why in TETRAGON_REGRESSIONS]
)  # fmt: skip
def test_regression_tetragon_record_with_wrong_types_is_refused_cleanly(record: dict[str, Any]) -> None:
    with pytest.raises(tetragon.TetragonRecordError):
        _tetragon(record)


# The kubelet's /pods answer (a PodList) with every nested field possibly ill-typed: indexed or
# skipped, never an exception (the monitor would lose its pod metadata refresh loop).
container_status = S.obj(
    name=S.maybe(st.sampled_from(["c", ""])), containerID=S.maybe(st.sampled_from(["containerd://ab", "x", ""])),
    image=S.maybe(st.sampled_from(["nginx:1", "sha256:ab", "r:5000/a"])), imageID=S.awkward,
)  # fmt: skip
pod_lists = S.obj(
    kind=S.maybe(st.just("PodList")),
    items=S.lst(
        S.obj(
            metadata=S.obj(name=S.awkward, namespace=S.awkward, uid=S.awkward, labels=S.awkward),
            spec=S.obj(containers=S.lst(S.obj(name=S.awkward, image=S.awkward))),
            status=S.obj(containerStatuses=S.lst(container_status), initContainerStatuses=S.awkward),
        )
    ),
)


@settings(S.FUZZ, max_examples=S.examples(200))
@given(pod_lists)
def test_kubelet_pod_lists_index_or_skip_never_raise(doc: Any) -> None:
    from webhook.runtime import k8s_meta

    if not isinstance(doc, dict):
        return  # the fetch refuses anything but a JSON object before indexing
    for cid, info in k8s_meta.index_pods(doc).items():
        assert cid
        assert all(isinstance(v, str) for v in info.fields().values())
