"""The eBPF source: run a generated bpftrace program and decode its lines into ``RawEvent``s.

Called by ``runtime.monitor``. bpftrace prints one tab-separated line per syscall exit (see
``bpftrace_program``); kernel-side losses (``Lost N events``) are counted, never hidden.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from webhook import errors
from webhook.runtime.sources import bpftrace_program
from webhook.runtime.sources.base import RawEvent

__all__ = ["EbpfSource", "EbpfUnavailable", "LineDecoder", "ensure_tracefs"]


class EbpfUnavailable(errors.UpstreamError):
    """bpftrace cannot run here (not installed, not root, no tracefs, program rejected)."""


# How long events wait to be put back in time order across CPUs (see Reorder): bpftrace drains
# every CPU's buffer on each wake-up, so records of one moment arrive within a few ms.
REORDER_MS = 5.0
_HIGH = re.compile(r"\\\\|\\uffffff([0-9a-fA-F]{2})")
_NAMES = (*tuple(p.evt for p in bpftrace_program.PROBES), "clone")
_PARAMS = (*tuple(p.params for p in bpftrace_program.PROBES), ())
_NSTR = (*tuple(len(p.strings) for p in bpftrace_program.PROBES), 0)
_CHUNK = bpftrace_program.CHUNK
_MAX_PIECES = bpftrace_program.MAX_PIECES


def _high(m: re.Match[str]) -> str:
    return m.group(0) if m.group(1) is None else "\\u00" + m.group(1)


def _bytes_text(s: str) -> str:
    """A string whose characters are bytes (see ``load_record``) as text; invalid UTF-8 is kept
    as surrogate escapes (``os.fsdecode`` does the same with file names)."""
    if s.isascii():
        return s
    try:
        return s.encode("latin-1").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s


def load_record(line: str) -> Any:
    """One bpftrace ``-f json`` line → its object.

    bpftrace 0.17 escapes a byte >= 0x80 in a string as ``\\uffffffXX`` (a sign-extended char):
    those become ``\\u00XX`` here, one character per byte, so pieces keep their byte length;
    ``_join`` turns the joined string back into the text the process passed. Other escapes are
    standard JSON (``\\\\`` is a backslash, never the start of one of ours).
    """
    if "\\uffffff" in line:
        line = _HIGH.sub(_high, line)
    return orjson.loads(line)


class LineDecoder:
    """bpftrace JSON records → RawEvent. Keeps a thread's string and argv records until its event."""

    def __init__(self, *, ignore_pids: Iterable[int] = (), clock_offset: int | None = None) -> None:
        self.offset = clock_offset if clock_offset is not None else time.time_ns() - time.monotonic_ns()
        self.ignore = set(ignore_pids)
        self.lost = 0
        self.malformed = 0
        self.ignored = 0
        self.truncated = 0
        self.heartbeats = 0  # the program's interval heartbeat lines seen
        self.helper_errors = 0  # other failed helper calls bpftrace -k reported
        self.ready = False
        self._strings: dict[int, list[tuple[int, str]]] = {}
        self._argv: dict[int, list[tuple[int, list[int]]]] = {}

    def decode(self, line: str) -> RawEvent | None:
        """One event, or None for side records, READY, losses and malformed lines (counted)."""
        if not line:
            return None
        try:
            obj = load_record(line)
            kind = obj["type"]
            if kind == "value":
                return self._record(obj["data"])
            if kind == "printf":
                if obj["data"].startswith("HEARTBEAT"):
                    self.heartbeats += 1
                elif obj["data"].startswith("READY"):
                    self.ready = True
                return None
            if kind == "lost_events":
                self.lost += int(obj["data"]["events"])
                # the lost records may include the event some pending strings belong to: drop
                # them rather than hand them to a later event of the same thread
                self._strings.clear()
                self._argv.clear()
                return None
            if kind == "helper_error":  # -k: a helper failed in the kernel
                if obj["helper"] == "map_update_elem":
                    # a call entered with no room left to keep its arguments (the attack: threads
                    # parked inside traced calls fill the map): its event will never come
                    self.lost += 1
                else:
                    self.helper_errors += 1
                return None
            if kind in ("attached_probes", "map", "hist", "stats", "time", "join", "syscall"):
                return None
        except (ValueError, IndexError, KeyError, TypeError, AttributeError):  # orjson's error is a ValueError
            pass
        self.malformed += 1
        return None

    def _record(self, d: list[Any]) -> RawEvent | None:
        rec = d[0]
        if rec == 0:
            self._strings.setdefault(d[1], []).append((d[2], d[3]))
            return None
        if rec == 1:
            self._argv.setdefault(d[1], []).append((d[2], d[3]))
            return None
        if rec >= 10:
            return self._syscall(rec - 10, d)
        if rec == 2:
            ts, pid, _tid, ppid, uid, cgroup = d[1:7]
            return RawEvent("F", ts + self.offset, pid, pid, uid, "", 0, {"ppid": ppid, "cgroup": cgroup})
        if rec == 3:
            ts, pid, tid, status = d[1:5]
            if pid in self.ignore:
                self.ignored += 1
                return None
            return RawEvent("procexit", ts + self.offset, pid, tid, -1, "", 0, {"status": status})
        if rec == 4:
            return self._exec(d)
        raise ValueError(f"unknown record {rec}")

    def _take_strings(self, tid: int, first: str | None, count: int) -> tuple[list[str], bool]:
        """The thread's pending strings by slot (slot 0 starts with ``first``), and if any was cut."""
        if count == 1 and first is not None and tid not in self._strings:  # the common case
            self._extra = {0: [first]}
            return [_bytes_text(first)], False
        pieces: dict[int, list[str]] = {}
        if first is not None:
            pieces[0] = [first]
        for slot, text in self._strings.pop(tid, ()):
            pieces.setdefault(slot, []).append(text)
        out, cut = [], False
        for slot in range(count):
            parts = pieces.get(slot, [""])
            cut = cut or (len(parts) >= _MAX_PIECES and len(parts[-1]) == _CHUNK)
            out.append(_join(parts))
        self._extra = pieces
        return out, cut

    def _syscall(self, idx: int, d: list[Any]) -> RawEvent | None:
        ts, pid, tid, uid, res, cgroup = d[1:7]
        nstr = _NSTR[idx]
        first = d[-1] if nstr else None
        strings, cut = self._take_strings(tid, first, nstr)
        if pid in self.ignore:
            self.ignored += 1
            return None
        names = _PARAMS[idx]
        values = d[7 : len(d) - 1] if nstr else d[7:]
        if nstr:
            values = [*values, *strings]
        params: dict[str, Any] = dict(zip(names, values, strict=True))
        params["cgroup"] = cgroup
        if cut:
            params["truncated"] = True
            self.truncated += 1
        return RawEvent(_NAMES[idx], ts + self.offset, pid, tid, uid, "", res, params)

    def _exec(self, d: list[Any]) -> RawEvent | None:
        ts, pid, tid, euid, cgroup, ppid, loginuid, tty, argv_len, cap_eff, cap_bset, nlink, magic, fname = d[1:15]
        _, cut = self._take_strings(tid, fname, 1)
        pieces = self._extra
        argv_parts = sorted(self._argv.pop(tid, ()), key=lambda p: p[0])
        if pid in self.ignore:
            self.ignored += 1
            return None
        limit = min(argv_len, bpftrace_program.ARGV_MAX)
        argv_cut = argv_len > bpftrace_program.ARGV_MAX
        block = bytearray(limit)
        for off, chunk in argv_parts:
            lo = max(off, 0)
            hi = min(off + len(chunk), limit)
            if hi > lo:
                block[lo:hi] = bytes(chunk[lo - off : hi - off])
        raw = bytes(block)
        args = raw.decode("utf-8", "surrogateescape").split("\x00")
        if args and args[-1] == "":
            args.pop()

        def one(slot: int) -> str:
            return _join(pieces[slot]) if slot in pieces else ""

        slots = bpftrace_program
        cgroups = ["/".join(n for n in (one(slots.SLOT_CG + 2), one(slots.SLOT_CG + 1), one(slots.SLOT_CG)) if n)]
        if slots.SLOT_CG1 in pieces:
            cgroups.append("/".join(n for n in (one(slots.SLOT_CG1 + 1), one(slots.SLOT_CG1)) if n))
        params: dict[str, Any] = {
            "filename": _join(pieces.get(0, [fname])), "argv": args or [fname], "ppid": ppid,
            "loginuid": loginuid, "tty": tty, "cgroup": cgroup, "cgroup_names": cgroups,
            "comm": one(slots.SLOT_COMM), "cap_effective": cap_eff, "cap_bounding": cap_bset,
            "exe_nlink": nlink, "exe_fs_magic": magic, "exe_name": one(slots.SLOT_EXE),
            "cwd_name": one(slots.SLOT_PWD),
        }  # fmt: skip
        if cut or argv_cut:
            params["truncated"] = True
            self.truncated += 1
        return RawEvent("execve", ts + self.offset, pid, tid, euid, params["comm"], 0, params)


