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
