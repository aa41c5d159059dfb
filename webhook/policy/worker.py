"""A policy worker process: compile the policies it is sent, then evaluate requests one at a time.

Run as ``python -m webhook.policy.worker`` by ``policy.isolation`` (the parent side). rego-cpp
cannot be interrupted and its cost can grow faster than its input, so evaluation never runs in
the webhook's own process: here an overrun costs a process the parent kills at the request's
deadline, and the worker caps itself with rlimits (address space above what it holds once
compiled, CPU seconds per evaluation) so a runaway dies even if the parent is slow to notice.

Wire format, both directions: a 4-byte big-endian length, then one JSON document. The parent
sends ``{"op": "load", ...}`` once, then ``{"op": "eval", ...}`` per request; the worker answers
each with one document. The parent never trusts an answer's shape (``isolation`` checks it).
"""

from __future__ import annotations

import math
import os
import resource
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import orjson

from webhook import errors
from webhook.policy import gatekeeper, modules, rego
from webhook.policy.rego import Item, PolicyResult

_HEADER = struct.Struct(">I")
MAX_FRAME = 256 << 20  # a sanity bound; the parent bounds inputs far below this


def read_frame(stream: BinaryIO) -> bytes | None:
    """One frame's payload, or None at end of stream."""
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    payload = stream.read(size)
    return payload if len(payload) == size else None


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


class Loaded:
    """What one ``load`` message compiled: a Rego bundle and/or Gatekeeper templates."""

    def __init__(self, message: Mapping[str, Any]) -> None:
        strict = bool(message.get("strict"))
        self.bundle: rego.CompiledPolicies | None = None
        rego_sources = message.get("rego")
        if rego_sources is not None:
            mods = [modules.parse(name, source) for name, source in rego_sources]
            self.bundle = rego.compile_modules(mods, strict_builtins=strict)
        self.templates: dict[str, gatekeeper.Template] = {}
        for kind, spec in (message.get("templates") or {}).items():
            mods = [modules.parse(name, source) for name, source in spec["modules"]]
            entry = spec["entrypoint"]
            compiled = rego.compile_modules(mods, strict_builtins=strict, extra_entrypoints=[entry])
            self.templates[kind] = gatekeeper.Template(
                kind, spec["file"], compiled, entry, bool(spec.get("referential"))
            )
        self.constraints: dict[str, tuple[str, Any]] = {
            cid: (c["kind"], c["parameters"]) for cid, c in (message.get("constraints") or {}).items()
        }

    def summary(self) -> dict[str, Any]:
        return {
            "ok": True,
            "policies": list(self.bundle.policy_ids) if self.bundle else [],
            "templates": sorted(self.templates),
        }

    def evaluate(self, message: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"bundle": [], "constraints": []}
        document = message.get("document")
        if self.bundle is not None and document is not None:
            out["bundle"] = [_encode(r) for r in self.bundle.evaluate(document)]
        review = message.get("review")
        inventory = message.get("inventory")
        for cid in message.get("constraints") or ():
            kind, parameters = self.constraints[cid]
            template = self.templates[kind]
            result = gatekeeper.evaluate_template(template, cid, parameters, review, inventory)
            out["constraints"].append(_encode(result))
        return out


def _encode(result: PolicyResult) -> list[Any]:
    return [_items(result.deny), _items(result.warn), result.error]


def _items(items: Sequence[Item]) -> list[list[str | None]]:
    return [[i.msg, i.check, i.path] for i in items]


def _address_space() -> int:
    """Bytes of address space mapped now (rego-cpp's allocator reserves a large range at import)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


def cap_memory(extra_bytes: int) -> None:
    """No mapping beyond what is mapped now plus ``extra_bytes``: an evaluation that needs more
    fails its allocation and the engine aborts (the parent sees the worker die)."""
    if extra_bytes <= 0:
        return
    limit = _address_space() + extra_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def cap_cpu(seconds: float) -> None:
    """SIGXCPU (which ends the process) once this evaluation used ``seconds`` of CPU more than
    the worker had used before it: the soft limit moves, the hard one stays."""
    if seconds <= 0:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    soft = math.ceil(used + seconds)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """The worker's loop; returns the exit code."""
    first = read_frame(inp)
    if first is None:
        return 0
    message = orjson.loads(first)
    try:
        loaded = Loaded(message)
    except errors.PolicyLoadError as exc:
        out.write(frame(orjson.dumps({"ok": False, "error": str(exc)})))
        out.flush()
        return 2
    cap_memory(int(message.get("memory_bytes") or 0))
    cpu_seconds = float(message.get("cpu_seconds") or 0)
    out.write(frame(orjson.dumps(loaded.summary())))
    out.flush()
    while True:
        payload = read_frame(inp)
        if payload is None:
            return 0
        request = orjson.loads(payload)
        cap_cpu(cpu_seconds)
        try:
            answer = loaded.evaluate(request)
        except MemoryError:
            return 3  # the parent reports the cap; a fresh worker replaces this one
        out.write(frame(orjson.dumps(answer)))
        out.flush()


def main() -> int:
    # Frames go to a private copy of stdout; anything else printed (a library's message) goes to
    # stderr, so it can never corrupt the stream the parent parses.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    sys.exit(main())
