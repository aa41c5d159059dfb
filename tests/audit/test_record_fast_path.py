"""The canonical-JSON fast path stays exact when strings look like floats ("app:1.2.3" in an
admitted object's image) or hold quotes and backslashes: compared with the rfc8785 encoder."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.audit import records

# Strings made of the characters that fool a byte search: digits, '.', 'e', ':', ',', '[', quotes, backslashes.
tricky = st.text(alphabet=st.sampled_from(list('ab:1.2e,[]"\\ {}-0')), max_size=12)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | tricky
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky, inner, max_size=4),
    max_leaves=14,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(tricky, values, max_size=5))
def test_canonical_equals_rfc8785_with_float_looking_strings(content: dict[str, Any]) -> None:
    assert records.canonical(content) == rfc8785.dumps(content)


def test_image_tags_take_the_fast_path_and_real_floats_do_not() -> None:
    assert records._no_float_token(orjson.dumps({"image": "app:1.2.3", "n": 1}, option=orjson.OPT_SORT_KEYS))
    assert not records._no_float_token(orjson.dumps({"a": "x", "n": 1.5}))
    assert not records._no_float_token(orjson.dumps({"a": 'q"', "n": 1.5}))
    assert not records._no_float_token(orjson.dumps({"a": "q\\", "n": 1.5}))


def _one_by_one(entries: list[bytes]) -> list[tuple[int, str]]:
    """The reference: ``decode_record`` on each entry, as verify did before batching."""
    out = []
    for i, entry in enumerate(entries):
        try:
            records.decode_record(entry)
        except records.RecordError as exc:
            out.append((i, str(exc)))
    return out


def _batched(entries: list[bytes]) -> list[tuple[int, str]]:
    return [(i, str(exc)) for i, exc in records.bad_records(entries)]


def _record(content: Any, time: str = "2026-01-01T00:00:00.000000Z") -> bytes:
    return records.encode_record(time, "admission", "w", content)


# Entries that are not canonical records, including ones crafted to line up only when joined:
# two halves of one object, trailing/leading whitespace, a record that re-encodes shorter, non-
# ASCII and float contents (canonical by JCS but off orjson's fast path), unsafe integers.
_ODD = [
    b'{"content":{"a":[1',
    b'2]},"kind":"admission","time":"t","writer":"w"}',
    _record({"a": 1}) + b" ",
    b" " + _record({"a": 1}),
    b'{"content":{"b":1,"a":2},"kind":"admission","time":"t","writer":"w"}',
    b'{"content":{},"kind":"other","time":"t","writer":"w"}',
    b'{"content":{},"kind":"admission","time":1,"writer":"w"}',
    b'{"content":[],"kind":"admission","time":"t","writer":"w"}',
    b'{"content":{},"kind":"admission","time":"t","writer":"w","x":1}',
    b"[1,2]",
    b"not json",
    b"",
    _record({"n": 1.5}),
    _record({"caf\u00e9": "\u00e9t\u00e9"}),
    b'{"content":{"n":1.50},"kind":"admission","time":"t","writer":"w"}',
    b'{"content":{"n":9007199254740993},"kind":"admission","time":"t","writer":"w"}',
    b'{"content":{"n":1e2},"kind":"admission","time":"t","writer":"w"}',
    b'{"content":{"s":"\\u0041"},"kind":"admission","time":"t","writer":"w"}',
    _record({"image": "app:1.2.3", "q": 'a"b', "b": "c\\d"}),
    # the envelope's keys: out of order, one swapped for another, a duplicate, odd kinds
    b'{"kind":"admission","content":{},"time":"t","writer":"w"}',
    b'{"content":{},"kind":"admission","time":"t","x":"w"}',
    b'{"content":{},"content":{},"kind":"admission","time":"t","writer":"w"}',
    b'{"content":{},"kind":"admission","time":"t","time":"t","writer":"w"}',
    b'{"content":{},"kind":["admission"],"time":"t","writer":"w"}',
    b'{"content":{},"kind":{"a":1},"time":"t","writer":"w"}',
    b'{"content":{},"kind":"admission","time":"t","writer":null}',
    b'{"content":{},"kind":"admission","time":"t"}',
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.dictionaries(tricky, values, max_size=4).map(_record),
            st.sampled_from(_ODD),
        ),
        max_size=12,
    )
)
def test_batched_record_check_reports_exactly_what_one_by_one_does(entries: list[bytes]) -> None:
    assert _batched(entries) == _one_by_one(entries)


def test_batched_record_check_fast_path_and_each_odd_entry() -> None:
    good = [_record({"uid": str(i), "image": "app:1.2.3", "allowed": i % 2 == 0}) for i in range(256)]
    assert records.bad_records(good) == []
    for odd in _ODD:
        for at in (0, 100, 255):
            entries = [*good[:at], odd, *good[at + 1 :]]
            assert _batched(entries) == _one_by_one(entries), (odd, at)
    halves = good[:10] + _ODD[:2] + good[12:]
    assert [i for i, _ in records.bad_records(halves)] == [10, 11]


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


@pytest.mark.skipif(records._accel is None, reason="C accelerator not built (pip install -e .)")
@settings(max_examples=500, deadline=None)
@given(st.dictionaries(tricky, values, max_size=5))
def test_the_c_float_scan_finds_exactly_the_float_values(content: dict[str, Any]) -> None:
    """Strings that look like numbers ("a:1.5", 'x",1.5') are skipped; every real float is found."""
    assert records._accel is not None
    entry = b'{"content":' + orjson.dumps(content, option=orjson.OPT_SORT_KEYS) + b',"kind":"admission"}'
    assert records._accel.content_floats([entry]) == _has_float(content)
    assert records._accel.content_floats([_record({"a": 1}), entry]) == _has_float(content)


def test_batched_record_check_is_the_same_without_the_c_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    good = [_record({"uid": str(i), "image": "app:1.2.3", "n": -i}) for i in range(256)]
    cases = [good, *([*good[:100], odd, *good[101:]] for odd in _ODD)]
    with_accel = [_batched(c) for c in cases]
    monkeypatch.setattr(records, "_accel", None)
    assert [_batched(c) for c in cases] == with_accel == [_one_by_one(c) for c in cases]


# -- the writer's group encoder: byte for byte ``encode_record``, error for error -------------

_GROUP_ODD: list[Any] = [
    {"a": 1},
    {"n": 1.5},
    {"image": "app:1.2.3", "tag": "x,1e5"},
    {"caf\u00e9": "\u00e9t\u00e9"},
    {"\ue000": 1},
    {"big": 2**53},
    {"big": -(2**60)},
    {"nan": float("nan")},
    {"inf": float("inf")},
    {"obj": object()},
    {1: "int key"},
    {"nested": {"b": [1, {"z": 0.1, "a": 'q"\\'}]}},
    {"huge": "x" * (records.MAX_RECORD + 1)},
    {"edge": "y" * (records.MAX_RECORD - 80)},
    {},
]


def _reference(kind: str, content: Any, ns: int) -> bytes | str:
    try:
        return records.encode_record(records.stamp(ns, records._Clock()), kind, 'w\u00e9"', content)
    except records.RecordError as exc:
        return f"RecordError: {exc}"


def _grouped(items: list[tuple[str, Any, int]], accel: object) -> list[bytes | str]:
    """What ``AuditLog`` does: ``content_json`` per record (or ``encode_record`` at once when it
    says no, raising there), then one ``GroupEncoder.encode`` over the group."""
    saved = records._accel
    records._accel = accel  # type: ignore[assignment]
    encoder = records.GroupEncoder('w\u00e9"')
    try:
        out: list[bytes | str | None] = []
        kinds: list[str | None] = []
        bodies: list[bytes] = []
        times: list[int] = []
        for kind, content, ns in items:
            body = records.content_json(content)
            if body is None:
                try:
                    body = records.encode_record(records.stamp(ns), kind, encoder.writer, content)
                except records.RecordError as exc:
                    out.append(f"RecordError: {exc}")
                    continue
                kinds.append(None)
            else:
                kinds.append(kind)
            bodies.append(body)
            times.append(ns)
            out.append(None)
        entries, bad = encoder.encode(kinds, bodies, times)
    finally:
        records._accel = saved
    grouped = iter(f"RecordError: {bad[i]}" if i in bad else e for i, e in enumerate(entries))
    return [next(grouped) if o is None else o for o in out]


@pytest.mark.parametrize("accel", [records._accel, None], ids=["accelerated", "python"])
def test_group_encoder_equals_encode_record_for_odd_contents(accel: object) -> None:
    """Every odd content alone, and all of them in one group (one odd record sends the group
    down the per-record re-check), across a second boundary and with times out of order."""
    base = 1_767_225_599_999_990_000  # 10 us before a new second (and a new minute/hour/day/year)
    items = [
        ("alert" if i % 2 else "admission", c, base + i * 3_000 - (i % 3) * 7_000) for i, c in enumerate(_GROUP_ODD)
    ]
    assert _grouped(items, accel) == [_reference(*item) for item in items]
    for item in items:
        assert _grouped([item], accel) == [_reference(*item)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(tricky, values, max_size=5), max_size=8), st.integers(0, 2**62))
def test_group_encoder_equals_encode_record(contents: list[dict[str, Any]], ns: int) -> None:
    items = [("config", c, ns + i) for i, c in enumerate(contents)]
    assert _grouped(items, records._accel) == [_reference(*item) for item in items]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinity_are_rejected_not_written_as_null(value: float) -> None:
    """orjson writes them as null; RFC 8785 has no such numbers, so the record is refused."""
    with pytest.raises(records.RecordError, match="canonical"):
        records.encode_record("t", "alert", "w", {"a": [None, {"x": value}]})
    assert records.canonical({"a": None, "b": [None]}) == b'{"a":null,"b":[null]}'
