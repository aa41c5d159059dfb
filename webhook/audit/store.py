"""The log directory on disk: staging batches into tile files, durable writes, recovery.

Owned by ``log.AuditLog``'s writer task: ``stage`` runs on the event loop (cheap, in memory),
``write`` runs in a worker thread (file I/O and fsync). ``recover`` rebuilds the right edge
after a crash. Every file is written as temp + fsync + rename, so a file is whole or absent.
"""

from __future__ import annotations

import bisect
import fcntl
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from webhook.audit import merkle, note, recovery, tiles
from webhook.audit.tiles import ENTRIES, TILE_WIDTH, TileId

log = logging.getLogger("portcullis.audit")
TILE_BYTES = TILE_WIDTH * merkle.HASH_SIZE
TMP_SUFFIX = ".tmp"


RecoveryError = recovery.RecoveryError


def write_atomic(path: Path, data: bytes, durable: bool, mode: int = 0o444) -> None:
    """temp + fsync + rename + fsync of the directory (and of any directory it created), so
    after a power loss the file is whole, old or new, and its name does not vanish."""
    created = []
    parent = path.parent
    while not parent.is_dir():
        created.append(parent)
        parent = parent.parent
    if created:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = _open_temp(tmp, mode)
    try:
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        for d in [path.parent, *(c.parent for c in created)]:
            fsync_dir(d)


def _open_temp(tmp: Path, mode: int) -> int:
    try:
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    except PermissionError:  # a read-only leftover from a crash (when not running as root)
        tmp.unlink()
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
        self.floor: recovery.Floor | None = None  # the newest signed checkpoint at open
        self.signed_sizes: list[int] = []  # sizes of signed checkpoints, ascending

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
                fd = _open_temp(tmp, 0o444)
                staged.append((tmp, path, fd))
                _write_all(fd, data)
            if self.durable:
                list(self._executor().map(os.fsync, [fd for _, _, fd in staged]))
        finally:
            for _, _, fd in staged:
                os.close(fd)
        for tmp, path, _ in staged:  # entries first, then tiles bottom-up (see stage)
            os.replace(tmp, path)
        if self.durable:
            list(self._executor().map(fsync_dir, sorted(dirs)))
        # Partials of a tile that is now full are no longer needed (tlog-tiles §Partial Tiles),
        # except those a signed checkpoint named: they stay, as every file a checkpoint covers.
        for tid in batch.retired:
            _remove_partials(self.root / tid.path(), self._signed_widths(tid))

    def _signed_widths(self, tid: TileId) -> set[int]:
        span = TILE_WIDTH ** (tid.level + 1 if tid.level >= 0 else 1)
        first, last = tid.index * span, (tid.index + 1) * span
        lo = bisect.bisect_left(self.signed_sizes, first)
        hi = bisect.bisect_left(self.signed_sizes, last)
        step = span // TILE_WIDTH
        return {(s - first) // step for s in self.signed_sizes[lo:hi]}

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
    def recover(cls, root: Path, durable: bool = True, verifier: note.Verifier | None = None) -> TileStore:
        """Open a log directory after a crash; raises ``RecoveryError`` (changing nothing) if
        anything a signed checkpoint covers is missing or altered (see ``recovery``)."""
        store = cls(root, durable)
        root.mkdir(parents=True, exist_ok=True)
        store._lock()
        try:
            floor, damage, sizes = recovery.load_floor(root, verifier)
            plan = recovery.inspect(root, floor)
            plan.damage[:0] = damage
            plan.signed_sizes = sizes
            if plan.damage:
                raise recovery.refuse(root, plan)
            store._apply(plan)
        except BaseException:
            store.close()
            raise
        return store

    def _apply(self, plan: recovery.Plan) -> None:
        """Make the safe changes ``inspect`` planned: quarantine the torn tail, rebuild tiles
        missing above the floor, restore the checkpoint files; then rebuild the edge."""
        root = self.root
        self.floor = plan.floor
        self.signed_sizes = plan.signed_sizes
        recovery.quarantine(root, plan.quarantine, self.durable)
        self.size = plan.size
        self.counts[ENTRIES] = plan.size
        self.edges[ENTRIES] = bytearray(plan.bundle)
        for tid in sorted(plan.rebuild, key=lambda t: (t.level, t.index)):
            log.warning("audit log %s: rebuilding missing tile %s above the signed checkpoint", root, tid.path())
            write_atomic(root / tid.path(), self._hashes(tid.level, tid.index, tid.width), self.durable)
        for rel, data in plan.restore:
            log.warning("audit log %s: restoring %s from the newest signed checkpoint", root, rel)
            write_atomic(root / rel, data, self.durable, 0o644)
        level, count = 0, plan.size
        while True:
            self.counts[level] = count
            if count == 0:
                break
            nfull, width = divmod(count, TILE_WIDTH)
            self.edges[level] = bytearray(self._hashes(level, nfull, width) if width else b"")
            level += 1
            count //= TILE_WIDTH
        reader = tiles.TileReader(root, plan.size)
        self.border = merkle.CompactRange.from_nodes(reader.node, plan.size)

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


def _remove_partials(full_path: Path, keep: set[int]) -> None:
    """Retire unsigned partials of a full tile (only those whose bytes are its prefix)."""
    pdir = full_path.with_name(full_path.name + ".p")
    if not pdir.is_dir():
        return
    full = full_path.read_bytes()
    for p in pdir.iterdir():
        if p.name.isdigit() and int(p.name) not in keep and full.startswith(p.read_bytes()):
            p.unlink()


def _partial_widths(root: Path, level: int, index: int) -> list[int]:
    pdir = root / (tiles.tile_path(level, index) + ".p")
    if not pdir.is_dir():
        return []
    return sorted((int(p.name) for p in pdir.iterdir() if p.name.isdigit()), reverse=True)
