"""Falco output strings: ``%field`` / ``%field[arg]`` tokens rendered from an event (used by the engine).

A missing value renders as ``<NA>``, booleans as ``true``/``false``, ``evt.time`` as
``HH:MM:SS.nnnnnnnnn`` (UTC). ``output_fields`` keep the raw values (None when missing).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.runtime.rules import fields

__all__ = ["OutputFormat", "format_time", "iso_time"]

_TOKEN = re.compile(r"%([a-zA-Z][a-zA-Z0-9_]*(?:\.[a-zA-Z0-9_]+)+)(?:\[([^\]\s]*)\])?")


def format_time(ns: int) -> str:
    """``evt.time`` as Falco prints it in output lines (UTC here, for reproducible output)."""
    secs, frac = divmod(int(ns), 1_000_000_000)
    return dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%H:%M:%S") + f".{frac:09d}"


def iso_time(ns: int) -> str:
    """The alert's ``time`` as in Falco's JSON: RFC 3339 with nanoseconds, UTC."""
    secs, frac = divmod(int(ns), 1_000_000_000)
    return dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def _render(value: Any) -> str:
    if value is None:
        return "<NA>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_render(v) for v in value)
    return str(value)


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """A parsed output string: literal text and (name, arg, event key) field tokens."""

    text: str
    parts: tuple[str | tuple[str, str | None, str], ...]

    @classmethod
    def parse(cls, text: str) -> OutputFormat:
        parts: list[str | tuple[str, str | None, str]] = []
        last = 0
        for m in _TOKEN.finditer(text):
            if m.start() > last:
                parts.append(text[last : m.start()])
            name, arg = m.group(1), m.group(2)
            parts.append((name, arg, name if arg is None else f"{name}[{arg}]"))
            last = m.end()
        if last < len(text):
            parts.append(text[last:])
        return cls(text, tuple(parts))

    def fields(self) -> set[str]:
        return {p[2] for p in self.parts if isinstance(p, tuple)}

    def invalid_field(self) -> str | None:
        """A message for the first unknown field token, or None."""
        for p in self.parts:
            if isinstance(p, tuple):
                info = fields.lookup(p[0], p[1])
                if isinstance(info, str):
                    return info
        return None

    def values(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Raw values of the output's fields (Falco's ``output_fields``)."""
        out: dict[str, Any] = {}
        for p in self.parts:
            if isinstance(p, tuple):
                name, arg, key = p
                value = event.get(fields.field_key(name, arg))
                if value is None and arg is None:
                    derive = fields.derived_values(name)
                    vals = derive(event) if derive is not None else None
                    value = vals[0] if vals else None
                    value = str(value) if value is not None and not isinstance(value, int | str) else value
                out[key] = value
        return out

    def render(self, values: Mapping[str, Any]) -> str:
        chunks: list[str] = []
        for p in self.parts:
            if isinstance(p, str):
                chunks.append(p)
            elif p[2] == "evt.time" and isinstance(values.get("evt.time"), int):
                chunks.append(format_time(values["evt.time"]))
            else:
                chunks.append(_render(values.get(p[2])))
        return "".join(chunks)
