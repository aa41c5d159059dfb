"""RawEvent + process table → the Falco field mapping the engine reads (only the fields it needs).

Process-level fields are built once per process (and again after any exec, since a parent's
name may have changed) and copied into each event; fd fields once per fd. Called by the monitor.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pwd
import re
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from webhook.runtime.rules import fields as catalog
from webhook.runtime.sources.base import RawEvent
from webhook.runtime.state import Fd, Process, ProcessTable, resolve_path

__all__ = ["EventBuilder", "NameResolver", "expand_required", "open_flags", "producible"]

_ANCESTOR_RE = re.compile(r"^proc\.(aname|apid|aexe|aexepath|acmdline)(?:\[(\d+)\])?$")
MAX_DEPTH = catalog.MAX_ANCESTORS  # ancestors given for proc.aname without an index

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
# Socket address families as Falco renders socket's domain argument (evt.arg.domain).
_FAMILIES = {0: "AF_UNSPEC", 1: "AF_UNIX", 2: "AF_INET", 3: "AF_AX25", 4: "AF_IPX", 5: "AF_APPLETALK",
             6: "AF_NETROM", 7: "AF_BRIDGE", 8: "AF_ATMPVC", 9: "AF_X25", 10: "AF_INET6", 11: "AF_ROSE",
             12: "AF_DECnet", 13: "AF_NETBEUI", 14: "AF_SECURITY", 15: "AF_KEY", 16: "AF_NETLINK",
             17: "AF_PACKET", 18: "AF_ASH", 19: "AF_ECONET", 20: "AF_ATMSVC", 21: "AF_RDS", 22: "AF_SNA",
             23: "AF_IRDA", 24: "AF_PPPOX", 25: "AF_WANPIPE", 26: "AF_LLC", 27: "AF_IB", 28: "AF_MPLS",
             29: "AF_CAN", 30: "AF_TIPC", 31: "AF_BLUETOOTH", 32: "AF_IUCV", 33: "AF_RXRPC", 34: "AF_ISDN",
             35: "AF_PHONET", 36: "AF_IEEE802154", 37: "AF_CAIF", 38: "AF_ALG", 39: "AF_NFC", 40: "AF_VSOCK",
             41: "AF_KCM", 42: "AF_QIPCRTR", 43: "AF_SMC", 44: "AF_XDP", 45: "AF_MCTP"}  # fmt: skip
# Capability names by bit, as Falco renders thread.cap_* (space-separated).
_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]


def cap_names(bits: int) -> str:
    """A capability set as Falco prints it: the names of the set bits, lowest first."""
    return " ".join(name for i, name in enumerate(_CAPS) if bits >> i & 1)


def _full_caps() -> int:
    """Every capability this kernel knows (a privileged container keeps all of them)."""
    try:
        last = int(open("/proc/sys/kernel/cap_last_cap").read())  # noqa: SIM115
    except (OSError, ValueError):
        last = len(_CAPS) - 1
    return (1 << (last + 1)) - 1


_FULL_CAPS = _full_caps()
_L4 = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp", 132: "sctp"}
_OPEN_TYPES = frozenset(("open", "openat", "openat2", "creat"))
_DUP_TYPES = frozenset(("dup", "dup2", "dup3"))
_NET_TYPES = frozenset(("connect", "accept", "accept4", "bind", "listen", "sendto", "sendmsg"))
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
            out.update(catalog.DERIVED_FROM.get(name, (name,)))
    return frozenset(out)


class NameResolver:
    """``fd.sip.name`` as libsinsp's DNS manager gives it: the names the rules compare it with are
    resolved in the background (every ``refresh_s``), and a server address gets the name that
    resolved to it. Lookups never block the event path: before the first answer the field is
    missing, as in Falco."""

    def __init__(self, names: Iterable[str], *, refresh_s: float = 30.0) -> None:
        self.names = tuple(sorted(set(names)))
        self.refresh_s = refresh_s
        self._by_ip: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def name(self, ip: str) -> str | None:
        return self._by_ip.get(ip)

    def resolve_once(self) -> None:
        by_ip: dict[str, str] = {}
        for host in self.names:
            try:
                infos = socket.getaddrinfo(host, None)
            except (OSError, UnicodeError):
                continue
            for info in infos:
                by_ip.setdefault(str(info[4][0]), host)
        self._by_ip = by_ip

    def start(self) -> None:
        if self.names and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sip-name-resolver", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.resolve_once()
            self._stop.wait(self.refresh_s)

    def close(self) -> None:
        self._stop.set()


class EventBuilder:
    """Makes the event dict for each RawEvent (None for the table-only fork events)."""

    def __init__(
        self,
        table: ProcessTable,
        required: Iterable[str] | None,
        hostname: str = "",
        metadata: Any = None,
        resolver: NameResolver | None = None,
        by_type: Callable[[str], Iterable[str]] | None = None,
    ) -> None:
        fields = expand_required(required)
        self.table = table
        self.metadata = metadata  # k8s_meta.KubeletPods or None
        self.all = fields is None
        self.hostname = hostname or os.uname().nodename
        wanted = fields if fields is not None else _ALL_FIELDS
        self.proc_keys = tuple(sorted(f for f in wanted if _proc_getter(f) is not None))
        self.pod_keys = None if fields is None else frozenset(f for f in wanted if f.startswith(_POD_PREFIXES))
        self.plan = _Plan.of(wanted)
        # only the fd.* fields the rules read are computed for each new fd (all of them when every
        # field is wanted, e.g. for an output printing them all)
        self.fd_keys = self.plan.fd_keys
        self.fd_getters = self.plan.fd_getters
        self.args = tuple(sorted(f for f in wanted if f.startswith(("evt.arg.", "evt.rawarg."))))
        # ``by_type``: the fields the rules can read on an event of a given type (the engine's
        # ``fields_for_type``), so each event gets only those, not every field some rule reads.
        self._by_type = by_type if fields is not None else None
        self._plans: dict[str, _Plan] = {}
        self.resolver: NameResolver | None = resolver
        self._name_changed = False
        self.num = 0
        self._users: dict[int, str | None] = {}

    def plan_for(self, evtype: str) -> _Plan:
        """The fields to build for events of ``evtype`` (made once per type)."""
        plan = self._plans.get(evtype)
        if plan is None:
            if self._by_type is None:
                plan = self.plan
            else:
                wanted = expand_required(self._by_type(evtype))
                assert wanted is not None
                # never more than the builder was made for (``required``)
                wanted = wanted & self.plan.wanted
                # the same plan object when nothing is left out: fd caches stay shared
                plan = self.plan if wanted == self.plan.wanted else _Plan.of(wanted, evtype)
            self._plans[evtype] = plan
        return plan

    def build(self, ev: RawEvent) -> dict[str, Any] | None:
        proc = self.table.apply(ev)
        if ev.type == "F":
            return None
        self.num += 1
        plan = self._plans.get(ev.type) or self.plan_for(ev.type)
        out = self._proc_fields(proc)  # cached per process: a copy is cheaper than a subset
        out["evt.num"] = self.num
        plan.evt_fields(ev, out)
        if plan.want_tid:
            out["thread.tid"] = ev.tid
        if plan.want_duration and proc.start_ns:
            out["proc.duration"] = max(ev.ts - proc.start_ns, 0)
        self._name_changed = False
        fd = self._fd(ev, proc)  # always: it keeps the process table's fds current
        if fd is not None and plan.fd_keys:
            getters = plan.fd_getters
            if fd.cache is None or fd.cache_for is not getters:
                fd.cache = _fd_fields(fd) if self.all else plan.fd_fields(fd)
                fd.cache_for = getters
            out.update(fd.cache)
            if plan.want_name_changed:
                out["fd.name_changed"] = self._name_changed
            if plan.want_sip_name and fd.sip:
                host = self.resolver.name(fd.sip) if self.resolver is not None else None
                if host is not None:
                    out["fd.sip.name"] = host
        if plan.arg_specs:
            self._args(ev, out, plan.arg_specs)
        if plan.fs_path:
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
            raw = p["name"]
            base = p.get("base")  # the start directory as the kernel named it (ring-buffer source)
            if base and raw and raw[0] != "/":
                path = resolve_path(base, raw)
            else:  # the process table's cwd and directory fds
                path = self.table.absolute(proc, raw, p["dirfd"])
            if p.get("truncated") and ev.res >= 0:  # longer than the source carries: ask the kernel
                path = self.table.fd_path(ev.pid, ev.res) or path
            ftype = "directory" if p["flags"] & 0o200000 else "file"
            # a failed open has fd -1 and still its name, as libsinsp gives it (open_file_failed)
            fd = Fd(num=ev.res if ev.res >= 0 else -1, type=ftype, name=path, nameraw=raw)
            if ev.res >= 0:
                self.table.set_fd(proc, fd)
            return fd
        if kind in _DUP_TYPES:  # the event's fd is the old one; the new number refers to the same
            old = proc.fds.get(p["oldfd"])
            if old is not None and ev.res >= 0:
                self.table.set_fd(proc, dataclasses.replace(old, num=ev.res, cache=None))
            return old
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
        previous = proc.fds.get(num)
        self._name_changed = previous is None or previous.name != fd.name  # a datagram to a new peer
        if num >= 0 and (ev.res >= 0 or kind == "connect"):
            self.table.set_fd(proc, fd)
        return fd

    # -- arguments -------------------------------------------------------------------------------
    def _args(self, ev: RawEvent, out: dict[str, Any], specs: tuple[tuple[str, bool, str], ...]) -> None:
        p = ev.params
        for key, raw, name in specs:
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


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """What ``EventBuilder.build`` computes for one set of wanted fields (per event type)."""

    wanted: frozenset[str]
    evt_getters: tuple[tuple[str, Callable[[RawEvent], Any]], ...]
    evt_fields: Callable[[RawEvent, dict[str, Any]], None]  # compile_evt_fields(evt_getters)
    fd_keys: frozenset[str]
    fd_getters: tuple[tuple[str, Callable[[Fd], Any]], ...]
    fd_fields: Callable[[Fd], dict[str, Any]]  # compile_fd_fields(fd_getters)
    arg_specs: tuple[tuple[str, bool, str], ...]
    want_tid: bool
    want_duration: bool
    want_name_changed: bool
    want_sip_name: bool
    fs_path: bool

    @classmethod
    def of(cls, wanted: frozenset[str], evtype: str | None = None) -> _Plan:
        """``evtype``: the plan is for events of that type only (None: any type)."""
        evt_getters = tuple((f, g) for f in sorted(wanted) if (g := _EVT_GETTERS.get(f)) is not None)
        fd_keys = frozenset(f for f in wanted if f.startswith("fd."))
        fd_getters = tuple((k, fg) for k in sorted(fd_keys) if (fg := _FD_GETTERS.get(k)) is not None)
        args = tuple(sorted(f for f in wanted if f.startswith(("evt.arg.", "evt.rawarg."))))
        return cls(
            wanted=wanted,
            evt_getters=evt_getters,
            evt_fields=compile_evt_fields(evt_getters, evtype),
            fd_keys=fd_keys,
            fd_getters=fd_getters,
            fd_fields=compile_fd_fields(fd_getters),
            arg_specs=tuple(
                (k, k.startswith("evt.rawarg."), k[11:] if k.startswith("evt.rawarg.") else k[8:]) for k in args
            ),
            want_tid="thread.tid" in wanted,
            want_duration="proc.duration" in wanted,
            want_name_changed="fd.name_changed" in wanted,
            want_sip_name="fd.sip.name" in wanted,
            fs_path=any(f.startswith("fs.path.") for f in wanted),
        )


# Each evt.* field as an expression of ``ev`` (a RawEvent) and ``p`` (its params), with
# ``open_type`` the event type's openness: None unknown, True an open type, False not one. Equal
# to _EVT_GETTERS (none of which gives None); a differential test holds them together.
def _evt_expr(name: str, open_type: bool | None) -> str | None:
    flag_tests = {
        "evt.is_open_read": "p['flags'] & 3 in (0, 2)",
        "evt.is_open_write": "p['flags'] & 3 in (1, 2)",
        "evt.is_open_exec": "bool(p['flags'] & 0o100) and bool(p['mode'] & 0o111)",
        "evt.is_open_create": "bool(p['flags'] & 0o100)",
    }
    if name in flag_tests:
        if open_type is None:
            return f"ev.type in OPEN and {flag_tests[name]}"
        return flag_tests[name] if open_type else "False"
    return {
        "evt.type": "ev.type", "evt.dir": "'<'", "evt.time": "ev.ts", "evt.rawtime": "ev.ts",
        "evt.res": "res_text(ev.res)", "evt.rawres": "ev.res", "evt.failed": "ev.res < 0",
    }.get(name)  # fmt: skip


def compile_evt_fields(
    getters: tuple[tuple[str, Callable[[RawEvent], Any]], ...], evtype: str | None = None
) -> Callable[[RawEvent, dict[str, Any]], None]:
    """The evt.* fields of ``getters`` set into ``out`` by one generated function (for events of
    ``evtype`` only, when given: what depends on the type alone is decided here, once)."""
    open_type = None if evtype is None else evtype in _OPEN_TYPES
    lines = ["def f(ev, out):", "    p = ev.params"]
    env: dict[str, Any] = {"OPEN": _OPEN_TYPES, "res_text": _res}
    for i, (name, get) in enumerate(getters):
        expr = _evt_expr(name, open_type)
        if expr is None:  # a getter without an expression here: called, and None left out
            env[f"g{i}"] = get
            lines += [f"    v = g{i}(ev)", "    if v is not None:", f"        out[{name!r}] = v"]
        else:
            lines.append(f"    out[{name!r}] = {expr}")
    exec(compile("\n".join(lines) + "\n", "<evt-fields>", "exec"), env)  # our own template, from field names
    fn: Callable[[RawEvent, dict[str, Any]], None] = env["f"]
    return fn


def _render(kind: str, name: str, value: Any) -> Any:
    if name == "flags" and kind in _OPEN_TYPES:
        return open_flags(value)
    if name == "mode":
        return f"0{value:o}"
    if name == "request" and kind == "ptrace":
        return _PTRACE.get(value, str(value))
    if name == "cmd" and kind == "bpf":
        return _BPF_CMDS.get(value, str(value))
    if name == "domain" and kind == "socket":
        return _FAMILIES.get(value, str(value))
    return value if isinstance(value, str) else str(value)


def _fd_fields(fd: Fd) -> dict[str, Any]:
    out: dict[str, Any] = {"fd.num": fd.num, "fd.type": fd.type, "fd.typechar": _TYPECHAR.get(fd.type, "o"),
                           "fd.name": fd.name, "fd.nameraw": fd.nameraw or fd.name}  # fmt: skip
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


_NOT_IP = frozenset(("file", "directory", "memfd", "unix"))
_FILE_TYPES = frozenset(("file", "directory", "memfd"))


def _wanted_fd_fields(fd: Fd, getters: tuple[tuple[str, Callable[[Fd], Any]], ...]) -> dict[str, Any]:
    """The subset of ``_fd_fields(fd)`` named by ``getters`` (a getter's None: the field is absent)."""
    out: dict[str, Any] = {}
    for key, get in getters:
        value = get(fd)
        if value is not None:
            out[key] = value
    return out


# The value of each fd.* field on a file, directory or memfd (``t``: its type, ``n``: its name), as
# _FD_GETTERS gives it; None: absent on those types.
_FILE_EXPRS: dict[str, str | None] = {
    "fd.num": "fd.num",
    "fd.type": "t",
    "fd.typechar": "TYPECHAR.get(t, 'o')",
    "fd.name": "n",
    "fd.nameraw": "fd.nameraw or n",
    "fd.directory": "n if t == 'directory' else (n.rpartition('/')[0] or '/')",
}


def compile_fd_fields(getters: tuple[tuple[str, Callable[[Fd], Any]], ...]) -> Callable[[Fd], dict[str, Any]]:
    """``_wanted_fd_fields(fd, getters)`` as one generated function: straight-line for files (the
    common case, one dict literal), the getters for sockets. A differential test holds them equal."""
    keys = [k for k, _ in getters]
    items = ", ".join(f"{k!r}: {e}" for k in keys if (e := _FILE_EXPRS.get(k)) is not None)
    lines = [
        "def f(fd):",
        "    t = fd.type",
        "    if t not in FILE_TYPES:",
        "        return wanted(fd, getters)",
        "    n = fd.name",
        f"    out = {{{items}}}",
    ]
    if "fd.filename" in keys:
        lines += ["    if t != 'directory':", "        out['fd.filename'] = n.rpartition('/')[2]"]
    lines.append("    return out")
    env: dict[str, Any] = {
        "FILE_TYPES": _FILE_TYPES, "TYPECHAR": _TYPECHAR, "wanted": _wanted_fd_fields, "getters": getters,
    }  # fmt: skip
    exec(compile("\n".join(lines) + "\n", "<fd-fields>", "exec"), env)  # our own template, from field names
    fn: Callable[[Fd], dict[str, Any]] = env["f"]
    return fn


def _fd_directory(fd: Fd) -> str | None:
    if fd.type == "directory":
        return fd.name
    if fd.type in _FILE_TYPES:
        return fd.name.rpartition("/")[0] or "/"
    return None


def _ip(fd: Fd) -> bool:
    return fd.type not in _NOT_IP


def _local(fd: Fd) -> tuple[str, int]:
    return (fd.sip, fd.sport) if fd.is_server else (fd.cip, fd.cport)


def _remote(fd: Fd) -> tuple[str, int]:
    return (fd.cip, fd.cport) if fd.is_server else (fd.sip, fd.sport)


# One getter per fd.* field, giving exactly what _fd_fields gives (None where it leaves it out);
# a differential test holds them together.
_FD_GETTERS: dict[str, Callable[[Fd], Any]] = {
    "fd.num": lambda fd: fd.num,
    "fd.type": lambda fd: fd.type,
    "fd.typechar": lambda fd: _TYPECHAR.get(fd.type, "o"),
    "fd.name": lambda fd: fd.name,
    "fd.nameraw": lambda fd: fd.nameraw or fd.name,
    "fd.directory": _fd_directory,
    "fd.filename": lambda fd: fd.name.rpartition("/")[2] if fd.type in ("file", "memfd") else None,
    "fd.sockfamily": lambda fd: None if fd.type in _FILE_TYPES else ("unix" if fd.type == "unix" else "ip"),
    "fd.l4proto": lambda fd: fd.l4proto if _ip(fd) else None,
    "fd.connected": lambda fd: fd.connected if _ip(fd) else None,
    "fd.is_server": lambda fd: fd.is_server if _ip(fd) else None,
    "fd.sip": lambda fd: fd.sip if _ip(fd) and fd.sip else None,
    "fd.sport": lambda fd: fd.sport if _ip(fd) and fd.sip else None,
    "fd.cip": lambda fd: fd.cip if _ip(fd) and fd.cip else None,
    "fd.cport": lambda fd: fd.cport if _ip(fd) and fd.cip else None,
    "fd.lip": lambda fd: _local(fd)[0] if _ip(fd) and _local(fd)[0] else None,
    "fd.lport": lambda fd: _local(fd)[1] if _ip(fd) and _local(fd)[0] else None,
    "fd.rip": lambda fd: _remote(fd)[0] if _ip(fd) and _remote(fd)[0] else None,
    "fd.rport": lambda fd: _remote(fd)[1] if _ip(fd) and _remote(fd)[0] else None,
}


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
    "proc.is_exe_from_memfd": lambda b, p: p.exe_from_memfd,
    "proc.is_exe_upper_layer": lambda b, p: b.table.is_exe_upper_layer(p),
    "thread.cap_effective": lambda b, p: cap_names(p.cap_effective) if p.cap_effective >= 0 else None,
    "container.privileged": lambda b, p: (
        bool(p.container) and p.cap_bounding >= 0 and p.cap_bounding & _FULL_CAPS == _FULL_CAPS
    ),
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


_FD_FIELDS = frozenset(
    ("fd.num", "fd.type", "fd.typechar", "fd.name", "fd.nameraw", "fd.directory", "fd.filename", "fd.l4proto",
     "fd.sockfamily", "fd.cip", "fd.sip", "fd.cport", "fd.sport", "fd.lip", "fd.lport", "fd.rip", "fd.rport",
     "fd.connected", "fd.is_server")
)  # fmt: skip
_EVENT_FIELDS = frozenset(("evt.num", "thread.tid", "proc.duration", "fd.name_changed", "fd.sip.name"))
_ALL_FIELDS = frozenset(
    [*_EVT_GETTERS, *_PROC_GETTERS, *(f"proc.aname[{i}]" for i in range(1, 6)), *_FD_FIELDS, *_EVENT_FIELDS]
)


def producible(name: str) -> bool:
    """Whether the eBPF source and this builder can give the field (``name`` as an event key:
    ``proc.aname[2]``, ``evt.arg.flags``). Checked against ``rules.fields.LIVE_FIELDS`` by tests."""
    if name in _ALL_FIELDS or _proc_getter(name) is not None:
        return True
    if name.startswith(_POD_PREFIXES):
        return True
    return name.startswith(("evt.arg.", "evt.rawarg.", "fs.path."))