def _join(parts: list[str]) -> str:
    """A string sent in pieces: each full piece (CHUNK bytes) is followed by the next."""
    out = parts[0]
    for prev, nxt in itertools.pairwise(parts):
        if len(prev) != _CHUNK:
            break
        out += nxt
    return _bytes_text(out)


class Reorder:
    """Puts events back in timestamp order across CPUs.

    bpftrace drains one perf buffer per CPU, so a child's fork or exec read from one CPU can
    come after its first syscall read from another. Events are held until ``window_ns`` newer
    ones have been seen (or the stream goes quiet), then released sorted, as libscap merges
    its per-CPU buffers.
    """

    def __init__(self, window_ns: int) -> None:
        self.window = window_ns
        self.held: list[RawEvent] = []
        self.newest = 0

    def __bool__(self) -> bool:
        return bool(self.held)

    def wait_s(self) -> float:
        return self.window / 1e9

    def push(self, events: list[RawEvent]) -> list[RawEvent]:
        if not self.window:
            return events
        held = self.held
        held.extend(events)
        if not held:
            return held
        held.sort(key=_ts)
        self.newest = max(self.newest, held[-1].ts)
        cut = bisect.bisect_right(held, self.newest - self.window, key=_ts)
        out, self.held = held[:cut], held[cut:]
        return out

    def flush(self) -> list[RawEvent]:
        out, self.held = self.held, []
        return out


