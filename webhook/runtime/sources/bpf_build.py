"""Build the ring-buffer source's BPF object and loader (used by ``ringbuf``), once per kernel.

The kernel side is CO-RE C (``bpf/portcullis.bpf.c``) compiled with clang against a
``vmlinux.h`` that bpftool dumps from this kernel's BTF; the loader (``bpf/loader.c``) links
libbpf. Like bpftrace compiling its program at start, this happens at the first start on a node,
into a cache directory keyed by a hash of the sources, the generated probe table and the
kernel's BTF, so later starts (and restarts) load in milliseconds. Nothing generated is kept in
the source tree. Missing tools raise ``BuildUnavailable`` naming what to install.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from webhook import errors
from webhook.runtime.sources import bpftrace_program

__all__ = ["BuildUnavailable", "Built", "build", "cache_root", "missing_tools", "probe_table"]

SRC = Path(__file__).resolve().parent / "bpf"
BTF = Path("/sys/kernel/btf/vmlinux")
LIBBPF_HEADER = Path("/usr/include/bpf/libbpf.h")

# Probe kinds of the kernel side (enum in portcullis.bpf.c).
K_GEN, K_OPEN, K_OPENAT2, K_CREAT, K_NET_REMOTE, K_NET_LOCAL, K_NET_SK, K_NET_ACCEPT, K_SENDMSG, K_CWD = range(10)


class BuildUnavailable(errors.UpstreamError):
    """The ring-buffer source cannot be built here (a tool, a header or kernel BTF is missing)."""


@dataclass(frozen=True, slots=True)
class Built:
    obj: Path  # the BPF object
    loader: Path  # the loader executable


def cache_root() -> Path:
    """``$PORTCULLIS_BPF_CACHE``, else /var/cache/portcullis/bpf when we may write there (root on
    a node), else ``~/.cache/portcullis/bpf``."""
    env = os.environ.get("PORTCULLIS_BPF_CACHE")
    if env:
        return Path(env)
    system = Path("/var/cache/portcullis/bpf")
    if os.geteuid() == 0:
        return system
    return Path.home() / ".cache" / "portcullis" / "bpf"


def missing_tools(cc: str = "cc") -> list[str]:
    """What the build needs and this machine lacks (Debian package names), [] when complete."""
    out = []
    if shutil.which("clang") is None:
        out.append("clang")
    if shutil.which("bpftool") is None:
        out.append("bpftool")
    if not LIBBPF_HEADER.is_file():
        out.append("libbpf-dev")
    if shutil.which(cc) is None:
        out.append("gcc")
    if not BTF.is_file():
        out.append("kernel BTF (/sys/kernel/btf/vmlinux: a kernel built with CONFIG_DEBUG_INFO_BTF)")
    return out


def _positions(syscall: str, root: Path = Path("/sys/kernel/tracing")) -> list[str] | None:
    """The syscall's argument names in order, from its enter tracepoint's format (None: absent)."""
    fmt = root / "events" / "syscalls" / f"sys_enter_{syscall}" / "format"
    try:
        text = fmt.read_text()
    except OSError:
        return None
    names = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("field:") or "common_" in line or "__syscall_nr" in line:
            continue
        decl = line.split(";", 1)[0].removeprefix("field:").strip()
        names.append(decl.rsplit(None, 1)[-1].lstrip("*"))
    return names


def arg_position(probe: bpftrace_program.Probe, expr: str, args: list[str] | None) -> int:
    """The syscall argument a ``$aN`` expression of ``probe`` stands for (-1 when unknown)."""
    if args is None or not expr.startswith("$a"):
        return -1
    saved = probe.save[int(expr[2:])]
    name = saved.removeprefix("args->")
    return args.index(name) if name in args else -1


def probe_table(root: Path = Path("/sys/kernel/tracing")) -> tuple[str, dict[str, list[str] | None]]:
    """``probes.h`` (one ``PROBE(id, syscall, kind, s0, s1, s2)`` line per ``PROBES`` entry: the
    argument positions of its strings, or for socket calls s0 of the sockaddr/msghdr), and each
    syscall's argument names (the decoder maps ``$aN`` expressions with them)."""
    lines = [f"#define NPROBES {len(bpftrace_program.PROBES)}"]
    formats: dict[str, list[str] | None] = {}
    for i, p in enumerate(bpftrace_program.PROBES):
        args = formats[p.syscall] = _positions(p.syscall, root)
        strs = [arg_position(p, expr, args) for _, expr in p.strings]
        if p.net:
            kind = {"local": K_NET_LOCAL, "sk": K_NET_ACCEPT if p.evt.startswith("accept") else K_NET_SK}.get(
                p.net, K_SENDMSG if p.evt == "sendmsg" else K_NET_REMOTE
            )
            addr = p.addr if p.evt != "sendmsg" else "$a1"
            strs = [arg_position(p, addr, args)] if p.net != "sk" else []
        else:
            kind = {
                "open": K_OPEN, "openat": K_OPEN, "openat2": K_OPENAT2, "creat": K_CREAT, "chdir": K_CWD,
                "fchdir": K_CWD,
            }.get(p.evt, K_GEN)  # fmt: skip
        s = [*strs, -1, -1, -1][:3]
        lines.append(f"PROBE({i}, {p.syscall}, {kind}, {s[0]}, {s[1]}, {s[2]})")
    return "\n".join(lines) + "\n", formats


