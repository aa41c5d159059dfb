"""Audit records: one RFC 8785 (JCS) canonical JSON object per log entry.

The writer encodes here on the hot path; ``verify`` and readers decode here. A record is
``{"content": {...}, "kind": "admission|alert|config", "time": RFC 3339 UTC, "writer": "..."}``.
"""

from __future__ import annotations

import datetime as dt
import gc
import operator
import re
import time as _time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson
import rfc8785

from webhook import errors

try:  # optional C accelerator (see tiles.py): an exact float-token scan of record contents
    from webhook.audit import _tilehash
except ImportError:
    _tilehash = None  # type: ignore[assignment]
_accel = _tilehash  # tests set it to None to run the Python code

Kind = Literal["admission", "alert", "config"]
KINDS: frozenset[str] = frozenset(get_args(Kind))
MAX_RECORD = 0xFFFF  # an entry bundle stores a uint16 length
_SAFE_INT = 2**53 - 1
_ORJSON_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
# A float token: a number with a fraction or exponent right after ':', ',' or '['. The same
# bytes inside a string (say "a:1.5") only send that record down the exact slow path.
_FLOAT = re.compile(rb"(?:^|[:,\[])-?[0-9]+[.eE]")
_INNER_FLOAT = re.compile(rb"[:,\[]-?[0-9]+[.eE]")  # the same after the first byte: no '^', 4x faster
_CONTENT_AT = len(b'{"content":')
_KEYS = frozenset(("content", "kind", "time", "writer"))
_KEY_ORDER = ("content", "kind", "time", "writer")
_CONTENT, _KIND, _TIME, _WRITER = map(operator.itemgetter, _KEY_ORDER)


class RecordError(errors.AuditFormatError):
    """A record cannot be encoded, or a stored entry is not a valid record."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    time: str
    kind: Kind
    writer: str
    content: dict[str, Any]

    def encode(self) -> bytes:
        return encode_record(self.time, self.kind, self.writer, self.content)


def _orjson_is_jcs(obj: Any) -> bool:
    """Whether orjson's sorted output equals JCS for this value (no floats, safe ints, BMP keys).

    JCS sorts keys by UTF-16 code units and formats numbers as ECMAScript does; orjson sorts
    by code point and prints floats differently, so those cases take the slow exact path.
    """
    t = type(obj)
    if t is str or t is bool or obj is None:
        return True
    if t is int:
        return bool(-_SAFE_INT <= obj <= _SAFE_INT)
    if t is dict:
        for k, v in obj.items():
            if type(k) is not str or (not k.isascii() and max(k) >= "\ue000"):
                return False
            if not _orjson_is_jcs(v):
                return False
        return True
    if t is list or t is tuple:
        return all(_orjson_is_jcs(v) for v in obj)
    return False


def _no_float_token(out: bytes) -> bool:
    """Whether every float-looking match of orjson's output lies inside a string (an image tag
    such as "app:1.2.3" in an admitted object), so no number is a float.

    Inside orjson's output a quote is escaped as \\" and a backslash only starts an escape: with no
    escaped backslash before a match, unescaped quotes before it = quotes - escaped quotes, odd
    inside a string. Anything less clear (an escaped backslash, many matches) says no: the exact
    check decides then.
    """
    if out[:1] not in (b"{", b"["):
        return _FLOAT.search(out) is None  # a bare value: only a top-level number can be a float
    for n, match in enumerate(_INNER_FLOAT.finditer(out)):
        at = match.start()
        if n >= 16 or out.find(b"\\\\", 0, at) != -1:
            return False
        if (out.count(b'"', 0, at) - out.count(b'\\"', 0, at)) % 2 == 0:
            return False  # outside every string: a real float
    return True


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical JSON bytes; raises ``RecordError`` for values JSON cannot hold.

    Fast path: orjson's sorted output, taken only when it provably equals JCS: pure ASCII
    (so code-point and UTF-16 key orders agree) with no float-looking token (orjson and
    ECMAScript format floats differently) and, via OPT_STRICT_INTEGER, no unsafe integer.
    Anything else goes through the exact, slower ``rfc8785`` encoder.
    """
    out = _orjson(obj)
    if out is not None and ((_plain(out) and _no_float_token(out)) or _orjson_is_jcs(obj)):
        return bytes(out)
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise RecordError(f"record content is not representable as canonical JSON: {exc}") from exc
    except RecursionError:
        raise RecordError("record content is nested too deeply to encode") from None


