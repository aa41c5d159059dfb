"""The runtime pipeline: source → (process table →) engine → outputs, with a bounded queue.

A live source (eBPF) never waits for the engine: when the queue is full the batch is dropped
and counted (Falco's ``n_drops``), so memory stays bounded and the kernel buffers keep draining.
Replayed sources (files) wait instead, so no event is lost. Events lost either way (in the
kernel, or at the queue) are said as Falco says them: a log line and an alert of its internal
drop rule, since a flood that hides an action is an attack in itself. Called by
``monitor_commands``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from webhook import errors
from webhook.runtime import events, outputs, state
from webhook.runtime.rules.output import iso_time
from webhook.runtime.sources.base import Source

__all__ = ["Metrics", "Monitor", "prometheus", "readiness"]

_log = logging.getLogger("portcullis.monitor")
_STOP = object()
DROP_RULE = "Falco internal: syscall event drop"  # Falco's syscall_event_drops alert
_DROP_EVERY_S = 30.0  # Falco's default action rate (1 per 30 s, burst 1); what is left is said at the end
_DROP_CHECK_S = 1.0  # how often the counters are read (the kernel's count arrives once a second)


class RuleEngine(Protocol):
    required_fields: frozenset[str]

    def process(self, event: dict[str, Any]) -> list[Any]: ...


@dataclass
class Metrics:
    """Counters of one run; ``snapshot`` is what /metrics and the final summary show."""

    started: float = field(default_factory=time.monotonic)
    events: int = 0
    batches: int = 0
    drops: int = 0  # events dropped because the queue was full (Falco's n_drops)
    errors: int = 0
    source_restarts: int = 0  # a live source that died and was started again
    alerts_by_rule: Counter[str] = field(default_factory=Counter)
    alerts_by_priority: Counter[str] = field(default_factory=Counter)

    def snapshot(self, source: dict[str, int], sinks: dict[str, dict[str, int]]) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        seen = self.events + self.drops
        return {
            "elapsed_s": round(elapsed, 3),
            "events": self.events,
            "events_per_s": round(self.events / elapsed, 1),
            "drops": self.drops,
            "source_restarts": self.source_restarts,
            "drop_ratio": round(self.drops / seen, 6) if seen else 0.0,
            "errors": self.errors,
            "alerts": sum(self.alerts_by_rule.values()),
            "alerts_by_rule": dict(sorted(self.alerts_by_rule.items())),
            "alerts_by_priority": dict(sorted(self.alerts_by_priority.items())),
            "source": source,
            "outputs": sinks,
        }


class Monitor:
    """Runs one source through the engine into the outputs until stopped or the source ends."""

    def __init__(
        self,
        source: Source,
        engine: RuleEngine,
        sinks: Sequence[outputs.Output],
        *,
        queue_batches: int = 64,
        hostname: str | None = None,
        restart_backoff: tuple[float, float] | None = (0.5, 30.0),  # None: a dying source ends the run
        table: state.ProcessTable | None = None,
        metadata: Any = None,
    ) -> None:
        self.source = source
        self.engine = engine
        self.sinks = list(sinks)
        self.hostname = hostname or os.uname().nodename
        self.metrics = Metrics()
        self.ready = asyncio.Event()
        self.last_errors: list[str] = []  # the first few events that failed, for diagnosis
        self._queue: asyncio.Queue[Any] = asyncio.Queue(queue_batches)
        self._backoff = restart_backoff
        self._stopping = asyncio.Event()
        self.table = table
        self.metadata = metadata  # k8s_meta.KubeletPods: pod fields for container ids
        self.builder: events.EventBuilder | None = None
        # Readiness (``readiness()``): the source is attached (its probes loaded) and delivering.
        self.attached = False
        self.last_batch: float | None = None  # time.monotonic() of the latest batch with events
        self.resolver: events.NameResolver | None = None
        # Losses already reported (``_report_loss``): the source's kernel count restarts with a
        # restarted source, so the counts of earlier ones are kept in ``_lost_before``.
        self._lost_prev = self._lost_before = self._kernel_said = self._queue_said = self._events_said = 0
        self._said_at: float | None = None
        if source.kind == "raw":
            self.table = table or state.ProcessTable()
            names: frozenset[str] = getattr(engine, "sip_names", frozenset())
            if names and "fd.sip.name" in engine.required_fields:
                self.resolver = events.NameResolver(names)
            self.builder = events.EventBuilder(
                self.table, engine.required_fields, self.hostname, metadata, resolver=self.resolver,
                by_type=getattr(engine, "fields_for_type", None),
            )  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        source = self.source.stats()
        if self.metadata is not None:
            source = {**source, **self.metadata.stats()}
        return self.metrics.snapshot(source, {s.name: s.stats() for s in self.sinks})

    async def run(self, *, duration: float | None = None, stop: asyncio.Event | None = None) -> dict[str, Any]:
        """Run until ``duration`` seconds pass, ``stop`` is set, or the source ends; then flush."""
        for sink in self.sinks:
            await sink.start()
        if self.metadata is not None:
            await self.metadata.start()
        if self.table is not None and not self.table.procs:
            await asyncio.to_thread(self.table.seed)
        if self.resolver is not None:
            self.resolver.start()
        consumer = asyncio.create_task(self._consume(), name="monitor-engine")
        watch = asyncio.create_task(self._watch_loss(), name="monitor-loss")
        producer: asyncio.Task[None] | None = None
        try:
            start = getattr(self.source, "start", None)
            if start is not None:
                await start()
            self.metrics.started = time.monotonic()
            self.attached = True
            self.ready.set()
            producer = asyncio.create_task(self._produce(), name="monitor-source")
            waiters: list[asyncio.Future[Any]] = [producer]
            if stop is not None:
                waiters.append(asyncio.ensure_future(stop.wait()))
            await asyncio.wait(waiters, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters[1:]:
                w.cancel()
            await self._drain_source(producer)
            with contextlib.suppress(asyncio.CancelledError):
                await producer  # re-raises the source's own error (bad input, bpftrace failure)
        finally:
            if producer is not None and not producer.done():  # run() itself was cancelled
                producer.cancel()
            await self.source.close()
            await self._queue.put(_STOP)
            await consumer
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            self._report_loss(final=True)  # nothing lost goes unsaid, whatever the rate
            for sink in self.sinks:
                await sink.close()
            if self.metadata is not None:
                await self.metadata.close()
            if self.resolver is not None:
                self.resolver.close()
        return self.snapshot()

    async def _drain_source(self, producer: asyncio.Task[None]) -> None:
        """Stop a live source gracefully: it exits, and what it already printed is still read."""
        self._stopping.set()
        interrupt = getattr(self.source, "interrupt", None)
        if interrupt is not None and not producer.done():
            interrupt()
            await asyncio.wait([producer], timeout=10)
        if not producer.done():
            producer.cancel()

    async def _produce(self) -> None:
        """Feed the queue; a live source that dies is started again with backoff (counted)."""
        delay, most = self._backoff or (0.0, 0.0)
        while True:
            try:
                await self._feed()
                return
            except errors.UpstreamError as exc:
                if not self.source.live or self._stopping.is_set() or self._backoff is None:
                    raise
                self.attached = False  # not ready until the restarted source delivers again
                self.metrics.source_restarts += 1
                _log.error(
                    "event source %s died (%s); restart %d in %.1f s",
                    self.source.name, exc, self.metrics.source_restarts, delay,
                )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            delay = min(delay * 2, most)
            await self.source.close()

    async def _feed(self) -> None:
        queue, live, metrics, clock = self._queue, self.source.live, self.metrics, time.monotonic
        async for batch in self.source.batches():
            if batch:
                self.last_batch = clock()
                self.attached = True
            if not live:
                await queue.put(batch)
                continue
            try:
                queue.put_nowait(batch)
            except asyncio.QueueFull:
                metrics.drops += len(batch)

    async def _watch_loss(self) -> None:
        while True:
            await asyncio.sleep(_DROP_CHECK_S)
            self._report_loss()

    def _report_loss(self, *, final: bool = False) -> None:
        """Events lost since the last report (the source's kernel-side count and the queue's
        drops): a CRITICAL log line and an alert of Falco's internal drop rule, with its name,
        priority (Debug) and string-valued fields, so falcosidekick and friends treat it as
        Falco's. The first loss is said at once, then at most once per ``_DROP_EVERY_S``."""
        lost = int(self.source.stats().get("kernel_lost", 0))
        if lost < self._lost_prev:  # a restarted source counts from 0 again
            self._lost_before += self._lost_prev
        self._lost_prev = lost
        kernel = self._lost_before + lost
        now = time.monotonic()
        buffer, queue = kernel - self._kernel_said, self.metrics.drops - self._queue_said
        if buffer + queue <= 0 or (not final and self._said_at is not None and now - self._said_at < _DROP_EVERY_S):
            return
        since = now - (self._said_at if self._said_at is not None else self.metrics.started)
        evts = self.metrics.events - self._events_said
        self._kernel_said, self._queue_said, self._events_said = kernel, self.metrics.drops, self.metrics.events
        self._said_at = now
        span = "last second" if since <= 1.5 else f"last {since:.0f} seconds"
        text = f"{DROP_RULE}. {buffer + queue} system calls dropped in {span}."
        _log.critical(
            "%s (kernel buffer %d, queue %d; %d and %d in all)", text, buffer, queue, kernel, self.metrics.drops
        )
        fields = {"n_drops": buffer + queue, "n_drops_buffer": buffer, "n_drops_queue": queue, "n_evts": evts}
        doc = {
            "hostname": self.hostname,
            "output": text,
            "output_fields": {k: str(v) for k, v in fields.items()},
            "priority": "Debug",
            "rule": DROP_RULE,
            "source": "syscall",
            "tags": [],
            "time": iso_time(time.time_ns()),
        }
        self.metrics.alerts_by_rule[DROP_RULE] += 1
        self.metrics.alerts_by_priority["Debug"] += 1
        for sink in self.sinks:
            sink.emit(doc)

    async def _consume(self) -> None:
        while True:
            batch = await self._queue.get()
            if batch is _STOP:
                return
            self._process(batch)
            await asyncio.sleep(0)  # let the reader and the sinks run between batches

    def _process(self, batch: list[Any]) -> None:
        metrics, process, build = self.metrics, self.engine.process, self.builder
        by_rule, by_priority, hostname, sinks = (
            metrics.alerts_by_rule, metrics.alerts_by_priority, self.hostname, self.sinks,
        )  # fmt: skip
        metrics.batches += 1
        for item in batch:
            try:
                event = build.build(item) if build is not None else item
                if event is None:
                    continue
                metrics.events += 1
                alerts = process(event)
            except Exception as exc:  # one odd event must not stop the node's monitor
                metrics.errors += 1
                if len(self.last_errors) < 10:
                    self.last_errors.append(f"{type(exc).__name__}: {exc} in {item!r}")
                _log.debug("event failed: %r", item, exc_info=True)
                continue
            for alert in alerts:
                by_rule[alert.rule] += 1
                by_priority[alert.priority] += 1
                doc = alert.to_falco_json(hostname)
                for sink in sinks:
                    sink.emit(doc)


