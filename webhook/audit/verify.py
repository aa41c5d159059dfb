"""Full verification of a log directory: recompute every hash, check every file and signature.

Called by ``portcullis audit verify`` (and reports). Streams bundle by bundle, so memory stays
flat; each problem carries the first leaf index it affects, so the earliest one is "the first
bad place".
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from webhook import errors
from webhook.audit import freshness, layout, merkle, note, publish, record_workers, records, tiles
from webhook.audit.tiles import ENTRIES, TILE_WIDTH

CHECKPOINT = layout.CHECKPOINT
HISTORY = layout.HISTORY
QUARANTINE = layout.QUARANTINE
_NOWHERE = 1 << 64  # a problem not tied to one leaf sorts after every located one
# Fewer full bundles than this are checked in this process: forking workers costs more than
# checking a few thousand records (about 0.5 ms per bundle) saves.
PARALLEL_MIN_BUNDLES = 16


@dataclass(frozen=True)
class Problem:
    position: int  # first leaf index affected (or _NOWHERE)
    message: str
    span: int = 1  # leaves it may concern: 1 is exact; wider ones rank after exact ones inside them
    derived: int = 1  # 0 for entry bundles: at the same place, tiles (derived from them) rank after
    record: bool = False  # about records or checkpoints themselves: never a crash artefact

    def rank(self) -> tuple[int, int, int, str]:
        return (self.position + self.span - 1, self.span, self.derived, self.message)


@dataclass
class Result:
    directory: Path
    size: int = 0
    root: bytes = merkle.EMPTY_ROOT
    origin: str | None = None
    checkpoint_size: int | None = None
    checkpoints_checked: int = 0
    cosigners: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    anchors: list[freshness.Anchor] = field(default_factory=list)
    record_jobs: int = 0  # record-check workers beside this process (1: none, all here; 0: no check)

    @property
    def anchored(self) -> bool:
        """Whether something outside the directory vouches for the log's size (freshness)."""
        return bool(self.anchors)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, position: int, message: str, span: int = 1, derived: int = 1, record: bool = False) -> None:
        self.problems.append(Problem(position, message, span, derived, record))

    def settle_unsigned_tail(self, signed: int) -> None:
        """Missing, torn or extra files wholly above the newest signed checkpoint are what a
        crash mid-append leaves (the writer quarantines or rebuilds them on open): warnings."""
        keep = []
        for p in self.problems:
            if p.position != _NOWHERE and p.position + p.span > signed and not p.record:
                self.warnings.append(f"above the newest checkpoint (size {signed}), unsigned: {p.message}")
            else:
                keep.append(p)
        self.problems = keep

    def ordered(self) -> list[Problem]:
        return sorted(self.problems, key=Problem.rank)

    def first(self) -> Problem | None:
        return min(self.problems, key=Problem.rank) if self.problems else None


class _Files:
    """Every file of the log directory, classified (``layout``); foreign ones become problems."""

    def __init__(self, root: Path, result: Result) -> None:
        self.tiles: dict[tuple[int, int], dict[int, Path]] = defaultdict(dict)
        self.history: dict[int, Path] = {}
        if (root / QUARANTINE).is_dir() and not (root / QUARANTINE).is_symlink():
            kept = sum(len(f) for _, _, f in os.walk(root / QUARANTINE))
            result.warnings.append(f"{QUARANTINE}/: {kept} file(s) cut from torn tails on reopen (not verified)")
        for entry in layout.walk(root):
            if entry.kind == "foreign":
                result.add(_NOWHERE, f"{entry.rel}: {entry.why}")
            elif entry.tile is not None:
                self.tiles[(entry.tile.level, entry.tile.index)][entry.tile.width] = root / entry.rel
            elif entry.kind == "unfinished":
                result.warnings.append(f"{entry.rel}: unfinished write from a crash (ignored)")
            elif entry.kind == "history":
                self.history[int(Path(entry.rel).name)] = root / entry.rel


