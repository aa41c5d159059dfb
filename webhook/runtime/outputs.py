"""Alert sinks of the monitor: stdout (Falco JSON lines), a file, HTTP POST, the audit log.

Every sink has its own bounded queue and worker task, so a slow sink never stalls the engine:
``emit`` never blocks; when a queue is full the alert is counted in ``dropped``. ``close``
drains what is queued (graceful shutdown flushes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson

from webhook import errors

__all__ = ["AuditOutput", "FileOutput", "HttpOutput", "Output", "StdoutOutput", "parse_output"]

_log = logging.getLogger("portcullis.monitor")
_STOP = object()


class OutputError(errors.ConfigError):
    """An ``--output`` value is not one of stdout, file:PATH, http(s)://URL."""


class Output:
    """Base sink: a queue and a worker that hands batches to ``_write``."""

    name = "output"

    def __init__(self, *, queue_size: int = 10_000, batch: int = 256) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(queue_size)
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.dropped = 0
        self.failed = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"output:{self.name}")

    def emit(self, alert: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            batch: list[dict[str, Any]] = []
            stop = item is _STOP
            if not stop:
                batch.append(item)
            while not stop and len(batch) < self._batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                try:
                    await self._write(batch)
                    self.sent += len(batch)
                except Exception as exc:  # a broken sink must not stop the others or the engine
                    self.failed += len(batch)
                    _log.warning("%s: %d alerts lost: %s", self.name, len(batch), exc)
            if stop:
                return

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Flush everything queued, then release resources."""
        if self._task is not None:
            await self._queue.put(_STOP)
            await self._task
            self._task = None

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped, "failed": self.failed}


class StdoutOutput(Output):
    name = "stdout"

    def __init__(self, stream: IO[bytes] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self._stream = stream

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        stream = self._stream or sys.stdout.buffer
        stream.write(b"".join(orjson.dumps(a) + b"\n" for a in batch))
        stream.flush()


class FileOutput(Output):
    """Appends JSON lines to ``path`` (one write per batch)."""

    def __init__(self, path: str | Path, **kw: Any) -> None:
        super().__init__(**kw)
        self.path = Path(path)
        self.name = f"file:{path}"
        try:
            self._file: IO[bytes] | None = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise OutputError(f"cannot open alert file {path}: {exc.strerror or exc}") from exc

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        assert self._file is not None
        self._file.write(b"".join(orjson.dumps(a) + b"\n" for a in batch))
        self._file.flush()

    async def close(self) -> None:
        await super().close()
        if self._file is not None:
            self._file.close()
            self._file = None


class HttpOutput(Output):
    """POSTs batches as JSON lines (``application/x-ndjson``); retries with exponential backoff."""

    def __init__(self, url: str, *, retries: int = 5, backoff: float = 0.2, timeout: float = 10.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.url = url
        self.name = f"http:{url}"
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.attempts = 0
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        await super().start()

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        assert self._session is not None
        body = b"".join(orjson.dumps(a) + b"\n" for a in batch)
        delay = self.backoff
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                async with self._session.post(
                    self.url, data=body, headers={"Content-Type": "application/x-ndjson"}
                ) as resp:
                    if resp.status < 300:
                        return
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        raise RuntimeError(f"{self.url} refused the alerts: HTTP {resp.status}")
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise RuntimeError(f"{self.url}: gave up after {self.retries + 1} attempts ({problem})")

    async def close(self) -> None:
        await super().close()
        if self._session is not None:
            await self._session.close()
            self._session = None


class AuditOutput(Output):
    """Appends each alert to the signed audit log (``webhook.audit.log``) as an ``alert`` record."""

    def __init__(self, directory: str | Path, key: str | Path | None, *, origin: str, writer: str, **kw: Any):
        super().__init__(**kw)
        self.name = f"audit:{directory}"
        self._args = (Path(directory), Path(key) if key else None, origin, writer)
        self._log: Any = None

    async def start(self) -> None:
        from webhook.audit import log as audit_log  # optional face: imported only when configured

        directory, key, origin, writer = self._args
        self._log = await audit_log.AuditLog.open(directory, signing_key_path=key, origin=origin, writer=writer)
        await super().start()

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        await asyncio.gather(*(self._log.append("alert", _json_safe(a)) for a in batch))

    async def close(self) -> None:
        await super().close()
        if self._log is not None:
            with contextlib.suppress(Exception):
                await self._log.close()
            self._log = None


_SAFE_INT = 2**53 - 1


def _json_safe(value: Any) -> Any:
    """The alert with integers past 2^53 (``evt.time`` in ns) as strings: the audit log's
    canonical JSON (RFC 8785) only represents integers a double holds exactly."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _SAFE_INT:
        return str(value)
    return value


def parse_output(spec: str) -> Output:
    """``stdout``, ``file:PATH`` or ``http://...``/``https://...`` (``http:URL`` also accepted)."""
    if spec == "stdout":
        return StdoutOutput()
    if spec.startswith("file:") and len(spec) > 5:
        return FileOutput(spec[5:])
    if spec.startswith(("http://", "https://")):
        return HttpOutput(spec)
    if spec.startswith("http:") and spec[5:].startswith(("http://", "https://")):
        return HttpOutput(spec[5:])
    raise OutputError(f"unknown output {spec!r} (use stdout, file:PATH or http:URL)")
