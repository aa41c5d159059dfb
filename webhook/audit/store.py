"""The log directory on disk: staging batches into tile files, durable writes, recovery.

Owned by ``log.AuditLog``'s writer task: ``stage`` runs on the event loop (cheap, in memory),
``write`` runs in a worker thread (file I/O and fsync). ``recover`` (see ``recovery``) reopens
after a crash. Checkpoint files are replaced atomically (temp + fsync + rename + fsync of the
directory); tiles and bundles are new names written once, made durable before any record they
hold is acknowledged or any checkpoint covers them.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webhook import files
from webhook.audit import merkle, note, recovery, tiles
from webhook.audit.tiles import ENTRIES, TILE_WIDTH, TileId

log = logging.getLogger("portcullis.audit")
HASH = merkle.HASH_SIZE
_DIGEST = type(hashlib.sha256()).digest
_LEAF_PREFIX = b"\x00".__add__  # RFC 9162 §2.1.1: leaf hash = SHA-256(0x00 ‖ entry)
TILE_BYTES = TILE_WIDTH * HASH
TMP_SUFFIX = files.TMP_SUFFIX


RecoveryError = recovery.RecoveryError


def write_atomic(path: Path, data: bytes, durable: bool, mode: int = 0o444) -> None:
    """``files.write_atomic`` (temp + fsync + rename + fsync of the directory and of any directory
    it created), read-only by default: after a power loss the file is whole, old or new, and its
    name does not vanish."""
    files.write_atomic(path, data, durable, mode)


def _create(path: Path) -> int:
    """A new tile or bundle file, read-only once closed. A name already taken can only be a
    leftover above the newest checkpoint (recovery moved any such file aside)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
    except PermissionError:  # a read-only leftover of an unacknowledged write (not as root)
        path.unlink()
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)


fsync_dir = files.fsync_dir


