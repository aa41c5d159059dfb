"""The canonical-JSON fast path stays exact when strings look like floats ("app:1.2.3" in an
admitted object's image) or hold quotes and backslashes: compared with the rfc8785 encoder."""

from __future__ import annotations

from typing import Any

import orjson
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
