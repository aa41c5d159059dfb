"""Readiness (``/readyz``): ready only while the source is attached and events flow; a source that
died and is being restarted, or one that went quiet for too long, is not ready."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from webhook import errors
from webhook.runtime import monitor
from webhook.runtime.engine import Engine
from webhook.runtime.rules import DEFAULT_RULES

EVENT = {"evt.num": 1, "evt.type": "openat", "fd.name": "/tmp/x", "fd.num": 3, "proc.name": "cat"}


class Gate:
    """A live source whose batches the test releases one at a time; it dies when told to."""

    kind, live, name = "fields", True, "gate"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[Any] | Exception] = asyncio.Queue()
        self.starts = 0

    async def batches(self) -> AsyncIterator[list[Any]]:
        self.starts += 1
        while True:
            item = await self.queue.get()
            if isinstance(item, Exception):
                raise item
            yield item

    def stats(self) -> dict[str, int]:
        return {"starts": self.starts}

    async def close(self) -> None:
        return None


async def until(predicate: Any) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


async def test_ready_only_after_events_flow_and_not_while_the_source_restarts() -> None:
    source = Gate()
    mon = monitor.Monitor(source, Engine.load([DEFAULT_RULES]), [], restart_backoff=(0.01, 0.01))
    ok, why = monitor.readiness(mon, 60)
    assert not ok
    assert "not attached" in why
    stop = asyncio.Event()
    run = asyncio.create_task(mon.run(stop=stop))
    await until(lambda: mon.attached)
    ok, why = monitor.readiness(mon, 60)
    assert not ok
    assert "waiting for the first events" in why

    await source.queue.put([EVENT])
    await until(lambda: mon.metrics.events == 1)
    assert monitor.readiness(mon, 60)[0]
    assert monitor.readiness(mon, 60)[1].startswith("ok: 1 events")

    await source.queue.put(errors.UpstreamError("bpftrace exited unexpectedly"))
    await until(lambda: mon.metrics.source_restarts == 1)
    assert not monitor.readiness(mon, 60)[0]  # dead, or restarted but not yet delivering
    await until(lambda: source.starts == 2)
    await source.queue.put([EVENT])
    await until(lambda: mon.metrics.events == 2)
    assert monitor.readiness(mon, 60)[0]

    stop.set()
    await source.queue.put([])
    await run


async def test_a_source_quiet_for_longer_than_the_window_is_not_ready() -> None:
    mon = monitor.Monitor(Gate(), Engine.load([DEFAULT_RULES]), [])
    mon.attached = True
    mon.last_batch = time.monotonic() - 300
    ok, why = monitor.readiness(mon, 120)
    assert not ok
    assert "no events for 300 s" in why
    assert monitor.readiness(mon, 600)[0]


def test_a_recent_source_heartbeat_keeps_a_quiet_node_ready() -> None:
    """A source that proves it still delivers (a kernel timer) is ready with no syscall events."""
    source = Gate()
    mon = monitor.Monitor(source, Engine.load([DEFAULT_RULES]), [])
    mon.attached = True
    mon.last_batch = time.monotonic() - 300
    source.last_heartbeat = time.monotonic() - 5  # type: ignore[attr-defined]
    assert monitor.readiness(mon, 120)[0]
    source.last_heartbeat = time.monotonic() - 200  # type: ignore[attr-defined]
    assert not monitor.readiness(mon, 120)[0]
