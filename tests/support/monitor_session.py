"""One live runtime monitor (real bpftrace) per test module, for the end-to-end eBPF tests.

The monitor runs on its own event loop in a thread, so tests can run real processes and poll
the collected alerts. ``live_session`` skips only where eBPF cannot run (not root, no
bpftrace, a kernel that refuses) and fails on any other start-up error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from webhook.runtime import monitor, outputs
from webhook.runtime.engine import Engine
from webhook.runtime.sources import ebpf, kernel, ringbuf
from webhook.runtime.sources.base import RawEvent

# The live eBPF backends every end-to-end test runs over (sources.kernel chooses in production).
BACKENDS = ("bpftrace", "ringbuf")


class Collect(outputs.Output):
    """Keeps every alert, for tests polling from another thread."""

    name = "collect"

    def __init__(self) -> None:
        super().__init__()
        self.alerts: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        with self.lock:
            self.alerts.extend(batch)


class MonitorSession:
    """The monitor as ``portcullis monitor`` builds it (``kernel.for_engine``) over ``rules``."""

    def __init__(self, rules: Path, backend: str = "bpftrace") -> None:
        self.rules = rules
        self.backend = backend
        self.sink = Collect()
        self.error: BaseException | None = None
        self.snapshot: dict[str, Any] = {}
        self.ready = threading.Event()
        self.stopped_by_test = False
        self.source: Any
        self.monitor: monitor.Monitor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        engine = Engine.load([self.rules])
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self.source = kernel.for_engine(engine, self.backend)
        self.monitor = monitor.Monitor(self.source, engine, [self.sink])
        task = asyncio.create_task(self.monitor.run(stop=self._stop))
        ready = asyncio.create_task(self.monitor.ready.wait())
        await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
        self.ready.set()
        self.snapshot = await task

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self.stopped_by_test = True
            self._loop.call_soon_threadsafe(self._stop.set)

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], limit: float = 30.0) -> dict[str, Any]:
        """The first alert matching ``pred`` (waits for the pipeline; fails after ``limit`` s)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            with self.sink.lock:
                for a in self.sink.alerts:
                    if pred(a):
                        return a
            time.sleep(0.05)
        with self.sink.lock:
            seen = sorted({(a["rule"], a["output"][:160]) for a in self.sink.alerts})
        raise AssertionError(f"no matching alert; alerts seen: {seen[:40]}")

    def wait_for_rule(self, rule: str, marker: str, limit: float = 30.0) -> dict[str, Any]:
        """The first alert of ``rule`` whose output holds ``marker``."""
        try:
            return self.wait_for(lambda a: a["rule"] == rule and marker in a["output"], limit)
        except AssertionError:
            with self.sink.lock:
                seen = sorted({(a["rule"], a["output"][:160]) for a in self.sink.alerts if marker in a["output"]})
            raise AssertionError(f"no {rule!r} alert with {marker!r}; alerts with the marker: {seen}") from None


@contextlib.contextmanager
def live_session(rules: Path, start_timeout: float = 300, backend: str = "bpftrace") -> Iterator[MonitorSession]:
    """Start the monitor, yield it, stop it; the caller asserts on its final snapshot after."""
    skip_unless_backend(backend)
    s = MonitorSession(rules, backend)
    thread = threading.Thread(target=s.run, daemon=True)
    thread.start()
    s.ready.wait(start_timeout)
    if isinstance(s.error, ebpf.EbpfUnavailable):
        pytest.skip(f"eBPF unavailable here: {s.error}")
    if s.error is not None:
        raise s.error
    yield s
    s.stop()
    thread.join(60)
    assert s.error is None


def skip_unless_backend(backend: str) -> None:
    """Skip where the backend cannot run at all (not root, its tools not installed)."""
    if os.geteuid() != 0:
        pytest.skip("eBPF tests need root")
    if backend == "bpftrace" and shutil.which("bpftrace") is None:
        pytest.skip("bpftrace is not installed (apt-get install bpftrace)")
    if backend == "ringbuf" and (missing := ringbuf.available()):
        pytest.skip(f"the ring-buffer backend needs {', '.join(missing)} (apt-get install clang bpftool libbpf-dev)")


def live_source(backend: str, engine: Engine, **kwargs: Any) -> Any:
    """The backend's source for ``engine`` as the monitor builds it."""
    skip_unless_backend(backend)
    return kernel.for_engine(engine, backend, **kwargs)


def filter_on(source: Any) -> bool:
    """Whether the source's kernel side drops unmatchable opens (the open filter is in force)."""
    if isinstance(source, ringbuf.RingbufSource):
        return "map gate " in source.config(0)
    return "gate_words *" in source.program.text


async def collect_family(source: Any, out: list[RawEvent], done: asyncio.Event, pids: set[int]) -> None:
    """The events of the action process and its children (``pids`` grows with its forks), until
    the first of them exits: then ``done`` is set."""
    async for batch in source.batches():
        for ev in batch:
            if ev.pid in pids or (ev.type == "F" and ev.params.get("ppid") in pids):
                pids.add(ev.pid)
                out.append(ev)
        if pids and any(e.type == "procexit" and e.pid == min(pids) for e in out):
            done.set()
