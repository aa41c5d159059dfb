"""JSON lines of Falco-field events (a file or stdin): the conformance data's format, for replay.

Each line is one object mapping Falco field names to values; blank lines are skipped. A line
that is not a JSON object stops the run with ``EventInputError`` naming file and line.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import orjson

from webhook import errors

__all__ = ["EventInputError", "JsonlSource", "decode_lines"]


class EventInputError(errors.InputError):
    """An events file cannot be read or one of its lines is not a JSON object."""


def decode_lines(lines: list[bytes], *, name: str, first_line: int) -> list[dict[str, Any]]:
    """Decode a batch of lines; raises ``EventInputError`` at the first bad one."""
    out = []
    loads = orjson.loads
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = loads(line)
        except orjson.JSONDecodeError as exc:
            raise EventInputError(f"{name}:{first_line + i}: not valid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise EventInputError(
                f"{name}:{first_line + i}: expected an object of Falco fields, got {type(obj).__name__}"
            )
        out.append(obj)
    return out


class JsonlSource:
    """Reads ``path`` (``-`` for stdin) in batches of ``batch_lines``; applies backpressure."""

    kind = "fields"
    live = False
    name = "jsonl"

    def __init__(self, path: str | Path, *, batch_lines: int = 512) -> None:
        self.path = str(path)
        self.batch_lines = batch_lines
        self.lines = 0

    async def batches(self) -> AsyncIterator[list[Any]]:
        stream: IO[bytes]
        if self.path == "-":
            stream = sys.stdin.buffer
        else:
            try:
                stream = open(self.path, "rb")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise EventInputError(f"cannot read events file {self.path}: {exc.strerror or exc}") from exc
        name = "<stdin>" if self.path == "-" else self.path
        try:
            while True:
                lines = await asyncio.to_thread(_read_batch, stream, self.batch_lines)
                if not lines:
                    break
                batch = decode_lines(lines, name=name, first_line=self.lines + 1)
                self.lines += len(lines)
                if batch:
                    yield batch
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()

    def stats(self) -> dict[str, int]:
        return {"lines": self.lines}

    async def close(self) -> None:
        return None


def _read_batch(stream: IO[bytes], n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        line = stream.readline()
        if not line:
            break
        out.append(line)
    return out
