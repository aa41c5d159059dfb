"""The Falco field catalog and the semantics of derived fields (used by ``compiler`` and the loader).

An event is a mapping of Falco field names (``proc.aname[2]``, ``fd.name``) to values; an
absent key is a missing value. Most fields are read straight from that mapping; a few are
derived the way libsinsp computes them (``fd.ip``, ``fd.port``, ``fd.*net``, ``proc.aname``
without an index), see ``../shared/conformance/falco/README.md`` "Caveats".
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DERIVED_FROM", "LIVE_FIELDS", "MAX_ANCESTORS", "POD_METADATA", "SOURCES", "FieldInfo", "FieldType",
    "Producible", "derived_values", "live_can_produce", "lookup", "parse_ip", "parse_net", "producible_fields",
]  # fmt: skip

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FieldType(enum.Enum):
    STR = "string"
    NUM = "number"
    BOOL = "bool"
    IP = "ipaddr"
    NET = "ipnet"
    LIST = "list"  # several string values (thread.cap_*, fd.types)


class Arg(enum.Enum):
    NONE = "none"  # no [arg] accepted
    OPTIONAL = "optional"
    REQUIRED = "required"
    INDEX = "index"  # optional non-negative integer ([N] ancestors)


@dataclass(frozen=True, slots=True)
class FieldInfo:
    name: str
    type: FieldType
    arg: Arg = Arg.NONE


def _table(kind: FieldType, arg: Arg, names: str) -> dict[str, FieldInfo]:
    return {n: FieldInfo(n, kind, arg) for n in names.split()}


S, N, B, IP, NET, L = FieldType.STR, FieldType.NUM, FieldType.BOOL, FieldType.IP, FieldType.NET, FieldType.LIST
_CATALOG: dict[str, FieldInfo] = {
    **_table(
        S,
        Arg.NONE,
        """
        evt.type evt.dir evt.res evt.args evt.buffer evt.info evt.source evt.hostname evt.category
        evt.datetime evt.datetime.s evt.time.s evt.time.iso8601 evt.reltime evt.plugininfo
        evt.pluginname evt.asynctype evt.abspath evt.abspath.src evt.abspath.dst evt.deltatime
        proc.name proc.exe proc.exepath proc.args proc.cmdline proc.pname proc.pcmdline proc.pexe
        proc.pexepath proc.sname proc.vpgid.name proc.vpgid.exe proc.vpgid.exepath proc.cwd
        proc.exeline proc.loginshellname proc.tty.name proc.cgroups
        thread.cgroups fd.type fd.typechar fd.name fd.directory fd.filename fd.l4proto fd.sockfamily
        fd.containername fd.containerdirectory fd.cip.name fd.sip.name fd.lip.name fd.rip.name
        fd.nameraw fd.proto fd.cproto fd.sproto fd.lproto fd.rproto
        user.name user.homedir user.shell user.loginname group.name
        container.id container.full_id container.name container.image container.image.id
        container.image.repository container.image.tag container.image.digest container.type
        container.mounts container.healthcheck container.liveness_probe container.readiness_probe
        container.ip container.cni.json container.labels
        fs.path.name fs.path.nameraw fs.path.source fs.path.target fs.path.sourceraw fs.path.targetraw
    """,
    ),
    **_table(S, Arg.OPTIONAL, "evt.arg evt.rawarg proc.env evt.around"),
    **_table(
        S,
        Arg.REQUIRED,
        """
        container.mount container.mount.source container.mount.dest container.mount.mode
        container.mount.propagation container.label thread.cgroup
    """,
    ),
    **_table(S, Arg.INDEX, "proc.aname proc.aexe proc.aexepath proc.acmdline"),
    **_table(N, Arg.INDEX, "proc.apid"),
    **_table(
        N,
        Arg.NONE,
        """
        evt.num evt.time evt.rawtime evt.rawres evt.cpu evt.latency evt.latency.s evt.latency.ns
        evt.count evt.count.error evt.buflen evt.deltatime.s evt.deltatime.ns
        proc.pid proc.ppid proc.vpid proc.pvpid proc.sid proc.vpgid proc.tty proc.loginshellid
        proc.duration proc.nthreads proc.nchilds proc.fdopencount proc.fdlimit proc.fdusage
        proc.vmsize proc.vmrss proc.vmswap proc.pidns_init_start_ts proc.exe_ino proc.exe_ino.ctime
        proc.exe_ino.mtime proc.exe_ino.ctime_duration_proc_start proc.exe_ino.ctime_duration_pidns_start
        proc.start_ts proc.ppid.duration proc.cmdnargs proc.cmdlenargs
        thread.tid thread.vtid thread.exectime thread.totexectime thread.vmsize thread.vmrss
        fd.num fd.cport fd.sport fd.lport fd.rport fd.port fd.uid fd.dev fd.dev.major fd.dev.minor
        fd.ino user.uid user.loginuid group.gid container.start_ts container.duration
    """,
    ),
    **_table(
        B,
        Arg.NONE,
        """
        evt.failed evt.is_io evt.is_io_read evt.is_io_write evt.is_wait evt.is_syslog evt.is_async
        evt.is_open_read evt.is_open_write evt.is_open_exec evt.is_open_create
        proc.is_exe_writable proc.is_exe_upper_layer proc.is_exe_lower_layer proc.is_exe_from_memfd
        proc.is_sid_leader proc.is_vpgid_leader proc.is_container_healthcheck
        proc.is_container_liveness_probe proc.is_container_readiness_probe thread.ismain
        fd.is_server fd.connected fd.name_changed container.privileged container.host_pid
        container.host_network container.host_ipc
    """,
    ),
    **_table(IP, Arg.NONE, "fd.ip fd.cip fd.sip fd.lip fd.rip"),
    **_table(NET, Arg.NONE, "fd.net fd.cnet fd.snet fd.lnet fd.rnet"),
    **_table(S, Arg.NONE, "thread.cap_permitted thread.cap_effective thread.cap_inheritable"),
    **_table(L, Arg.NONE, "fd.types"),
}
# Field families whose names are open-ended (k8s metadata, event arguments by name).
_PREFIXES: tuple[tuple[str, FieldInfo], ...] = (
    ("evt.arg.", FieldInfo("evt.arg.*", S)),
    ("evt.rawarg.", FieldInfo("evt.rawarg.*", S)),
    ("k8s.", FieldInfo("k8s.*", S, Arg.OPTIONAL)),
)
# Filter-only fields computed from other fields (no key of their own in the event), and the
# stored fields each one reads: the one definition the compiler (``referenced_fields``), the
# event builder (``events.expand_required``) and ``derived_values`` below share.
DERIVED_FROM: dict[str, tuple[str, ...]] = {
    "fd.ip": ("fd.type", "fd.cip", "fd.sip"),
    "fd.net": ("fd.type", "fd.cip", "fd.sip"),
    "fd.port": ("fd.type", "fd.cip", "fd.sip", "fd.cport", "fd.sport"),
    "fd.cnet": ("fd.cip",),
    "fd.snet": ("fd.sip",),
    "fd.lnet": ("fd.lip",),
    "fd.rnet": ("fd.rip",),
}
DERIVED = frozenset(DERIVED_FROM)
ANCESTOR_FIELDS = {
    "proc.aname": "proc.name",
    "proc.aexe": "proc.exe",
    "proc.aexepath": "proc.exepath",
    "proc.acmdline": "proc.cmdline",
    "proc.apid": "proc.pid",
}
# Ancestors ``proc.aname`` (no index) reads, and that the event builder fills: one number.
MAX_ANCESTORS = 64

# What the live eBPF source (runtime.sources.ebpf + runtime.events) fills in on a Linux node: a
# rule that reads any other field can never match there (``live_can_produce`` answers per field;
# ``k8s.*``/``container.image*``/``container.name`` need the kubelet metadata). Kept equal to
# what ``runtime.events`` builds by tests/runtime_monitor/test_live_fields.py.
LIVE_FIELDS: frozenset[str] = frozenset(
    [
        "evt.num",
        "evt.type",
        "evt.dir",
        "evt.time",
        "evt.rawtime",
        "evt.res",
        "evt.rawres",
        "evt.failed",
        "evt.hostname",
        "evt.is_open_read",
        "evt.is_open_write",
        "evt.is_open_exec",
        "evt.is_open_create",
        "proc.pid",
        "proc.vpid",
        "proc.ppid",
        "proc.pvpid",
        "proc.name",
        "proc.exe",
        "proc.exepath",
        "proc.args",
        "proc.cmdline",
        "proc.cmdnargs",
        "proc.cwd",
        "proc.tty",
        "proc.start_ts",
        "proc.duration",
        "proc.pname",
        "proc.pexe",
        "proc.pexepath",
        "proc.pcmdline",
        "proc.aname",
        "proc.apid",
        "proc.aexe",
        "proc.aexepath",
        "proc.acmdline",
        "proc.is_exe_from_memfd",
        "proc.is_exe_upper_layer",
        "thread.tid",
        "thread.cap_effective",
        "user.uid",
        "user.name",
        "user.loginuid",
        "user.loginname",
        "container.id",
        "container.full_id",
        "container.privileged",
        "fd.num",
        "fd.type",
        "fd.typechar",
        "fd.name",
        "fd.nameraw",
        "fd.directory",
        "fd.filename",
        "fd.l4proto",
        "fd.sockfamily",
        "fd.cip",
        "fd.sip",
        "fd.cport",
        "fd.sport",
        "fd.lip",
        "fd.lport",
        "fd.rip",
        "fd.rport",
        "fd.connected",
        "fd.is_server",
        "fd.name_changed",
        "fd.sip.name",
        "fd.ip",
        "fd.port",
        "fd.net",
        "fd.cnet",
        "fd.snet",
        "fd.lnet",
        "fd.rnet",
        "fs.path.name",
        "fs.path.source",
        "fs.path.target",
        "k8s.ns.name",
        "k8s.pod.name",
        "k8s.pod.uid",
        "k8s.pod.labels",
        "k8s.pod.label",
        "container.name",
        "container.image",
        "container.image.repository",
        "container.image.tag",
    ]
)
# Arguments (evt.arg.X / evt.rawarg.X) the live source carries, over all its event types.
LIVE_ARGS: frozenset[str] = frozenset(
    [
        "res",
        "tuple",
        "flags",
        "mode",
        "dirfd",
        "name",
        "fd",
        "family",
        "proto",
        "lip",
        "lport",
        "rip",
        "rport",
        "domain",
        "type",
        "request",
        "pid",
        "uid",
        "gid",
        "dir",
        "dev",
        "path",
        "newpath",
        "oldpath",
        "filename",
        "linkpath",
        "target",
        "olddirfd",
        "oldfd",
        "newfd",
        "len",
        "cmd",
    ]
)


def live_can_produce(key: str) -> bool:
    """Whether the live eBPF source can give the field of this event key (``proc.aname[3]``,
    ``evt.arg.domain``, ``k8s.pod.label[app]``); derived fields count when what they read does."""
    name, _, arg = key.partition("[")
    if name in LIVE_FIELDS:
        return True
    for prefix in ("evt.arg.", "evt.rawarg."):
        if name.startswith(prefix):
            return name[len(prefix) :] in LIVE_ARGS
    if name == "evt.arg" or name == "evt.rawarg":
        return arg[:-1] in LIVE_ARGS
    return name.startswith("k8s.pod.label.")


def lookup(name: str, arg: str | None) -> FieldInfo | str:
    """The field's info, or a message saying why ``name[arg]`` is not a valid field."""
    info = _CATALOG.get(name)
    if info is None:
        for prefix, pinfo in _PREFIXES:
            if name.startswith(prefix) and len(name) > len(prefix):
                info = pinfo
                break
    if info is None:
        return f"unknown field '{name}'"
    if arg is None and info.arg is Arg.REQUIRED:
        return f"field '{name}' requires an argument, e.g. {name}[...]"
    if arg is not None and info.arg is Arg.NONE:
        return f"field '{name}' does not take an argument"
    if arg is not None and info.arg is Arg.INDEX and not arg.isdigit():
        return f"field '{name}' takes a numeric index, not '{arg}'"
    return info


