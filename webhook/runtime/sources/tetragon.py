"""Tetragon's JSON export (``process_exec``, ``process_exit``, ``process_kprobe``) → Falco fields.

Tetragon already resolves the process, its parent and the pod, so events come out as ready field
mappings (``kind = "fields"``); other event kinds (``process_lsm``, ...) are counted and skipped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from webhook.runtime.sources import jsonl

__all__ = ["TetragonSource", "to_fields"]

_SYSCALL_PREFIXES = ("__x64_sys_", "__arm64_sys_", "__ia32_sys_", "__se_sys_", "ksys_", "sys_")
# Kernel functions Tetragon's example policies hook, and the Falco evt.type closest to each.
_FUNCTIONS = {
    "fd_install": "openat", "security_file_open": "openat", "security_file_permission": "read",
    "tcp_connect": "connect", "tcp_sendmsg": "sendto", "inet_csk_accept": "accept",
    "security_bprm_check": "execve", "security_sb_mount": "mount", "do_init_module": "init_module",
    "security_path_unlink": "unlink", "security_path_rename": "rename",
}  # fmt: skip
_L4 = {"IPPROTO_TCP": "tcp", "IPPROTO_UDP": "udp", "IPPROTO_ICMP": "icmp"}


def _time(text: str | None) -> int | None:
    if not text:
        return None
    whole, _, frac = text.rstrip("Z").partition(".")
    base = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC)
    return int(base.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9])


def _process(out: dict[str, Any], p: dict[str, Any], prefix: str) -> None:
    binary = p.get("binary", "")
    name = binary.rsplit("/", 1)[-1]
    args = p.get("arguments", "")
    if prefix == "proc.":
        out.update({"proc.name": name, "proc.exe": binary, "proc.exepath": binary, "proc.args": args,
                    "proc.cmdline": f"{name} {args}".rstrip(), "proc.pid": p.get("pid"),
                    "proc.vpid": p.get("pid"), "thread.tid": p.get("tid", p.get("pid"))})  # fmt: skip
        if "cwd" in p:
            out["proc.cwd"] = p["cwd"] if p["cwd"].endswith("/") else p["cwd"] + "/"
        if "uid" in p:
            out["user.uid"] = p["uid"]
        if "auid" in p:
            auid = p["auid"]
            out["user.loginuid"] = auid - (1 << 32) if auid >= 1 << 31 else auid
        pod = p.get("pod")
        container = (pod or {}).get("container") or {}
        cid = container.get("id", "").split("://")[-1] or p.get("docker", "")
        out["container.id"] = cid[:12] if cid else "host"
        if container.get("name"):
            out["container.name"] = container["name"]
        image = (container.get("image") or {}).get("name")
        if image:
            repo, _, tag = image.rpartition(":") if "/" not in image.rpartition(":")[2] else (image, "", "")
            out["container.image.repository"], out["container.image.tag"] = repo or image, tag
        if pod:
            out["k8s.ns.name"], out["k8s.pod.name"] = pod.get("namespace"), pod.get("name")
    else:
        out.update({"proc.pname": name, "proc.aname[1]": name, "proc.pexe": binary, "proc.pexepath": binary,
                    "proc.pcmdline": f"{name} {args}".rstrip(), "proc.ppid": p.get("pid")})  # fmt: skip


def _kprobe(out: dict[str, Any], k: dict[str, Any]) -> None:
    func = k.get("function_name", "")
    syscall = func
    for prefix in _SYSCALL_PREFIXES:
        if func.startswith(prefix):
            syscall = func[len(prefix) :]
            break
    out["evt.type"] = _FUNCTIONS.get(func, syscall)
    ret = (k.get("return") or {}).get("int_arg")
    if ret is not None:
        out["evt.rawres"] = ret
        out["evt.res"] = "SUCCESS" if ret >= 0 else str(ret)
    for arg in k.get("args") or ():
        if "file_arg" in arg or "path_arg" in arg:
            path = (arg.get("file_arg") or arg.get("path_arg") or {}).get("path", "")
            head, _, tail = path.rpartition("/")
            out.update({"fd.name": path, "fd.typechar": "f", "fd.type": "file", "fd.directory": head or "/",
                        "fd.filename": tail, "fs.path.name": path})  # fmt: skip
        elif "sock_arg" in arg:
            s = arg["sock_arg"]
            fam = "ipv6" if s.get("family") == "AF_INET6" else "ipv4"
            out.update({"fd.type": fam, "fd.typechar": fam[-1], "fd.sockfamily": "ip",
                        "fd.l4proto": _L4.get(s.get("protocol", ""), "<NA>"),
                        "fd.cip": s.get("saddr"), "fd.cport": s.get("sport"), "fd.sip": s.get("daddr"),
                        "fd.sport": s.get("dport"),
                        "fd.name": f"{s.get('saddr')}:{s.get('sport')}->{s.get('daddr')}:{s.get('dport')}",
                        })  # fmt: skip
        elif "string_arg" in arg and "evt.arg.name" not in out:
            out["evt.arg.name"] = arg["string_arg"]


def to_fields(record: dict[str, Any]) -> dict[str, Any] | None:
    """One export record as Falco fields; None for kinds with no Falco counterpart."""
    for kind in ("process_exec", "process_exit", "process_kprobe"):
        body = record.get(kind)
        if body is not None:
            break
    else:
        return None
    out: dict[str, Any] = {"evt.dir": "<", "evt.source": "syscall"}
    when = _time(record.get("time"))
    if when is not None:
        out["evt.time"] = when
    _process(out, body.get("process") or {}, "proc.")
    if body.get("parent"):
        _process(out, body["parent"], "parent.")
    if kind == "process_exec":
        out.update({"evt.type": "execve", "evt.res": "SUCCESS", "evt.rawres": 0})
    elif kind == "process_exit":
        out["evt.type"] = "procexit"
    else:
        _kprobe(out, body)
    if record.get("node_name"):
        out["evt.hostname"] = record["node_name"]
    return out


class TetragonSource:
    """Tetragon JSON lines from a file or stdin (``tetra getevents -o json`` or the export file)."""

    kind = "fields"
    live = False
    name = "tetragon"

    def __init__(self, path: str | Path) -> None:
        self._lines = jsonl.JsonlSource(path)
        self.skipped = 0

    async def batches(self) -> AsyncIterator[list[Any]]:
        async for batch in self._lines.batches():
            out = []
            for record in batch:
                fields = to_fields(record)
                if fields is None:
                    self.skipped += 1
                else:
                    out.append(fields)
            if out:
                yield out

    def stats(self) -> dict[str, int]:
        return {"lines": self._lines.lines, "skipped_kinds": self.skipped}

    async def close(self) -> None:
        return None
