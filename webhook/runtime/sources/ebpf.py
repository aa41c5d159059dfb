"""The eBPF source: run a generated bpftrace program and decode its lines into ``RawEvent``s.

Called by ``runtime.monitor``. bpftrace prints one tab-separated line per syscall exit (see
``bpftrace_program``); kernel-side losses (``Lost N events``) are counted, never hidden.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from webhook import errors
from webhook.runtime.sources import bpftrace_program
from webhook.runtime.sources.base import RawEvent

__all__ = ["EbpfSource", "EbpfUnavailable", "LineDecoder", "ensure_tracefs"]


class EbpfUnavailable(errors.UpstreamError):
    """bpftrace cannot run here (not installed, not root, no tracefs, program rejected)."""


_NET = (("fd", int), ("family", int), ("proto", int), ("lip", str), ("lport", int), ("rip", str), ("rport", int))
_OPEN = (("flags", int), ("mode", int), ("dirfd", int), ("name", str))
# Extras after the common prefix of each event line, by evt.type (see bpftrace_program.PROBES).
SCHEMAS: dict[str, tuple[tuple[str, type], ...]] = {
    "open": _OPEN, "openat": _OPEN, "openat2": _OPEN, "creat": _OPEN,
    "connect": _NET, "sendto": _NET, "bind": _NET, "listen": _NET, "accept": _NET, "accept4": _NET,
    "socket": (("domain", int), ("type", int), ("proto", int)),
    "ptrace": (("request", int), ("pid", int)),
    "setuid": (("uid", int),), "setgid": (("gid", int),),
    "mount": (("flags", int), ("dir", str)),
    "umount2": (("flags", int), ("name", str)),
    "unlink": (("dirfd", int), ("path", str)), "rmdir": (("dirfd", int), ("path", str)),
    "unlinkat": (("dirfd", int), ("flags", int), ("name", str)),
    "mkdir": (("dirfd", int), ("mode", int), ("path", str)),
    "mkdirat": (("dirfd", int), ("mode", int), ("path", str)),
    "rename": (("dirfd", int), ("newpath", str)), "renameat": (("dirfd", int), ("newpath", str)),
    "renameat2": (("dirfd", int), ("newpath", str)),
    "chmod": (("dirfd", int), ("mode", int), ("filename", str)),
    "fchmodat": (("dirfd", int), ("mode", int), ("filename", str)),
    "fchmod": (("fd", int), ("mode", int)),
    "symlink": (("dirfd", int), ("linkpath", str)), "symlinkat": (("dirfd", int), ("linkpath", str)),
    "init_module": (("len", int),), "finit_module": (("fd", int), ("flags", int)),
    "bpf": (("cmd", int),), "memfd_create": (("flags", int), ("name", str)),
    "execve": (("ppid", int), ("loginuid", int), ("filename", str)),
    "procexit": (("status", int),), "clone": (),
}  # fmt: skip
# Names of the strings printed first on S lines, in order.
S_NAMES: dict[str, tuple[str, ...]] = {
    "mount": ("dev", "type"), "rename": ("oldpath",), "renameat": ("oldpath",), "renameat2": ("oldpath",),
    "symlink": ("target",), "symlinkat": ("target",),
}  # fmt: skip


class LineDecoder:
    """bpftrace lines → RawEvent. Keeps the S/A lines a thread printed until its event line."""

    def __init__(self, *, ignore_pids: Iterable[int] = (), clock_offset: int | None = None) -> None:
        self.offset = clock_offset if clock_offset is not None else time.time_ns() - time.monotonic_ns()
        self.ignore = set(ignore_pids)
        self.lost = 0
        self.malformed = 0
        self.ignored = 0
        self.ready = False
        self._strings: dict[str, list[str]] = {}
        self._argv: dict[str, list[str]] = {}

    def decode(self, line: str) -> RawEvent | None:
        """One event, or None for side lines (S, A, READY, Lost) and malformed ones (counted)."""
        try:
            return self._decode(line)
        except (ValueError, IndexError, KeyError):
            self.malformed += 1
            return None

    def _decode(self, line: str) -> RawEvent | None:
        parts = line.split("\t")
        kind = parts[0]
        schema = SCHEMAS.get(kind)
        if schema is not None and len(parts) == 7 + len(schema):
            try:
                return self._event(kind, parts, schema)
            except ValueError:
                self.malformed += 1
                return None
        if kind == "S" and len(parts) == 3:
            self._strings.setdefault(parts[1], []).append(parts[2])
        elif kind == "A" and len(parts) == 3:
            self._argv[parts[1]] = _argv(parts[2])
        elif kind == "F" and len(parts) == 6:
            pid = int(parts[2])
            params = {"ppid": int(parts[3])}
            return RawEvent("F", int(parts[1]) + self.offset, pid, pid, int(parts[4]), parts[5], 0, params)
        elif kind == "READY":
            self.ready = True
        elif kind.startswith("Lost ") and kind.endswith(" events"):
            self.lost += int(kind.split()[1])
        elif line and not line.startswith("Attaching "):
            self.malformed += 1
        return None

    def _event(self, kind: str, parts: list[str], schema: tuple[tuple[str, type], ...]) -> RawEvent | None:
        pid = int(parts[2])
        tid = parts[3]
        names = S_NAMES.get(kind)
        strings = self._strings.pop(tid, None)
        if pid in self.ignore:
            self.ignored += 1
            return None
        params: dict[str, Any] = {name: conv(v) for (name, conv), v in zip(schema, parts[7:], strict=True)}
        if names is not None:
            params.update(zip(names, strings or (), strict=False))
        if kind == "execve":
            params["argv"] = self._argv.pop(tid, None) or [params["filename"]]
        ts = int(parts[1]) + self.offset
        return RawEvent(kind, ts, pid, int(tid), int(parts[4]), parts[5], int(parts[6]), params)


_HEX_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


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


def _argv(escaped: str) -> list[str]:
    """The NUL-separated argument block bpftrace's %r prints with \\xNN escapes.

    Only ``\\xNN`` is an escape: %r leaves a literal backslash as is (``grep 'a\\|b'``).
    """
    raw = _HEX_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), escaped.encode("utf-8", "surrogateescape"))
    args = raw.decode("utf-8", "replace").split("\x00")
    if args and args[-1] == "":
        args.pop()
    return args


def ensure_tracefs() -> None:
    """Mount tracefs (and debugfs, where bpftrace 0.17 looks) when they are not mounted."""
    for target, fstype in (("/sys/kernel/tracing", "tracefs"), ("/sys/kernel/debug", "debugfs")):
        if Path(target, "events").is_dir() or Path(target, "tracing", "events").is_dir():
            continue
        with contextlib.suppress(OSError):
            subprocess.run(["mount", "-t", fstype, "nodev", target], check=False, capture_output=True, timeout=10)


class EbpfSource:
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
        reorder_ms: float = 50.0,
    ) -> None:
        self.program = bpftrace_program.generate(event_types, self_pid=os.getpid())
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
        # A larger perf ring per CPU absorbs bursts while the reader is descheduled.
        env = {
            **os.environ,
            "BPFTRACE_STRLEN": str(bpftrace_program.STRLEN),
            "BPFTRACE_PERF_RB_PAGES": str(self._rb_pages),
        }
        self._proc = await asyncio.create_subprocess_exec(
            exe, "-B", self._buffering, "-e", self.program.text,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, limit=1 << 20,
        )  # fmt: skip
        self.decoder.ignore.add(self._proc.pid)
        assert self._proc.stdout is not None
        try:
            async with asyncio.timeout(self._start_timeout):
                while not self.decoder.ready:
                    line = await self._proc.stdout.readline()
                    if not line:
                        break
                    self.decoder.decode(line.decode("utf-8", "replace").rstrip("\n"))
        except TimeoutError:
            pass
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
            out = reorder.push([e for e in map(decode, lines) if e is not None])
            if out:
                yield out
        if reorder:
            yield reorder.flush()
        if not self._stopping:  # bpftrace died on its own: say so (a DaemonSet then restarts us)
            await self.close()
            detail = [d for d in self._stderr.decode("utf-8", "replace").splitlines() if "RLIMIT_MEMLOCK" not in d]
            raise EbpfUnavailable("bpftrace exited unexpectedly: " + (" | ".join(detail[-5:]) or "no message"))

    def interrupt(self) -> None:
        """Ask bpftrace to detach and exit; ``batches()`` then ends after the last buffered line."""
        self._stopping = True
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(2)

    def stats(self) -> dict[str, int]:
        d = self.decoder
        return {"kernel_lost": d.lost, "malformed_lines": d.malformed, "self_events": d.ignored}

    async def close(self) -> None:
        """Stop bpftrace (SIGINT first, so it detaches its probes cleanly)."""
        self._stopping = True
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(2)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.stderr is not None:
            self._stderr = await proc.stderr.read()
