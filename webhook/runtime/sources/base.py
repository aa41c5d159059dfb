"""What every event source hands to the monitor: raw kernel events or ready Falco field mappings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class RawEvent:
    """One syscall exit (or process event) as the kernel saw it; ``state`` turns it into fields.

    A plain slots class rather than a dataclass: the eBPF source builds one per event.
    """

    __slots__ = ("comm", "params", "pid", "res", "tid", "ts", "type", "uid")

    def __init__(
        self, type: str, ts: int, pid: int, tid: int, uid: int, comm: str, res: int, params: dict[str, Any]
    ) -> None:
        self.type = type  # Falco evt.type, or "F" (fork, child side) for the process table only
        self.ts = ts  # nanoseconds since the epoch
        self.pid = pid
        self.tid = tid
        self.uid = uid
        self.comm = comm
        self.res = res
        self.params = params

    def __repr__(self) -> str:
        return f"RawEvent({self.type!r}, pid={self.pid}, res={self.res}, {self.params!r})"


class Source(Protocol):
    """A stream of event batches; ``live`` sources drop on overload, replayed ones apply backpressure.

    ``kind`` is ``"raw"`` (RawEvent, needs the process table) or ``"fields"`` (Falco field dicts).
    """

    kind: str
    live: bool
    name: str

    def batches(self) -> AsyncIterator[list[Any]]: ...

    def stats(self) -> dict[str, int]: ...

    async def close(self) -> None: ...
