"""RawEvent + process table → the Falco field mapping the engine reads (only the fields it needs).

Process-level fields are built once per process (and again after any exec, since a parent's
name may have changed) and copied into each event; fd fields once per fd. Called by the monitor.
"""

from __future__ import annotations

import errno
import os
import pwd
import re
from collections.abc import Callable, Iterable
from typing import Any

from webhook.runtime.sources.base import RawEvent
from webhook.runtime.state import Fd, Process, ProcessTable

__all__ = ["EventBuilder", "expand_required", "open_flags"]

_ANCESTOR_RE = re.compile(r"^proc\.(aname|apid|aexe|aexepath|acmdline)(?:\[(\d+)\])?$")
MAX_DEPTH = 16  # ancestors given for proc.aname without an index
# Filter-only fields derived by the engine from stored ones (see rules/fields.py).
_DERIVED = {
    "fd.ip": ("fd.type", "fd.cip", "fd.sip"), "fd.net": ("fd.type", "fd.cip", "fd.sip"),
    "fd.port": ("fd.type", "fd.cip", "fd.sip", "fd.cport", "fd.sport"),
    "fd.cnet": ("fd.cip",), "fd.snet": ("fd.sip",), "fd.lnet": ("fd.lip",), "fd.rnet": ("fd.rip",),
}  # fmt: skip

_OPEN_FLAGS = (
    ("O_LARGEFILE", 0o100000), ("O_DIRECTORY", 0o200000), ("O_DIRECT", 0o40000), ("O_TRUNC", 0o1000),
    ("O_SYNC", 0o4010000), ("O_NONBLOCK", 0o4000), ("O_EXCL", 0o200), ("O_DSYNC", 0o10000),
    ("O_APPEND", 0o2000), ("O_CREAT", 0o100), ("O_RDWR", 2), ("O_WRONLY", 1), ("O_RDONLY", -1),
    ("O_CLOEXEC", 0o2000000), ("O_NOFOLLOW", 0o400000), ("O_TMPFILE", 0o20000000), ("O_PATH", 0o10000000),
)  # fmt: skip
_PTRACE = {0: "PTRACE_TRACEME", 1: "PTRACE_PEEKTEXT", 2: "PTRACE_PEEKDATA", 3: "PTRACE_PEEKUSR",
           4: "PTRACE_POKETEXT", 5: "PTRACE_POKEDATA", 6: "PTRACE_POKEUSR", 7: "PTRACE_CONT",
           8: "PTRACE_KILL", 9: "PTRACE_SINGLESTEP", 12: "PTRACE_GETREGS", 13: "PTRACE_SETREGS",
           16: "PTRACE_ATTACH", 17: "PTRACE_DETACH", 24: "PTRACE_SYSCALL", 0x4200: "PTRACE_SETOPTIONS",
           0x4206: "PTRACE_SEIZE", 0x4207: "PTRACE_INTERRUPT"}  # fmt: skip
_BPF_CMDS = {0: "BPF_MAP_CREATE", 5: "BPF_PROG_LOAD", 8: "BPF_PROG_ATTACH", 28: "BPF_LINK_CREATE"}
_L4 = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp", 132: "sctp"}
_OPEN_TYPES = frozenset(("open", "openat", "openat2", "creat"))
_NET_TYPES = frozenset(("connect", "accept", "accept4", "bind", "listen", "sendto"))
_PATH_KEYS = ("name", "path", "filename", "newpath", "linkpath", "dir", "oldpath", "target")
_TYPECHAR = {"file": "f", "directory": "d", "ipv4": "4", "ipv6": "6", "unix": "u", "memfd": "f"}


def open_flags(flags: int) -> str:
    """Open flags as Falco renders them (``O_TRUNC|O_CREAT|O_WRONLY``)."""
    out = [n for n, bit in _OPEN_FLAGS if bit > 0 and flags & bit == bit]
    if "O_RDWR" not in out and "O_WRONLY" not in out and not flags & 0o10000000:
        out.insert(len(out) - ("O_CLOEXEC" in out), "O_RDONLY")
    return "|".join(out)


def expand_required(required: Iterable[str] | None) -> frozenset[str] | None:
    """Concrete fields for the engine's needs: derived ones → what they read; aname → [1..N]."""
    if required is None:
        return None
    out: set[str] = set()
    for name in required:
        m = _ANCESTOR_RE.match(name)
        if m and m.group(2) is None:
            out.update(f"proc.{m.group(1)}[{i}]" for i in range(1, MAX_DEPTH + 1))
        else:
            out.update(_DERIVED.get(name, (name,)))
    return frozenset(out)