@functools.lru_cache(maxsize=4096)
def parse_ip(text: object) -> IPAddress | None:
    """An address from its text, None when it is not one (cached: the same few repeat)."""
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        return None


def ip_equal(value: IPAddress, const: IPAddress) -> bool:
    """libsinsp's address comparison across families, as sysdig 0.29 answers it: an IPv4 value
    is compared with the first 4 bytes of an IPv6 constant, an IPv6 value with an IPv4 constant
    followed by 12 zero bytes. So a not-yet-bound IPv4 socket (0.0.0.0) equals "::" and "::1",
    and an unbound IPv6 socket (::) equals "0.0.0.0" (conformance ``fdip_zero``, ``fdip_eq_v6``)."""
    if value.version == const.version:
        return value == const
    if value.version == 4:
        return value.packed == const.packed[:4]
    return value.packed == const.packed + bytes(12)


def parse_net(text: str) -> IPNetwork:
    """A CIDR (or a single address as /32, /128); raises ValueError."""
    return ipaddress.ip_network(text, strict=False)


_ZERO: dict[str, tuple[IPAddress, ...]] = {"ipv4": (ipaddress.IPv4Address(0),), "ipv6": (ipaddress.IPv6Address(0),)}
_SOCKET_TYPES = frozenset(("ipv4", "ipv6"))


