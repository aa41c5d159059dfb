"""A simulated clock for audit-log tests: RFC 3339 UTC times as ``time.time_ns()`` values."""

from __future__ import annotations

import datetime as dt


def rfc3339_ns(text: str) -> int:
    """``2026-01-01T00:00:00.123456Z`` -> nanoseconds since the epoch (microsecond precision)."""
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (int(when.timestamp()) * 1_000_000 + when.microsecond) * 1000
