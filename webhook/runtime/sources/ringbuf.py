"""The ring-buffer eBPF source: a libbpf program whose records this module decodes into ``RawEvent``s.

Called by ``runtime.monitor`` (chosen by ``sources.kernel.for_engine``). It traces the same
probes and produces the same ``RawEvent``s as the bpftrace source (``ebpf``), so the process
table, path semantics and rules are shared unchanged; what differs is the transport. bpftrace
0.17 prints through per-CPU perf buffers opened with ``wakeup_events=1``: every record wakes the
reader, at about 8 µs of system time in the traced process. Here the kernel side
(``bpf/portcullis.bpf.c``) writes ONE binary record per event into ONE BPF ring buffer without
waking anyone unless a lot is pending; the loader (``bpf/loader.c``, a child process like
bpftrace) polls it every few ms and copies records to its stdout in large writes, and this module
decodes them in batches. Strings are length-prefixed bytes (no byte a process passes can be read
as a boundary) read to PATH_MAX, with a truncation flag the rules see.

The open filter (``rules/kernelfilter.py``) is passed as map contents (names and suffixes of the
last path component per open type), not as generated code.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import socket
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from webhook.runtime.sources import bpf_build, bpftrace_program
from webhook.runtime.sources.base import RawEvent
from webhook.runtime.sources.ebpf import (
    REORDER_MS,
    ChildProcessSource,
    EbpfUnavailable,
    Reorder,
    _poke_ready,
    ensure_tracefs,
)

__all__ = ["RecordDecoder", "RingbufSource", "available"]

PROBES = bpftrace_program.PROBES
NPROBES = len(PROBES)
R_FORK, R_EXIT, R_EXEC, R_SYSCALL = 2, 3, 4, 10
R_HEARTBEAT, R_READY, R_LOST = 100, 101, 102
R_CLONE = R_SYSCALL + NPROBES
HDR_TRUNC = 1
STR_MAX = 4097  # a string read to this size without its NUL is flagged truncated (portcullis.bpf.c)
ARGV_MAX = 4096

_HDR = struct.Struct("<IHHQIIIIqQ")  # len kind flags ts pid tid uid aux ret cgroup
_ARGS = struct.Struct("<8Q")  # the six raw syscall arguments and two derived values
_NET = struct.Struct("<iHHHHBB2x16s16s")
_EXEC = struct.Struct("<IIQQQQIIQ")
_U16 = struct.Struct("<H")
_LK = struct.Struct("<IH")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SYS_OFF = _HDR.size + _ARGS.size
# The string the kernel side adds after a syscall's own (portcullis.bpf.c): the directory a
# relative open starts from, the cwd after chdir/fchdir. Empty when it could not be named.
_KERNEL_DIR = {"open": "base", "openat": "base", "openat2": "base", "creat": "base", "chdir": "cwd", "fchdir": "cwd"}


def available() -> list[str]:
    """What the ring-buffer source lacks on this machine ([] when it can be built or is cached)."""
    return bpf_build.missing_tools()


def _int_plan(probe: bpftrace_program.Probe, args: list[str] | None) -> list[tuple[int, int]]:
    """How each of ``probe.ints`` is read from the record: (0 raw u64 | 1 signed 32-bit | 2
    constant | 3 derived word, argument index or constant), as the bpftrace program computes it."""
    plan: list[tuple[int, int]] = []
    if args is None:  # no such tracepoint here: never attached, never decoded
        return plan
    for _name, expr in probe.ints:
        if m := re.fullmatch(r"\$a(\d)", expr):
            plan.append((0, bpf_build.arg_position(probe, m.group(0), args)))
        elif m := re.fullmatch(r"\(int32\)\$a(\d)", expr):
            plan.append((1, bpf_build.arg_position(probe, "$a" + m.group(1), args)))
        elif re.fullmatch(r"-?\d+", expr):
            plan.append((2, int(expr)))
        elif expr.endswith("->flags") and "open_how" in expr:
            plan.append((3, 6))
        elif expr.endswith("->mode") and "open_how" in expr:
            plan.append((3, 7))
        else:  # a new probe expression: fail at start, not as a wrong field at run time
            raise ValueError(f"ringbuf: no decoding for {probe.evt} {expr!r}")
        if plan[-1][0] in (0, 1) and plan[-1][1] < 0:
            raise ValueError(f"ringbuf: {probe.syscall}'s tracepoint has no argument for {expr!r} ({args})")
    return plan


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _addr(kind: int, raw: bytes, path: str) -> str:
    if kind == 2:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if kind == 10:
        return socket.inet_ntop(socket.AF_INET6, raw)
    if kind == 1:
        return path
    return ""


class RecordDecoder:
    """Ring-buffer records → RawEvent (the same events ``ebpf.LineDecoder`` makes of bpftrace's).

    ``formats``: each syscall's argument names (``bpf_build.probe_table``), to read the
    bpftrace program's ``$aN`` expressions from the raw arguments."""

    def __init__(
        self,
        formats: Mapping[str, list[str] | None],
        *,
        ignore_pids: Iterable[int] = (),
        clock_offset: int | None = None,
        v1: bool = False,
    ) -> None:
        self.offset = clock_offset if clock_offset is not None else time.time_ns() - time.monotonic_ns()
        self.ignore = set(ignore_pids)
        self.v1 = v1
        self.lost = 0
        self.malformed = 0
        self.ignored = 0
        self.truncated = 0
        self.heartbeats = 0
        self.helper_errors = 0  # as bpftrace's decoder (the loader reports none)
        self.ready = False
        self.set_formats(formats)

    def set_formats(self, formats: Mapping[str, list[str] | None]) -> None:
        """Plans and generated decoders for the syscalls' argument layouts."""
        self._plans: list[tuple[str, tuple[str, ...], list[tuple[int, int]], int, bool]] = []
        for p in PROBES:
            names = p.params
            plan = [] if p.net else _int_plan(p, formats.get(p.syscall))
            self._plans.append((p.evt, names, plan, len(p.strings), bool(p.net)))
        # generated decoders for the plain syscall records (sockets, exec and process records
        # take the general path)
        self._fns = {
            R_SYSCALL + i: self._compile(i)
            for i, p in enumerate(PROBES)
            if not p.net and len(self._plans[i][2]) == len(p.ints)  # others are not traced here
        }

    def decode(self, buf: bytes, start: int = 0) -> tuple[list[RawEvent], int]:
        """The events in ``buf`` from ``start``, and the offset of the first incomplete record."""
        out: list[RawEvent] = []
        append = out.append
        end = len(buf)
        off = start
        fns, head = self._fns, _LK.unpack_from
        while off + 8 <= end:
            size, kind = head(buf, off)
            if size < 16:
                raise ValueError(f"ring-buffer record of {size} bytes at offset {off}: stream out of sync")
            nxt = off + size
            if nxt > end:
                break
            fn = fns.get(kind)
            if fn is not None:
                try:
                    ev = fn(buf, off, nxt)
                except (struct.error, ValueError, IndexError):
                    self.malformed += 1
                    ev = None
                if ev is not None:
                    append(ev)
            elif kind == R_LOST:
                self.lost = _U64.unpack_from(buf, off + 8)[0]
            elif kind == R_HEARTBEAT:
                self.heartbeats += 1
            elif kind == R_READY:
                self.ready = True
            else:
                try:
                    ev = self._event(kind, _HDR.unpack_from(buf, off), buf, off, nxt)
                except (struct.error, ValueError, IndexError, OSError):
                    self.malformed += 1
                    ev = None
                if ev is not None:
                    append(ev)
            off = nxt
        return out, off

    def _compile(self, idx: int) -> Callable[[bytes, int, int], RawEvent | None]:
        """A decoder for one syscall's records, generated from its plan (as the rules compiler
        generates rule code): one ``unpack_from`` for the fixed part, the params dict as a literal."""
        evt, names, plan, nstr, _net = self._plans[idx]
        fixed = struct.Struct(_HDR.format + _ARGS.format.lstrip("<") + ("H" if nstr else ""))
        exprs = []
        for how, v in plan:
            if how in (0, 3):
                exprs.append(f"a{v}")
            elif how == 1:
                exprs.append(f"((a{v} & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000")
            else:
                exprs.append(repr(v))
        lines = [
            "def f(buf, off, end):",
            "    (_l, _k, flags, ts, pid, tid, uid, _x, ret, cgroup, a0, a1, a2, a3, a4, a5, a6, a7"
            + (", n" if nstr else "") + ") = unpack(buf, off)",
            "    if pid in ignore:",
            "        self.ignored += 1",
            "        return None",
            f"    o = off + {_SYS_OFF}",
        ]  # fmt: skip
        for k in range(nstr):
            if k:
                lines.append("    n = u16(buf, o)[0]")
            lines.append(f"    s{k} = buf[o + 2 : o + 2 + n].decode('utf-8', 'surrogateescape')")
            lines.append("    o += 2 + n")
            exprs.append(f"s{k}")
        items = ", ".join(f"{name!r}: {e}" for name, e in zip(names, exprs, strict=True))
        lines += [
            "    if o > end:",
            "        raise ValueError('record shorter than its strings')",
            f"    params = {{{items}, 'cgroup': cgroup}}",
        ]
        if extra := _KERNEL_DIR.get(evt):
            lines += [
                "    if o + 2 <= end:",
                "        n = u16(buf, o)[0]",
                "        if o + 2 + n > end:",
                "            raise ValueError('record shorter than its strings')",
                "        if n:",
                f"            params[{extra!r}] = buf[o + 2 : o + 2 + n].decode('utf-8', 'surrogateescape')",
            ]
        lines += [
            "    if flags & 1:",
            "        params['truncated'] = True",
            "        self.truncated += 1",
            f"    return RawEvent({evt!r}, ts + offset, pid, tid, uid, '', ret, params)",
        ]
        env: dict[str, Any] = {
            "unpack": fixed.unpack_from, "u16": _U16.unpack_from, "ignore": self.ignore, "self": self,
            "offset": self.offset, "RawEvent": RawEvent,
        }  # fmt: skip
        exec(compile("\n".join(lines) + "\n", f"<ringbuf:{evt}>", "exec"), env)  # our own template, from PROBES
        fn: Callable[[bytes, int, int], RawEvent | None] = env["f"]
        return fn

    def _event(self, kind: int, h: tuple[int, ...], buf: bytes | memoryview, off: int, end: int) -> RawEvent | None:
        _len, _kind, flags, ts, pid, tid, uid, aux, ret, cgroup = h
        if pid in self.ignore:
            self.ignored += 1
            return None
        ts += self.offset
        if R_SYSCALL <= kind < R_CLONE:
            return self._syscall(kind - R_SYSCALL, flags, ts, pid, tid, uid, ret, cgroup, buf, off, end)
        if kind == R_FORK:
            return RawEvent("F", ts, pid, pid, uid, "", 0, {"ppid": aux, "cgroup": cgroup})
        if kind == R_EXIT:
            status = aux - (1 << 32) if aux & 0x80000000 else aux
            return RawEvent("procexit", ts, pid, tid, -1, "", 0, {"status": status})
        if kind == R_EXEC:
            return self._exec(flags, ts, pid, tid, uid, cgroup, buf, off + _HDR.size, end)
        if kind == R_CLONE:
            return RawEvent("clone", ts, pid, tid, uid, "", ret, {"cgroup": cgroup})
        raise ValueError(f"unknown record kind {kind}")

    def _syscall(
        self, idx: int, flags: int, ts: int, pid: int, tid: int, uid: int, ret: int, cgroup: int,
        buf: bytes | memoryview, off: int, end: int,
    ) -> RawEvent:  # fmt: skip
        evt, names, plan, nstr, net = self._plans[idx]
        a = _ARGS.unpack_from(buf, off + _HDR.size)
        o = off + _SYS_OFF
        values: list[Any] = []
        if net:
            fd, fam, proto, lport, rport, lk, rk, lip, rip = _NET.unpack_from(buf, o)
            o += _NET.size
            n = _U16.unpack_from(buf, o)[0]
            path = _text(bytes(buf[o + 2 : o + 2 + n]))
            values = [fd, fam, proto, lport, rport, _addr(lk, lip, path), _addr(rk, rip, path)]
        else:
            for how, v in plan:
                if how == 0:
                    values.append(a[v])
                elif how == 1:
                    x = a[v] & 0xFFFFFFFF
                    values.append(x - (1 << 32) if x & 0x80000000 else x)
                elif how == 2:
                    values.append(v)
                else:
                    values.append(a[v])
            for _ in range(nstr):
                n = _U16.unpack_from(buf, o)[0]
                values.append(_text(bytes(buf[o + 2 : o + 2 + n])))
                o += 2 + n
        if o > end:
            raise ValueError("record shorter than its strings")
        params: dict[str, Any] = dict(zip(names, values, strict=True))
        params["cgroup"] = cgroup
        if (extra := _KERNEL_DIR.get(evt)) and o + 2 <= end:
            n = _U16.unpack_from(buf, o)[0]
            if o + 2 + n > end:
                raise ValueError("record shorter than its strings")
            if n:
                params[extra] = _text(bytes(buf[o + 2 : o + 2 + n]))
        if flags & HDR_TRUNC:
            params["truncated"] = True
            self.truncated += 1
        return RawEvent(evt, ts, pid, tid, uid, "", ret, params)

    def _exec(
        self, flags: int, ts: int, pid: int, tid: int, euid: int, cgroup: int, buf: bytes | memoryview, o: int,
        end: int,
    ) -> RawEvent:  # fmt: skip
        ppid, loginuid, tty, argv_len, cap_eff, cap_bset, nlink, _pad, magic = _EXEC.unpack_from(buf, o)
        o += _EXEC.size
        strs: list[bytes] = []
        for _ in range(10):  # filename argv comm cg cg-parent cg-grandparent v1 v1-parent exe cwd
            n = _U16.unpack_from(buf, o)[0]
            strs.append(bytes(buf[o + 2 : o + 2 + n]))
            o += 2 + n
        if o > end:
            raise ValueError("exec record shorter than its strings")
        fname = _text(strs[0])
        args = _text(strs[1]).split("\x00")
        if args and args[-1] == "":
            args.pop()
        names = [_text(s) for s in strs[2:]]
        cgroups = ["/".join(n for n in (names[3], names[2], names[1]) if n)]
        if self.v1:
            cgroups.append("/".join(n for n in (names[5], names[4]) if n))
        params: dict[str, Any] = {
            "filename": fname, "argv": args or [fname], "ppid": ppid, "loginuid": loginuid, "tty": tty,
            "cgroup": cgroup, "cgroup_names": cgroups, "comm": names[0], "cap_effective": cap_eff,
            "cap_bounding": cap_bset, "exe_nlink": nlink, "exe_fs_magic": magic, "exe_name": names[6],
            "cwd_name": names[7],
        }  # fmt: skip
        if flags & HDR_TRUNC or argv_len > ARGV_MAX:
            params["truncated"] = True
            self.truncated += 1
        return RawEvent("execve", ts, pid, tid, euid, names[0], 0, params)


# ---------------------------------------------------------------- configuration of the kernel side

_GKEY = struct.Struct("<HHI64s")
_PCFG = struct.Struct("<BBBBB16s3x")
_CFG = struct.Struct("<IIiIII")


def _gate_entries(probe_id: int, alts: Sequence[bpftrace_program.GateAlt]) -> tuple[int, list[int], dict[bytes, int]]:
    """(access bits any name passes, suffix lengths, gate map entries) for one open type, or
    raises ValueError when the kernel side cannot hold it (the type then goes unfiltered)."""
    any_access = 0
    entries: dict[bytes, int] = {}
    lengths: list[int] = []
    for a in alts:
        bits = sum(1 << m for m in a.access)
        if a.any_name:
            any_access |= bits
            continue
        for kind, values in ((0, a.names), (1, a.suffixes)):
            for v in values:
                raw = v.encode()
                if not 0 < len(raw) <= 63:
                    raise ValueError(f"name {v!r} too long for the kernel filter")
                key = _GKEY.pack(probe_id, kind, len(raw), raw)
                entries[key] = entries.get(key, 0) | bits
                if kind == 1 and len(raw) not in lengths:
                    lengths.append(len(raw))
    if len(lengths) > 16:
        raise ValueError("more than 16 suffix lengths")
    return any_access, lengths, entries


class RingbufSource(ChildProcessSource):
    """Runs the loader as a child process; ``batches()`` yields lists of RawEvent as they are read.

    The same interface as ``ebpf.EbpfSource`` (``program``, ``decoder``, ``last_heartbeat``,
    ``interrupt``, ``stats``, ``close``), so the monitor, readiness and restarts treat both alike.
    """

    kind = "raw"
    live = True
    name = "ebpf"
    backend = "ringbuf"

    def __init__(
        self,
        event_types: Iterable[str] | None,
        *,
        start_timeout: float = 300.0,
        chunk_size: int = 1 << 20,
        ring_bytes: int = 1 << 24,
        wake_bytes: int = 1 << 21,
        inflight_slots: int = 1 << 16,
        poll_ms: int = 5,
        reorder_ms: float = REORDER_MS,
        success_only: Iterable[str] = (),
        open_filters: Mapping[str, Sequence[bpftrace_program.GateAlt]] | None = None,
        cache: Path | None = None,
        exists: Callable[[str], bool] = bpftrace_program.tracepoint_exists,
    ) -> None:
        if ring_bytes < 4096 or ring_bytes & (ring_bytes - 1):
            raise ValueError(f"ring_bytes {ring_bytes}: expected a power of two of at least 4096")
        if not 1 <= inflight_slots <= 1 << 22:
            raise ValueError(f"inflight_slots {inflight_slots}: expected 1..{1 << 22}")
        # Threads inside a traced call at once (the kernel side keeps each call's arguments
        # until it returns); a call past this is counted lost, never silently untraced.
        self._inflight = inflight_slots
        # What is traced, and what not (with the reason), exactly as the bpftrace program decides.
        self.program = dataclasses.replace(
            bpftrace_program.generate(
                event_types, self_pid=os.getpid(), exists=exists, success_only=success_only, open_filters=open_filters
            ),
            text="",
        )
        wanted = bpftrace_program.SUPPORTED_TYPES if event_types is None else frozenset(event_types)
        ok_only = frozenset(success_only)
        gates = dict(open_filters or {})
        self._probes: list[tuple[int, bpftrace_program.Probe, bool, Sequence[bpftrace_program.GateAlt] | None]] = []
        for i, p in enumerate(PROBES):
            if (p.evt not in wanted and p.evt not in bpftrace_program.STATE_TYPES) or not exists(p.syscall):
                continue
            only_ok = p.evt in ok_only or p.evt not in wanted
            gate = gates.get(p.evt) if only_ok and p.evt in wanted else None
            self._probes.append((i, p, only_ok, gate))
        self.emit_clone = bool(wanted & {"clone", "clone3", "fork", "vfork"})
        self.forks = [s for s in ("clone", "clone3", "fork", "vfork") if exists(s)]
        self.v1_subsys = bpftrace_program.v1_subsys_id()
        self._start_timeout = start_timeout
        self._chunk = chunk_size
        self._ring = ring_bytes
        self._wake = wake_bytes
        self._poll_ms = poll_ms
        self._reorder_ns = int(reorder_ms * 1_000_000)
        self._cache = cache
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_file: IO[bytes] | None = None
        self._stderr: bytes = b""
        self._stopping = False
        _table, self.formats = bpf_build.probe_table()
        self.decoder = RecordDecoder(self.formats, ignore_pids=(os.getpid(),), v1=self.v1_subsys is not None)
        self.last_heartbeat: float | None = None
        self.unfiltered: list[str] = []  # open types whose filter the kernel side cannot hold

    @classmethod
    def for_engine(cls, engine: Any, **kwargs: Any) -> RingbufSource:
        """As ``ebpf.EbpfSource.for_engine``: the engine's types, failures and open filters."""
        types = None if engine.matches_all_types else engine.event_types
        return cls(types, success_only=engine.success_only_types, open_filters=engine.open_filters, **kwargs)

    def config(self, loader_pid: int) -> str:
        """The loader's stdin: ring size, programs, maps (see ``bpf/loader.c``)."""
        lines = [f"ring {self._ring}", f"inflight {self._inflight}", f"poll {self._poll_ms}"]
        lines.append("heartbeat heartbeat 1000000000")
        v1 = -1 if self.v1_subsys is None else self.v1_subsys
        cfg = _CFG.pack(os.getpid(), loader_pid, v1, self._wake, int(self.emit_clone), 0)
        lines.append(f"map cfg {_U32.pack(0).hex()} {cfg.hex()}")
        for i, p, only_ok, gate in self._probes:
            lines += [f"prog enter_{p.syscall}", f"prog exit_{p.syscall}"]
            any_access, gated = 0, False
            lengths: list[int] = []
            entries: dict[bytes, int] = {}
            if gate is not None:
                try:
                    any_access, lengths, entries = _gate_entries(i, gate)
                    gated = True
                except ValueError:
                    self.unfiltered.append(p.evt)
            pc = _PCFG.pack(1, int(only_ok), int(gated), any_access, len(lengths), bytes(lengths))
            lines.append(f"map pcfg {_U32.pack(i).hex()} {pc.hex()}")
            lines += [f"map gate {k.hex()} {_U32.pack(v).hex()}" for k, v in entries.items()]
        lines += ["prog proc_exec", "prog proc_exit", *(f"prog fork_{s}" for s in self.forks), "prog ready", "go"]
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        """Build (first start on this kernel), load and attach; returns once the kernel side's
        readiness record arrives. Raises ``EbpfUnavailable`` naming what is missing."""
        if os.geteuid() != 0:
            raise EbpfUnavailable("the eBPF source needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)")
        ensure_tracefs()
        _table, formats = bpf_build.probe_table()
        if formats != self.formats:  # tracefs was not mounted when we were made: decode by the real formats
            self.formats = formats
            self.decoder.set_formats(formats)
        try:
            built = await asyncio.to_thread(bpf_build.build, self._cache)
        except bpf_build.BuildUnavailable as exc:
            raise EbpfUnavailable(str(exc)) from exc
        self._stopping = False
        self.decoder.ready = False
        self.last_heartbeat = None
        # stderr to a file: a verifier log can be larger than a pipe holds while we wait on stdout
        self._stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._proc = await asyncio.create_subprocess_exec(
            str(built.loader), str(built.obj),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self._stderr_file,
            limit=self._chunk * 2,
        )  # fmt: skip
        self.decoder.ignore.add(self._proc.pid)
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.write(self.config(self._proc.pid).encode())
        with contextlib.suppress(ConnectionError):
            await self._proc.stdin.drain()
        self._proc.stdin.close()
        self._pending = b""
        poke = asyncio.create_task(_poke_ready())
        try:
            async with asyncio.timeout(self._start_timeout):
                while not self.decoder.ready:
                    chunk = await self._proc.stdout.read(self._chunk)
                    if not chunk:
                        break
                    self._pending += chunk
                    _events, used = self.decoder.decode(self._pending)
                    self._pending = self._pending[used:]
        except TimeoutError:
            pass
        finally:
            poke.cancel()
        if not self.decoder.ready:
            await self.close()
            detail = self._stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
            raise EbpfUnavailable("the ring-buffer loader did not start: " + (" | ".join(detail) or "no output"))

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Decoded events, one list per read of the loader's stdout (≤ chunk_size bytes)."""
        if self._proc is None:
            await self.start()
        assert self._proc is not None
        assert self._proc.stdout is not None
        stdout, decode, rest = self._proc.stdout, self.decoder.decode, self._pending
        reorder = Reorder(self._reorder_ns)
        while True:
            try:
                chunk = await asyncio.wait_for(stdout.read(self._chunk), reorder.wait_s() if reorder else None)
            except TimeoutError:
                yield reorder.flush()
                continue
            if not chunk:
                break
            buf = rest + chunk if rest else chunk
            beats = self.decoder.heartbeats
            try:
                events, used = decode(buf)
            except ValueError as exc:  # a framing error: the stream cannot be trusted past it
                await self.close()
                raise EbpfUnavailable(f"ring-buffer stream corrupt: {exc}") from exc
            rest = buf[used:]
            if self.decoder.heartbeats != beats:
                self.last_heartbeat = time.monotonic()
            out = reorder.push(events)
            if out:
                yield out
        if reorder:
            yield reorder.flush()
        if not self._stopping:
            await self.close()
            detail = self._stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
            raise EbpfUnavailable("the ring-buffer loader exited unexpectedly: " + (" | ".join(detail) or "no message"))

    async def close(self) -> None:
        """Stop the loader (SIGINT first, so it detaches and flushes)."""
        proc = self._take_proc()
        if proc is not None:
            await self._stop(proc)
        if self._stderr_file is not None:
            self._stderr_file.seek(0)
            self._stderr = self._stderr_file.read()[-65536:]
            self._stderr_file.close()
            self._stderr_file = None