def _private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or check it: the loader built here runs as root, so a cache
    that another user can write to (or a link planted in its place) is refused, not used."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise BuildUnavailable(
            f"BPF build cache {path} is not a private directory of uid {os.geteuid()} "
            f"(owner {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}): set PORTCULLIS_BPF_CACHE"
        )


def _run(cmd: list[str], what: str, **kw: object) -> bytes:
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=300, check=False, **kw)  # type: ignore[call-overload]
    except OSError as exc:
        raise BuildUnavailable(f"{what}: cannot run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-8:]
        raise BuildUnavailable(f"{what} failed ({cmd[0]} exit {proc.returncode}): " + " | ".join(detail))
    out: bytes = proc.stdout
    return out


def build(cache: Path | None = None, *, cc: str = "cc") -> Built:
    """The BPF object and loader for this kernel, built into ``cache`` unless already there."""
    missing = missing_tools(cc)
    table, _ = probe_table()
    h = hashlib.sha256()
    for name in ("portcullis.bpf.c", "loader.c"):
        h.update((SRC / name).read_bytes())
    h.update(table.encode())
    with contextlib.suppress(OSError):
        h.update(BTF.read_bytes())
    key = h.hexdigest()[:24]
    root = cache or cache_root()
    final = root / key
    built = Built(final / "portcullis.bpf.o", final / "portcullis-rb")
    _private_dir(root)
    if built.obj.is_file() and built.loader.is_file():
        _private_dir(final)
        return built
    if missing:
        raise BuildUnavailable("the ring-buffer eBPF source cannot be built here: missing " + ", ".join(missing))
    work = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    try:
        (work / "vmlinux.h").write_bytes(_run(["bpftool", "btf", "dump", "file", str(BTF), "format", "c"], "bpftool"))
        (work / "probes.h").write_text(table)
        shutil.copy(SRC / "portcullis.bpf.c", work / "portcullis.bpf.c")
        _run(
            ["clang", "-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Wno-unused-function",
             f"-I{work}", "-c", str(work / "portcullis.bpf.c"), "-o", str(work / "portcullis.bpf.o")],
            "compiling the BPF program",
        )  # fmt: skip
        _run(
            [cc, "-O2", "-Wall", "-o", str(work / "portcullis-rb"), str(SRC / "loader.c"), "-lbpf", "-lelf", "-lz"],
            "building the loader",
        )
        (work / "vmlinux.h").unlink()  # 4 MB, and kept nowhere: the BTF is the source of truth
        try:
            work.rename(final)
        except OSError:  # another start built it meanwhile
            if not (built.obj.is_file() and built.loader.is_file()):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return built
