"""Publishing checkpoints to an external location (a directory, e.g. a mounted bucket or an
NFS share another team owns), so truncating or replacing the whole log is detected too.

Called by ``log.AuditLog`` after each checkpoint and by ``verify`` (``--published DIR``).
The layout follows the tlog-witness monitoring path: ``<dir>/<sha256(origin) hex>/checkpoint``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from webhook.audit import store


def checkpoint_path(directory: Path, origin: str) -> Path:
    return Path(directory) / hashlib.sha256(origin.encode()).hexdigest() / "checkpoint"


def parse_target(value: str) -> Path | None:
    """``dir:PATH`` or ``file://PATH`` names a publish directory; anything else is a witness."""
    for prefix in ("dir:", "file://"):
        if value.startswith(prefix):
            return Path(value.removeprefix(prefix))
    return None


def publish(directory: Path, origin: str, signed: bytes, durable: bool) -> None:
    """Atomically replace the published copy (temp + fsync + rename)."""
    path = checkpoint_path(directory, origin)
    store.write_atomic(path, signed, durable, 0o644)