@dataclass
class Batch:
    """Files one group commit must make durable, in write order, and partials it retires."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    retired: list[TileId] = field(default_factory=list)


class TileStore:
    """The right edge of the tree in memory plus the files under ``root``.

    Appends make only entry bundles durable (what an acknowledgement promises); the tiles above
    them are computed in memory, one whole tile at a time, and written by ``flush_tiles`` before
    a checkpoint signs them. A crash in between loses no information: tiles are a function of the
    entries, and reopening rebuilds those above the newest checkpoint.
    """

    def __init__(self, root: Path, durable: bool = True) -> None:
        self.root = root
        self.durable = durable
        self.size = 0
        self.counts: dict[int, int] = {}  # level -> stored hashes (or entries) so far
        self.edges: dict[int, bytearray] = {}  # level -> contents of its partial tile
        self._pool: ThreadPoolExecutor | None = None
        self._lock_fd: int | None = None
        self.floor: recovery.Floor | None = None  # the newest signed checkpoint at open
        self.signed_sizes: list[int] = []  # sizes of signed checkpoints, ascending
        self._unflushed: dict[TileId, bytes] = {}  # full tiles not yet written
        self._flushed: dict[int, int] = {}  # level -> hash count of the last tiles written
        self._dirs: set[Path] = set()  # directories known to exist
        self._bundle_partials: set[int] = set()  # entry bundles with partials on disk

    # -- staging (event loop) -------------------------------------------------------------

    def stage(self, entries: list[bytes]) -> Batch:
        """Add entries to the in-memory tree; return the bundle files that make them durable."""
        batch = Batch()
        edge = self.edges.setdefault(ENTRIES, bytearray())
        n = self.counts.get(ENTRIES, 0)
        i = 0
        while i < len(entries):
            chunk = entries[i : i + TILE_WIDTH - n % TILE_WIDTH]
            edge += tiles.bundle_body(chunk)
            n += len(chunk)
            i += len(chunk)
            if n % TILE_WIDTH == 0:
                tid = TileId(ENTRIES, n // TILE_WIDTH - 1)
                batch.files.append((tid.path(), bytes(edge)))
                if tid.index in self._bundle_partials:  # else there is nothing to retire
                    self._bundle_partials.discard(tid.index)
                    batch.retired.append(tid)
                edge.clear()
        if n % TILE_WIDTH:
            batch.files.append((tiles.tile_path(ENTRIES, n // TILE_WIDTH, n % TILE_WIDTH), bytes(edge)))
            self._bundle_partials.add(n // TILE_WIDTH)
        self.counts[ENTRIES] = n
        self._push(0, tiles.entry_leaf_hashes(entries))
        self.size += len(entries)
        return batch

    def _push(self, level: int, hashes: bytes) -> None:
        """Append hashes to a level's edge; each tile they fill is kept and folded one up."""
        edge = self.edges.setdefault(level, bytearray())
        n = self.counts.get(level, 0)
        pos, total = 0, len(hashes) // HASH
        tops = []
        while pos < total:
            take = min(total - pos, TILE_WIDTH - n % TILE_WIDTH)
            edge += hashes[pos * HASH : (pos + take) * HASH]
            n += take
            pos += take
            if n % TILE_WIDTH == 0:
                tile = bytes(edge)
                self._unflushed[TileId(level, n // TILE_WIDTH - 1)] = tile
                tops.append(tiles.fold(tile))
                edge.clear()
        self.counts[level] = n
        if tops:
            self._push(level + 1, b"".join(tops))

    def root_hash(self) -> bytes:
        """Root hash of the tree over every staged entry (RFC 9162 §2.1.1), from the edges."""
        return merkle.CompactRange.from_nodes(self._edge_node, self.size).root()

    def _edge_node(self, height: int, index: int) -> bytes:
        level, k = divmod(height, tiles.TILE_HEIGHT)
        first = (index << k) - (self.counts.get(level, 0) // TILE_WIDTH) * TILE_WIDTH
        data = bytes(self.edges[level][first * HASH : (first + (1 << k)) * HASH])
        return merkle.fold_complete([data[j : j + HASH] for j in range(0, len(data), HASH)])

    def flush_tiles(self) -> Batch:
        """The tiles not yet on disk for the current size: full ones filled since the last
        flush, and each level's partial tile (the width a checkpoint of this size names)."""
        batch = Batch()
        for tid in sorted(self._unflushed, key=lambda t: (t.level, t.index)):
            batch.files.append((tid.path(), self._unflushed[tid]))
            batch.retired.append(tid)
        self._unflushed = {}
        for level, n in sorted(self.counts.items()):
            if level >= 0 and n % TILE_WIDTH and self._flushed.get(level) != n:
                batch.files.append((tiles.tile_path(level, n // TILE_WIDTH, n % TILE_WIDTH), bytes(self.edges[level])))
            self._flushed[level] = n
        return batch

    # -- durable write (worker thread) ----------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Make a batch durable: write each file under its final (new) name, then fsync the
        files and their directories together, so the filesystem folds them into one journal
        commit. Nothing is acknowledged before this returns; a crash before that can leave a
        torn file, which is above every checkpoint and is quarantined on reopen.

        With the accelerator built, the whole sequence is one C call (``write_group``) holding
        no GIL: run from a worker thread, the Python version needs the GIL back after each of
        its system calls, and waits for the event loop's thread each time.
        """
        paths, dirs = self._targets(batch)
        native = getattr(tiles._accel, "write_group", None)  # absent in an accelerator built before it
        if native is not None:
            native(list(map(os.fsencode, paths)), [data for _, data in batch.files],
                   list(map(os.fsencode, sorted(dirs))), self.durable)  # fmt: skip
            return
        fds: list[int] = []
        try:
            for path, (_, data) in zip(paths, batch.files, strict=True):
                fd = _create(path)
                fds.append(fd)
                files.write_all(fd, data)
            if self.durable:
                dfds = [os.open(d, os.O_RDONLY | os.O_DIRECTORY) for d in sorted(dirs)]
                try:
                    self._each(os.fsync, fds + dfds)
                finally:
                    for fd in dfds:
                        os.close(fd)
        finally:
            for fd in fds:
                os.close(fd)

    def _targets(self, batch: Batch) -> tuple[list[Path], set[Path]]:
        """The batch's paths, and the directories to fsync: theirs, and any created for them."""
        paths: list[Path] = []
        dirs: set[Path] = set()
        for rel, _ in batch.files:
            path = self.root / rel
            if path.parent not in self._dirs:
                if not path.parent.is_dir():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    dirs.update(p for p in path.parents if p == self.root or self.root in p.parents)
                self._dirs.add(path.parent)
            dirs.add(path.parent)
            paths.append(path)
        return paths, dirs

    def retire(self, retired: list[TileId]) -> None:
        """Remove partials of tiles now full and durable (tlog-tiles §Partial Tiles) except
        those a checkpoint named: they stay, as every file a checkpoint covers. Called once
        every earlier write has completed, so no partial of these tiles is still being made."""
        for tid in retired:
            _remove_partials(self.root / tid.path(), self._signed_widths(tid))

    def _signed_widths(self, tid: TileId) -> set[int]:
        span = TILE_WIDTH ** (tid.level + 1 if tid.level >= 0 else 1)
        first, last = tid.index * span, (tid.index + 1) * span
        lo = bisect.bisect_left(self.signed_sizes, first)
        hi = bisect.bisect_left(self.signed_sizes, last)
        step = span // TILE_WIDTH
        return {(s - first) // step for s in self.signed_sizes[lo:hi]}

    def _each(self, fn: Callable[[Any], None], items: list[Any]) -> None:
        """fsync several at once, so one journal commit serves them all: the rest on the pool,
        the first right here (one thread hand-off fewer, under the GIL that counts)."""
        if len(items) == 1:
            fn(items[0])
            return
        others = [self._executor().submit(fn, item) for item in items[1:]]
        fn(items[0])
        for f in others:
            f.result()

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
    def recover(
        cls, root: Path, durable: bool = True, verifier: note.Verifier | None = None, origin: str | None = None
    ) -> TileStore:
        """Open a log directory after a crash; raises ``RecoveryError`` (changing nothing) if
        anything a signed checkpoint covers is missing or altered (see ``recovery``), or if its
        checkpoints name another ``origin`` than the writer's (a log keeps one origin)."""
        store = cls(root, durable)
        root.mkdir(parents=True, exist_ok=True)
        store._lock()
        try:
            floor, damage, sizes = recovery.load_floor(root, verifier)
            if floor is not None and origin is not None and floor.origin != origin:
                raise RecoveryError(
                    f"{root}: its checkpoints are signed for origin {floor.origin!r}, but this writer's origin is "
                    f"{origin!r}; a log keeps one origin: configure {floor.origin!r}, or use a new directory "
                    "(nothing was changed)"
                )
            plan = recovery.inspect(root, floor)
            plan.damage[:0] = damage
            if floor is None and verifier is not None and plan.size:
                plan.damage.append(
                    f"{plan.size} entries on disk but no signed checkpoint: a log signs its empty tree when "
                    "it is created, so its checkpoints were deleted (or it was written without a key: "
                    "move it aside and start a new log)"
                )
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
        if plan.size % TILE_WIDTH:
            self._bundle_partials.add(plan.size // TILE_WIDTH)
        for tid in sorted(plan.rebuild, key=lambda t: (t.level, t.index)):
            log.warning("audit log %s: rebuilding missing tile %s above the signed checkpoint", root, tid.path())
            write_atomic(root / tid.path(), self._hashes(tid.level, tid.index, tid.width), self.durable)
        for rel, data in plan.restore:
            log.warning("audit log %s: restoring %s from the newest signed checkpoint", root, rel)
            write_atomic(root / rel, data, self.durable, 0o644)
        level, count = 0, plan.size
        while True:
            self.counts[level] = self._flushed[level] = count
            if count == 0:
                break
            nfull, width = divmod(count, TILE_WIDTH)
            self.edges[level] = bytearray(self._hashes(level, nfull, width) if width else b"")
            level += 1
            count //= TILE_WIDTH

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
        if _width(p.name) and int(p.name) not in keep and full.startswith(p.read_bytes()):
            p.unlink()


def _partial_widths(root: Path, level: int, index: int) -> list[int]:
    pdir = root / (tiles.tile_path(level, index) + ".p")
    if not pdir.is_dir():
        return []
    return sorted((int(p.name) for p in pdir.iterdir() if _width(p.name)), reverse=True)


def _width(name: str) -> bool:
    """Whether a file in a ``.p/`` directory is named as a partial's width (ASCII digits only:
    ``'²'.isdigit()`` is true, yet ``int`` refuses it, and the writer must not stop on it)."""
    return tiles.decimal_name(name) and 0 < int(name) < TILE_WIDTH
