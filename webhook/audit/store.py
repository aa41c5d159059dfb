"""The log directory on disk: staging batches into tile files, durable writes, recovery.

Owned by ``log.AuditLog``'s writer task: ``stage`` runs on the event loop (cheap, in memory),
``write`` runs in a worker thread (file I/O and fsync). ``recover`` rebuilds the right edge
after a crash. Every file is written as temp + fsync + rename, so a file is whole or absent.
"""

from __future__ import annotations

import fcntl
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from webhook import errors, files
from webhook.audit import merkle, tiles
from webhook.audit.tiles import ENTRIES, TILE_WIDTH, TileId

log = logging.getLogger("portcullis.audit")
TILE_BYTES = TILE_WIDTH * merkle.HASH_SIZE
TMP_SUFFIX = files.TMP_SUFFIX
write_atomic = files.write_atomic  # the log, its publisher and the witness write through the store


class RecoveryError(errors.AuditFormatError):
    """The log directory cannot be reopened safely (tampered with, or acknowledged data lost)."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Batch:
    """Files one group commit must make durable, in write order, and partials it retires."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    retired: list[TileId] = field(default_factory=list)


class TileStore:
    """The right edge of the tree in memory plus the files under ``root``."""

    def __init__(self, root: Path, durable: bool = True) -> None:
        self.root = root
        self.durable = durable
        self.size = 0
        self.border = merkle.CompactRange()
        self.counts: dict[int, int] = {}  # level -> stored hashes (or entries) so far
        self.edges: dict[int, bytearray] = {}  # level -> contents of its partial tile
        self._pool: ThreadPoolExecutor | None = None
        self._lock_fd: int | None = None

    # -- staging (event loop) -------------------------------------------------------------

    def stage(self, entries: list[bytes]) -> Batch:
        """Add entries to the in-memory tree; return the files that make them durable."""
        batch = Batch()
        touched: set[int] = set()
        full: dict[TileId, bytes] = {}

        def add(level: int, item: bytes) -> None:
            edge = self.edges.setdefault(level, bytearray())
            edge += item
            n = self.counts.get(level, 0)
            self.counts[level] = n + 1
            touched.add(level)
            if (n + 1) % TILE_WIDTH == 0:
                tid = TileId(level, n // TILE_WIDTH)
                full[tid] = bytes(edge)
                edge.clear()

        def on_node(height: int, index: int, h: bytes) -> None:
            if height % tiles.TILE_HEIGHT == 0:
                add(height // tiles.TILE_HEIGHT, h)

        for entry in entries:
            add(ENTRIES, len(entry).to_bytes(2, "big") + entry)
            h = merkle.leaf_hash(entry)
            add(0, h)
            self.border.append(h, on_node)
        self.size += len(entries)
        partial = {}
        for level in touched:
            edge = self.edges[level]
            if edge:
                n = self.counts[level]
                partial[TileId(level, n // TILE_WIDTH, n % TILE_WIDTH)] = bytes(edge)
        # Entries first, then tiles bottom-up: a crash leaves tiles behind entries, never ahead.
        for tid in sorted([*full, *partial], key=lambda t: (t.level, t.index, t.partial)):
            batch.files.append((tid.path(), full.get(tid) or partial[tid]))
        batch.retired = sorted(full, key=lambda t: (t.level, t.index))
        return batch

    # -- durable write (worker thread) ----------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Make a batch durable: temp files, fsync them in parallel, rename, fsync directories.

        Parallel fsyncs let the filesystem fold them into one journal commit, so a commit
        costs about two journal flushes however many tiles it touches.
        """
        staged: list[tuple[Path, Path, int]] = []
        dirs: set[Path] = set()
        try:
            for rel, data in batch.files:
                path = self.root / rel
                if not path.parent.is_dir():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    dirs.update(p for p in path.parents if p == self.root or self.root in p.parents)
                dirs.add(path.parent)
                tmp = path.with_name(path.name + TMP_SUFFIX)
                fd = files.open_temp(tmp, 0o444)
                staged.append((tmp, path, fd))
                files.write_all(fd, data)
            if self.durable:
                list(self._executor().map(os.fsync, [fd for _, _, fd in staged]))
        finally:
            for _, _, fd in staged:
                os.close(fd)
        for tmp, path, _ in staged:  # entries first, then tiles bottom-up (see stage)
            os.replace(tmp, path)
        if self.durable:
            list(self._executor().map(fsync_dir, sorted(dirs)))
        # Partials of a tile that is now full are no longer needed (tlog-tiles §Partial Tiles).
        for tid in batch.retired:
            _remove_partials(self.root / tid.path())

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="audit-fsync")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _lock(self) -> None:
        """One writer per log: an exclusive flock on the directory itself (no extra file)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RecoveryError(f"{self.root}: another writer has this audit log open") from None
        self._lock_fd = fd

    # -- recovery ---------------------------------------------------------------------------

    @classmethod
    def recover(cls, root: Path, durable: bool = True) -> TileStore:
        """Open a log directory, truncate a torn tail (with a warning) and rebuild the edge."""
        store = cls(root, durable)
        root.mkdir(parents=True, exist_ok=True)
        store._lock()
        try:
            _remove_temp_files(root)
            size, bundle = _entries_size(root)
            store.size = size
            store._repair(size, bundle)
            reader = tiles.TileReader(root, size)
            store.border = merkle.CompactRange.from_nodes(reader.node, size)
        except BaseException:
            store.close()
            raise
        return store

    def _repair(self, size: int, bundle: bytes) -> None:
        self.counts[ENTRIES] = size
        self.edges[ENTRIES] = bytearray(bundle)
        _drop_beyond(self.root, ENTRIES, size)
        level, count = 0, size
        while True:
            self.counts[level] = count
            _drop_beyond(self.root, level, count)
            if count == 0:
                break
            self._repair_level(level, count)
            level += 1
            count //= TILE_WIDTH

    def _repair_level(self, level: int, count: int) -> None:
        """Recreate missing full tiles at the right edge and check/recreate the partial tile."""
        nfull, width = divmod(count, TILE_WIDTH)
        index = nfull - 1
        while index >= 0 and not (self.root / tiles.tile_path(level, index)).exists():
            log.warning("audit log %s: rebuilding missing tile %s", self.root, tiles.tile_path(level, index))
            files.write_atomic(
                self.root / tiles.tile_path(level, index), self._hashes(level, index, TILE_WIDTH), True, 0o444
            )
            index -= 1
        edge = self._hashes(level, nfull, width) if width else b""
        self.edges[level] = bytearray(edge)
        if not width:
            return
        rel = tiles.tile_path(level, nfull, width)
        path = self.root / rel
        if not path.exists():
            log.warning("audit log %s: rebuilding missing tile %s", self.root, rel)
            files.write_atomic(path, edge, True, 0o444)
        elif path.read_bytes() != edge:
            raise RecoveryError(f"{path}: does not match the entries below it; run 'portcullis audit verify'")

    def _hashes(self, level: int, index: int, width: int) -> bytes:
        """Level-``level`` hashes of tile ``index`` (``width`` of them), from the level below."""
        if level == 0:
            n = TILE_WIDTH if width == TILE_WIDTH else width
            rel = tiles.tile_path(ENTRIES, index, n)
            entries = tiles.decode_bundle((self.root / rel).read_bytes())
            return b"".join(merkle.leaf_hash(e) for e in entries[:width])
        out = []
        for i in range(index * TILE_WIDTH, index * TILE_WIDTH + width):
            data = (self.root / tiles.tile_path(level - 1, i)).read_bytes()
            out.append(merkle.fold_complete([data[j : j + 32] for j in range(0, TILE_BYTES, 32)]))
        return b"".join(out)


def _remove_partials(full_path: Path) -> None:
    pdir = full_path.with_name(full_path.name + ".p")
    if pdir.is_dir():
        for p in pdir.iterdir():
            p.unlink()
        pdir.rmdir()


def _remove_temp_files(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(TMP_SUFFIX):
                log.warning("audit log %s: removing unfinished write %s", root, Path(dirpath, name))
                Path(dirpath, name).unlink()


def _count_full(root: Path, level: int) -> int:
    """Number of consecutive full tiles from index 0 (exponential then binary search)."""

    def has(i: int) -> bool:
        return (root / tiles.tile_path(level, i)).exists()

    if not has(0):
        return 0
    hi = 1
    while has(hi):
        hi *= 2
    lo = hi // 2  # has(lo) and not has(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if has(mid) else (lo, mid)
    return hi


def _partial_widths(root: Path, level: int, index: int) -> list[int]:
    pdir = root / (tiles.tile_path(level, index) + ".p")
    if not pdir.is_dir():
        return []
    return sorted((int(p.name) for p in pdir.iterdir() if p.name.isdigit()), reverse=True)


def _entries_size(root: Path) -> tuple[int, bytes]:
    """Entries durably present: full bundles plus the widest partial bundle that decodes."""
    nfull = _count_full(root, ENTRIES)
    for width in _partial_widths(root, ENTRIES, nfull):
        path = root / tiles.tile_path(ENTRIES, nfull, width)
        data = path.read_bytes()
        try:
            if len(tiles.decode_bundle(data)) == width:
                return nfull * TILE_WIDTH + width, data
        except tiles.TileFormatError:
            pass
        log.warning("audit log %s: torn entry bundle %s truncated away", root, path)
        path.unlink()
    return nfull * TILE_WIDTH, b""


def _drop_beyond(root: Path, level: int, count: int) -> None:
    """Delete tiles of a level that lie beyond ``count`` hashes: an unacknowledged torn tail."""
    nfull, width = divmod(count, TILE_WIDTH)
    base = root / "tile" / ("entries" if level == ENTRIES else str(level))
    for dirpath, _, names in os.walk(base):
        for name in names:
            path = Path(dirpath, name)
            tid = tiles.parse_tile_path(path.relative_to(root).as_posix())
            if tid is None or tid.level != level:
                continue
            beyond = tid.index > nfull or (tid.index == nfull and (not tid.partial or tid.width > width))
            if beyond:
                log.warning("audit log %s: dropping torn tail %s", root, tid.path())
                path.unlink()
