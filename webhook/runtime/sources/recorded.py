"""Recorded events (JSON lines of Falco fields) decoded for one set of compiled rules: the decode
stage of ``portcullis rules test --events``.

Most recorded events have a type no loaded rule can match (96% of the conformance traces with the
upstream rules). Building a dict of ~90 fields for each of them is most of the cost, so each line
is first read for ``evt.type`` alone (msgspec skips every other value without building it) and
only the lines some rule can match are decoded in full. A skipped line is still checked: it must
be one well-formed JSON object in UTF-8, or the run stops naming the file and line, as for any
other line. (One difference remains: a number too large for a float in a skipped line is not
reported.)

Kept lines are decoded whole with orjson: decoding only the fields the rules read (a msgspec
struct of those fields, then a dict) measured no faster, 1.5 µs against 1.4 µs per conformance
line even for the 25 fields of the shipped rules, since building the dict is the cost either way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

import msgspec
import orjson

from webhook import errors

__all__ = ["Reader"]


class _TypeOnly(msgspec.Struct):
    """The one field read before deciding whether to decode a line (any JSON type: the engine
    decides what a non-string type means)."""

    evt_type: Any = msgspec.field(default=msgspec.UNSET, name="evt.type")


_type_of = msgspec.json.Decoder(_TypeOnly).decode


class Reader:
    """Events of a JSON-lines file (``-``: stdin), leaving out those ``wanted`` rejects by type.

    ``wanted(evt_type)`` (``None`` for an event without ``evt.type``) is asked once per distinct
    type; without it every line is decoded. ``lines`` and ``skipped`` count what was read.
    """

    def __init__(self, name: str, wanted: Callable[[object], bool] | None = None) -> None:
        self.name = name
        self.wanted = wanted
        self.lines = 0
        self.skipped = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        handle = self._open()
        try:
            yield from self._read(handle)
        finally:
            if handle is not sys.stdin.buffer:
                handle.close()

    def _open(self) -> IO[bytes]:
        if self.name == "-":
            return sys.stdin.buffer
        try:
            return open(self.name, "rb")
        except OSError as exc:
            raise errors.InputError(f"{self.name}: cannot read events: {exc.strerror}") from exc

    def _read(self, handle: IO[bytes]) -> Iterator[dict[str, Any]]:
        wanted, name, type_of, unset, loads = self.wanted, self.name, _type_of, msgspec.UNSET, orjson.loads
        verdicts: dict[object, bool] = {}  # evt.type -> decode the line?
        lineno = skipped = 0
        try:
            for lineno, line in enumerate(handle, 1):
                if wanted is not None:
                    try:
                        evtype = type_of(line).evt_type
                        line.decode("utf-8")  # what the full decoder would refuse in a skipped string
                    except msgspec.ValidationError as exc:
                        raise errors.InputError(f"{name}:{lineno}: an event must be a JSON object") from exc
                    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                        if not line.strip():
                            continue
                        raise errors.InputError(f"{name}:{lineno}: invalid JSON: {exc}") from exc
                    try:
                        keep = verdicts[evtype]
                    except KeyError:
                        keep = verdicts[evtype] = wanted(None if evtype is unset else evtype)
                    except TypeError:  # a list or object as evt.type: let the engine judge it
                        keep = True
                    if not keep:
                        skipped += 1
                        continue
                elif not line.strip():
                    continue
                try:
                    event = loads(line)
                except orjson.JSONDecodeError as exc:
                    raise errors.InputError(f"{name}:{lineno}: invalid JSON: {exc}") from exc
                if not isinstance(event, dict):
                    raise errors.InputError(f"{name}:{lineno}: an event must be a JSON object")
                yield event
        finally:
            self.lines, self.skipped = lineno, self.skipped + skipped
