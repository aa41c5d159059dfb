"""Writing files whole: a reader (a reloading server, a verifier, an offline CI job) sees the old
content or the new, never half a file, even when the writer is killed midway.

One way for the whole package: write ``NAME.tmp`` beside the target (created with its final
mode), optionally fsync it, and rename it over the target. A crash leaves at most a ``.tmp`` file,
which the audit log's recovery knows to remove. Imports nothing of the project.
"""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def write_atomic(path: Path, data: bytes, durable: bool = False, mode: int = 0o644) -> bool:
    """Replace ``path`` with ``data`` (temp + optional fsync + rename).

    When ``durable``, the file is fsynced before the rename and its directory (and every directory
    this call created) after it, so after a power loss the name neither vanishes nor points at
    half a file. Returns whether the parent directory had to be created.
    """
    made: list[Path] = []
    parent = path.parent
    while not parent.is_dir():
        made.append(parent)
        parent = parent.parent
    created = bool(made)
    if created:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = open_temp(tmp, mode)
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        for directory in [path.parent, *(d.parent for d in made)]:
            fsync_dir(directory)
    return created


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that names created or renamed in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_temp(tmp: Path, mode: int) -> int:
    """Create ``tmp`` afresh with ``mode``; a leftover from a crash is removed first.

    Never reuses an existing file (its mode, a key's 0600 say, would not be ``mode``) and never
    follows a link planted at that name (``O_EXCL``).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return os.open(tmp, flags, mode)
    except FileExistsError:
        tmp.unlink()
        return os.open(tmp, flags, mode)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (it may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