class EventBuilder:
    """Makes the event dict for each RawEvent (None for the table-only fork events)."""

    def __init__(
        self, table: ProcessTable, required: Iterable[str] | None, hostname: str = "", metadata: Any = None
    ) -> None:
        fields = expand_required(required)
        self.table = table
        self.metadata = metadata  # k8s_meta.KubeletPods or None
        self.all = fields is None
        self.hostname = hostname or os.uname().nodename
        wanted = fields if fields is not None else _ALL_FIELDS
        self.proc_keys = tuple(sorted(f for f in wanted if _proc_getter(f) is not None))
        self.pod_keys = None if fields is None else frozenset(f for f in wanted if f.startswith(_POD_PREFIXES))
        self.fd_keys = frozenset(f for f in wanted if f.startswith("fd."))
        self.evt_getters = tuple((f, g) for f in sorted(wanted) if (g := _EVT_GETTERS.get(f)) is not None)
        self.args = tuple(sorted(f for f in wanted if f.startswith(("evt.arg.", "evt.rawarg."))))
        self.want_tid = "thread.tid" in wanted
        self.fs_path = any(f.startswith("fs.path.") for f in wanted)
        self.num = 0
        self._users: dict[int, str | None] = {}

    def build(self, ev: RawEvent) -> dict[str, Any] | None:
        proc = self.table.apply(ev)
        if ev.type == "F":
            return None
        self.num += 1
        out = self._proc_fields(proc)
        out["evt.num"] = self.num
        for name, getter in self.evt_getters:
            value = getter(ev)
            if value is not None:
                out[name] = value
        if self.want_tid:
            out["thread.tid"] = ev.tid
        fd = self._fd(ev, proc)
        if fd is not None and self.fd_keys:
            if fd.cache is None:
                fd.cache = {k: v for k, v in _fd_fields(fd).items() if self.all or k in self.fd_keys}
            out.update(fd.cache)
        if self.args:
            self._args(ev, out)
        if self.fs_path:
            self._fs_path(ev, proc, out)
        return out

    # -- process ---------------------------------------------------------------------------------
    def _proc_fields(self, proc: Process) -> dict[str, Any]:
        meta = self.metadata
        gen = self.table.generation + (meta.generation << 40 if meta is not None else 0)
        if proc.cache is None or proc.cache_gen != gen:
            cache = {}
            for key in self.proc_keys:
                getter = _proc_getter(key)
                value = getter(self, proc) if getter is not None else None
                if value is not None:
                    cache[key] = value
            if meta is not None and proc.container and (self.pod_keys is None or self.pod_keys):
                info = meta.lookup(proc.container)
                if info is not None:
                    keys = self.pod_keys
                    cache.update((k, v) for k, v in info.fields().items() if keys is None or k in keys)
            proc.cache, proc.cache_gen = cache, gen
        return dict(proc.cache)

    def user_name(self, uid: int) -> str | None:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except (KeyError, OverflowError):
                self._users[uid] = None
        return self._users[uid]

    # -- fds -------------------------------------------------------------------------------------
    def _fd(self, ev: RawEvent, proc: Process) -> Fd | None:
        kind, p = ev.type, ev.params
        if kind in _OPEN_TYPES:
            path = self.table.absolute(proc, p["name"], p["dirfd"])
            ftype = "directory" if p["flags"] & 0o200000 else "file"
            fd = Fd(num=ev.res, type=ftype, name=path)
            if ev.res >= 0:
                self.table.set_fd(proc, fd)
            return fd
        if kind in _NET_TYPES:
            return self._socket(ev, proc)
        if kind == "memfd_create":
            fd = Fd(num=ev.res, type="memfd", name="memfd:" + p["name"])
            if ev.res >= 0:
                self.table.set_fd(proc, fd)
            return fd
        num = p.get("fd") if kind in ("fchmod", "finit_module") else None
        return proc.fds.get(num) if num is not None else None

    def _socket(self, ev: RawEvent, proc: Process) -> Fd | None:
        p, kind = ev.params, ev.type
        num = p["fd"]
        family = p["family"]
        if family == 1:
            return Fd(num=num, type="unix", name=p["rip"] or p["lip"])
        if family not in (2, 10):
            return proc.fds.get(num)
        server = kind in ("accept", "accept4", "bind", "listen")
        lip, lport, rip, rport = p["lip"], p["lport"], p["rip"], p["rport"]
        if server:
            cip, cport, sip, sport = rip, rport, lip, lport
        else:
            cip, cport, sip, sport = lip, lport, rip, rport
        if kind in ("bind", "listen"):
            cip, cport = "", 0
        fd = Fd(
            num=num, type="ipv4" if family == 2 else "ipv6", name="",
            l4proto=_L4.get(p["proto"], "<NA>"), cip=cip, cport=cport, sip=sip, sport=sport,
            is_server=server, connected=(kind in ("connect", "accept", "accept4") and ev.res >= 0)
            or (kind == "connect" and ev.res == -errno.EINPROGRESS),
        )  # fmt: skip
        fd.name = f"{cip}:{cport}->{sip}:{sport}" if cip else f"{sip}:{sport}"
        if num >= 0 and (ev.res >= 0 or kind == "connect"):
            self.table.set_fd(proc, fd)
        return fd

    # -- arguments -------------------------------------------------------------------------------
    def _args(self, ev: RawEvent, out: dict[str, Any]) -> None:
        p = ev.params
        for key in self.args:
            raw = key.startswith("evt.rawarg.")
            name = key[11:] if raw else key[8:]
            if name == "res":
                out[key] = ev.res if raw else _res(ev.res)
                continue
            if name == "tuple" and ev.type in _NET_TYPES and "lip" in p:
                out[key] = _tuple(p)
                continue
            if name not in p:
                continue
            value = p[name]
            out[key] = value if raw else _render(ev.type, name, value)

    def _fs_path(self, ev: RawEvent, proc: Process, out: dict[str, Any]) -> None:
        p = ev.params
        dirfd = p.get("dirfd", -100)
        for key in _PATH_KEYS:
            if key in p and isinstance(p[key], str):
                out["fs.path.name"] = self.table.absolute(proc, p[key], dirfd)
                break
        if "oldpath" in p:
            out["fs.path.source"] = self.table.absolute(proc, p["oldpath"], -100)
            out["fs.path.target"] = out.get("fs.path.name", "")
        if "target" in p:
            out["fs.path.target"] = p["target"]


