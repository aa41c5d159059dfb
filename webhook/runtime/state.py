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

__all__ = ["Fd", "Process", "ProcessTable", "container_id", "resolve_path"]

_CONTAINER_RE = re.compile(r"(?:^|[/:-])([0-9a-f]{64})(?:\.scope)?$")
_FD_LIMIT = 256  # fds remembered per process: close() is not traced, so the oldest go first
_EXITED_GRACE_NS = 10_000_000_000  # keep exited processes: later-read events of children need them
_O_DIRECTORY = 0o200000
_AT_FDCWD = -100
_PARENTS_LIMIT = 1 << 20
_OVERLAYFS_MAGIC = 0x794C7630


def resolve_path(base: str, path: str) -> str:
    """Falco's ``fd.name`` for ``path`` opened relative to ``base`` (a cwd or a directory).

    As libsinsp's ``concatenate_paths``: an absolute ``path`` ignores ``base``; otherwise it is
    appended to ``base``; then the result is normalized lexically: empty and ``.`` components
    dropped, ``..`` removes the previous component (never above ``/``), repeated and trailing
    slashes collapsed. Symbolic links are not followed (the name is what the process said).
    A relative result (no known base) stays relative.
    """
    if not path:
        return path
    if path[0] == "/" and "//" not in path and "/." not in path and path[-1] != "/":
        return path  # already normal: the common case, kept fast
    full = path if path[0] == "/" else (base.rstrip("/") + "/" + path if base else path)
    absolute = full[0] == "/"
    out: list[str] = []
    for part in full.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not absolute:
                out.append(part)
            continue
        out.append(part)
    text = "/".join(out)
    return "/" + text if absolute else text


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
    nameraw: str = ""  # the path as the process passed it (Falco's fd.nameraw)
    l4proto: str = ""
    cip: str = ""
    cport: int = 0
    sip: str = ""
    sport: int = 0
    is_server: bool = False
    connected: bool = False
    cache: dict[str, Any] | None = None  # fd.* fields, built once
    cache_for: object = None  # the builder plan's fd getters ``cache`` was built with


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
    cgroup: int = 0  # cgroup v2 id the kernel gave at exec/fork
    cap_effective: int = -1  # bit set, -1 unknown
    cap_bounding: int = -1
    exe_from_memfd: bool = False
    exe_upper_layer: bool | None = None  # None: not looked at yet (computed when a rule reads it)
    exe_fs_magic: int = 0
    truncated: bool = False  # argv or exe path longer than the source carries
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
        # Bumped when a process that has (or had) children execs: its children's cached parent
        # and ancestor fields become stale. A fresh child exec'ing (fork + exec, by far the most
        # common exec) has none, so the caches of everything else stay valid.
        self.generation = 0
        self._parents: set[int] = set()  # pids some process in the table was forked from
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
                    self._parents.add(proc.ppid)
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
            elif line.startswith("CapEff:"):
                proc.cap_effective = int(line.split()[1], 16)
            elif line.startswith("CapBnd:"):
                proc.cap_bounding = int(line.split()[1], 16)
        loginuid = _read(base / "loginuid").strip()
        proc.loginuid = _signed32(int(loginuid)) if loginuid.isdigit() else -1
        return proc

    # -- events --------------------------------------------------------------------------------
    def get(self, pid: int, comm: str = "<NA>", uid: int = -1) -> Process:
        """The process, read from /proc when it started before we saw it, else a bare entry."""
        proc = self.procs.get(pid)
        if proc is None:
            proc = self._read(pid) or Process(pid=pid, ppid=0, name=comm or "<NA>", uid=uid)
            self.procs[pid] = proc
            self._parents.add(proc.ppid)
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
        elif ev.res == 0 and kind in ("chdir", "fchdir"):
            self._chdir(ev, proc)
        return proc

    def _chdir(self, ev: RawEvent, proc: Process) -> None:
        """The cwd after a successful chdir/fchdir (libsinsp updates it the same way), as the
        kernel named it when the source says (an fchdir fd the table has wrong or not at all)."""
        if ev.params.get("cwd"):
            new = ev.params["cwd"]
        elif ev.type == "chdir":
            new = resolve_path(proc.cwd, ev.params["path"]) if proc.cwd or ev.params["path"][:1] == "/" else ""
        else:
            fd = proc.fds.get(ev.params["fd"])
            new = fd.name if fd is not None and fd.name[:1] == "/" else ""
        if not new or ev.params.get("truncated"):  # unknown base or cut path: ask the kernel
            new = _readlink(self.root / str(ev.pid) / "cwd")
        if new:
            proc.cwd = new
            proc.cache = None

    def _fork(self, ev: RawEvent) -> Process:
        ppid = ev.params["ppid"]
        parent = self.procs.get(ppid)
        if parent is None:
            child = self._read(ev.pid) or Process(pid=ev.pid, ppid=ppid, name=ev.comm, uid=ev.uid)
        else:
            child = Process(
                pid=ev.pid, ppid=ppid, name=parent.name, exe=parent.exe, exepath=parent.exepath,
                args=parent.args, cwd=parent.cwd, uid=ev.uid, loginuid=parent.loginuid, tty=parent.tty,
                start_ns=ev.ts, container=parent.container, fds=dict(parent.fds), cgroup=parent.cgroup,
                cap_effective=parent.cap_effective, cap_bounding=parent.cap_bounding,
                exe_from_memfd=parent.exe_from_memfd, exe_upper_layer=parent.exe_upper_layer,
                exe_fs_magic=parent.exe_fs_magic,
            )  # fmt: skip
        if ev.params.get("cgroup") and ev.params["cgroup"] != child.cgroup and parent is not None:
            # forked straight into another cgroup (clone3 CLONE_INTO_CGROUP): learn it from /proc
            child.cgroup = ev.params["cgroup"]
            cgroup = _read(self.root / str(ev.pid) / "cgroup")
            if cgroup:
                child.container = container_id(cgroup)
        self.procs[ev.pid] = child
        self._parents.add(ppid)
        if ev.pid in self._parents:  # a reused pid: processes whose parent had it see a new one
            self.generation += 1
        return child

    def _exec(self, ev: RawEvent) -> Process:
        p = ev.params
        proc = self.get(ev.pid, ev.comm, ev.uid)
        argv: list[str] = p["argv"]
        proc.name = ev.comm
        proc.ppid = p["ppid"]
        proc.uid = ev.uid
        proc.loginuid = _signed32(p["loginuid"])
        if p.get("truncated"):  # longer than the source carries: the whole of it while it lives
            live = _read(self.root / str(ev.pid) / "cmdline").split("\x00")
            if live and live[-1] == "":
                live.pop()
            if len("\x00".join(live)) > len("\x00".join(argv)) and live[:1] == argv[:1]:
                argv = live
        proc.exe = argv[0] if argv else p["filename"]
        proc.args = argv[1:]
        proc.exited_ns = 0
        if "tty" in p:  # read from the task at exec, as Falco's execve exit event carries it
            proc.tty = p["tty"]
        if p.get("cwd_name") and proc.cwd and os.path.basename(proc.cwd) != p["cwd_name"] and proc.cwd != "/":
            proc.cwd = _readlink(self.root / str(ev.pid) / "cwd") or proc.cwd  # our cwd went stale
        proc.exepath = resolve_path(proc.cwd, p["filename"])
        if "cap_effective" in p:
            proc.cap_effective, proc.cap_bounding = p["cap_effective"], p["cap_bounding"]
            exe_name = p.get("exe_name", "")
            proc.exe_from_memfd = p["exe_nlink"] == 0 or exe_name.startswith("memfd:")
            if proc.exe_from_memfd and exe_name.startswith("memfd:"):
                proc.exepath = exe_name  # as libsinsp names it (runc's "memfd:runc_cloned:/proc/self/exe")
            proc.exe_fs_magic = p["exe_fs_magic"]
            proc.exe_upper_layer = None if proc.exe_fs_magic == _OVERLAYFS_MAGIC else False
        proc.container = self._container(ev, proc.container)
        proc.cgroup = p.get("cgroup", 0)
        if not proc.start_ns:  # proc.start_ts / proc.duration count from the fork, as libsinsp's
            proc.start_ns = ev.ts
        proc.cache = None
        self._parents.add(proc.ppid)
        if ev.pid in self._parents:
            self.generation += 1
        return proc

    def _container(self, ev: RawEvent, inherited: str) -> str:
        """The container id from the cgroup names the probe read from the task at exec (so a
        process that is gone by the time we read still gets it); a node whose runtime uses a v1
        hierarchy the probe did not read is asked through /proc while the process lives."""
        for path in ev.params.get("cgroup_names", ()):
            cid = container_id("0::/" + path)
            if cid:
                return cid
        text = _read(self.root / str(ev.pid) / "cgroup")
        if text:
            return container_id(text)
        return inherited

    def is_exe_upper_layer(self, proc: Process) -> bool:
        """Whether the executable of a process on overlayfs comes from the writable upper layer
        (Falco's ``proc.is_exe_upper_layer``): its path exists under the ``upperdir`` of the
        overlay mounted at the process's root. Looked up once per exec, while the process lives."""
        if proc.exe_upper_layer is None:
            proc.exe_upper_layer = _in_upper_layer(self.root, proc.pid, proc.exepath)
        return proc.exe_upper_layer

    def _purge(self, now: int) -> None:
        exited = self._exited
        while exited and now - exited[0][0] > _EXITED_GRACE_NS:
            _, pid = exited.popleft()
            proc = self.procs.get(pid)
            if proc is not None and proc.exited_ns and now - proc.exited_ns > _EXITED_GRACE_NS:
                del self.procs[pid]
        if len(self._parents) > _PARENTS_LIMIT:  # pids reused over a long run: start again, safely
            self._parents = {p.ppid for p in self.procs.values()}
            self.generation += 1

    # -- fds -------------------------------------------------------------------------------------
    def set_fd(self, proc: Process, fd: Fd) -> None:
        fds = proc.fds
        if fd.num in fds:
            del fds[fd.num]
        elif len(fds) >= _FD_LIMIT:
            del fds[next(iter(fds))]
        fds[fd.num] = fd

    def fd_path(self, pid: int, num: int) -> str:
        """What /proc says fd ``num`` of ``pid`` is (a path, resolved by the kernel), '' when gone."""
        target = _readlink(self.root / str(pid) / "fd" / str(num))
        return target if target.startswith("/") else ""

    def absolute(self, proc: Process, path: str, dirfd: int = _AT_FDCWD) -> str:
        """``path`` resolved against the cwd (or the directory fd) and normalized, as libsinsp's
        ``fd.name``; a directory fd we never saw opened is read from /proc while the process lives."""
        if not path or path[0] == "/":
            return resolve_path("", path)
        if dirfd == _AT_FDCWD:
            base = proc.cwd
        else:
            fd = proc.fds.get(dirfd)
            base = fd.name if fd is not None else _readlink(self.root / str(proc.pid) / "fd" / str(dirfd))
        return resolve_path(base, path)

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


def _in_upper_layer(root: Path, pid: int, exepath: str) -> bool:
    # the overlay mounted at the process's root: "/" after pivot_root, its own path after chroot
    own_root = {"/", _readlink(root / str(pid) / "root")}
    for line in _read(root / str(pid) / "mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or fields[4] not in own_root or not right.startswith("overlay "):
            continue
        for opt in right.split()[-1].split(","):
            if opt.startswith("upperdir="):
                upper = opt[len("upperdir=") :].replace("\\040", " ")
                # the upperdir is a path in the host's mount namespace: PID 1's root when we may
                # look there (a hostPID DaemonSet), else ours (a monitor run on the node itself)
                host_root = root / "1" / "root"
                base = host_root if os.access(host_root, os.X_OK) else Path("/")
                return os.path.lexists(base / upper.lstrip("/") / exepath.lstrip("/"))
    return False


def _boot_time_ns(root: Path) -> int:
    for line in _read(root / "stat").splitlines():
        if line.startswith("btime "):
            return int(line.split()[1]) * 1_000_000_000
    return 0


def is_directory_open(flags: int) -> bool:
    return bool(flags & _O_DIRECTORY)
