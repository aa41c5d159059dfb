"""Reopening a log directory after a crash: inspect first, change nothing unless it is safe.

Called by ``store.TileStore.recover`` (for ``log.AuditLog.open``). Recovery runs in two steps.
``inspect`` only reads: it finds the latest signed checkpoint (the *floor*), every entry and tile
file, and sorts what it sees into damage (anything the floor's tree needs that is missing,
torn or wrong) and a torn tail (files wholly above the floor). Any damage raises
``RecoveryError`` naming each problem and where, before a single file is touched. Only then
does ``apply`` move the torn tail into ``quarantine/<time>/`` inside the log directory (never
unlinking it) and write the missing right-edge tiles above the floor.

Invariant: no file whose contents a signed checkpoint covers is ever removed or rewritten.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from webhook import errors, files
from webhook.audit import layout, merkle, note, tiles
from webhook.audit.tiles import ENTRIES, TILE_WIDTH

log = logging.getLogger("portcullis.audit")
CHECKPOINT = layout.CHECKPOINT
HISTORY = layout.HISTORY
QUARANTINE = layout.QUARANTINE
TMP_SUFFIX = layout.TMP_SUFFIX
_HASH = merkle.HASH_SIZE


class RecoveryError(errors.AuditFormatError):
    """The log directory cannot be reopened safely (tampered with, or acknowledged data lost)."""


@dataclass(frozen=True, slots=True)
class Floor:
    """The newest signed checkpoint found in the directory: the log must still hold it."""

    size: int
    root: bytes
    source: str  # relative path of the file it was read from
    signed: bytes  # the note, to restore ``checkpoint`` or ``checkpoints/N`` from
    origin: str = ""
    # every other signed checkpoint found (size, root, file): the tree must hold each of them too
    older: tuple[tuple[int, bytes, str], ...] = ()


@dataclass
class Plan:
    """What ``inspect`` found: the entries on disk and the changes that are safe to make."""

    floor: Floor | None
    size: int = 0
    bundle: bytes = b""  # the entries of the partial bundle at the right edge
    damage: list[str] = field(default_factory=list)
    quarantine: list[str] = field(default_factory=list)  # relative paths, all above the floor
    rebuild: list[tiles.TileId] = field(default_factory=list)  # missing tiles above the floor
    restore: list[tuple[str, bytes]] = field(default_factory=list)  # checkpoint files to (re)write
    signed_sizes: list[int] = field(default_factory=list)  # every signed size found, ascending


class _Listing:
    """Every tile and bundle file, crash leftovers, and names no part of a log (``layout``)."""

    def __init__(self, root: Path) -> None:
        self.tiles: dict[tuple[int, int], dict[int, str]] = defaultdict(dict)
        self.leftovers: list[str] = []
        self.foreign: list[str] = []  # what verify calls tampering: the writer refuses too
        for entry in layout.walk(root):
            if entry.tile is not None:
                self.tiles[(entry.tile.level, entry.tile.index)][entry.tile.width] = entry.rel
            elif entry.kind == "unfinished":
                self.leftovers.append(entry.rel)
            elif entry.kind == "foreign":
                self.foreign.append(f"{entry.rel}: {entry.why}")

    def levels(self) -> set[int]:
        return {lvl for lvl, _ in self.tiles}


def load_floor(root: Path, verifier: note.Verifier | None) -> tuple[Floor | None, list[str], list[int]]:
    """The newest checkpoint in ``checkpoint`` and ``checkpoints/*``, and damage found.

    With a verifier, every checkpoint file must carry a valid log signature; a bad one is
    damage (the writer must not sign on top of a history it cannot vouch for).
    """
    damage: list[str] = []
    found: list[tuple[note.Checkpoint, str, bytes]] = []
    # Whatever is named ``checkpoint`` is read (a directory or a link there is damage, never
    # a file to overwrite); history names are ASCII decimals ('²'.isdigit(), yet int() refuses it).
    paths = [root / CHECKPOINT] if os.path.lexists(root / CHECKPOINT) else []
    hist = root / HISTORY
    if hist.is_dir():
        paths += sorted(p for p in hist.iterdir() if tiles.decimal_name(p.name) and p.is_file())
    for path in paths:
        rel = path.relative_to(root).as_posix()
        try:
            data = note.read_note(path, rel)
            if verifier is not None:
                cp, _ = note.open_checkpoint(data, verifier, rel)
            else:
                cp = note.parse_checkpoint(note.parse_note(data, rel).text, rel)
        except (OSError, note.NoteError) as exc:
            damage.append(f"{rel}: {exc}")
            continue
        if path.parent == hist and int(path.name) != cp.size:
            damage.append(f"{rel}: holds a checkpoint of size {cp.size}")
            continue
        found.append((cp, rel, data))
    sizes = sorted({f[0].size for f in found})
    if not found:
        return None, damage, sizes
    # The newest size wins; at equal sizes the history copy (it may carry more cosignatures).
    cp, rel, data = max(found, key=lambda f: (f[0].size, f[1] != CHECKPOINT))
    older = tuple((c.size, c.root, r) for c, r, _ in found if r != rel)
    return Floor(cp.size, cp.root, rel, data, cp.origin, older), damage, sizes


def inspect(root: Path, floor: Floor | None) -> Plan:
    """Read-only: the entries on disk, damage below the floor, the torn tail above it."""
    files = _Listing(root)
    plan = Plan(floor)
    signed = floor.size if floor else 0
    plan.quarantine += files.leftovers
    plan.damage += files.foreign
    _entries(root, files, plan, signed)
    top = max(plan.size, signed)
    levels = {lvl for lvl in files.levels() if lvl >= 0} | {0}
    levels |= {lvl for lvl in range(1, 64) if top >> (tiles.TILE_HEIGHT * lvl)}
    for level in sorted(levels):
        _level(root, files, plan, level, signed)
    if floor is not None and not plan.damage:
        _check_root(root, plan, floor, files)
    if floor is not None:
        _restore_checkpoints(root, plan, floor)
    return plan


def _covered(index: int, width: int, count: int) -> bool:
    """Whether a tile's hashes (or a bundle's entries) all lie inside a signed count."""
    return index * TILE_WIDTH + width <= count


def _entries(root: Path, files: _Listing, plan: Plan, signed: int) -> None:
    index = 0
    while True:  # whole bundles from 0, then the widest whole partial bundle
        widths = files.tiles.get((ENTRIES, index), {})
        if TILE_WIDTH in widths:
            got = _bundle_count(root, widths[TILE_WIDTH])
            if got == TILE_WIDTH:
                _check_partials(root, files, plan, index, signed, full=True)
                index += 1
                continue
            if _covered(index, TILE_WIDTH, signed):  # else a checkpoint's partial serves it
                where = _where(got, index, TILE_WIDTH)
                plan.damage.append(f"{widths[TILE_WIDTH]}: {where}; a signed checkpoint covers its entries")
                return
            plan.quarantine.append(widths[TILE_WIDTH])
        width = _check_partials(root, files, plan, index, signed, full=False)
        plan.size = index * TILE_WIDTH + width
        if width:
            plan.bundle = (root / files.tiles[(ENTRIES, index)][width]).read_bytes()
        break
    if plan.damage:
        return
    later = sorted(
        (b, rel) for (lvl, b), ws in files.tiles.items() if lvl == ENTRIES and b > index for rel in ws.values()
    )
    if plan.size >= signed:
        plan.quarantine += [rel for _, rel in later]  # beyond a gap above the floor: a torn tail
    elif later:
        plan.damage.append(
            f"{tiles.tile_path(ENTRIES, index)}: missing or incomplete, yet {later[0][1]} follows "
            f"(entries {plan.size}..{signed - 1} are covered by the signed checkpoint of size {signed})"
        )
    else:
        need = tiles.tile_path(ENTRIES, signed // TILE_WIDTH, signed % TILE_WIDTH or TILE_WIDTH)
        plan.damage.append(
            f"{need}: missing: entries {plan.size}..{signed - 1} are covered by the signed "
            f"checkpoint of size {signed} but are not on disk (acknowledged records were lost or removed)"
        )


def _check_partials(root: Path, files: _Listing, plan: Plan, index: int, signed: int, full: bool) -> int:
    """Check the partial bundles of ``index``; returns the widest whole one (0 if none)."""
    best = 0
    for width, rel in sorted(files.tiles.get((ENTRIES, index), {}).items(), reverse=True):
        if width == TILE_WIDTH:
            continue
        got = _bundle_count(root, rel)
        if got == width:
            best = max(best, width)
            continue
        if _covered(index, width, signed):
            plan.damage.append(f"{rel}: {_where(got, index, width)}; a signed checkpoint covers its entries")
        elif not full:
            plan.quarantine.append(rel)
    return best


def _bundle_count(root: Path, rel: str) -> int | str:
    """Entries in a bundle file, or the reason it does not decode."""
    try:
        width = tiles.parse_tile_path(rel)
        limit = tiles.max_bundle_bytes(width.width if width else TILE_WIDTH)
        return len(tiles.decode_bundle(tiles.read_bounded(root / rel, limit)))
    except tiles.TileFormatError as exc:
        return f"byte {exc.offset}: {exc}"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def _where(got: int | str, index: int, width: int) -> str:
    first = index * TILE_WIDTH
    if isinstance(got, str):
        return f"torn at {got} (entries {first}..{first + width - 1})"
    return f"holds {got} entries, its name says {width} (entries {first}..{first + width - 1})"


def _level(root: Path, files: _Listing, plan: Plan, level: int, signed: int) -> None:
    """Tiles of one level: missing ones below the floor are damage, above it rebuilt;
    tiles beyond the entries on disk are a torn tail."""
    span = TILE_WIDTH**level
    have, need = plan.size // span, signed // span
    nfull, width = divmod(have, TILE_WIDTH)
    _torn_tiles(root, files, plan, level, need)
    for k in range(nfull):
        stored = files.tiles.get((level, k), {})
        if TILE_WIDTH in stored:
            continue
        if _covered(k, TILE_WIDTH, need):
            plan.damage.append(f"{tiles.tile_path(level, k)}: missing, yet a signed checkpoint covers it")
        else:
            plan.rebuild.append(tiles.TileId(level, k))
    if width:
        stored = files.tiles.get((level, nfull), {})
        if TILE_WIDTH not in stored and width not in stored:
            if _covered(nfull, width, need):
                plan.damage.append(
                    f"{tiles.tile_path(level, nfull, width)}: missing, yet a signed checkpoint covers it"
                )
            else:
                plan.rebuild.append(tiles.TileId(level, nfull, width))
    k_need, w_need = divmod(need, TILE_WIDTH)
    missing = not {TILE_WIDTH, w_need} & set(files.tiles.get((level, k_need), {}))
    if w_need and missing and (k_need, w_need) != (nfull, width):
        rel = tiles.tile_path(level, k_need, w_need)
        plan.damage.append(f"{rel}: missing (nor is its full tile there), yet a signed checkpoint covers it")
    for (lvl, k), stored in sorted(files.tiles.items()):
        if lvl != level:
            continue
        for w, rel in sorted(stored.items()):
            beyond = k > nfull or (k == nfull and w > width)
            if beyond and _covered(k, w, need):
                plan.damage.append(f"{rel}: lies beyond the entries on disk, yet a signed checkpoint covers it")
            elif beyond:
                plan.quarantine.append(rel)


def _torn_tiles(root: Path, files: _Listing, plan: Plan, level: int, need: int) -> None:
    """A tile of the wrong length: damage if a checkpoint needs it, else a torn tail (a crash
    between creating it and writing it), set aside so it is rebuilt."""
    for (lvl, k), stored in files.tiles.items():
        if lvl != level:
            continue
        for w, rel in list(stored.items()):
            try:
                length = (root / rel).stat().st_size
            except OSError:
                length = -1
            if length == w * _HASH:
                continue
            if _covered(k, w, need):
                plan.damage.append(f"{rel}: {length} bytes, expected {w * _HASH}; a signed checkpoint covers it")
            else:
                plan.quarantine.append(rel)
                del stored[w]


class _ListedReader(tiles.TileReader):
    """Reads only the tiles ``inspect`` kept (not those it is about to set aside)."""

    def __init__(self, root: Path, size: int, files: _Listing) -> None:
        super().__init__(root, size)
        self.files = files

    def _read(self, level: int, index: int) -> bytes:
        count = self.size // TILE_WIDTH**level
        width = min(TILE_WIDTH, count - index * TILE_WIDTH)
        stored = self.files.tiles.get((level, index), {})
        rel = stored.get(TILE_WIDTH) or stored.get(width)
        if rel is None:
            raise tiles.TileFormatError(f"{tiles.tile_path(level, index, width)}: missing")
        return (self.root / rel).read_bytes()[: width * _HASH]


def _check_root(root: Path, plan: Plan, floor: Floor, files: _Listing) -> None:
    reader = _ListedReader(root, floor.size, files)
    try:
        ok = floor.size == 0 or merkle.root_at(reader.node, floor.size) == floor.root
    except tiles.TileFormatError as exc:
        plan.damage.append(f"{exc} (needed by the signed checkpoint of size {floor.size})")
        return
    if not ok:
        plan.damage.append(
            f"{floor.source}: root hash of size {floor.size} does not match the tiles on disk "
            "(records or tiles below it were altered)"
        )
        return
    # Every older signed checkpoint must be a prefix of the tree the newest one vouches for: one
    # that is not is a fork the log key signed, and the writer must not sign on top of it.
    roots: dict[int, bytes] = {}
    for size, signed_root, rel in sorted(floor.older):
        if size not in roots:
            roots[size] = merkle.root_at(reader.node, size) if size else merkle.EMPTY_ROOT
        if roots[size] != signed_root:
            plan.damage.append(
                f"{rel}: root hash of size {size} is not the tree that {floor.source} signs "
                "(the log key signed two different trees: a fork)"
            )


def _restore_checkpoints(root: Path, plan: Plan, floor: Floor) -> None:
    """``checkpoint`` must name the newest signed size and ``checkpoints/N`` must hold it. A
    crash between the two writes leaves only the history copy missing (``checkpoint`` is
    written first), and an older ``checkpoint`` is the file rolled back (or a crash under the
    old order): both are restored. A missing ``checkpoint`` is no crash's doing: damage."""
    latest = root / CHECKPOINT
    if not os.path.lexists(latest):
        plan.damage.append(
            f"{CHECKPOINT}: missing, yet {floor.source} is signed (the writer never removes it: deleted)"
        )
        return
    try:
        current = note.parse_checkpoint(note.parse_note(note.read_note(latest, CHECKPOINT)).text)
        stale = current.size < floor.size
    except (OSError, note.NoteError):
        stale = True
    if stale:
        plan.restore.append((CHECKPOINT, floor.signed))
    if not (root / HISTORY / str(floor.size)).exists():
        plan.restore.append((f"{HISTORY}/{floor.size}", floor.signed))


def refuse(root: Path, plan: Plan) -> RecoveryError:
    lines = "\n".join(f"  {d}" for d in plan.damage)
    return RecoveryError(
        f"{root}: the log is damaged below its signed checkpoint (or holds files no log has); refusing to "
        "append, nothing was "
        f"changed (run 'portcullis audit verify'):\n{lines}"
    )


def quarantine(root: Path, rels: list[str], durable: bool) -> Path | None:
    """Move files into ``quarantine/<UTC time>-<pid>/`` (same filesystem: an atomic rename)."""
    if not rels:
        return None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    base = root / QUARANTINE / f"{stamp}-{os.getpid()}"
    dirs: set[Path] = set()
    for rel in sorted(set(rels)):
        dest = base / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        log.warning("audit log %s: torn tail above the signed checkpoint: %s moved to %s", root, rel, dest)
        os.replace(root / rel, dest)
        dirs.update({dest.parent, (root / rel).parent})
    if durable:
        for d in sorted(dirs, key=lambda p: -len(p.parts)):
            _fsync_dir(d)
        for d in (base, root / QUARANTINE, root):
            _fsync_dir(d)
    return base


_fsync_dir = files.fsync_dir