def _socket_ips(e: Mapping[str, Any]) -> tuple[IPAddress, ...] | None:
    """fd.ip values: client and server address of an IP socket (libsinsp: either side counts).

    A socket with neither address yet (not bound or connected) reads as the zero address of its
    family (see ``ip_equal`` for how that compares with the other family).
    """
    kind = e.get("fd.type")
    if kind not in _SOCKET_TYPES:
        return None
    out = tuple(ip for ip in (parse_ip(e[k]) for k in ("fd.cip", "fd.sip") if k in e) if ip is not None)
    return out or _ZERO[kind]


def _socket_ports(e: Mapping[str, Any]) -> tuple[int, ...] | None:
    """fd.port values: the port of each side whose address is known (a listening socket: server)."""
    if e.get("fd.type") not in _SOCKET_TYPES:
        return None
    out = tuple(e[p] for a, p in (("fd.cip", "fd.cport"), ("fd.sip", "fd.sport")) if a in e and p in e)
    return out or (0,)


def _one_ip(key: str) -> Callable[[Mapping[str, Any]], tuple[IPAddress, ...] | None]:
    def values(e: Mapping[str, Any]) -> tuple[IPAddress, ...] | None:
        v = e.get(key)
        ip = parse_ip(v) if v is not None else None
        return None if ip is None else (ip,)

    return values


