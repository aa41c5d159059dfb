"""Recorded admissions out of an audit log, with their objects (read stage of replay).

Each admission record names its object inline or by SHA-256 in the object store beside the log.
A stored object is returned only when its bytes hash to the signed digest; otherwise the record
is reported as tampered (or missing) and never judged. Records without an object (written
before objects were recorded, redacted Secrets) are reported as not replayable.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from webhook.audit import log as audit_log
from webhook.audit import objects as object_store


@dataclass(frozen=True, slots=True)
class Recorded:
    """One admission record that can be judged again."""

    index: int
    time: str
    content: Mapping[str, Any]
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Unreplayable:
    """A record that is not judged, and why (``tampered`` and ``missing`` are integrity problems)."""

    index: int
    time: str
    content: Mapping[str, Any]
    problem: str  # tampered | missing | redacted | no-object
    detail: str


@dataclass(slots=True)
class Window:
    start: str | None = None  # RFC 3339, inclusive
    end: str | None = None  # RFC 3339, exclusive
    skipped: int = field(default=0)


def read(log_dir: Path, objects_dir: Path, window: Window) -> Iterator[Recorded | Unreplayable]:
    """Every admission record of ``log_dir`` within ``window``, in log order.

    Raises ``AuditFormatError`` for a malformed log (``portcullis audit verify`` locates it).
    """
    store = object_store.ObjectStore(objects_dir, durable=False)
    for index, record in audit_log.read_records(log_dir):
        if record.get("kind") != "admission" or not isinstance(record.get("content"), dict):
            continue
        time = str(record.get("time", ""))
        if (window.start and time < window.start) or (window.end and time >= window.end):
            window.skipped += 1
            continue
        content = record["content"]
        yield _resolve(index, time, content, store)


def _resolve(
    index: int, time: str, content: Mapping[str, Any], store: object_store.ObjectStore
) -> Recorded | Unreplayable:
    found: dict[str, Mapping[str, Any] | None] = {}
    for field_ in ("object", "old_object"):
        if content.get(f"{field_}_redacted"):
            return Unreplayable(index, time, content, "redacted", f"the {field_} is a Secret, never recorded")
        inline = content.get(field_)
        digest = content.get(f"{field_}_sha256")
        if isinstance(inline, Mapping):
            found[field_] = inline
        elif isinstance(digest, str):
            loaded = _stored(store, digest)
            if isinstance(loaded, str):
                problem = "missing" if loaded.startswith("missing") else "tampered"
                return Unreplayable(index, time, content, problem, f"{field_}: {loaded}")
            found[field_] = loaded
        else:
            found[field_] = None
    if found["object"] is None and content.get("operation") in ("CREATE", "UPDATE"):
        return Unreplayable(index, time, content, "no-object", "the record keeps no object (written before replay)")
    return Recorded(index, time, content, found["object"], found["old_object"])


def _stored(store: object_store.ObjectStore, digest: str) -> Mapping[str, Any] | str:
    """The stored object, or why it cannot be used."""
    try:
        data = store.get(digest)
    except Exception as exc:  # a malformed digest in the record, an unreadable file
        return f"tampered: cannot read object {digest!r}: {exc}"
    if data is None:
        return f"missing: object sha256:{digest} is not in {store.root}"
    actual = object_store.digest(data)
    if actual != digest:
        return f"tampered: {store.path(digest)} hashes to sha256:{actual}, the signed record says sha256:{digest}"
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:  # pragma: no cover - the hash matched the record's
        return f"tampered: stored object is not JSON ({exc})"
    return obj if isinstance(obj, Mapping) else f"tampered: stored object sha256:{digest} is not a JSON object"