def readiness(mon: Monitor, stale_after: float) -> tuple[bool, str]:
    """Whether the monitor is doing its job, and why not: the source is attached (bpftrace has
    loaded its probes; a dead source being restarted is not) and events arrived within the last
    ``stale_after`` seconds. Served as ``/readyz``; the chart's readiness probe reads it.

    A source may also keep ``last_heartbeat`` (a ``time.monotonic()``): a kernel-side timer that
    proves the probes still deliver on a node where no traced syscall happens for a while."""
    if not mon.attached:
        return False, "event source not attached (probes loading, or the source is being restarted)"
    beat = getattr(mon.source, "last_heartbeat", None)
    seen = [t for t in (mon.last_batch, beat) if isinstance(t, int | float)]
    if not seen:
        return False, "attached, waiting for the first events"
    age = time.monotonic() - max(seen)
    if age > stale_after:
        return False, f"no events for {age:.0f} s (more than {stale_after:g} s)"
    return True, f"ok: {mon.metrics.events} events, the latest event or heartbeat {age:.1f} s ago"


def prometheus(snapshot: dict[str, Any]) -> str:
    """The snapshot in Prometheus text format (served on --metrics-listen)."""
    lines = [
        f"portcullis_monitor_events_total {snapshot['events']}",
        f"portcullis_monitor_events_per_second {snapshot['events_per_s']}",
        f"portcullis_monitor_drops_total {snapshot['drops']}",
        f"portcullis_monitor_errors_total {snapshot['errors']}",
        f"portcullis_monitor_source_restarts_total {snapshot.get('source_restarts', 0)}",
    ]
    for key, value in snapshot["source"].items():
        lines.append(f'portcullis_monitor_source_total{{counter="{key}"}} {value}')
    for rule, n in snapshot["alerts_by_rule"].items():
        label = rule.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'portcullis_monitor_alerts_total{{rule="{label}"}} {n}')
    for prio, n in snapshot["alerts_by_priority"].items():
        lines.append(f'portcullis_monitor_alerts_by_priority_total{{priority="{prio}"}} {n}')
    for name, stats in snapshot["outputs"].items():
        for key, value in stats.items():
            lines.append(f'portcullis_monitor_output_{key}_total{{output="{name}"}} {value}')
    return "\n".join(lines) + "\n"
