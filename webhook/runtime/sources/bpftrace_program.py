"""Generate the bpftrace program for the event types the loaded rules can match (used by ``ebpf``).

bpftrace runs with ``-f json`` and every probe emits its data with ``print((tuple))``: one JSON
object per record whose ``data`` is a list of numbers and strings. Strings are therefore JSON
strings, so no byte a process puts in a path, name or argument (tab, newline, quote) can be taken
for a field boundary; argument blocks travel as arrays of byte values. Records (first element):

* ``[0, tid, slot, "text"]`` a string of the next event of that thread, in pieces of
  ``CHUNK`` bytes (a piece is printed only while the string is longer: ``strncmp`` of two reads
  of different sizes tells, so pieces past the terminating NUL are never sent);
* ``[1, tid, offset, [bytes]]`` a piece of the exec'd argument block (NUL-separated) at that
  offset from its start (the last piece may start before 0 or overlap the one before);
* ``[2, ts, pid, tid, ppid, uid, cgroup]`` fork/clone, child side (process table only);
* ``[3, ts, pid, tid, status]`` process exit;
* ``[4, ts, pid, tid, euid, cgroup, ppid, loginuid, tty, argv_len, cap_effective, cap_bounding,
  exe_nlink, exe_fs_magic, "filename"]`` a successful exec (after its string and argv records);
* ``[10 + i, ts, pid, tid, uid, res, cgroup, ints..., "first string"]`` the exit of syscall
  ``PROBES[i]``, when the result is known (as Falco's exit events carry both).

The BPF stack (512 bytes) holds about two ``STRLEN`` strings, so each string (and the loop of its
continuation pieces) gets its own probe on the same tracepoint; bpftrace attaches them in program
order, and a tracepoint runs its programs in attach order on one CPU, so a thread's string
records always precede its event record in the same per-CPU buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = ["CHUNK", "PROBES", "Probe", "Program", "generate", "tracepoint_exists"]

STRLEN = 128  # BPFTRACE_STRLEN
# Bytes of a string per piece. Every read names its size: bpftrace 0.17's str(p, n) gives up to n
# bytes for n < STRLEN (and STRLEN - 1 for n = STRLEN), so a piece is str(p, CHUNK) and the
# string goes on past it exactly when str(p, CHUNK + 1) is longer.
CHUNK = STRLEN - 2
MAX_PIECES = 33  # PATH_MAX (4096) / CHUNK: longer strings are flagged truncated
ARGV_PIECE = 128
ARGV_MAX = 4096  # bytes of the argument block sent (Falco's own limit is of this order)
HEARTBEAT_S = 1  # seconds between the program's heartbeat lines

REC_STR, REC_ARGV, REC_FORK, REC_EXIT, REC_EXEC = 0, 1, 2, 3, 4
REC_SYSCALL = 10

# String slots of the exec record's side strings.
SLOT_COMM, SLOT_CG, SLOT_CG1, SLOT_EXE, SLOT_PWD = 1, 2, 5, 8, 9


class GateAlt(Protocol):
    """One alternative of an open filter (``rules.kernelfilter.Alt``): access modes
    (``flags & O_ACCMODE``), and unless ``any_name`` the last path component's names/suffixes."""

    @property
    def access(self) -> frozenset[int]: ...
    @property
    def names(self) -> frozenset[str]: ...
    @property
    def suffixes(self) -> frozenset[str]: ...
    @property
    def any_name(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Probe:
    """One traced syscall: its Falco ``evt.type``, the kernel tracepoint and what it prints.

    ``ints`` are (parameter name, expression) printed after the common prefix; ``strings`` are
    (parameter name, user pointer expression), the first one inside the event record.
    """

    evt: str
    syscall: str
    save: tuple[str, ...]  # enter arguments saved as $a0, $a1, ...
    ints: tuple[tuple[str, str], ...] = ()
    strings: tuple[tuple[str, str], ...] = ()
    net: str = ""  # socket syscalls: "remote", "local" or "sk" (see _net_body)
    addr: str = "$a1"  # socket syscalls: the user's sockaddr pointer

    @property
    def params(self) -> tuple[str, ...]:
        if self.net:
            return ("fd", "family", "proto", "lport", "rport", "lip", "rip")
        return tuple(n for n, _ in self.ints) + tuple(n for n, _ in self.strings)


_AT = "-100"  # AT_FDCWD


def _open(evt: str, save: tuple[str, ...], flags: str, mode: str, dirfd: str) -> Probe:
    return Probe(evt, evt, save, (("flags", flags), ("mode", mode), ("dirfd", dirfd)), (("name", "$a0"),))


PROBES: tuple[Probe, ...] = (
    _open("open", ("args->filename", "args->flags", "args->mode"), "$a1", "$a2", _AT),
    _open("openat", ("args->filename", "args->flags", "args->mode", "args->dfd"), "$a1", "$a2", "(int32)$a3"),
    _open("openat2", ("args->filename", "args->how", "args->dfd"), "((struct open_how *)$a1)->flags",
          "((struct open_how *)$a1)->mode", "(int32)$a2"),
    Probe("creat", "creat", ("args->pathname", "args->mode"), (("flags", "577"), ("mode", "$a1"), ("dirfd", _AT)),
          (("name", "$a0"),)),
    Probe("connect", "connect", ("args->fd", "args->uservaddr"), net="remote"),
    Probe("sendto", "sendto", ("args->fd", "args->addr"), net="remote"),
    Probe("sendmsg", "sendmsg", ("args->fd", "args->msg"), net="remote",
          addr="((struct user_msghdr *)$a1)->msg_name"),
    Probe("bind", "bind", ("args->fd", "args->umyaddr"), net="local"),
    Probe("listen", "listen", ("args->fd",), net="sk"),
    Probe("accept", "accept", (), net="sk"),
    Probe("accept4", "accept4", (), net="sk"),
    Probe("socket", "socket", ("args->family", "args->type", "args->protocol"),
          (("domain", "$a0"), ("type", "$a1"), ("proto", "$a2"))),
    Probe("ptrace", "ptrace", ("args->request", "args->pid"), (("request", "$a0"), ("pid", "(int32)$a1"))),
    Probe("setuid", "setuid", ("args->uid",), (("uid", "$a0"),)),
    Probe("setgid", "setgid", ("args->gid",), (("gid", "$a0"),)),
    Probe("mount", "mount", ("args->dev_name", "args->dir_name", "args->type", "args->flags"),
          (("flags", "$a3"),), (("dir", "$a1"), ("dev", "$a0"), ("type", "$a2"))),
    Probe("umount2", "umount", ("args->name", "args->flags"), (("flags", "$a1"),), (("name", "$a0"),)),
    Probe("unlink", "unlink", ("args->pathname",), (("dirfd", _AT),), (("path", "$a0"),)),
    Probe("unlinkat", "unlinkat", ("args->pathname", "args->dfd", "args->flag"),
          (("dirfd", "(int32)$a1"), ("flags", "$a2")), (("name", "$a0"),)),
    Probe("rmdir", "rmdir", ("args->pathname",), (("dirfd", _AT),), (("path", "$a0"),)),
    Probe("mkdir", "mkdir", ("args->pathname", "args->mode"), (("dirfd", _AT), ("mode", "$a1")), (("path", "$a0"),)),
    Probe("mkdirat", "mkdirat", ("args->pathname", "args->mode", "args->dfd"),
          (("dirfd", "(int32)$a2"), ("mode", "$a1")), (("path", "$a0"),)),
    Probe("rename", "rename", ("args->oldname", "args->newname"), (("dirfd", _AT),),
          (("newpath", "$a1"), ("oldpath", "$a0"))),
    Probe("renameat", "renameat", ("args->oldname", "args->newname", "args->newdfd"), (("dirfd", "(int32)$a2"),),
          (("newpath", "$a1"), ("oldpath", "$a0"))),
    Probe("renameat2", "renameat2", ("args->oldname", "args->newname", "args->newdfd"), (("dirfd", "(int32)$a2"),),
          (("newpath", "$a1"), ("oldpath", "$a0"))),
    Probe("chmod", "chmod", ("args->filename", "args->mode"), (("dirfd", _AT), ("mode", "$a1")),
          (("filename", "$a0"),)),
    Probe("fchmodat", "fchmodat", ("args->filename", "args->mode", "args->dfd"),
          (("dirfd", "(int32)$a2"), ("mode", "$a1")), (("filename", "$a0"),)),
    Probe("fchmod", "fchmod", ("args->fd", "args->mode"), (("fd", "(int32)$a0"), ("mode", "$a1"))),
    Probe("symlink", "symlink", ("args->oldname", "args->newname"), (("dirfd", _AT),),
          (("linkpath", "$a1"), ("target", "$a0"))),
    Probe("symlinkat", "symlinkat", ("args->oldname", "args->newname", "args->newdfd"),
          (("dirfd", "(int32)$a2"),), (("linkpath", "$a1"), ("target", "$a0"))),
    Probe("link", "link", ("args->oldname", "args->newname"), (("dirfd", _AT), ("olddirfd", _AT)),
          (("newpath", "$a1"), ("oldpath", "$a0"))),
    Probe("linkat", "linkat", ("args->oldname", "args->newname", "args->newdfd", "args->olddfd", "args->flags"),
          (("dirfd", "(int32)$a2"), ("olddirfd", "(int32)$a3"), ("flags", "$a4")),
          (("newpath", "$a1"), ("oldpath", "$a0"))),
    Probe("chdir", "chdir", ("args->filename",), (), (("path", "$a0"),)),
    Probe("fchdir", "fchdir", ("args->fd",), (("fd", "(int32)$a0"),)),
    Probe("dup", "dup", ("args->fildes",), (("oldfd", "(int32)$a0"),)),
    Probe("dup2", "dup2", ("args->oldfd", "args->newfd"), (("oldfd", "(int32)$a0"), ("newfd", "(int32)$a1"))),
    Probe("dup3", "dup3", ("args->oldfd", "args->newfd", "args->flags"),
          (("oldfd", "(int32)$a0"), ("newfd", "(int32)$a1"), ("flags", "$a2"))),
    Probe("init_module", "init_module", ("args->len",), (("len", "$a0"),)),
    Probe("finit_module", "finit_module", ("args->fd", "args->flags"), (("fd", "(int32)$a0"), ("flags", "$a1"))),
    Probe("bpf", "bpf", ("args->cmd",), (("cmd", "$a0"),)),
    Probe("memfd_create", "memfd_create", ("args->uname", "args->flags"), (("flags", "$a1"),), (("name", "$a0"),)),
)  # fmt: skip

# Event types made by the process probes rather than by a syscall table entry. A successful
# execveat is an exec like any other (sched_process_exec), reported as evt.type execve.
PROCESS_TYPES = frozenset(("execve", "execveat", "procexit", "clone", "clone3", "fork", "vfork"))
SUPPORTED_TYPES = frozenset(p.evt for p in PROBES) | PROCESS_TYPES
# Types the process table needs whatever the rules read: they keep cwd and fds true.
STATE_TYPES = frozenset(("chdir", "fchdir", "dup", "dup2", "dup3"))
_COMMON = "nsecs, pid, tid, uid, args->ret, cgroup"


@dataclass(frozen=True, slots=True)
class Program:
    """A generated program, the event types it traces and those it cannot (with the reason)."""

    text: str
    types: frozenset[str]
    missing: dict[str, str] = field(default_factory=dict)


def tracepoint_exists(syscall: str, root: Path = Path("/sys/kernel/tracing")) -> bool:
    """Whether the kernel has ``syscalls:sys_enter_<syscall>`` (not built with modules: no init_module)."""
    return (root / "events" / "syscalls" / f"sys_enter_{syscall}").is_dir()


def v1_subsys_id(proc_cgroups: Path = Path("/proc/cgroups")) -> int | None:
    """Index of a cgroup v1 controller mounted on this node (pids, else memory), None on pure v2.

    /proc/cgroups lists the controllers in their kernel id order; column 2 is the v1 hierarchy
    (0: not mounted as v1). Container runtimes on v1 nodes create their cgroup in each.
    """
    try:
        rows = [ln.split() for ln in proc_cgroups.read_text().splitlines() if ln and not ln.startswith("#")]
    except OSError:
        return None
    for want in ("pids", "memory"):
        for idx, row in enumerate(rows):
            if len(row) >= 2 and row[0] == want and row[1] != "0":
                return idx
    return None


def generate(
    event_types: Iterable[str] | None,
    *,
    self_pid: int,
    exists: Callable[[str], bool] = tracepoint_exists,
    v1_subsys: int | None = None,
    success_only: Iterable[str] = (),
    open_filters: Mapping[str, Sequence[GateAlt]] | None = None,
) -> Program:
    """The bpftrace program for ``event_types`` (None: every supported type).

    Unsupported types are listed in ``missing`` (the caller reports them); they never fail.
    ``success_only``: types whose failed calls no rule can match (``Engine.success_only_types``),
    dropped in the kernel; the process-state types are always success only.
    ``open_filters``: per open type of ``success_only``, the alternatives some rule could match
    (``Engine.open_filters``, see ``rules/kernelfilter.py``); other successful opens are dropped
    in the kernel (``_gate_probe``).
    """
    gates = dict(open_filters or {})
    ok_only = frozenset(success_only)
    wanted = SUPPORTED_TYPES if event_types is None else frozenset(event_types)
    missing = {t: "not traced by the eBPF source" for t in sorted(wanted - SUPPORTED_TYPES)}
    parts = [
        *_exec_probes(self_pid, v1_subsys),
        _fork_probe(self_pid, emit_clone=bool(wanted & {"clone", "clone3", "fork", "vfork"})),
        f"tracepoint:sched:sched_process_exit /pid == tid/ {{ print(({REC_EXIT}, nsecs, pid, tid,"
        " curtask->exit_code >> 8)); }",
    ]
    traced = set(PROCESS_TYPES & wanted)
    for probe_id, probe in enumerate(PROBES):
        if probe.evt not in wanted and probe.evt not in STATE_TYPES:
            continue
        if not exists(probe.syscall):
            if probe.evt in wanted:
                missing[probe.evt] = f"this kernel has no tracepoint syscalls:sys_enter_{probe.syscall}"
            continue
        only_ok = probe.evt in ok_only or probe.evt not in wanted  # state-only: success is what counts
        gate = gates.get(probe.evt) if only_ok and probe.evt in wanted else None
        parts.append(_syscall_probe(probe, probe_id, self_pid, success_only=only_ok, gate=gate))
        if probe.evt in wanted:
            traced.add(probe.evt)
    # Readiness: bpftrace attaches probes in program order, so once this last one fires (the
    # source calls getpgid until it does) every probe before it is attached. (BEGIN and END are
    # uprobes on bpftrace's own binary; a start failing with "No attach points for probe | BEGIN"
    # was one of them not resolving, so the program uses neither. Maps left at exit are printed
    # as "map" records, which the decoder skips.)
    # Heartbeat: a kernel timer proves the probes still deliver on a node where nothing traced
    # happens for a while (the monitor's readiness reads it; see monitor.readiness).
    parts.append(f'interval:s:{HEARTBEAT_S} {{ printf("HEARTBEAT\\n"); }}')
    parts.append(f'tracepoint:syscalls:sys_enter_getpgid /pid == {self_pid}/ {{ printf("READY\\n"); }}')
    return Program("\n".join(parts) + "\n", frozenset(traced), missing)


def _pieces(slot: int, ptr: str, *, user: bool = True, first: bool = True) -> str:
    """Print a string's pieces after the first (or all, ``first``) as string records.

    Piece k+1 is sent only when piece k is full: reading the same address with sizes STRLEN and
    STRLEN-1 gives different strings exactly when no NUL ends the string within CHUNK bytes.
    """

    def at(off: str) -> str:
        return f"uptr({ptr} + {off})" if user else f"{ptr} + {off}"

    head = f"print(({REC_STR}, tid, {slot}, str({at('0')}, {CHUNK})));\n  " if first else ""
    prev = at(f"($k - 1) * {CHUNK}")
    return (
        f"{head}$k = (uint64)1;\n"
        f"  while ($k < {MAX_PIECES} && strncmp(str({prev}, {CHUNK + 1}), str({prev}, {CHUNK}), {CHUNK + 1}) != 0) {{\n"
        f"    print(({REC_STR}, tid, {slot}, str({at(f'$k * {CHUNK}')}, {CHUNK}))); $k += 1;\n  }}"
    )


def _exec_probes(self_pid: int, v1_subsys: int | None) -> list[str]:
    """Exec: argv, comm, the cgroup names, exe and cwd names read from the task, then the event.

    The effective uid (Falco's user.uid), not the real one: a setuid-root binary runs as root.
    The tty is encoded as the kernel does for /proc/PID/stat (new_encode_dev of major:minor).
    """
    hdr = f"tracepoint:sched:sched_process_exec /pid != {self_pid}/"
    cg = "((struct kernfs_node *)curtask->cgroups->dfl_cgrp->kn)"
    probes = [
        # The argument block sits at the top of the new stack: a piece past its end may run off
        # the mapping (and read as nothing), so the last piece ends at arg_end instead.
        f"{hdr} {{\n  $m = curtask->mm; $a = $m->arg_start; $e = $m->arg_end;"
        " $len = (int64)($e - $a); $off = (int64)0;\n"
        f"  while ($off < $len && $off < {ARGV_MAX}) {{\n"
        f"    $at = $off; if ($off + {ARGV_PIECE} > $len) {{ $at = $len - {ARGV_PIECE}; }}\n"
        f"    print(({REC_ARGV}, tid, $at, ((struct argv_piece *)uptr($a + (uint64)$at))->b));\n"
        f"    $off += {ARGV_PIECE};\n"
        "  }\n}",
        f"{hdr} {{ print(({REC_STR}, tid, {SLOT_COMM}, comm)); }}",
        f"{hdr} {{\n  $kn = {cg};\n  print(({REC_STR}, tid, {SLOT_CG}, str($kn->name)));\n"
        f"  $p = (struct kernfs_node *)$kn->__parent;\n  if ($p != 0) {{ print(({REC_STR}, tid, {SLOT_CG + 1},"
        " str($p->name))); }\n}",
        f"{hdr} {{\n  $kn = {cg};\n  $p = (struct kernfs_node *)$kn->__parent;\n  if ($p != 0) {{\n"
        "    $g = (struct kernfs_node *)$p->__parent;\n"
        f"    if ($g != 0) {{ print(({REC_STR}, tid, {SLOT_CG + 2}, str($g->name))); }}\n  }}\n}}",
    ]
    if v1_subsys is not None:
        v1 = f"((struct kernfs_node *)curtask->cgroups->subsys[{v1_subsys}]->cgroup->kn)"
        probes.append(
            f"{hdr} {{\n  $kn = {v1};\n  print(({REC_STR}, tid, {SLOT_CG1}, str($kn->name)));\n"
            f"  $p = (struct kernfs_node *)$kn->__parent;\n  if ($p != 0) {{ print(({REC_STR}, tid, {SLOT_CG1 + 1},"
            " str($p->name))); }\n}"
        )
    probes += [
        f"{hdr} {{ $f = (struct file *)curtask->mm->exe_file;"
        f" print(({REC_STR}, tid, {SLOT_EXE}, str($f->f_path.dentry->d_name.name))); }}",
        f"{hdr} {{ print(({REC_STR}, tid, {SLOT_PWD}, str(curtask->fs->pwd.dentry->d_name.name))); }}",
        f"{hdr} {{\n  {_pieces(0, 'args->filename', user=False, first=False)}\n}}",
        f"{hdr} {{\n  $m = curtask->mm; $f = (struct file *)$m->exe_file;\n"
        "  $t = (struct tty_struct *)curtask->signal->tty; $tty = (uint64)0;\n"
        "  if ($t != 0) { $d = (struct tty_driver *)$t->driver; $min = (uint64)($d->minor_start + $t->index);\n"
        "    $tty = ($min & 0xff) | ((uint64)$d->major << 8) | (($min & ~0xff) << 12); }\n"
        f"  print(({REC_EXEC}, nsecs, pid, tid, curtask->cred->euid.val, cgroup, curtask->real_parent->tgid,"
        " curtask->loginuid.val, $tty, $m->arg_end - $m->arg_start, curtask->cred->cap_effective.val,"
        " curtask->cred->cap_bset.val, $f->f_inode->i_nlink, $f->f_inode->i_sb->s_magic,"
        f" str(args->filename, {CHUNK})));\n}}",
    ]
    return [
        f"struct argv_piece {{ unsigned char b[{ARGV_PIECE}]; }}",
        f"struct gate_words {{ unsigned long w[{_GATE_WORDS}]; }}",
        *probes,
    ]


def _fork_probe(self_pid: int, *, emit_clone: bool) -> str:
    exits = ",".join(
        f"tracepoint:syscalls:sys_exit_{s}" for s in ("clone", "clone3", "fork", "vfork") if tracepoint_exists(s)
    )
    text = (
        f"{exits} /args->ret == 0 && pid == tid/ {{\n"
        f"  print(({REC_FORK}, nsecs, pid, tid, curtask->real_parent->tgid, uid, cgroup));\n}}"
    )
    if emit_clone:  # the parent's side, as Falco's clone exit event in the caller
        clone_id = REC_SYSCALL + len(PROBES)
        text += f"\n{exits} /args->ret > 0 && pid != {self_pid}/ {{\n  print(({clone_id}, {_COMMON}));\n}}"
    return text


_SK = "$sk->__sk_common"


def _net_body(rec: int, fd: str, mode: str, addr: str = "$a1") -> str:
    """Exit body of a socket syscall: ``fd family proto lport rport "lip" "rip"`` (unix: path in rip).

    The two addresses are short strings (ntop), so they fit in one record beside the numbers.
    mode: ``sk`` both ends from the kernel socket (accept, listen), ``remote`` the peer from the
    user's sockaddr (connect, sendto), ``local`` our end from it (bind).
    """
    head = f"print(({rec}, {_COMMON}, "
    v4_sk = (f"{_SK}.skc_num", f"ntop(2, {_SK}.skc_rcv_saddr)")
    v6_sk = (f"{_SK}.skc_num", f"ntop(10, {_SK}.skc_v6_rcv_saddr.in6_u.u6_addr8)")

    def line(fam: str, lport: str, rport: str, lip: str, rip: str) -> str:
        return f"{head}$fd, {fam}, $proto, {lport}, {rport}, {lip}, {rip}));"

    lines = [
        f"$fd = {fd};",
        "$sk = ((struct socket *)((struct file *)*(curtask->files->fdt->fd + $fd))->private_data)->sk;",
        f"$proto = $sk->sk_protocol; $fam = {_SK}.skc_family;",
    ]
    if mode == "sk":
        return "\n  ".join([
            *lines,
            "if ($fd < 0) { " + line("0", "0", "0", '""', '""') + " }",
            "else if ($fam == 2) { " + line("2", v4_sk[0], f"bswap({_SK}.skc_dport)", v4_sk[1],
                                             f"ntop(2, {_SK}.skc_daddr)") + " }",
            "else if ($fam == 10) { " + line("10", v6_sk[0], f"bswap({_SK}.skc_dport)", v6_sk[1],
                                              f"ntop(10, {_SK}.skc_v6_daddr.in6_u.u6_addr8)") + " }",
            "else { " + line("$fam", "0", "0", '""', '""') + " }",
        ])  # fmt: skip
    lines.append(f"$sa = (struct sockaddr *){addr};")
    if mode == "remote" and fd == "(int32)$a0":
        lines = [*lines, "if ($sa == 0) {", _net_body(rec, fd, "sk"), "} else {"]
    lines.append("$ufam = $sa->sa_family; $in = (struct sockaddr_in *)$sa; $in6 = (struct sockaddr_in6 *)$sa;")
    un = "((struct sockaddr_un *)$sa)->sun_path"
    if mode == "remote":
        v4 = line("2", v4_sk[0], "bswap($in->sin_port)", v4_sk[1], "ntop(2, $in->sin_addr.s_addr)")
        v6 = line("10", v6_sk[0], "bswap($in6->sin6_port)", v6_sk[1], "ntop(10, $in6->sin6_addr.in6_u.u6_addr8)")
        unix = line("1", "0", "0", '""', un)
    else:
        v4 = line("2", "bswap($in->sin_port)", "0", "ntop(2, $in->sin_addr.s_addr)", "ntop(2, 0)")
        v6 = line("10", "bswap($in6->sin6_port)", "0", "ntop(10, $in6->sin6_addr.in6_u.u6_addr8)", "ntop(2, 0)")
        unix = line("1", "0", "0", un, '""')
    lines += [
        "if ($ufam == 2) { " + v4 + " }",
        "else if ($ufam == 10) { " + v6 + " }",
        "else if ($ufam == 1) { " + unix + " }",
        "else { " + line("$ufam", "0", "0", '""', '""') + " }",
    ]
    if mode == "remote":
        lines.append("}")
    return "\n  ".join(lines)


_NET_FD = {"remote": "(int32)$a0", "local": "(int32)$a0", "sk": "(int32)$a0"}


def _syscall_probe(
    probe: Probe, probe_id: int, self_pid: int, *, success_only: bool = False, gate: Sequence[GateAlt] | None = None
) -> str:
    """Enter saves the arguments in one per-probe map entry (a tuple led by 1, so a missing entry
    reads as 0); the exit programs print the strings' further pieces, then the event.
    ``success_only``: failed calls are dropped in the kernel (no loaded rule can match them).
    ``gate`` (an open type): a first exit program marks the entry 2 when the open may match a
    rule (``_gate_probe``); only marked ones are printed."""
    rec = REC_SYSCALL + probe_id
    m = f"@s{rec}[tid]"
    saved = "".join(f", (uint64){expr}" for expr in probe.save)
    gated = gate is not None and bool(probe.save) and success_only
    if gated:  # room for what the gate's scan leaves for its comparison (see _gate_body)
        saved += ", (uint64)0" * _GATE_FIELDS
    value = f"((uint64)1{saved})" if probe.save else "1"  # no arguments: a plain 1, not a tuple
    enter = f"tracepoint:syscalls:sys_enter_{probe.syscall} /pid != {self_pid}/ {{ {m} = {value}; }}"
    loads = f"$t = {m};" + "".join(f" $a{i} = $t.{i + 1};" for i in range(len(probe.save))) if probe.save else ""
    cond = (f"{m}.0 == 1" if probe.save else f"{m} == 1") + (" && args->ret >= 0" if success_only else "")
    out = []
    if gated and gate is not None:
        scan, compare = _gate_body(probe, m, gate)
        out.append(f"tracepoint:syscalls:sys_exit_{probe.syscall} /{cond}/ {{\n  {loads}\n  {scan}\n}}")
        out.append(f"tracepoint:syscalls:sys_exit_{probe.syscall} /{m}.0 == 3/ {{\n  {loads}\n  {compare}\n}}")
        cond = f"{m}.0 == 2"
    exit_point = f"tracepoint:syscalls:sys_exit_{probe.syscall} /{cond}/"
    # Side strings and continuation pieces, each in its own program (stack), before the event.
    for slot, (_name, ptr) in enumerate(probe.strings):
        out.append(f"{exit_point} {{\n  {loads}\n  {_pieces(slot, ptr, first=slot > 0)}\n}}")
    if probe.net:
        fd = "(int32)args->ret" if probe.evt in ("accept", "accept4") else _NET_FD[probe.net]
        body = _net_body(rec, fd, probe.net, probe.addr)
    else:
        values = [expr for _, expr in probe.ints]
        if probe.strings:
            values.append(f"str(uptr({probe.strings[0][1]}), {CHUNK})")
        body = f"print(({rec}, {_COMMON}{''.join(', ' + v for v in values)}));"
    out.append(f"{exit_point} {{\n  {loads}\n  {body}\n}}")
    # The entry goes whatever the result (a failed call dropped above must not leave it behind).
    # Only an entry that is there: bpftrace -k reports a failed delete (a call entered before
    # the probes were attached, or by the monitor itself) as a helper error.
    present = f"{m}.0 != 0" if probe.save else f"{m} != 0"
    out.append(f"tracepoint:syscalls:sys_exit_{probe.syscall} /{present}/ {{ delete({m}); }}")
    return enter + "\n" + "\n".join(out)


_GATE_WORDS = 16  # 8-byte words of the path scanned for its last '/' (longer paths pass)
_GATE_FIELDS = 7  # pass, need, q, sl, e, t1, t2: the scan's findings, in the saved entry


def _tail_test(text: str, *, exact: bool) -> str | None:
    """bpftrace test that the last component ends with (``exact``: is) ``text``, from the last 16
    bytes ``$t2:$t1`` the scan kept (compared in 32-bit halves: no 64-bit literals); None when
    ``text`` is longer than that."""
    raw = text.encode()
    n = len(raw)
    if not 0 < n <= 16:
        return None
    tests = [f"$e - $sl {'==' if exact else '>='} {n}"]
    padded = raw.rjust(16, b"\0")
    for reg, word in (("$t1", padded[8:]), ("$t2", padded[:8])):
        for shift, half in ((0, word[4:]), (32, word[:4])):
            width = min(max(n - (8 if reg == "$t2" else 0) - (4 if shift else 0), 0), 4)
            if width == 0:
                continue
            mask = (1 << (8 * width)) - 1
            value = int.from_bytes(half, "big") & mask
            tests.append(f"(({reg} >> {shift}) & {mask:#x}) == {value:#x}")
    return "(" + " && ".join(tests) + ")"


def _gate_body(probe: Probe, m: str, gate: Sequence[GateAlt]) -> tuple[str, str]:
    """Two exit programs that mark the saved entry 2 when the open may match ``gate``.

    The first tests the access mode and scans the path in aligned 8-byte words (an aligned read
    never crosses into a page the string does not reach) up to its NUL, for the last '/' and the
    last 16 bytes; it hands its findings to the second in the saved entry, marked 3 (through a
    map, so the verifier does not follow every constant the scan can leave), which compares the
    last component with
    the rules' names and suffixes (numerically; longer ones as bpftrace strings).
    Passed whatever the rules say: a path longer than the scan, an empty one, one ending in '/',
    '.' or '..' (its last component is not fd.name's), and a directory (the process table keeps
    directory fds for later relative opens and fchdir).
    """
    flags = dict(probe.ints)["flags"]
    any_alts = [a for a in gate if a.any_name]
    name_alts = [a for a in gate if not a.any_name]

    def acc_test(access: frozenset[int]) -> str:
        if access >= {0, 1, 2, 3}:
            return "1"
        return "(" + " || ".join(f"$acc == {v}" for v in sorted(access)) + ")"

    scan = [f"$acc = (uint64)({flags}) & 3;", "$pass = (uint64)0; $need = (uint64)0;"]
    if any_alts:
        scan.append(f"if ({' || '.join(dict.fromkeys(acc_test(a.access) for a in any_alts))}) {{ $pass = 1; }}")
    scan.append("$o = $a0 & 7; $q = $a0 - $o; $z = (uint64)1; $sl = $o; $e = (uint64)0;")
    scan.append("$t1 = (uint64)0; $t2 = (uint64)0;")
    if name_alts:
        need = " || ".join(dict.fromkeys(acc_test(a.access) for a in name_alts))
        scan.append(f"if ($pass == 0 && ({need})) {{")
        # Offsets from $q, the aligned word holding the path's first byte; the bytes before it
        # are made 0x01 (neither NUL nor '/'). $e: offset past the last byte, $sl: of the last
        # component's first byte; $t2:$t1 the last 16 bytes (the last one lowest).
        scan.append("  $need = 1;")
        for w in range(_GATE_WORDS):
            read = f"((struct gate_words *)uptr($q))->w[{w}]"
            if w == 0:
                read = f"({read} & ~((1 << ($o * 8)) - 1)) | (0x0101010101010101 & ((1 << ($o * 8)) - 1))"
            scan.append(f"  if ($z != 0) {{ $x = {read};")
            for j in range(8):
                k = 8 * w + j
                scan.append(
                    f"    $c = ($x >> {8 * j}) & 0xff; if ($c == 0) {{ $z = 0; }}"
                    f" if ($z != 0) {{ $e = {k + 1}; $t2 = ($t2 << 8) | ($t1 >> 56); $t1 = ($t1 << 8) | $c;"
                    f" if ($c == 47) {{ $sl = {k + 1}; }} }}"
                )
            scan.append("  }")
        scan.append("  if ($z != 0 || $e <= $o || $sl == $e) { $pass = 1; }")
        scan.append("}")
    args = "".join(f", $a{i}" for i in range(len(probe.save)))
    scan.append(f"{m} = ((uint64)3{args}, $pass, $need, $q, $sl, $e, $t1, $t2);")
    f0 = len(probe.save) + 1  # the scan's first field in the entry
    cmp = [
        f"$pass = $t.{f0}; $need = $t.{f0 + 1}; $q = $t.{f0 + 2}; $sl = $t.{f0 + 3}; $e = $t.{f0 + 4};"
        f" $t1 = $t.{f0 + 5}; $t2 = $t.{f0 + 6};"
    ]
    if name_alts:
        cmp.append(f"$acc = (uint64)({flags}) & 3;")
        cmp.append("if ($pass == 0 && $need != 0) {")
        cmp.append(f"  if ({_tail_test('.', exact=True)} || {_tail_test('..', exact=True)}) {{ $pass = 1; }}")
        long_names = False
        for a in name_alts:
            tests = []
            for n in sorted(a.names):
                t = _tail_test(n, exact=True)
                long_names = long_names or t is None
                tests.append(t if t is not None else f'$b == "{n}"')
            for suf in sorted(a.suffixes):
                size = len(suf)
                t = _tail_test(suf, exact=False)
                read = f"str(uptr($q + $e - {size}), {size})"
                tests.append(t if t is not None else f'($e >= $sl + {size} && {read} == "{suf}")')
            if tests:
                cmp.append(f"  if ($pass == 0 && {acc_test(a.access)} && ({' || '.join(tests)})) {{ $pass = 1; }}")
        if long_names:
            cmp.insert(3, f"  $b = str(uptr($q + $sl), {CHUNK});")
        cmp.append("}")
    cmp.append("if ($pass == 0) {")
    cmp.append("  $f = (struct file *)*(curtask->files->fdt->fd + args->ret);")
    cmp.append("  if (($f->f_inode->i_mode & 0xf000) == 0x4000) { $pass = 1; }")
    cmp.append("}")
    zeros = ", (uint64)0" * _GATE_FIELDS
    cmp.append(f"if ($pass != 0) {{ {m} = ((uint64)2{args}{zeros}); }} else {{ delete({m}); }}")
    return "\n  ".join(scan), "\n  ".join(cmp)
