"""Generate the bpftrace program for the event types the loaded rules can match (used by ``ebpf``).

Each traced syscall saves its arguments at entry in ``@aN[tid]`` maps and prints one tab-separated
line at exit, when the result is known (as Falco's exit events carry both)::

    <evt.type> \\t <ns> \\t <pid> \\t <tid> \\t <uid> \\t <comm> \\t <res> \\t <extras...>

The BPF stack (512 bytes) holds one ``BPFTRACE_STRLEN`` string per ``printf``; events with more
strings print them first on ``S <tid> <string>`` lines, which the decoder attaches to the next
event line of that thread (same program run, same CPU buffer, so always in order). Exec prints
its argument block first on an ``A`` line. ``F`` (fork, child side) and ``procexit`` are always
traced: the process table needs them whatever the rules read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PROBES", "Probe", "Program", "generate", "tracepoint_exists"]

STRLEN = 200
_COMMON_FMT = "%llu\\t%d\\t%d\\t%d\\t%s\\t%d"
_COMMON_ARGS = "nsecs, pid, tid, uid, comm, args->ret"


@dataclass(frozen=True, slots=True)
class Probe:
    """One traced syscall: its Falco ``evt.type``, the kernel tracepoint and how to print it."""

    evt: str
    syscall: str
    save: tuple[str, ...]  # enter arguments saved as $a0, $a1, ...
    fmt: str = ""  # extras printed after the common prefix
    exprs: tuple[str, ...] = ()
    strings: tuple[str, ...] = ()  # expressions printed first on S lines
    body: str | None = None  # custom exit body (network probes)


def _net(evt: str, syscall: str, save: tuple[str, ...], fd: str, mode: str) -> Probe:
    return Probe(evt, syscall, save, body=_net_body(evt, fd, mode))


def _line(evt: str, fmt: str, exprs: str) -> str:
    return f'printf("{evt}\\t{_COMMON_FMT}\\t{fmt}\\n", {_COMMON_ARGS}, {exprs});'


_SK = "$sk->__sk_common"


def _net_body(evt: str, fd: str, mode: str) -> str:
    """Exit body of a socket syscall: ``fd family proto lip lport rip rport`` (unix: path in rip).

    mode: ``sk`` both ends from the kernel socket (accept, listen), ``remote`` the peer from the
    user's sockaddr (connect, sendto), ``local`` our end from it (bind).
    """
    v4_sk = f"ntop(2, {_SK}.skc_rcv_saddr), {_SK}.skc_num"
    v6_sk = f"ntop(10, {_SK}.skc_v6_rcv_saddr.in6_u.u6_addr8), {_SK}.skc_num"
    lines = [
        f"$fd = {fd};",
        "$sk = ((struct socket *)((struct file *)*(curtask->files->fdt->fd + $fd))->private_data)->sk;",
        f"$proto = $sk->sk_protocol; $fam = {_SK}.skc_family;",
    ]
    if mode == "sk":
        return "\n  ".join([
            *lines,
            "if ($fd < 0) { " + _line(evt, "%d\\t0\\t0\\t\\t0\\t\\t0", "-1") + " }",
            "else if ($fam == 2) { " + _line(evt, "%d\\t2\\t%d\\t%s\\t%d\\t%s\\t%d",
                f"$fd, $proto, {v4_sk}, ntop(2, {_SK}.skc_daddr), bswap({_SK}.skc_dport)") + " }",
            "else if ($fam == 10) { " + _line(evt, "%d\\t10\\t%d\\t%s\\t%d\\t%s\\t%d",
                f"$fd, $proto, {v6_sk}, ntop(10, {_SK}.skc_v6_daddr.in6_u.u6_addr8), "
                f"bswap({_SK}.skc_dport)") + " }",
            "else { " + _line(evt, "%d\\t%d\\t%d\\t\\t0\\t\\t0", "$fd, $fam, $proto") + " }",
        ])  # fmt: skip
    lines.append("$sa = (struct sockaddr *)$a1;")
    if evt == "sendto":  # no address: a connected socket, both ends from the kernel
        lines = [*lines, "if ($sa == 0) {", _net_body(evt, fd, "sk"), "} else {"]
    lines.append("$ufam = $sa->sa_family; $in = (struct sockaddr_in *)$sa; $in6 = (struct sockaddr_in6 *)$sa;")
    if mode == "remote":
        v4 = f"{v4_sk}, ntop(2, $in->sin_addr.s_addr), bswap($in->sin_port)"
        v6 = f"{v6_sk}, ntop(10, $in6->sin6_addr.in6_u.u6_addr8), bswap($in6->sin6_port)"
        unix_fmt, unix = "%d\\t1\\t0\\t\\t0\\t%s\\t0", "$fd, ((struct sockaddr_un *)$sa)->sun_path"
    else:
        v4 = "ntop(2, $in->sin_addr.s_addr), bswap($in->sin_port), ntop(2, 0), 0"
        v6 = "ntop(10, $in6->sin6_addr.in6_u.u6_addr8), bswap($in6->sin6_port), ntop(2, 0), 0"
        unix_fmt, unix = "%d\\t1\\t0\\t%s\\t0\\t\\t0", "$fd, ((struct sockaddr_un *)$sa)->sun_path"
    lines += [
        "if ($ufam == 2) { " + _line(evt, "%d\\t2\\t%d\\t%s\\t%d\\t%s\\t%d", f"$fd, $proto, {v4}") + " }",
        "else if ($ufam == 10) { " + _line(evt, "%d\\t10\\t%d\\t%s\\t%d\\t%s\\t%d", f"$fd, $proto, {v6}") + " }",
        "else if ($ufam == 1) { " + _line(evt, unix_fmt, unix) + " }",
        "else { " + _line(evt, "%d\\t%d\\t%d\\t\\t0\\t\\t0", "$fd, $ufam, $proto") + " }",
    ]
    if evt == "sendto":
        lines.append("}")
    return "\n  ".join(lines)


_AT = "-100"  # AT_FDCWD
_PATH = ("%d\\t%s", ("args->ret", "str($a0)"))

PROBES: tuple[Probe, ...] = (
    # open family: flags mode dirfd path
    Probe("open", "open", ("args->filename", "args->flags", "args->mode"),
          "%d\\t%d\\t%d\\t%s", ("$a1", "$a2", _AT, "str($a0)")),
    Probe("openat", "openat", ("args->filename", "args->flags", "args->mode", "args->dfd"),
          "%d\\t%d\\t%d\\t%s", ("$a1", "$a2", "(int32)$a3", "str($a0)")),
    Probe("openat2", "openat2", ("args->filename", "args->how", "args->dfd"),
          "%d\\t%d\\t%d\\t%s", ("((struct open_how *)$a1)->flags", "((struct open_how *)$a1)->mode",
                                "(int32)$a2", "str($a0)")),
    Probe("creat", "creat", ("args->pathname", "args->mode"),
          "%d\\t%d\\t%d\\t%s", ("577", "$a1", _AT, "str($a0)")),
    # sockets: fd family proto lip lport rip rport
    _net("connect", "connect", ("args->fd", "args->uservaddr"), "(int32)$a0", "remote"),
    _net("sendto", "sendto", ("args->fd", "args->addr"), "(int32)$a0", "remote"),
    _net("bind", "bind", ("args->fd", "args->umyaddr"), "(int32)$a0", "local"),
    _net("listen", "listen", ("args->fd",), "(int32)$a0", "sk"),
    _net("accept", "accept", (), "(int32)args->ret", "sk"),
    _net("accept4", "accept4", (), "(int32)args->ret", "sk"),
    Probe("socket", "socket", ("args->family", "args->type", "args->protocol"),
          "%d\\t%d\\t%d", ("$a0", "$a1", "$a2")),
    # the rest: small integer arguments, then at most one string on the line
    Probe("ptrace", "ptrace", ("args->request", "args->pid"), "%d\\t%d", ("$a0", "(int32)$a1")),
    Probe("setuid", "setuid", ("args->uid",), "%d", ("$a0",)),
    Probe("setgid", "setgid", ("args->gid",), "%d", ("$a0",)),
    Probe("mount", "mount", ("args->dev_name", "args->dir_name", "args->type", "args->flags"),
          "%d\\t%s", ("$a3", "str($a1)"), strings=("str($a0)", "str($a2)")),
    Probe("umount2", "umount", ("args->name", "args->flags"), "%d\\t%s", ("$a1", "str($a0)")),
    Probe("unlink", "unlink", ("args->pathname",), "%d\\t%s", (_AT, "str($a0)")),
    Probe("unlinkat", "unlinkat", ("args->pathname", "args->dfd", "args->flag"),
          "%d\\t%d\\t%s", ("(int32)$a1", "$a2", "str($a0)")),
    Probe("rmdir", "rmdir", ("args->pathname",), "%d\\t%s", (_AT, "str($a0)")),
    Probe("mkdir", "mkdir", ("args->pathname", "args->mode"), "%d\\t%d\\t%s", (_AT, "$a1", "str($a0)")),
    Probe("mkdirat", "mkdirat", ("args->pathname", "args->mode", "args->dfd"),
          "%d\\t%d\\t%s", ("(int32)$a2", "$a1", "str($a0)")),
    Probe("rename", "rename", ("args->oldname", "args->newname"), "%d\\t%s", (_AT, "str($a1)"),
          strings=("str($a0)",)),
    Probe("renameat", "renameat", ("args->oldname", "args->newname", "args->newdfd"),
          "%d\\t%s", ("(int32)$a2", "str($a1)"), strings=("str($a0)",)),
    Probe("renameat2", "renameat2", ("args->oldname", "args->newname", "args->newdfd"),
          "%d\\t%s", ("(int32)$a2", "str($a1)"), strings=("str($a0)",)),
    Probe("chmod", "chmod", ("args->filename", "args->mode"), "%d\\t%d\\t%s", (_AT, "$a1", "str($a0)")),
    Probe("fchmodat", "fchmodat", ("args->filename", "args->mode", "args->dfd"),
          "%d\\t%d\\t%s", ("(int32)$a2", "$a1", "str($a0)")),
    Probe("fchmod", "fchmod", ("args->fd", "args->mode"), "%d\\t%d", ("(int32)$a0", "$a1")),
    Probe("symlink", "symlink", ("args->oldname", "args->newname"), "%d\\t%s", (_AT, "str($a1)"),
          strings=("str($a0)",)),
    Probe("symlinkat", "symlinkat", ("args->oldname", "args->newname", "args->newdfd"),
          "%d\\t%s", ("(int32)$a2", "str($a1)"), strings=("str($a0)",)),
    Probe("init_module", "init_module", ("args->len",), "%d", ("$a0",)),
    Probe("finit_module", "finit_module", ("args->fd", "args->flags"), "%d\\t%d", ("(int32)$a0", "$a1")),
    Probe("bpf", "bpf", ("args->cmd",), "%d", ("$a0",)),
    Probe("memfd_create", "memfd_create", ("args->uname", "args->flags"), "%d\\t%s", ("$a1", "str($a0)")),
)  # fmt: skip

# Event types made by the process probes rather than by a syscall table entry.
PROCESS_TYPES = frozenset(("execve", "execveat", "procexit", "clone", "clone3", "fork", "vfork"))
SUPPORTED_TYPES = frozenset(p.evt for p in PROBES) | PROCESS_TYPES


_EXIT_PROBE = (
    "tracepoint:sched:sched_process_exit /pid == tid/ {\n"
    '  printf("procexit\\t%llu\\t%d\\t%d\\t%d\\t%s\\t0\\t%d\\n",'
    " nsecs, pid, tid, uid, comm, curtask->exit_code >> 8);\n}"
)


@dataclass(frozen=True, slots=True)
class Program:
    """A generated program, the event types it traces and those it cannot (with the reason)."""

    text: str
    types: frozenset[str]
    missing: dict[str, str] = field(default_factory=dict)


def tracepoint_exists(syscall: str, root: Path = Path("/sys/kernel/tracing")) -> bool:
    """Whether the kernel has ``syscalls:sys_enter_<syscall>`` (not built with modules: no init_module)."""
    return (root / "events" / "syscalls" / f"sys_enter_{syscall}").is_dir()


def generate(
    event_types: Iterable[str] | None,
    *,
    self_pid: int,
    exists: Callable[[str], bool] = tracepoint_exists,
) -> Program:
    """The bpftrace program for ``event_types`` (None: every supported type).

    Unsupported types are listed in ``missing`` (the caller reports them); they never fail.
    """
    wanted = SUPPORTED_TYPES if event_types is None else frozenset(event_types)
    missing = {t: "not traced by the eBPF source" for t in sorted(wanted - SUPPORTED_TYPES)}
    parts = [
        'BEGIN { printf("READY\\t%llu\\n", nsecs); }',
        _exec_probe(self_pid),
        _fork_probe(self_pid, emit_clone=bool(wanted & {"clone", "clone3", "fork", "vfork"})),
        _EXIT_PROBE,
    ]
    traced = set(PROCESS_TYPES & wanted)
    for probe_id, probe in enumerate(PROBES, start=1):
        if probe.evt not in wanted:
            continue
        if not exists(probe.syscall):
            missing[probe.evt] = f"this kernel has no tracepoint syscalls:sys_enter_{probe.syscall}"
            continue
        parts.append(_syscall_probe(probe, probe_id, self_pid))
        traced.add(probe.evt)
    # bpftrace prints every non-empty map when it exits: clear the argument stash first.
    nargs = max((len(p.save) for p in PROBES if p.evt in traced), default=0)
    parts.append("END { clear(@in); " + " ".join(f"clear(@a{i});" for i in range(nargs)) + " }")
    return Program("\n".join(parts) + "\n", frozenset(traced), missing)


def _exec_probe(self_pid: int) -> str:
    # The effective uid (Falco's user.uid), not the real one: a setuid-root binary runs as root.
    return (
        f"tracepoint:sched:sched_process_exec /pid != {self_pid}/ {{\n"
        "  $m = curtask->mm;\n"
        '  printf("A\\t%d\\t%r\\n", tid, buf(uptr($m->arg_start), $m->arg_end - $m->arg_start));\n'
        '  printf("execve\\t%llu\\t%d\\t%d\\t%d\\t%s\\t0\\t%d\\t%d\\t%s\\n",'
        " nsecs, pid, tid, curtask->cred->euid.val, comm, curtask->real_parent->tgid,"
        " curtask->loginuid.val, str(args->filename));\n}"
    )


def _fork_probe(self_pid: int, *, emit_clone: bool) -> str:
    exits = ",".join(
        f"tracepoint:syscalls:sys_exit_{s}" for s in ("clone", "clone3", "fork", "vfork") if tracepoint_exists(s)
    )
    text = (
        f"{exits} /args->ret == 0 && pid == tid/ {{\n"
        '  printf("F\\t%llu\\t%d\\t%d\\t%d\\t%s\\n", nsecs, pid, curtask->real_parent->tgid, uid, comm);\n}'
    )
    if emit_clone:  # the parent's side, as Falco's clone exit event in the caller
        text += (
            f"\n{exits} /args->ret > 0 && pid != {self_pid}/ {{\n"
            '  printf("clone\\t%llu\\t%d\\t%d\\t%d\\t%s\\t%d\\n", nsecs, pid, tid, uid, comm, args->ret);\n}'
        )
    return text


def _syscall_probe(probe: Probe, probe_id: int, self_pid: int) -> str:
    saves = "".join(f" @a{i}[tid] = (uint64){expr};" for i, expr in enumerate(probe.save))
    enter = f"tracepoint:syscalls:sys_enter_{probe.syscall} /pid != {self_pid}/ {{ @in[tid] = {probe_id};{saves} }}"
    loads = "".join(f" $a{i} = @a{i}[tid];" for i in range(len(probe.save)))
    deletes = " ".join(["delete(@in[tid]);", *(f"delete(@a{i}[tid]);" for i in range(len(probe.save)))])
    if probe.body is not None:
        body = probe.body
    else:
        strings = "".join(f'printf("S\\t%d\\t%s\\n", tid, {s});\n  ' for s in probe.strings)
        exprs = ", ".join(probe.exprs)
        sep = "\\t" if probe.fmt else ""
        body = f'{strings}printf("{probe.evt}\\t{_COMMON_FMT}{sep}{probe.fmt}\\n", {_COMMON_ARGS}, {exprs});'
        body = body.replace(", );", ");")
    exit_probe = f"tracepoint:syscalls:sys_exit_{probe.syscall} /@in[tid] == {probe_id}/"
    return f"{enter}\n{exit_probe} {{\n {loads}\n  {body}\n  {deletes}\n}}"