def _res(res: int) -> str:
    if res >= 0:
        return "SUCCESS"
    return errno.errorcode.get(-res, str(res))


def _tuple(p: dict[str, Any]) -> str:
    return f"{p['lip']}:{p['lport']}->{p['rip']}:{p['rport']}"


def _render(kind: str, name: str, value: Any) -> Any:
    if name == "flags" and kind in _OPEN_TYPES:
        return open_flags(value)
    if name == "mode":
        return f"0{value:o}"
    if name == "request" and kind == "ptrace":
        return _PTRACE.get(value, str(value))
    if name == "cmd" and kind == "bpf":
        return _BPF_CMDS.get(value, str(value))
    return value if isinstance(value, str) else str(value)


def _fd_fields(fd: Fd) -> dict[str, Any]:
    out: dict[str, Any] = {"fd.num": fd.num, "fd.type": fd.type, "fd.typechar": _TYPECHAR.get(fd.type, "o"),
                           "fd.name": fd.name}  # fmt: skip
    if fd.type in ("file", "directory", "memfd"):
        if fd.type == "directory":
            out["fd.directory"] = fd.name
        else:
            head, _, tail = fd.name.rpartition("/")
            out["fd.directory"] = head or "/"
            out["fd.filename"] = tail
        return out
    out["fd.sockfamily"] = "unix" if fd.type == "unix" else "ip"
    if fd.type == "unix":
        return out
    out.update({"fd.l4proto": fd.l4proto, "fd.connected": fd.connected, "fd.is_server": fd.is_server})
    if fd.sip:
        out.update({"fd.sip": fd.sip, "fd.sport": fd.sport})
    if fd.cip:
        out.update({"fd.cip": fd.cip, "fd.cport": fd.cport})
    local = (fd.sip, fd.sport) if fd.is_server else (fd.cip, fd.cport)
    remote = (fd.cip, fd.cport) if fd.is_server else (fd.sip, fd.sport)
    if local[0]:
        out.update({"fd.lip": local[0], "fd.lport": local[1]})
    if remote[0]:
        out.update({"fd.rip": remote[0], "fd.rport": remote[1]})
    return out