def _ts(ev: RawEvent) -> int:
    return ev.ts


def ensure_tracefs() -> None:
    """Mount tracefs (and debugfs, where bpftrace 0.17 looks) when they are not mounted."""
    for target, fstype in (("/sys/kernel/tracing", "tracefs"), ("/sys/kernel/debug", "debugfs")):
        if Path(target, "events").is_dir() or Path(target, "tracing", "events").is_dir():
            continue
        with contextlib.suppress(OSError):
            subprocess.run(["mount", "-t", fstype, "nodev", target], check=False, capture_output=True, timeout=10)


async def _poke_ready() -> None:
    """Make the syscall the program's last probe waits for (see ``bpftrace_program.generate``)."""
    while True:
        os.getpgid(0)
        await asyncio.sleep(0.02)


class ChildProcessSource:
    """What both eBPF backends (bpftrace here, the ring-buffer loader in ``ringbuf``) do alike
    with the child process that reads the kernel: interrupt it, count, stop it."""

    _proc: asyncio.subprocess.Process | None
    _stopping: bool
    decoder: Any

    def interrupt(self) -> None:
        """Ask the child to detach and exit; ``batches()`` then ends after what it still had."""
        self._stopping = True
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(2)

    def stats(self) -> dict[str, int]:
        d = self.decoder
        return {
            "kernel_lost": d.lost,
            "malformed_lines": d.malformed,
            "self_events": d.ignored,
            "truncated_strings": d.truncated,
            "heartbeats": d.heartbeats,
            "helper_errors": d.helper_errors,
        }

    def _take_proc(self) -> asyncio.subprocess.Process | None:
        self._stopping = True
        proc, self._proc = self._proc, None
        return proc

    @staticmethod
    async def _stop(proc: asyncio.subprocess.Process) -> None:
        """SIGINT first (the child detaches its probes and flushes), SIGKILL after 10 s."""
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(2)
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class EbpfSource(ChildProcessSource):
    """Runs bpftrace as a child process; ``batches()`` yields lists of RawEvent as they are read."""

    kind = "raw"
    live = True
    name = "ebpf"

    def __init__(
        self,
        event_types: Iterable[str] | None,
        *,
        bpftrace: str = "bpftrace",
        buffering: str = "line",
        start_timeout: float = 90.0,
        chunk_size: int = 1 << 16,
        perf_rb_pages: int = 1024,
        inflight_slots: int = 4096,
        reorder_ms: float = REORDER_MS,
        success_only: Iterable[str] = (),
        open_filters: Mapping[str, Sequence[bpftrace_program.GateAlt]] | None = None,
    ) -> None:
        if not 1 <= inflight_slots <= 1 << 20:
            raise ValueError(f"inflight_slots {inflight_slots}: expected 1..{1 << 20}")
        # Threads inside one traced syscall at once (each probe's map of calls in progress:
        # bpftrace's map size, its default 4096). A call past it is reported (``-k``) and counted lost.
        self._inflight = inflight_slots
        self.program = bpftrace_program.generate(
            event_types,
            self_pid=os.getpid(),
            v1_subsys=bpftrace_program.v1_subsys_id(),
            success_only=success_only,
            open_filters=open_filters,
        )
        self._bpftrace = bpftrace
        self._buffering = buffering
        self._start_timeout = start_timeout
        self._chunk = chunk_size
        self._rb_pages = perf_rb_pages
        self._reorder_ns = int(reorder_ms * 1_000_000)
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: bytes = b""
        self._stopping = False
        self.decoder = LineDecoder(ignore_pids=(os.getpid(),))
        # time.monotonic() of the latest heartbeat line: the probes deliver even when no traced
        # syscall happens (monitor.readiness reads it)
        self.last_heartbeat: float | None = None

    @classmethod
    def for_engine(cls, engine: Any, **kwargs: Any) -> EbpfSource:
        """The source the monitor runs for a compiled ``Engine``: the types its rules name (all
        when one matches any type), failed calls and unmatchable opens dropped in the kernel."""
        types = None if engine.matches_all_types else engine.event_types
        return cls(types, success_only=engine.success_only_types, open_filters=engine.open_filters, **kwargs)

    async def start(self) -> None:
        """Attach the probes; returns once bpftrace prints READY. Raises ``EbpfUnavailable``."""
        exe = shutil.which(self._bpftrace)
        if exe is None:
            raise EbpfUnavailable(f"{self._bpftrace!r} not found on PATH (install the bpftrace package)")
        if os.geteuid() != 0:
            raise EbpfUnavailable("the eBPF source needs root (CAP_BPF and CAP_PERFMON)")
        ensure_tracefs()
        self._stopping = False  # start() also restarts a source that died
        self.decoder.ready = False
        self.last_heartbeat = None  # a restarted program proves itself again
        # A larger perf ring per CPU absorbs bursts while the reader is descheduled.
        env = {
            **os.environ,
            "BPFTRACE_STRLEN": str(bpftrace_program.STRLEN),
            "BPFTRACE_PERF_RB_PAGES": str(self._rb_pages),
            "BPFTRACE_MAP_KEYS_MAX": str(self._inflight),
        }
        self._proc = await asyncio.create_subprocess_exec(
            exe, "-k", "-f", "json", "-B", self._buffering, "-e", self.program.text,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, limit=1 << 20,
        )  # fmt: skip
        self.decoder.ignore.add(self._proc.pid)
        assert self._proc.stdout is not None
        poke = asyncio.create_task(_poke_ready())
        try:
            async with asyncio.timeout(self._start_timeout):
                while not self.decoder.ready:
                    line = await self._proc.stdout.readline()
                    if not line:
                        break
                    self.decoder.decode(line.decode("utf-8", "surrogateescape").rstrip("\n"))
        except TimeoutError:
            pass
        finally:
            poke.cancel()
        if not self.decoder.ready:
            await self.close()
            detail = self._stderr.decode("utf-8", "replace").strip().splitlines()
            detail = [d for d in detail if "RLIMIT_MEMLOCK" not in d][-5:]
            raise EbpfUnavailable("bpftrace did not start: " + (" | ".join(detail) or "no output"))

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Decoded events, one list per read from bpftrace's stdout (≤ chunk_size bytes)."""
        if self._proc is None:
            await self.start()
        assert self._proc is not None
        assert self._proc.stdout is not None
        stdout, decode, rest = self._proc.stdout, self.decoder.decode, ""
        reorder = Reorder(self._reorder_ns)
        while True:
            try:
                chunk = await asyncio.wait_for(stdout.read(self._chunk), reorder.wait_s() if reorder else None)
            except TimeoutError:  # quiet: what is held is as old as it will get
                yield reorder.flush()
                continue
            if not chunk:
                break
            text = rest + chunk.decode("utf-8", "surrogateescape")
            lines = text.split("\n")
            rest = lines.pop()
            beats = self.decoder.heartbeats
            out = reorder.push([e for e in map(decode, lines) if e is not None])
            if self.decoder.heartbeats != beats:
                self.last_heartbeat = time.monotonic()
            if out:
                yield out
        if reorder:
            yield reorder.flush()
        if not self._stopping:  # bpftrace died on its own: say so (a DaemonSet then restarts us)
            await self.close()
            detail = [d for d in self._stderr.decode("utf-8", "replace").splitlines() if "RLIMIT_MEMLOCK" not in d]
            raise EbpfUnavailable("bpftrace exited unexpectedly: " + (" | ".join(detail[-5:]) or "no message"))

    async def close(self) -> None:
        """Stop bpftrace (SIGINT first, so it detaches its probes cleanly)."""
        proc = self._take_proc()
        if proc is None:
            return
        await self._stop(proc)
        if proc.stderr is not None:
            self._stderr = await proc.stderr.read()
