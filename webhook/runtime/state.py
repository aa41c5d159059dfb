"""The process and fd tables the eBPF source needs (libsinsp's thread table, much reduced).

``ProcessTable`` is seeded from /proc at start and kept current by exec/fork/exit events; each
process holds the fds it opened, accepted or connected. ``fields.EventBuilder`` reads it to make
the Falco field mappings the engine evaluates. Called by ``runtime.monitor`` only.
"""

from __future__ import annotations

import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webhook.runtime.sources.base import RawEvent

__all__ = ["Fd", "Process", "ProcessTable", "container_id"]

_CONTAINER_RE = re.compile(r"(?:^|[/:-])([0-9a-f]{64})(?:\.scope)?$")
_FD_LIMIT = 256  # fds remembered per process: close() is not traced, so the oldest go first
_EXITED_GRACE_NS = 10_000_000_000  # keep exited processes: later-read events of children need them
_O_DIRECTORY = 0o200000


def container_id(cgroup_text: str) -> str:
    """The full container id in a /proc/<pid>/cgroup file ('' on the host).

    Docker (``/docker/<id>``, ``docker-<id>.scope``), containerd and Kubernetes
    (``/kubepods/.../<id>``, ``cri-containerd-<id>.scope``), CRI-O (``crio-<id>.scope``) and
    podman (``libpod-<id>.scope``) all end the path with the 64-hex id.
    """
    for line in cgroup_text.splitlines():
        path = line.rsplit(":", 1)[-1]
        for part in reversed(path.split("/")):
            if "conmon" in part:  # CRI-O's monitor process lives beside, not inside, the container
                break
            m = _CONTAINER_RE.search(part)
            if m:
                return m.group(1)
    return ""


@dataclass(slots=True)
class Fd:
    """What an fd refers to, in the terms of Falco's fd.* fields."""

    num: int
    type: str  # file, directory, ipv4, ipv6, unix, memfd
    name: str
    l4proto: str = ""
    cip: str = ""
    cport: int = 0
    sip: str = ""
    sport: int = 0
    is_server: bool = False
    connected: bool = False
    cache: dict[str, Any] | None = None  # fd.* fields, built once


@dataclass(slots=True)
class Process:
    """One process (thread group). ``args`` excludes argv[0], as Falco's proc.args does."""

    pid: int
    ppid: int
    name: str
    exe: str = ""
    exepath: str = ""
    args: list[str] = field(default_factory=list)
    cwd: str = ""
    uid: int = -1
    loginuid: int = -1
    tty: int = 0
    start_ns: int = 0
    container: str = ""
    exited_ns: int = 0
    fds: dict[int, Fd] = field(default_factory=dict)
    cache: dict[str, Any] | None = None
    cache_gen: int = -1

    @property
    def cmdline(self) -> str:
        return " ".join((self.name, *self.args)) if self.args else self.name


