"""Tetragon's JSON export (``process_exec``, ``process_exit``, ``process_kprobe``) → Falco fields.

Tetragon already resolves the process, its parent and the pod, so events come out as ready field
mappings (``kind = "fields"``); other event kinds (``process_lsm``, ...) are counted and skipped.
A record with a field of the wrong type stops the run with ``TetragonRecordError`` naming file,
line and field, as the JSONL source does for a line that is not a JSON object.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from webhook import shapes
from webhook.runtime.sources import jsonl

__all__ = ["TetragonRecordError", "TetragonSource", "to_fields"]

_SYSCALL_PREFIXES = ("__x64_sys_", "__arm64_sys_", "__ia32_sys_", "__se_sys_", "ksys_", "sys_")
# Kernel functions Tetragon's example policies hook, and the Falco evt.type closest to each.
_FUNCTIONS = {
    "fd_install": "openat", "security_file_open": "openat", "security_file_permission": "read",
    "tcp_connect": "connect", "tcp_sendmsg": "sendto", "inet_csk_accept": "accept",
    "security_bprm_check": "execve", "security_sb_mount": "mount", "do_init_module": "init_module",
    "security_path_unlink": "unlink", "security_path_rename": "rename",
}  # fmt: skip
_L4 = {"IPPROTO_TCP": "tcp", "IPPROTO_UDP": "udp", "IPPROTO_ICMP": "icmp"}


class TetragonRecordError(jsonl.EventInputError):
    """A Tetragon record has a field of the wrong type (the message names the field)."""


def _fail(at: str, problem: str) -> TetragonRecordError:
    return TetragonRecordError(f"{at} {problem}")


def _obj(value: Any, at: str) -> Mapping[str, Any]:
    """An object field (absent or null is empty)."""
    return shapes.mapping(value, at, _fail)


def _str(d: Mapping[str, Any], key: str, at: str) -> str:
    """A string field (absent or null is empty)."""
    return shapes.string(d.get(key), f"{at}.{key}", _fail)


def _int(d: Mapping[str, Any], key: str, at: str) -> int | None:
    value = d.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise TetragonRecordError(f"{at}.{key} must be an integer, not {shapes.type_name(value)}")
    return value


def _time(record: dict[str, Any]) -> int | None:
    text = _str(record, "time", "record")
    if not text:
        return None
    whole, _, frac = text.rstrip("Z").partition(".")
    try:
        if frac and not (frac.isascii() and frac.isdigit()):
            raise ValueError("fraction of a second must be digits")
        base = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise TetragonRecordError(
            f"record.time {text!r} is not an RFC 3339 time such as 2024-05-01T10:00:00.123456789Z ({exc})"
        ) from exc
    return int(base.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9])


def _process(out: dict[str, Any], p: Mapping[str, Any], prefix: str, at: str) -> None:
    binary = _str(p, "binary", at)
    name = binary.rsplit("/", 1)[-1]
    args = _str(p, "arguments", at)
    pid = _int(p, "pid", at)
    if prefix == "proc.":
        tid = _int(p, "tid", at)
        out.update({"proc.name": name, "proc.exe": binary, "proc.exepath": binary, "proc.args": args,
                    "proc.cmdline": f"{name} {args}".rstrip(), "proc.pid": pid,
                    "proc.vpid": pid, "thread.tid": pid if tid is None else tid})  # fmt: skip
        if "cwd" in p:
            cwd = _str(p, "cwd", at)
            out["proc.cwd"] = cwd if cwd.endswith("/") else cwd + "/"
        if "uid" in p:
            out["user.uid"] = _int(p, "uid", at)
        auid = _int(p, "auid", at)
        if auid is not None:
            out["user.loginuid"] = auid - (1 << 32) if auid >= 1 << 31 else auid
        _pod(out, p, at)
    else:
        out.update({"proc.pname": name, "proc.aname[1]": name, "proc.pexe": binary, "proc.pexepath": binary,
                    "proc.pcmdline": f"{name} {args}".rstrip(), "proc.ppid": pid})  # fmt: skip


def _pod(out: dict[str, Any], p: Mapping[str, Any], at: str) -> None:
    pod = _obj(p.get("pod"), f"{at}.pod")
    container = _obj(pod.get("container"), f"{at}.pod.container")
    cid = _str(container, "id", f"{at}.pod.container").split("://")[-1] or _str(p, "docker", at)
    out["container.id"] = cid[:12] if cid else "host"
    if container.get("name"):
        out["container.name"] = _str(container, "name", f"{at}.pod.container")
    image = _str(_obj(container.get("image"), f"{at}.pod.container.image"), "name", f"{at}.pod.container.image")
    if image:
        repo, _, tag = image.rpartition(":") if "/" not in image.rpartition(":")[2] else (image, "", "")
        out["container.image.repository"], out["container.image.tag"] = repo or image, tag
    if pod:
        out["k8s.ns.name"] = _str(pod, "namespace", f"{at}.pod") or None
        out["k8s.pod.name"] = _str(pod, "name", f"{at}.pod") or None


def _kprobe(out: dict[str, Any], k: Mapping[str, Any]) -> None:
    at = "process_kprobe"
    func = _str(k, "function_name", at)
    syscall = func
    for prefix in _SYSCALL_PREFIXES:
        if func.startswith(prefix):
            syscall = func[len(prefix) :]
            break
    out["evt.type"] = _FUNCTIONS.get(func, syscall)
    ret = _int(_obj(k.get("return"), f"{at}.return"), "int_arg", f"{at}.return")
    if ret is not None:
        out["evt.rawres"] = ret
        out["evt.res"] = "SUCCESS" if ret >= 0 else str(ret)
    for i, raw in enumerate(shapes.array(k.get("args"), f"{at}.args", _fail)):
        _arg(out, _obj(raw, f"{at}.args[{i}]"), f"{at}.args[{i}]")


def _arg(out: dict[str, Any], arg: Mapping[str, Any], at: str) -> None:
    if "file_arg" in arg or "path_arg" in arg:
        key = "file_arg" if arg.get("file_arg") else "path_arg"
        path = _str(_obj(arg.get(key), f"{at}.{key}"), "path", f"{at}.{key}")
        head, _, tail = path.rpartition("/")
        out.update({"fd.name": path, "fd.typechar": "f", "fd.type": "file", "fd.directory": head or "/",
                    "fd.filename": tail, "fs.path.name": path})  # fmt: skip
    elif "sock_arg" in arg:
        s, s_at = _obj(arg["sock_arg"], f"{at}.sock_arg"), f"{at}.sock_arg"
        fam = "ipv6" if _str(s, "family", s_at) == "AF_INET6" else "ipv4"
        saddr, daddr = _str(s, "saddr", s_at) or None, _str(s, "daddr", s_at) or None
        sport, dport = _int(s, "sport", s_at), _int(s, "dport", s_at)
        out.update({"fd.type": fam, "fd.typechar": fam[-1], "fd.sockfamily": "ip",
                    "fd.l4proto": _L4.get(_str(s, "protocol", s_at), "<NA>"),
                    "fd.cip": saddr, "fd.cport": sport, "fd.sip": daddr, "fd.sport": dport,
                    "fd.name": f"{saddr}:{sport}->{daddr}:{dport}"})  # fmt: skip
    elif "string_arg" in arg and "evt.arg.name" not in out:
        out["evt.arg.name"] = _str(arg, "string_arg", at)


def to_fields(record: dict[str, Any]) -> dict[str, Any] | None:
    """One export record as Falco fields; None for kinds with no Falco counterpart.

    Raises ``TetragonRecordError`` (an ``EventInputError``, as the JSONL source raises for a bad
    line) naming the first field of the wrong type."""
    for kind in ("process_exec", "process_exit", "process_kprobe"):
        if record.get(kind) is not None:
            body = _obj(record[kind], kind)
            break
    else:
        return None
    out: dict[str, Any] = {"evt.dir": "<", "evt.source": "syscall"}
    when = _time(record)
    if when is not None:
        out["evt.time"] = when
    _process(out, _obj(body.get("process"), f"{kind}.process"), "proc.", f"{kind}.process")
    if body.get("parent"):
        _process(out, _obj(body["parent"], f"{kind}.parent"), "parent.", f"{kind}.parent")
    if kind == "process_exec":
        out.update({"evt.type": "execve", "evt.res": "SUCCESS", "evt.rawres": 0})
    elif kind == "process_exit":
        out["evt.type"] = "procexit"
    else:
        _kprobe(out, body)
    if record.get("node_name"):
        out["evt.hostname"] = _str(record, "node_name", "record")
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
        seen = 0
        async for batch in self._lines.batches():
            first, seen = seen + 1, self._lines.lines
            out = []
            for i, record in enumerate(batch):
                try:
                    fields = to_fields(record)
                except TetragonRecordError as exc:
                    raise TetragonRecordError(f"{self._where(batch, i, first, seen)}: {exc}") from exc
                if fields is None:
                    self.skipped += 1
                else:
                    out.append(fields)
            if out:
                yield out

    def _where(self, batch: list[Any], i: int, first: int, last: int) -> str:
        """File and line of ``batch[i]`` (exact unless the batch had blank lines)."""
        name = "<stdin>" if self._lines.path == "-" else self._lines.path
        if len(batch) == last - first + 1:
            return f"{name}:{first + i}"
        return f"{name}: record {i + 1} of lines {first}-{last}"

    def stats(self) -> dict[str, int]:
        return {"lines": self._lines.lines, "skipped_kinds": self.skipped}

    async def close(self) -> None:
        return None
