"""The canonical-record check of ``verify``, run in forked worker processes.

``verify`` owns the order of the walk and every report; this module only moves the record
check (``records.bad_records``, most of verify's CPU time) off the main process, so it runs on
other cores while the main process recomputes the Merkle tree. Bundles are dealt out in turn:
the main process writes each bundle's bytes (the very bytes it hashed) to one worker's pipe,
and each worker, once its pipe is closed, sends back what ``bad_records`` found in each of its
bundles, in order. Nothing but the bytes travels, so what is checked is what was hashed.

A worker that dies, is killed or answers short is an ``AuditWorkerError`` naming it and how it
ended: a record check that did not run must never read as a clean log.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import signal
import sys
import termios
import traceback
from types import TracebackType

from webhook import errors
from webhook.audit import records, tiles

_HEADER = 8  # a frame's length, big-endian
_PIPE_SIZE = 1 << 20  # one bundle per write without waking the reader for every 64 KiB
Found = list[tuple[int, int, str]]  # (entry in the bundle, its byte offset, the error)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) or 1


def check_bundle(data: bytes) -> Found:
    """What ``bad_records`` rejects in one well-formed bundle (``verify`` scanned it already)."""
    bad = records.bad_records(tiles.split_bundle(data))
    if not bad:
        return []
    spans = tiles.decode_spans(data)  # where each bad entry starts, for its report
    return [(i, spans[i][0], str(exc)) for i, exc in bad]


class Pool:
    """``jobs`` forked workers, each bundle to the one with most room; ``results`` returns each
    bundle's findings in the order the bundles were submitted. Use as a context manager: leaving it early (an exception
    in the caller) kills and reaps every worker still running."""

    def __init__(self, jobs: int) -> None:
        self._pids: list[int] = []
        self._reaped: set[int] = set()
        self._feeds: list[int] = []  # our write end of each worker's input pipe
        self._answers: list[int] = []  # our read end of each worker's output pipe
        self._order: list[int] = []  # the worker each submitted bundle went to
        self._room: list[int] = []  # each input pipe's capacity
        try:
            for _ in range(jobs):
                self._start()
        except BaseException:
            self._kill()
            raise

    def _start(self) -> None:
        feed_r, feed_w = os.pipe()
        answer_r, answer_w = os.pipe()
        with contextlib.suppress(OSError):  # a bigger pipe is only faster; the default works
            fcntl.fcntl(feed_w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self._room.append(fcntl.fcntl(feed_w, fcntl.F_GETPIPE_SZ))
        try:
            pid = os.fork()
        except OSError:
            for fd in (feed_r, feed_w, answer_r, answer_w):
                os.close(fd)
            raise
        if pid == 0:  # the worker: never returns into the caller's code
            code = 1
            try:
                for fd in (*self._feeds, *self._answers, feed_w, answer_r):
                    os.close(fd)  # else an earlier worker never sees its pipe close
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _serve(feed_r, answer_w)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(feed_r)
        os.close(answer_w)
        self._pids.append(pid)
        self._feeds.append(feed_w)
        self._answers.append(answer_r)

    @property
    def jobs(self) -> int:
        return len(self._pids)

    def try_submit(self, data: bytes) -> bool:
        """Queue one bundle's bytes with the worker whose pipe has the most room, if one can
        take it without blocking; False means all are busy (the caller checks it itself, so
        the main process's spare time is not spent waiting)."""
        frame = len(data).to_bytes(_HEADER, "big") + data
        free = [room - _queued(fd) for room, fd in zip(self._room, self._feeds, strict=True)]
        worker = max(range(len(free)), key=free.__getitem__)
        if free[worker] < len(frame) and _queued(self._feeds[worker]):
            return False  # an empty pipe takes any frame (the write then waits for the reader)
        try:
            _write_all(self._feeds[worker], frame)
        except OSError as exc:  # EPIPE: the worker is gone
            raise self._failure(worker, f"stopped reading ({exc.strerror})") from exc
        self._order.append(worker)
        return True

    def results(self) -> list[Found]:
        """Every bundle's findings, in submission order; raises if any worker failed."""
        for fd in self._feeds:
            os.close(fd)
        self._feeds = []
        per_worker: list[list[Found]] = []
        for worker in range(len(self._answers)):
            data = _read_all(self._answers[worker])
            self._answers[worker] = -1
            expected = self._order.count(worker)
            status = self._reap(worker)
            if status != 0:
                raise self._failure(worker, _how(status))
            size = int.from_bytes(data[:_HEADER], "big")
            found = pickle.loads(data[_HEADER:]) if len(data) == _HEADER + size else None
            if not isinstance(found, list) or len(found) != expected:
                raise self._failure(worker, "exited without answering for every bundle")
            per_worker.append(found)
        answers = [iter(found) for found in per_worker]
        return [next(answers[worker]) for worker in self._order]

    def _reap(self, worker: int) -> int:
        if worker in self._reaped:
            return 0
        _, status = os.waitpid(self._pids[worker], 0)
        self._reaped.add(worker)
        return status

    def _failure(self, worker: int, how: str) -> errors.AuditWorkerError:
        if worker not in self._reaped:  # it closed its pipe: it is exiting or gone, its status comes at once
            how = _how(self._reap(worker))
        self._kill()
        return errors.AuditWorkerError(
            f"record check worker {worker + 1} of {len(self._pids)} (pid {self._pids[worker]}) {how}: "
            "the records of its bundles were not checked (rerun, or use --jobs 1 to check them in one process)"
        )

    def _kill(self) -> None:
        for fd in (*self._feeds, *self._answers):
            if fd >= 0:
                os.close(fd)
        self._feeds, self._answers = [], []
        for worker, pid in enumerate(self._pids):
            if worker not in self._reaped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # our own child, not yet reaped: the pid is still ours
                self._reap(worker)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._kill()


def _serve(feed: int, answer: int) -> None:
    """The worker's loop: check each frame until the pipe closes, then answer all at once (a
    worker never writes while the main process may be blocked writing to it)."""
    found: list[Found] = []
    while True:
        header = _read_exactly(feed, _HEADER)
        if not header:
            break
        found.append(check_bundle(_read_exactly(feed, int.from_bytes(header, "big"))))
    body = pickle.dumps(found, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(answer, len(body).to_bytes(_HEADER, "big") + body)


def _queued(fd: int) -> int:
    """Bytes written to a pipe and not yet read (FIONREAD works on either end)."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"was killed by signal {sig} ({signal.Signals(sig).name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, n: int) -> bytes:
    """``n`` bytes, or b"" at a clean end before the first; a frame cut short is an error."""
    parts, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, _PIPE_SIZE))
        if not chunk:
            if got == 0:
                return b""
            raise EOFError("input frame cut short")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, _PIPE_SIZE):
        parts.append(chunk)
    os.close(fd)
    return b"".join(parts)