class ProcessTable:
    """pid → Process, seeded from ``proc_root`` and updated by events."""

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.root = Path(proc_root)
        self.procs: dict[int, Process] = {}
        self.generation = 0  # bumped on exec: cached ancestor fields become stale
        self._exited: deque[tuple[int, int]] = deque()
        self._boot_ns = _boot_time_ns(self.root)
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    # -- /proc ---------------------------------------------------------------------------------
    def seed(self) -> int:
        """Read every process under /proc; returns how many were found."""
        for entry in os.scandir(self.root):
            if entry.name.isdigit():
                proc = self._read(int(entry.name))
                if proc is not None:
                    self.procs[proc.pid] = proc
        return len(self.procs)

    def _read(self, pid: int) -> Process | None:
        base = self.root / str(pid)
        try:
            stat = (base / "stat").read_text()
        except OSError:
            return None
        lpar, rpar = stat.find("("), stat.rfind(")")
        name = stat[lpar + 1 : rpar]
        rest = stat[rpar + 2 :].split()
        proc = Process(pid=pid, ppid=int(rest[1]), name=name, tty=int(rest[4]))
        proc.start_ns = self._boot_ns + int(rest[19]) * 1_000_000_000 // self._tick
        argv = _read(base / "cmdline").split("\x00")
        if argv and argv[-1] == "":
            argv.pop()
        if argv:
            proc.exe, proc.args = argv[0], argv[1:]
        proc.exepath = _readlink(base / "exe")
        proc.cwd = _readlink(base / "cwd")
        proc.container = container_id(_read(base / "cgroup"))
        for line in _read(base / "status").splitlines():
            if line.startswith("Uid:"):
                proc.uid = int(line.split()[2])  # effective uid, as Falco's user.uid
                break
        loginuid = _read(base / "loginuid").strip()
        proc.loginuid = _signed32(int(loginuid)) if loginuid.isdigit() else -1
        return proc

    # -- events --------------------------------------------------------------------------------
    def get(self, pid: int, comm: str = "<NA>", uid: int = -1) -> Process:
        """The process, read from /proc when it started before we saw it, else a bare entry."""
        proc = self.procs.get(pid)
        if proc is None:
            proc = self._read(pid) or Process(pid=pid, ppid=0, name=comm, uid=uid)
            self.procs[pid] = proc
        return proc

    def apply(self, ev: RawEvent) -> Process:
        """Update the table with one event; returns the process the event belongs to."""
        kind = ev.type
        if kind == "F":
            return self._fork(ev)
        if kind == "execve":
            return self._exec(ev)
        proc = self.get(ev.pid, ev.comm, ev.uid)
        if kind == "setuid" and ev.res == 0:  # the effective uid changes (as libsinsp tracks it)
            proc.uid = ev.params["uid"]
            proc.cache = None
        elif kind == "procexit":
            proc.exited_ns = ev.ts
            self._exited.append((ev.ts, ev.pid))
            self._purge(ev.ts)
        return proc

    def _fork(self, ev: RawEvent) -> Process:
        ppid = ev.params["ppid"]
        parent = self.procs.get(ppid)
        if parent is None:
            child = self._read(ev.pid) or Process(pid=ev.pid, ppid=ppid, name=ev.comm, uid=ev.uid)
        else:
            child = Process(
                pid=ev.pid, ppid=ppid, name=parent.name, exe=parent.exe, exepath=parent.exepath,
                args=parent.args, cwd=parent.cwd, uid=ev.uid, loginuid=parent.loginuid, tty=parent.tty,
                start_ns=ev.ts, container=parent.container, fds=dict(parent.fds),
            )  # fmt: skip
        self.procs[ev.pid] = child
        return child

    def _exec(self, ev: RawEvent) -> Process:
        p = ev.params
        proc = self.get(ev.pid, ev.comm, ev.uid)
        argv: list[str] = p["argv"]
        proc.name = ev.comm
        proc.ppid = p["ppid"]
        proc.uid = ev.uid
        proc.loginuid = _signed32(p["loginuid"])
        proc.exe = argv[0] if argv else p["filename"]
        proc.args = argv[1:]
        proc.exepath = self.absolute(proc, p["filename"])
        proc.exited_ns = 0
        cgroup = _read(self.root / str(ev.pid) / "cgroup")
        if cgroup:  # still alive: the runtime may have moved it into a container's cgroup
            proc.container = container_id(cgroup)
        if not proc.start_ns:
            proc.start_ns = ev.ts
        proc.cache = None
        self.generation += 1
        return proc

    def _purge(self, now: int) -> None:
        exited = self._exited
        while exited and now - exited[0][0] > _EXITED_GRACE_NS:
            _, pid = exited.popleft()
            proc = self.procs.get(pid)
            if proc is not None and proc.exited_ns and now - proc.exited_ns > _EXITED_GRACE_NS:
                del self.procs[pid]

    # -- fds -------------------------------------------------------------------------------------
    def set_fd(self, proc: Process, fd: Fd) -> None:
        fds = proc.fds
        if fd.num in fds:
            del fds[fd.num]
        elif len(fds) >= _FD_LIMIT:
            del fds[next(iter(fds))]
        fds[fd.num] = fd

    def absolute(self, proc: Process, path: str, dirfd: int = -100) -> str:
        """``path`` made absolute against the cwd (or the directory fd), as libsinsp does."""
        if not path or path[0] == "/":
            return path
        if dirfd == -100:
            base = proc.cwd
        else:
            fd = proc.fds.get(dirfd)
            base = fd.name if fd is not None else ""
        if not base:
            return path
        return os.path.normpath(os.path.join(base, path))

    def ancestors(self, proc: Process, depth: int) -> list[Process]:
        """Parent, grandparent, ... up to ``depth`` (stops at pid 0/1's parent or a loop)."""
        out: list[Process] = []
        seen = {proc.pid}
        ppid = proc.ppid
        procs = self.procs
        while len(out) < depth and ppid > 0 and ppid not in seen:
            parent = procs.get(ppid)
            if parent is None:
                break
            out.append(parent)
            seen.add(ppid)
            ppid = parent.ppid
        return out


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _signed32(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


def _boot_time_ns(root: Path) -> int:
    for line in _read(root / "stat").splitlines():
        if line.startswith("btime "):
            return int(line.split()[1]) * 1_000_000_000
    return 0


def is_directory_open(flags: int) -> bool:
    return bool(flags & _O_DIRECTORY)
