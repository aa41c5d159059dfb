"""A content-addressed store of admitted objects beside an audit log (``<log>.objects/``).

An admission record keeps its object inline when it is small; a larger one is stored here as
its RFC 8785 canonical JSON under ``sha256/<first two hex>/<hex>``, and the record keeps only
the SHA-256. The record is a leaf of the signed tree, so the hash is signed: a stored object
that does not hash to it was changed after the fact (``portcullis replay`` reports it).
Written by the admission recorder, read by replay. Files are written temp + fsync + rename.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from webhook import errors
from webhook.audit import store

_HEX = re.compile(r"^[0-9a-f]{64}$")


def beside(log_dir: Path) -> Path:
    """The store that belongs to the log in ``log_dir``."""
    log_dir = Path(log_dir)
    return log_dir.with_name(log_dir.name + ".objects")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ObjectStore:
    """Objects by SHA-256 under ``root``."""

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable

    def path(self, hex_digest: str) -> Path:
        if not _HEX.match(hex_digest):
            raise errors.AuditFormatError(f"object digest {hex_digest!r} is not 64 lowercase hex digits")
        return self.root / "sha256" / hex_digest[:2] / hex_digest

    def put(self, data: bytes) -> str:
        """Store ``data`` (once: the same bytes land in the same file); returns its digest."""
        hex_digest = digest(data)
        path = self.path(hex_digest)
        if not path.exists():
            store.write_atomic(path, data, self.durable, 0o444)  # durable: fsyncs the directories it made
        return hex_digest

    def get(self, hex_digest: str) -> bytes | None:
        """The stored bytes, unchecked (the caller compares their hash), or None when absent."""
        try:
            return self.path(hex_digest).read_bytes()
        except FileNotFoundError:
            return None
