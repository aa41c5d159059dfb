"""What a log directory holds, classified once for ``verify`` and for the writer's ``recovery``.

Both must agree on what is no part of the log (a symbolic link, a FIFO, a name no writer
makes): ``verify`` calls it tampering, so the writer must refuse to append over it rather than
sign on top of a directory ``verify`` will never pass.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from webhook.audit import tiles

CHECKPOINT = "checkpoint"
HISTORY = "checkpoints"
QUARANTINE = "quarantine"  # torn tails cut on reopen: kept, never part of the tree
TMP_SUFFIX = ".tmp"  # ``files.write_atomic``'s temporary names: a crash leftover

Kind = Literal["tile", "checkpoint", "history", "unfinished", "foreign"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One name under the log directory: what it is, and for a foreign one, why."""

    rel: str
    kind: Kind
    tile: tiles.TileId | None = None
    why: str = ""


def walk(root: Path) -> Iterator[Entry]:
    """Every file (and every linked directory) under ``root`` but the quarantine, classified.
    Links are never followed: whatever they point to is no part of the log."""
    for dirpath, dirnames, names in os.walk(root):
        if Path(dirpath) == root and QUARANTINE in dirnames:
            dirnames.remove(QUARANTINE)
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):  # os.walk does not descend into it
                rel = Path(dirpath, name).relative_to(root).as_posix()
                yield Entry(rel, "foreign", why="a symbolic link, not a directory of the log")
        for name in names:
            yield _classify(root, Path(dirpath, name))


def _classify(root: Path, path: Path) -> Entry:
    rel = path.relative_to(root).as_posix()
    try:
        mode = path.lstat().st_mode
    except OSError as exc:  # removed while listed
        return Entry(rel, "foreign", why=f"cannot be read: {exc.strerror or exc}")
    if stat.S_ISLNK(mode):  # the log's bytes would live outside it
        return Entry(rel, "foreign", why="a symbolic link, not a file of the log")
    if not stat.S_ISREG(mode):  # a FIFO or a device: never read
        return Entry(rel, "foreign", why="not a regular file")
    tid = tiles.parse_tile_path(rel)
    if tid is not None:
        return Entry(rel, "tile", tile=tid)
    if rel == CHECKPOINT:
        return Entry(rel, "checkpoint")
    if path.name.endswith(TMP_SUFFIX):
        return Entry(rel, "unfinished")
    if rel == f"{HISTORY}/{path.name}" and tiles.decimal_name(path.name):
        return Entry(rel, "history")
    return Entry(rel, "foreign", why="file not part of a tile log")