class _TreeCheck:
    """Recomputes tiles level by level as leaves stream in, comparing with stored files."""

    def __init__(self, root: Path, files: _Files, result: Result, sizes: set[int]) -> None:
        self.root, self.files, self.result = root, files, result
        self.border = merkle.CompactRange()
        self.bufs: dict[int, bytearray] = defaultdict(bytearray)
        self.counts: dict[int, int] = defaultdict(int)
        self.sizes = sizes
        self.roots: dict[int, bytes] = {}

    def root_of(self, size: int) -> bytes | None:
        return merkle.EMPTY_ROOT if size == 0 else self.roots.get(size)

    def leaves(self, hashes: bytes) -> None:
        """Leaf hashes of one bundle (concatenated); a whole aligned tile is checked and
        folded in one go."""
        start = self.border.size
        count = len(hashes) // 32
        if count != TILE_WIDTH or start % TILE_WIDTH:
            for j in range(0, len(hashes), 32):
                self.leaf(hashes[j : j + 32])
            return
        for size in self.sizes:
            if start < size < start + TILE_WIDTH:  # a checkpoint inside this tile
                part = self.border.copy()
                for j in range(0, (size - start) * 32, 32):
                    part.append(hashes[j : j + 32])
                self.roots[size] = part.root()
        self.counts[0] += TILE_WIDTH
        self._compare(0, start // TILE_WIDTH, hashes, full=True)
        top = tiles.fold(hashes)
        self._push(1, top)
        self.border.append_node(tiles.TILE_HEIGHT, top, self._on_node)
        if self.border.size in self.sizes:
            self.roots[self.border.size] = self.border.root()

    def leaf(self, h: bytes) -> None:
        self._push(0, h)
        self.border.append(h, self._on_node)
        if self.border.size in self.sizes:
            self.roots[self.border.size] = self.border.root()

    def _on_node(self, height: int, index: int, h: bytes) -> None:
        if height % tiles.TILE_HEIGHT == 0:
            self._push(height // tiles.TILE_HEIGHT, h)

    def _push(self, level: int, h: bytes) -> None:
        buf = self.bufs[level]
        buf += h
        self.counts[level] += 1
        if len(buf) == TILE_WIDTH * 32:
            self._compare(level, self.counts[level] // TILE_WIDTH - 1, bytes(buf), full=True)
            buf.clear()

    def finish(self) -> None:
        for level, buf in list(self.bufs.items()):
            if buf:
                index, width = divmod(self.counts[level], TILE_WIDTH)
                stored = self.files.tiles.get((level, index), {})
                if not {width, TILE_WIDTH} & set(stored):
                    rel = tiles.tile_path(level, index, width)
                    served = max((w for w in stored if w < width), default=0)  # hashes still served
                    self._problem(level, index, served, f"{rel}: missing (the right edge of the tree)")
                self._compare(level, index, bytes(buf), full=False)
        levels = {lvl for lvl, _ in self.files.tiles if lvl >= 0}
        for level in sorted(levels):
            done = self.counts.get(level, 0) // TILE_WIDTH + (1 if self.counts.get(level, 0) % TILE_WIDTH else 0)
            for (lvl, index), widths in sorted(self.files.tiles.items()):
                if lvl == level and index >= done:
                    for path in widths.values():
                        self._problem(level, index, 0, f"{self._rel(path)}: tile beyond the log's entries", True)

    def _compare(self, level: int, index: int, data: bytes, full: bool) -> None:
        stored = self.files.tiles.get((level, index), {})
        if len(stored) == 1 and full:  # the common case: one full tile
            path = stored.get(TILE_WIDTH)
            if path is not None and _head(path, len(data)) == data:
                return
        got = {w: _head(p, w * 32) for w, p in stored.items() if w * 32 <= len(data)}
        # Hashes still served by a whole, matching file: a torn (short) file loses only beyond them.
        served = max((w for w, g in got.items() if g == data[: w * 32]), default=0)
        if full and TILE_WIDTH not in stored:
            self._problem(level, index, served, f"{tiles.tile_path(level, index)}: full tile missing")
        for width, path in sorted(stored.items()):
            if width * 32 > len(data):
                self._problem(level, index, len(data) // 32, f"{self._rel(path)}: wider than the log's entries")
                continue
            want, have = data[: width * 32], got[width]
            if have == want:
                continue
            j = next((i for i in range(len(have) // 32) if _differs(have, want, i)), None)
            if j is None:  # a prefix of what it should hold: torn by a crash, or truncated
                j = max(len(have) // 32, served)
            self._problem(level, index, j, f"{self._rel(path)}: hash {j} does not match the entries")

    def _problem(self, level: int, index: int, j: int, msg: str, whole_tile: bool = False) -> None:
        first = (index * TILE_WIDTH + j) * TILE_WIDTH**level
        span = TILE_WIDTH ** (level + 1 if whole_tile else level)
        where = f"leaf {first}" if span == 1 else f"leaves {first}..{first + span - 1}"
        self.result.add(first, f"{msg} ({where})", span)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def key_for(directory: Path, keys: Sequence[note.Verifier]) -> note.Verifier:
    """The log key to verify ``directory`` with: the only one given, or the one named after the
    checkpoint's origin. Several keys and none of that name is the caller's mistake; guessing one
    would report a sound log as forged, so it is an error naming the origin."""
    if len(keys) == 1:
        return keys[0]
    try:
        origin = note.read_note(directory / CHECKPOINT, CHECKPOINT).decode("utf-8").split("\n", 1)[0]
    except (OSError, UnicodeDecodeError, note.NoteError):
        origin = ""
    for key in keys:
        if key.name == origin:
            return key
    names = ", ".join(sorted(k.name for k in keys)) or "none"
    raise errors.InputError(f"{directory}: no log key is named after its origin {origin!r} (keys given: {names})")


def verify(
    root: Path,
    log_key: note.Verifier | None,
    witness_keys: Sequence[note.Verifier] = (),
    required: int = 0,
    check_records: bool = True,
    published: Sequence[Path] = (),
    anchors: freshness.Anchors | None = None,
    jobs: int = 1,
) -> Result:
    """Verify one log directory; never raises for tampering (it is in ``Result.problems``).

    ``published`` are directories the log copies its checkpoints to (``publish.py``): a copy
    larger than the log, or with another root, shows the whole log was truncated or rewritten.
    ``anchors`` adds trusted checkpoints and a known size; ``Result.anchors`` says which held.
    ``jobs`` > 1 checks records in that many forked workers while this process checks the tree
    (``record_workers``), when the log has ``PARALLEL_MIN_BUNDLES`` full bundles or more; the
    reports are the same as with 1. A worker that fails raises ``errors.AuditWorkerError``.
    """
    anchors = anchors or freshness.Anchors()
    published = [*published, *anchors.published]
    result = Result(root)
    if not root.is_dir():
        result.add(_NOWHERE, f"{root}: not a directory")
        return result
    files = _Files(root, result)
    checkpoints = _load_checkpoints(root, files, log_key, result)
    external = [("published", *pc) for pc in _load_published(published, log_key, result)]
    trusted, bad = freshness.load_trusted(anchors.trusted, log_key, result.origin)
    for msg in bad:
        result.add(_NOWHERE, msg)
    external += [("trusted", *tc) for tc in trusted]
    checkpoints += [(where, cp) for _, where, cp in external]
    tree = _TreeCheck(root, files, result, {cp.size for _, cp in checkpoints})
    _check_entries(root, files, tree, result, check_records, jobs)
    tree.finish()
    result.size = tree.border.size
    result.root = tree.border.root()
    _check_roots(checkpoints, tree, result)
    if checkpoints:
        result.settle_unsigned_tail(max(cp.size for _, cp in checkpoints))
    cosigners = [k for k in witness_keys if k.sig_type == note.SIG_COSIGNATURE_V1]  # never the log's key
    cosigned = _check_latest(root, cosigners, required, result)
    latest = _latest_size(root, result)
    found, bad = freshness.assess(external, tree.root_of, result.size, latest, cosigned, anchors.min_size)
    result.anchors = found
    for msg in bad:
        result.add(_NOWHERE, msg, record=True)
    if anchors.require and not found:
        result.add(_NOWHERE, freshness.UNANCHORED, record=True)
    return result


def _latest_size(root: Path, result: Result) -> int | None:
    """Size of the checkpoint the witnesses cosigned (``checkpoint`` itself), if it verified."""
    try:
        text = note.parse_note(note.read_note(root / CHECKPOINT, CHECKPOINT), CHECKPOINT).text
        return note.parse_checkpoint(text).size
    except (OSError, note.NoteError):
        return result.checkpoint_size


RecordCheck = Callable[[int, str, bytes, list[tuple[int, int]]], None]


def _check_entries(root: Path, files: _Files, tree: _TreeCheck, result: Result, check_records: bool, jobs: int) -> None:
    bundles = sorted(i for (lvl, i) in files.tiles if lvl == ENTRIES)
    if not check_records:
        _walk_entries(root, files, tree, result, bundles, None)
        return
    full = sum(1 for b in bundles if TILE_WIDTH in files.tiles[(ENTRIES, b)])
    workers = min(jobs, full)

    def here(index: int, rel: str, data: bytes, spans: list[tuple[int, int]]) -> None:
        for i, exc in records.bad_records(tiles.split_bundle(data)):  # the entries at ``spans``
            p = spans[i][0]
            result.add(index + i, f"entry {index + i} ({rel} byte {p - 2}): {exc}", record=True)

    # Forking while other threads run could copy a lock one of them holds: one process then.
    if workers <= 1 or full < PARALLEL_MIN_BUNDLES or threading.active_count() > 1:
        result.record_jobs = 1
        _walk_entries(root, files, tree, result, bundles, here)
        return
    marks: list[tuple[int, int, str]] = []  # per bundle: where its reports go, first index, file
    with record_workers.Pool(workers) as pool:

        def deal(index: int, rel: str, data: bytes, spans: list[tuple[int, int]]) -> None:
            at = len(result.problems)
            if pool.try_submit(data):
                marks.append((at, index, rel))
            else:  # every worker is busy: check it here rather than wait
                here(index, rel, data, spans)

        _walk_entries(root, files, tree, result, bundles, deal)
        found = pool.results()
        result.record_jobs = pool.jobs
    # Each bundle's record reports go exactly where checking it in this process puts them.
    problems, result.problems, done = result.problems, [], 0
    for (at, index, rel), bad in zip(marks, found, strict=True):
        result.problems += problems[done:at]
        done = at
        for i, p, msg in bad:
            result.add(index + i, f"entry {index + i} ({rel} byte {p - 2}): {msg}", record=True)
    result.problems += problems[done:]


def _walk_entries(
    root: Path, files: _Files, tree: _TreeCheck, result: Result, bundles: list[int], check: RecordCheck | None
) -> None:
    index = bundle = 0
    while True:
        widths = files.tiles.get((ENTRIES, bundle), {})
        if not widths:
            break
        chosen = _widest_whole(root, widths, index, result)
        if chosen is None:
            return
        best, data, spans, hashes, rel = chosen
        if best < TILE_WIDTH and any(b > bundle for b in bundles):
            after = tiles.tile_path(ENTRIES, min(b for b in bundles if b > bundle))
            msg = f"{tiles.tile_path(ENTRIES, bundle)}: missing (only partial {rel} is left), yet {after} follows"
            result.add(index + len(spans), msg, derived=0)
        for width, path in widths.items():
            if width != best:
                _check_prefix(root, path, width, data, index, rel, result)
        if check is not None:
            check(index, rel, data, spans)
        tree.leaves(hashes)
        index += len(spans)
        if best < TILE_WIDTH:
            break
        bundle += 1
    later = [b for b in bundles if b > bundle]
    if later and not files.tiles.get((ENTRIES, bundle)):
        msg = f"{tiles.tile_path(ENTRIES, bundle)}: missing, yet {tiles.tile_path(ENTRIES, later[0])} follows"
        result.add(index, msg, derived=0)


def _widest_whole(
    root: Path, widths: dict[int, Path], index: int, result: Result
) -> tuple[int, bytes, list[tuple[int, int]], bytes, str] | None:
    """The widest file of one bundle that holds exactly the entries its name says. Each wider
    one that does not is a problem (torn or tampered), placed at its first entry no whole
    file holds: a crash leaves such a file only above what was acknowledged."""
    bad: list[tuple[int, str]] = []
    chosen = None
    for width in sorted(widths, reverse=True):
        rel = widths[width].relative_to(root).as_posix()
        try:
            data = tiles.read_bounded(widths[width], tiles.max_bundle_bytes(width))
            spans, hashes = tiles.scan_bundle(data)
        except tiles.TileFormatError as exc:
            bad.append((exc.count, f"{rel}: byte {exc.offset}: {exc}"))
            continue
        if len(spans) != width:
            bad.append((min(width, len(spans)), f"{rel}: holds {len(spans)} entries, name says {width}"))
            continue
        chosen = width, data, spans, hashes, rel
        break
    held = chosen[0] if chosen else 0
    for good, msg in bad:
        result.add(index + max(good, held), msg, derived=0)
    return chosen


def _check_prefix(root: Path, path: Path, width: int, data: bytes, index: int, rel: str, result: Result) -> None:
    """A narrower bundle of the same index must hold exactly the first ``width`` entries of the
    widest one. One that is torn or short loses no entry (the widest holds them), but a client
    of the size that named it reads it: it is placed at its last entry, so it is a problem once
    a checkpoint covers all of it (as recovery judges it) and a crash leftover before that."""
    mine_rel = path.relative_to(root).as_posix()
    try:
        got = tiles.read_bounded(path, tiles.max_bundle_bytes(width))
        mine = tiles.decode_bundle(got)
    except tiles.TileFormatError as exc:
        result.add(index + width - 1, f"{mine_rel}: torn or unreadable ({exc})", derived=0)
        return
    if data.startswith(got) and len(mine) == width:
        return
    entries = tiles.decode_bundle(data)
    j = next((i for i, (a, b) in enumerate(zip(mine, entries, strict=False)) if a != b), None)
    if j is None:
        msg = f"{mine_rel}: holds {len(mine)} entries, its name says {width}"
        result.add(index + width - 1, msg, derived=0)
        return
    msg = f"{mine_rel}: entry {index + j} differs from {rel} (leaf {index + j})"
    result.add(index + j, msg, derived=0)


def _load_checkpoints(
    root: Path, files: _Files, log_key: note.Verifier | None, result: Result
) -> list[tuple[str, note.Checkpoint]]:
    out = []
    sources: list[tuple[Path, int | None]] = []
    if os.path.lexists(root / CHECKPOINT):
        sources.append((root / CHECKPOINT, None))
    sources += [(p, n) for n, p in sorted(files.history.items())]
    for path, named in sources:
        rel = path.relative_to(root).as_posix()
        try:
            data = note.read_note(path, rel)
            if log_key is not None:
                cp, _ = note.open_checkpoint(data, log_key, rel)
            else:
                cp = note.parse_checkpoint(note.parse_note(data, rel).text, rel)
        except OSError as exc:
            result.add(_NOWHERE, f"{rel}: cannot read ({exc.strerror})")
            continue
        except note.NoteError as exc:
            result.add(_NOWHERE, str(exc))
            continue
        if named is not None and named != cp.size:
            result.add(_NOWHERE, f"{rel}: holds a checkpoint of size {cp.size}")
            continue
        if result.origin is None:
            result.origin = cp.origin
        elif cp.origin != result.origin:
            result.add(_NOWHERE, f"{rel}: origin {cp.origin!r}, expected {result.origin!r}")
        if named is None:
            result.checkpoint_size = cp.size
        out.append((rel, cp))
    if result.checkpoint_size is None and not os.path.lexists(root / CHECKPOINT):
        result.add(_NOWHERE, f"{CHECKPOINT}: missing")
    return out


def _load_published(
    dirs: Sequence[Path], log_key: note.Verifier | None, result: Result
) -> list[tuple[str, note.Checkpoint]]:
    out = []
    for d in dirs:
        if result.origin is None:
            result.add(_NOWHERE, f"{d}: cannot match a published checkpoint without the log's own")
            continue
        path = publish.checkpoint_path(d, result.origin)
        try:
            data = note.read_note(path, str(path))
            if log_key is not None:
                cp, _ = note.open_checkpoint(data, log_key, str(path))
            else:
                cp = note.parse_checkpoint(note.parse_note(data, str(path)).text, str(path))
        except OSError as exc:
            result.add(_NOWHERE, f"{path}: published checkpoint unreadable ({exc.strerror})")
            continue
        except note.NoteError as exc:
            result.add(_NOWHERE, str(exc))
            continue
        out.append((str(path), cp))
    return out


def _check_roots(checkpoints: list[tuple[str, note.Checkpoint]], tree: _TreeCheck, result: Result) -> None:
    good = [cp.size for _, cp in checkpoints if tree.root_of(cp.size) == cp.root]
    for rel, cp in checkpoints:
        if cp.size > result.size:
            msg = f"{rel}: signed size {cp.size} but the log holds {result.size} entries (records removed)"
            result.add(result.size, msg, cp.size - result.size, record=True)
            continue
        if tree.root_of(cp.size) != cp.root:
            below = max((s for s in good if s < cp.size), default=0)
            msg = f"{rel}: root of size {cp.size} does not match; a record in {below}..{cp.size - 1} was altered"
            result.add(below, msg, cp.size - below, record=True)
        result.checkpoints_checked += 1
    if result.checkpoint_size is not None:
        # A kept checkpoint newer than `checkpoint`: a crash between the two writes (or the
        # file rolled back) while the log still holds every signed record. Nothing is lost,
        # so it is a warning; the newest signed size is what the log is held to.
        latest = result.checkpoint_size
        newer = max(
            (cp for rel, cp in checkpoints if rel.startswith(HISTORY + "/")), key=lambda c: c.size, default=None
        )
        if newer is not None and newer.size > latest:
            result.warnings.append(
                f"{CHECKPOINT}: size {latest} is older than {HISTORY}/{newer.size}, which the log still "
                "holds (an interrupted checkpoint write; the writer restores it on open)"
            )
            result.checkpoint_size = newer.size


def _check_latest(
    root: Path,
    witness_keys: list[note.Verifier],
    required: int,
    result: Result,
) -> dict[str, int]:
    """Witness cosignatures on ``checkpoint`` (key -> cosignature time); k of n enforced."""
    if not required and not witness_keys:
        return {}
    try:
        signed = note.parse_note(note.read_note(root / CHECKPOINT, CHECKPOINT), CHECKPOINT)
        ok = note.verified_by(signed, list(witness_keys))
    except (OSError, note.NoteError) as exc:
        result.add(_NOWHERE, f"{CHECKPOINT}: cosignatures: {exc}")
        return {}
    result.cosigners = sorted(ok)
    need = required or len(witness_keys)
    if len(ok) < need:
        result.add(_NOWHERE, f"{CHECKPOINT}: {len(ok)} of {need} required witness cosignatures")
        return {}
    return ok


def _head(path: Path, size: int) -> bytes:
    """A tile file that should hold ``size`` bytes: at most one byte more is read (a longer
    file then differs from what it should hold, however long it is)."""
    with path.open("rb") as f:
        return f.read(size + 1)


def _differs(a: bytes, b: bytes, i: int) -> bool:
    return a[i * 32 : i * 32 + 32] != b[i * 32 : i * 32 + 32]
