"""Writing audit records at simulated times (report and evidence tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from clock import rfc3339_ns

from webhook.audit import log as audit_log
from webhook.audit import records


def write(
    directory: Path,
    events: list[tuple[str, str, dict[str, Any]]],
    *,
    key: Path | None = None,
    origin: str = "t",
    writer: str = "w",
    **options: Any,
) -> None:
    """Append ``(time, kind, content)`` records to a new log (signed with ``key`` if given), each
    stamped at its time; ``options`` go to ``AuditLog.open``."""
    times = iter(t for t, _, _ in events)
    original = records.now_ns
    records.now_ns = lambda: rfc3339_ns(next(times))  # the simulated clock
    try:

        async def run() -> None:
            log = await audit_log.AuditLog.open(
                directory, signing_key_path=key, origin=origin, writer=writer, **options
            )
            for _, kind, content in events:
                await log.append(kind, content)  # type: ignore[arg-type]
            await log.close()

        asyncio.run(run())
    finally:
        records.now_ns = original