class _Clock:
    """RFC 3339 UTC timestamps with microseconds; the per-second prefix is formatted once."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def __call__(self) -> str:
        return stamp(_time.time_ns(), self)


now = _Clock()
now_ns = _time.time_ns  # the writer's clock (tests replace it with a simulated one)


def stamp(ns: int, clock: _Clock = now) -> str:
    """``now()``'s format for a ``time.time_ns()`` reading taken earlier (by ``AuditLog.append``)."""
    second, micro = divmod(ns // 1000, 1_000_000)
    if second != clock.second:
        clock.second = second
        clock.prefix = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{clock.prefix}.{micro:06d}Z"


def encode_record(time: str, kind: str, writer: str, content: dict[str, Any]) -> bytes:
    if kind not in KINDS:
        raise RecordError(f"record kind {kind!r} is not one of {sorted(KINDS)}")
    if not isinstance(content, dict):
        raise RecordError(f"record content must be a JSON object, got {type(content).__name__}")
    data = _envelope(canonical(content), kind, time, writer)
    if len(data) > MAX_RECORD:
        raise _too_big(data)
    return data


def content_json(content: dict[str, Any]) -> bytes | None:
    """orjson's sorted bytes of a record's content when they are its RFC 8785 form unless a float
    is in them (``GroupEncoder`` checks that once per group); None when only ``encode_record``'s
    exact path can tell: not JSON to orjson, an unsafe integer, non-ASCII text, or a null
    (orjson also writes NaN and infinities as null, which JCS rejects)."""
    body = _orjson(content)
    return body if body is not None and _plain(body) else None


def _orjson(obj: Any) -> bytes | None:
    """orjson's sorted bytes, or None for what it cannot encode (an unsafe integer among them)."""
    try:
        return orjson.dumps(obj, option=_ORJSON_OPTS)
    except (orjson.JSONEncodeError, TypeError):
        return None


def _plain(out: bytes) -> bool:
    """Whether orjson's bytes can be JCS as they stand but for floats: pure ASCII (code-point and
    UTF-16 key orders agree) and no null (orjson writes NaN and infinities as null, which JCS
    rejects: a null sends the exact path to decide)."""
    return out.isascii() and b"null" not in out


# kind -> the envelope between content and time, for ``_tilehash.envelopes``
_KIND_TOKENS: dict[str, bytes] = {k: b',"kind":' + orjson.dumps(k) + b',"time":"' for k in sorted(KINDS)}


class GroupEncoder:
    """``encode_record`` for a whole group commit at once, with the same bytes.

    ``AuditLog.append`` keeps each record as ``content_json`` bytes (or, off that path, as the
    finished entry), so the caller's objects are not held while the group gathers. Here the
    envelope's fixed parts are built once per writer and kind, the time prefix once per second,
    and the float check runs once over the group; with the C accelerator built, the records
    are assembled and checked in one call each. A group
    holding a float token (one record is enough) is re-checked record by record, and each
    record with a float is re-encoded by ``encode_record`` from its parsed content: orjson
    writes floats in shortest round-trip form, so the parsed value is the caller's.
    """

    __slots__ = ("_clock", "_heads", "_tail", "writer")

    def __init__(self, writer: str) -> None:
        self.writer = writer
        self._tail = b'Z","writer":' + orjson.dumps(writer) + b"}"
        self._clock = _Clock()
        self._heads: dict[str, bytes] = {}  # kind -> ',"kind":"<kind>","time":"<second>.'

    def encode(
        self, kinds: Sequence[str | None], bodies: Sequence[bytes], times: Sequence[int]
    ) -> tuple[list[bytes], dict[int, RecordError]]:
        """Entries for records given as ``content_json`` bytes with their kind and time_ns (or
        as finished entries, kind None), and the position and error of each one ``encode_record``
        rejects (left out)."""
        built = None
        if _accel is not None:
            tokens = [_KIND_TOKENS.get(k) for k in kinds]  # type: ignore[arg-type]  # None stays None
            built = _accel.envelopes(tokens, bodies, times, self._tail)
        entries = self._envelopes(kinds, bodies, times) if built is None else built
        if _accel is not None and not _accel.content_floats(entries):
            if max(map(len, entries), default=0) <= MAX_RECORD:
                return entries, {}
            return entries, {i: _too_big(e) for i, e in enumerate(entries) if len(e) > MAX_RECORD}
        return entries, self._recheck(kinds, bodies, times, entries)

    def _envelopes(self, kinds: Sequence[str | None], bodies: Sequence[bytes], times: Sequence[int]) -> list[bytes]:
        """The records in Python (the reference ``_tilehash.envelopes`` is tested against)."""
        clock, tail, heads = self._clock, self._tail, self._heads
        entries: list[bytes] = []
        second = clock.second
        for kind, body, ns in zip(kinds, bodies, times, strict=True):
            if kind is None:
                entries.append(body)
                continue
            at, micro = divmod(ns // 1000, 1_000_000)
            if at != second:
                second = at
                stamp(ns, clock)
                heads.clear()
            head = heads.get(kind)
            if head is None:
                head = heads[kind] = b'","time":"'.join(
                    (b',"kind":' + orjson.dumps(kind)[:-1], clock.prefix.encode() + b".")
                )
            entries.append(b"".join((b'{"content":', body, head, b"%06d" % micro, tail)))
        return entries

    def _recheck(
        self, kinds: Sequence[str | None], bodies: Sequence[bytes], times: Sequence[int], entries: list[bytes]
    ) -> dict[int, RecordError]:
        bad: dict[int, RecordError] = {}
        for i, kind in enumerate(kinds):
            entry = entries[i]
            if kind is not None and _content_floats((entry,)):
                try:
                    entry = entries[i] = encode_record(
                        stamp(times[i], self._clock), kind, self.writer, orjson.loads(bodies[i])
                    )
                except RecordError as exc:
                    bad[i] = exc
                    continue
            if len(entry) > MAX_RECORD:
                bad[i] = _too_big(entry)
        return bad


def _too_big(entry: bytes) -> RecordError:
    return RecordError(f"record is {len(entry)} bytes; the limit is {MAX_RECORD} (shrink the content)")


def _envelope(content: bytes, kind: str, time: str, writer: str) -> bytes:
    """JCS of the whole record, assembled: its keys are fixed and already in sorted order,
    and orjson encodes strings exactly as RFC 8785 does (only key order and floats differ)."""
    return b"".join(
        (
            b'{"content":',
            content,
            b',"kind":',
            orjson.dumps(kind),
            b',"time":',
            orjson.dumps(time),
            b',"writer":',
            orjson.dumps(writer),
            b"}",
        )
    )


def decode_record(data: bytes) -> dict[str, Any]:
    """Parse a stored entry and check it is a canonical record (raises ``RecordError``)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not JSON ({exc})") from exc
    if type(obj) is not dict or obj.keys() != _KEYS:
        raise RecordError("not an object with exactly content, kind, time, writer")
    if not isinstance(obj["kind"], str) or obj["kind"] not in KINDS or not isinstance(obj["content"], dict):
        raise RecordError(f"bad kind {obj['kind']!r} or content")
    if not isinstance(obj["time"], str) or not isinstance(obj["writer"], str):
        raise RecordError("time and writer must be strings")
    # Fast path, as in ``canonical``: for ASCII text without float tokens in the content or
    # unsafe integers, orjson's sorted output is exactly RFC 8785, so one re-encoding of the
    # whole record decides (the envelope's time string always holds ':SS.' so is skipped).
    if data.isascii():
        try:
            same = orjson.dumps(obj, option=_ORJSON_OPTS) == data
        except orjson.JSONEncodeError:
            same = False
        # The content ends at the envelope's `,"kind":` (the last one: inside the strings that
        # follow, a quote would be escaped), so float tokens are looked for in the content only.
        if same and _INNER_FLOAT.search(data, _CONTENT_AT, data.rfind(b',"kind":')) is None:
            return obj
    try:
        body = canonical(obj["content"])
    except RecordError:  # a float such as 2.0**53 parses back as an int JCS rejects
        body = canonical(_big_ints_as_floats(obj["content"]))
    if _envelope(body, obj["kind"], obj["time"], obj["writer"]) != data:
        raise RecordError("not in RFC 8785 canonical form")
    return obj


def bad_records(entries: Sequence[bytes]) -> list[tuple[int, RecordError]]:
    """``(position, error)`` of each entry ``decode_record`` rejects, in order (verify's check).

    Fast path for a whole bundle, exact for the same reason as ``decode_record``'s: every entry
    parsed on its own into a record object, all ASCII, no float token in any content, and
    orjson's sorted re-encoding of the list equal to the entries joined by commas. That last
    test is per entry, not merely for the concatenation: each entry and each re-encoding is
    one complete JSON object, and an object ends at the first byte where its braces balance
    (outside strings), so two objects read from the same bytes at the same offset end at the
    same byte, and the next comparison starts aligned again. Anything else (one odd record
    is enough) re-checks every entry with ``decode_record``, so reports are exactly its own.
    """
    if not entries:
        return []
    # The parsed records are trees (no cycles), freed by reference counting as soon as this
    # returns: the cyclic collector, which their thousands of containers would trigger over
    # and over, has nothing to find in them, so it is paused for the bundle.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _bad_records(entries)
    finally:
        if collecting:
            gc.enable()


def _bad_records(entries: Sequence[bytes]) -> list[tuple[int, RecordError]]:
    try:
        objs = list(map(orjson.loads, entries))
        # decode_record's shape checks for all at once, in C-level passes: objects of four
        # keys, each of the four present (a missing one is a KeyError, the slow path), so
        # exactly these keys (their order is the sorted re-encoding's test below), a known
        # kind (only a str equals one), an object content, string time and writer.
        if set(map(type, objs)) != {dict} or set(map(len, objs)) != {len(_KEY_ORDER)}:
            raise RecordError("slow path")
        if not set(map(_KIND, objs)) <= KINDS or set(map(type, map(_CONTENT, objs))) != {dict}:
            raise RecordError("slow path")
        if set(map(type, map(_TIME, objs))) != {str} or set(map(type, map(_WRITER, objs))) != {str}:
            raise RecordError("slow path")
        joined = b",".join(entries)
        if not joined.isascii() or orjson.dumps(objs, option=_ORJSON_OPTS) != b"[" + joined + b"]":
            raise RecordError("slow path")
        if not _content_floats(entries):
            return []
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, RecordError, TypeError, KeyError):
        pass
    bad = []
    for i, entry in enumerate(entries):
        try:
            decode_record(entry)
        except RecordError as exc:
            bad.append((i, exc))
    return bad


def _content_floats(entries: Sequence[bytes]) -> bool:
    """Whether any content may hold a float (True sends the bundle down the exact path).

    Each content runs from the envelope's '{' to its last `,"kind":`, as in decode_record. The
    accelerator skips strings, so an image tag "app:1.2.3" is no float to it; the regex here
    also flags such strings, which only costs the exact path. The '\n' between contents is in
    no class of the pattern, so no match spans two records.
    """
    if _accel is not None:
        return _accel.content_floats(entries)
    return _INNER_FLOAT.search(b"\n".join([e[_CONTENT_AT : e.rfind(b',"kind":')] for e in entries])) is not None


def _big_ints_as_floats(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _big_ints_as_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_big_ints_as_floats(v) for v in obj]
    if type(obj) is int and not -_SAFE_INT <= obj <= _SAFE_INT:
        return float(obj)
    return obj