def _ancestors(name: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...] | None]:
    """``proc.aname`` without index: every present ancestor ``[1]``, ``[2]``, ... (never [0])."""
    keys = tuple(f"{name}[{i}]" for i in range(1, MAX_ANCESTORS + 1))

    def values(e: Mapping[str, Any]) -> tuple[Any, ...] | None:
        out = []
        for k in keys:
            v = e.get(k)
            if v is None:
                break
            out.append(v)
        return tuple(out) or None

    return values


def derived_values(name: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...] | None] | None:
    """For a multi-valued field, a function event → tuple of values (None: missing); else None."""
    if name in ("fd.ip", "fd.net"):
        return _socket_ips
    if name == "fd.port":
        return _socket_ports
    if name in ("fd.cnet", "fd.snet", "fd.lnet", "fd.rnet"):
        (source,) = DERIVED_FROM[name]
        return _one_ip(source)
    if name in ANCESTOR_FIELDS:
        return _ancestors(name)
    return None


def field_key(name: str, arg: str | None) -> str:
    """The event key of a plain field; ``proc.aname[0]`` is the process itself."""
    if arg is not None and name in ANCESTOR_FIELDS and arg.isdigit() and int(arg) == 0:
        return ANCESTOR_FIELDS[name]
    return name if arg is None else f"{name}[{arg}]"