_EVT_GETTERS: dict[str, Callable[[RawEvent], Any]] = {
    "evt.type": lambda e: e.type,
    "evt.dir": lambda e: "<",
    "evt.time": lambda e: e.ts,
    "evt.rawtime": lambda e: e.ts,
    "evt.res": lambda e: _res(e.res),
    "evt.rawres": lambda e: e.res,
    "evt.failed": lambda e: e.res < 0,
    "evt.is_open_read": lambda e: e.type in _OPEN_TYPES and e.params["flags"] & 3 in (0, 2),
    "evt.is_open_write": lambda e: e.type in _OPEN_TYPES and e.params["flags"] & 3 in (1, 2),
    "evt.is_open_exec": lambda e: (
        e.type in _OPEN_TYPES and bool(e.params["flags"] & 0o100) and bool(e.params["mode"] & 0o111)
    ),
    "evt.is_open_create": lambda e: e.type in _OPEN_TYPES and bool(e.params["flags"] & 0o100),
}


def _ancestor(attr: str, n: int) -> Callable[[EventBuilder, Process], Any]:
    def get(b: EventBuilder, proc: Process) -> Any:
        if n == 0:
            return getattr(proc, attr)
        chain = b.table.ancestors(proc, n)
        return getattr(chain[n - 1], attr) if len(chain) >= n else None

    return get


def _container(p: Process, full: bool = False) -> str:
    if not p.container:
        return "host"
    return p.container if full else p.container[:12]


_PROC_GETTERS: dict[str, Callable[[EventBuilder, Process], Any]] = {
    "proc.pid": lambda b, p: p.pid,
    "proc.vpid": lambda b, p: p.pid,
    "proc.ppid": lambda b, p: p.ppid,
    "proc.name": lambda b, p: p.name,
    "proc.exe": lambda b, p: p.exe,
    "proc.exepath": lambda b, p: p.exepath,
    "proc.args": lambda b, p: " ".join(p.args),
    "proc.cmdline": lambda b, p: p.cmdline,
    "proc.cmdnargs": lambda b, p: len(p.args),
    "proc.cwd": lambda b, p: p.cwd + "/" if p.cwd and not p.cwd.endswith("/") else p.cwd,
    "proc.tty": lambda b, p: p.tty,
    "proc.start_ts": lambda b, p: p.start_ns,
    "proc.pname": _ancestor("name", 1),
    "proc.pexe": _ancestor("exe", 1),
    "proc.pexepath": _ancestor("exepath", 1),
    "proc.pcmdline": _ancestor("cmdline", 1),
    "proc.pvpid": lambda b, p: p.ppid,
    "user.uid": lambda b, p: p.uid,
    "user.name": lambda b, p: b.user_name(p.uid),
    "user.loginuid": lambda b, p: p.loginuid,
    "user.loginname": lambda b, p: b.user_name(p.loginuid) if p.loginuid >= 0 else None,
    "container.id": lambda b, p: _container(p),
    "container.full_id": lambda b, p: _container(p, full=True),
    "evt.hostname": lambda b, p: b.hostname,
}
_POD_PREFIXES = ("k8s.", "container.name", "container.image")
_ANC_ATTR = {"aname": "name", "apid": "pid", "aexe": "exe", "aexepath": "exepath", "acmdline": "cmdline"}


def _proc_getter(name: str) -> Callable[[EventBuilder, Process], Any] | None:
    getter = _PROC_GETTERS.get(name)
    if getter is not None:
        return getter
    m = _ANCESTOR_RE.match(name)
    if m and m.group(2) is not None:
        return _ancestor(_ANC_ATTR[m.group(1)], int(m.group(2)))
    return None


_ALL_FIELDS = frozenset(
    [*_EVT_GETTERS, *_PROC_GETTERS, *(f"proc.aname[{i}]" for i in range(1, 6)),
     "fd.num", "fd.type", "fd.typechar", "fd.name", "fd.directory", "fd.filename", "fd.l4proto",
     "fd.sockfamily", "fd.cip", "fd.sip", "fd.cport", "fd.sport", "fd.lip", "fd.lport", "fd.rip",
     "fd.rport", "fd.connected", "fd.is_server", "thread.tid"]
)  # fmt: skip
