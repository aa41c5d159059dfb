"""The monitor's event source dies: it is started again with backoff, counted, and alerts go on."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from monitor_session import BACKENDS, live_source

from webhook import errors
from webhook.runtime import monitor, outputs
from webhook.runtime.engine import Engine
from webhook.runtime.sources import ebpf

RULES = Path(__file__).resolve().parents[2] / "rules" / "portcullis_rules.yaml"


class Collect(outputs.Output):
    name = "collect"

    def __init__(self) -> None:
        super().__init__()
        self.alerts: list[dict[str, Any]] = []

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        self.alerts.extend(batch)


class FlakySource:
    """A live source of Falco field events that dies twice before it works."""

    kind, live, name = "fields", True, "flaky"

    def __init__(self) -> None:
        self.starts = 0
        self.closes = 0

    async def batches(self) -> AsyncIterator[list[Any]]:
        self.starts += 1
        if self.starts <= 2:
            raise errors.UpstreamError(f"source crashed (start {self.starts})")
        yield [{"evt.num": 1, "evt.type": "openat", "evt.dir": "<", "fd.name": "/etc/shadow", "fd.num": 3,
                "evt.is_open_read": True, "proc.name": "cat"}]  # fmt: skip

    def stats(self) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        self.closes += 1


async def test_a_dying_live_source_is_restarted_with_backoff_and_counted() -> None:
    source, sink = FlakySource(), Collect()
    engine = Engine.load([RULES])
    mon = monitor.Monitor(source, engine, [sink], restart_backoff=(0.01, 0.05))
    snapshot = await asyncio.wait_for(mon.run(), 30)
    assert source.starts == 3
    assert snapshot["source_restarts"] == 2
    assert "portcullis_monitor_source_restarts_total 2" in monitor.prometheus(snapshot)
    assert [a["rule"] for a in sink.alerts] == ["Read of shadow password file"]


async def test_a_replayed_source_that_fails_is_not_restarted() -> None:
    source = FlakySource()
    source.live = False
    mon = monitor.Monitor(source, Engine.load([RULES]), [Collect()], restart_backoff=(0.01, 0.05))
    with pytest.raises(errors.UpstreamError, match="start 1"):
        await mon.run()


@pytest.mark.root
@pytest.mark.ebpf
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
async def test_killed_backend_is_restarted_and_alerts_continue(tmp_path: Path, backend: str) -> None:
    engine = Engine.load([RULES])
    source, sink = live_source(backend, engine), Collect()
    mon = monitor.Monitor(source, engine, [sink], restart_backoff=(0.1, 1.0))
    stop = asyncio.Event()
    task = asyncio.create_task(mon.run(stop=stop))
    try:
        ready = asyncio.create_task(mon.ready.wait())
        await asyncio.wait([task, ready], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            exc = task.exception()
            if isinstance(exc, ebpf.EbpfUnavailable):
                pytest.skip(f"eBPF unavailable here: {exc}")
            raise AssertionError(f"monitor ended early: {exc}")
        first = source._proc
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)  # the source dies under the monitor
        for _ in range(1200):
            await asyncio.sleep(0.1)
            if mon.metrics.source_restarts == 1 and source._proc is not None and source.decoder.ready:
                break
        assert mon.metrics.source_restarts == 1
        assert source._proc is not None
        assert source._proc.pid != first.pid
        for _ in range(300):
            await asyncio.to_thread(subprocess.run, ["cat", "/etc/shadow"], stdout=subprocess.DEVNULL, check=True)
            await asyncio.sleep(0.1)
            if any(a["rule"] == "Read of shadow password file" for a in sink.alerts):
                break
        assert any(a["rule"] == "Read of shadow password file" for a in sink.alerts)
    finally:
        stop.set()
        snapshot = await asyncio.wait_for(task, 60)
    assert snapshot["source_restarts"] == 1