def normalize(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the event with values coerced to their fields' types (the slow, forgiving path
    the engine takes when a source hands over, say, a number where Falco has a string)."""
    out: dict[str, Any] = {}
    for key, value in event.items():
        name, _, arg = key.partition("[")
        info = lookup(name, arg[:-1] if arg else None)
        kind = info.type if isinstance(info, FieldInfo) else None
        out[key] = _coerce(value, kind)
    return out


def _coerce(value: Any, kind: FieldType | None) -> Any:
    if value is None or kind is None:
        return value
    if kind in (FieldType.STR, FieldType.IP):
        if isinstance(value, bool):
            return "true" if value else "false"
        return value if isinstance(value, str) else str(value)
    if (kind is FieldType.NUM and not isinstance(value, int | float)) or isinstance(value, bool):
        try:
            return int(str(value), 0)
        except ValueError:
            return None
    if kind is FieldType.BOOL and not isinstance(value, bool):
        return str(value).lower() in ("true", "1")
    return value


# -- which fields each event source fills in ------------------------------------------------------
# The monitor disables, and says so, every rule whose condition can never be true without fields
# its source does not produce (``rules/coverage.py``). The tables below are today's sources; a
# source that learns a field adds it here (and its test, tests/runtime_rules/test_rules_coverage.py,
# checks the ebpf table against what ``runtime.events.EventBuilder`` really builds).


@dataclass(frozen=True, slots=True)
class Producible:
    """The field keys a source fills in: exact ``names``, every ``[arg]`` of the ``indexed``
    names (``proc.aname[3]``), and every name starting with one of ``prefixes`` (``evt.arg.``)."""

    names: frozenset[str]
    indexed: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    def has(self, name: str, arg: str | None = None) -> bool:
        """Whether the source produces ``name`` (with ``arg``, e.g. ``proc.aname``, ``3``)."""
        if arg is None and name in self.names:
            return True
        if name in self.indexed:
            return True
        return name.startswith(self.prefixes) if self.prefixes else False

    def __or__(self, other: Producible) -> Producible:
        return Producible(self.names | other.names, self.indexed | other.indexed, self.prefixes + other.prefixes)


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Computed by the engine from other fields (fd.ip from fd.cip/fd.sip, ...): produced when those are.
_SOCKET_DERIVED = "fd.ip fd.port fd.net fd.cnet fd.snet fd.lnet fd.rnet"
# The live eBPF source: ``LIVE_FIELDS`` less what only the kubelet's pod list brings (``--kubelet``).
_POD_ONLY = _names(
    """
    k8s.ns.name k8s.pod.name k8s.pod.uid k8s.pod.labels k8s.pod.label container.name container.image
    container.image.repository container.image.tag container.image.digest
    """
)
_EBPF = Producible(
    names=LIVE_FIELDS - _POD_ONLY,
    indexed=_names("proc.aname proc.apid proc.aexe proc.aexepath proc.acmdline"),
    prefixes=("evt.arg.", "evt.rawarg."),
)
_TETRAGON = Producible(
    names=_names(
        f"""
        evt.type evt.dir evt.time evt.res evt.rawres evt.source evt.hostname evt.arg.name
        proc.pid proc.vpid proc.ppid proc.name proc.exe proc.exepath proc.args proc.cmdline proc.cwd
        proc.pname proc.pexe proc.pexepath proc.pcmdline thread.tid user.uid user.loginuid
        container.id container.name container.image.repository container.image.tag k8s.ns.name k8s.pod.name
        fd.type fd.typechar fd.name fd.directory fd.filename fd.l4proto fd.sockfamily
        fd.cip fd.cport fd.sip fd.sport fs.path.name {_SOCKET_DERIVED}
        """
    ),
)
# What the kubelet's pod list adds for a live source (``--kubelet``, runtime/k8s_meta.py).
POD_METADATA = Producible(
    names=_names(
        """
        k8s.ns.name k8s.pod.name k8s.pod.uid k8s.pod.labels container.name container.image
        container.image.repository container.image.tag container.image.digest
        """
    ),
    indexed=_names("k8s.pod.label"),
    prefixes=("k8s.pod.label.",),
)
SOURCES = ("ebpf", "jsonl", "tetragon")
# None: a recorded stream carries whatever fields were recorded, so every field may be there.
_PRODUCIBLE: dict[str, Producible | None] = {"ebpf": _EBPF, "tetragon": _TETRAGON, "jsonl": None}


def producible_fields(source: str, *, pod_metadata: bool = False) -> Producible | None:
    """The fields ``source`` fills in (None: any field), with the kubelet's pod fields when
    ``pod_metadata`` (a live source with ``--kubelet``). Raises KeyError for an unknown source."""
    base = _PRODUCIBLE[source]
    if base is None or not pod_metadata or source == "tetragon":  # Tetragon brings its own pod fields
        return base
    return base | POD_METADATA
