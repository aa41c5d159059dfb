"""C2SP tlog-tiles layout: tile and entry-bundle paths, bundle coding, tile reads.

Used by the writer (``log.py``) to place files, and by proofs and ``verify`` to read them.
Every path here is relative to the log directory and uses '/' separators, as the spec's URLs.
"""

from __future__ import annotations

import hashlib
import operator
import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from webhook.audit import merkle

try:  # optional C accelerator (built by ``pip install -e .`` when a compiler and libcrypto exist)
    from webhook.audit import _tilehash
except ImportError:  # not built: the pure-Python code below, which it must equal, is used
    _tilehash = None  # type: ignore[assignment]
_accel = _tilehash  # what the hashing below uses (tests set it to None to run the Python code)

TILE_WIDTH = 256
TILE_HEIGHT = 8  # log2(TILE_WIDTH): tile level L holds Merkle nodes of height 8 * L
MAX_ENTRY = 0xFFFF  # uint16 length prefix
ENTRIES = -1  # the pseudo-level of entry bundles in paths and parsed results


class TileFormatError(ValueError):
    """A tile or bundle file is malformed; ``offset`` is the first bad byte."""

    def __init__(self, message: str, offset: int = 0, count: int = 0) -> None:
        super().__init__(message)
        self.offset = offset
        self.count = count  # whole entries before the bad byte


@dataclass(frozen=True, slots=True)
class TileId:
    """One tile or bundle file: level (``ENTRIES`` for bundles), index, width (256 = full)."""

    level: int
    index: int
    width: int = TILE_WIDTH

    @property
    def partial(self) -> bool:
        return self.width < TILE_WIDTH

    def path(self) -> str:
        return tile_path(self.level, self.index, self.width)


def encode_index(index: int) -> str:
    """``1234067`` → ``x001/x234/067`` (zero-padded 3-digit segments, all but last 'x'-prefixed)."""
    if index < 0:
        raise ValueError(f"tile index {index} is negative")
    parts = []
    while True:
        parts.append(f"{index % 1000:03d}")
        index //= 1000
        if index == 0:
            break
    parts.reverse()
    return "/".join(["x" + p for p in parts[:-1]] + [parts[-1]])


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """Relative path of a tile (``level >= 0``) or entry bundle (``level == ENTRIES``)."""
    lvl = "entries" if level == ENTRIES else str(level)
    path = f"tile/{lvl}/{encode_index(index)}"
    if width < TILE_WIDTH:
        path += f".p/{width}"
    return path


# ASCII digits only: ``\d`` would take any Unicode digit, which ``int()`` reads too, so a file
# named ``000.p/2٠٠`` would pass for (and shadow) ``000.p/200``.
_TILE_RE = re.compile(r"tile/(entries|0|[1-9][0-9]?)/((?:x[0-9]{3}/)*[0-9]{3})(?:\.p/([1-9][0-9]{0,2}))?")


def decimal_name(name: str) -> bool:
    """A file name that is a canonical decimal in ASCII digits (a history checkpoint's size):
    ``'²'.isdigit()`` is true, yet ``int`` refuses it; ``007`` is not 7's name."""
    return name.isascii() and name.isdigit() and str(int(name)) == name


def parse_tile_path(rel: str) -> TileId | None:
    """The tile a relative path names, or None if it is not a canonical tile path."""
    match = _TILE_RE.fullmatch(rel)
    if match is None:
        return None
    lvl, idx, width = match.groups()
    level = ENTRIES if lvl == "entries" else int(lvl)
    if level > 63:
        return None
    index = int(idx.replace("x", "").replace("/", ""))
    w = int(width) if width else TILE_WIDTH
    if (width and w >= TILE_WIDTH) or encode_index(index) != idx:
        return None
    return TileId(level, index, w)


def max_bundle_bytes(width: int) -> int:
    """The most bytes an entry bundle of ``width`` entries can hold (each at the size limit)."""
    return width * (2 + MAX_ENTRY)


def read_bounded(path: Path, limit: int) -> bytes:
    """A file's bytes, refusing (``TileFormatError``) anything but a regular file of at most
    ``limit`` bytes, before reading it: a huge sparse file, or a FIFO that never ends, put
    among the log's files must be reported, not read into memory."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO must not wait
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TileFormatError("not a regular file")
        if st.st_size > limit:
            raise TileFormatError(f"{st.st_size} bytes, more than the {limit} it can hold", limit)
        return f.read(min(st.st_size, limit) + 1)  # not a buffer of the limit's size for every read


def tiles_for_size(size: int) -> Iterator[TileId]:
    """The right-edge tiles a tree of ``size`` needs, per level: last full tile and partial."""
    level = 0
    while True:
        span = TILE_WIDTH**level
        count = size // span  # stored hashes at this level
        if count == 0:
            return
        full, width = divmod(count, TILE_WIDTH)
        if width:
            yield TileId(level, full, width)
        level += 1


def encode_bundle_entry(entry: bytes) -> bytes:
    if len(entry) > MAX_ENTRY:
        raise TileFormatError(f"entry of {len(entry)} bytes exceeds the {MAX_ENTRY}-byte limit")
    return len(entry).to_bytes(2, "big") + entry


def decode_spans(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each entry of a bundle; raises ``TileFormatError`` at the first bad byte."""
    spans: list[tuple[int, int]] = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + 2 > end:
            raise TileFormatError(f"truncated length prefix of entry {len(spans)}", pos, len(spans))
        n = data[pos] << 8 | data[pos + 1]
        if pos + 2 + n > end:
            msg = f"entry {len(spans)} claims {n} bytes but only {end - pos - 2} remain"
            raise TileFormatError(msg, pos, len(spans))
        spans.append((pos + 2, n))
        pos += 2 + n
    return spans


def decode_bundle(data: bytes) -> list[bytes]:
    """Split an entry bundle into entries; raises ``TileFormatError`` at the first bad byte."""
    return [data[p : p + n] for p, n in decode_spans(data)]


def split_bundle(data: bytes) -> list[bytes]:
    """``decode_bundle`` in one C call when the accelerator is built (verify's record-check
    workers); a malformed bundle is left to the Python code, whose error names the byte. An
    accelerator built before ``split_bundle`` existed (not rebuilt since) is skipped."""
    if _accel is not None and hasattr(_accel, "split_bundle"):
        found = _accel.split_bundle(data)
        if found is not None:
            return found
    return decode_bundle(data)


_DIGEST = type(hashlib.sha256()).digest
_NODE_PREFIX = b"\x01".__add__
_FIRST = operator.itemgetter(0)
_LEAF_PREFIX = b"\x00".__add__


def leaf_hashes(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    """RFC 9162 leaf hashes SHA-256(0x00 ‖ entry) of a bundle's entries, concatenated.

    Each entry's length prefix is overwritten with 0x00 in a copy of the bundle, so every
    leaf is hashed straight from that buffer, with no per-entry copy or concatenation.
    """
    buf = bytearray(data)
    view = memoryview(buf)
    sha = hashlib.sha256
    out = []
    for p, n in spans:
        buf[p - 1] = 0
        out.append(sha(view[p - 1 : p + n]).digest())
    return b"".join(out)


def scan_bundle(data: bytes) -> tuple[list[tuple[int, int]], bytes]:
    """``decode_spans`` and ``leaf_hashes`` in one pass (verify's hot loop); raises
    ``TileFormatError`` at the first bad byte. The accelerator answers well-formed bundles;
    a malformed one is left to the Python code, whose error names the byte."""
    if _accel is not None:
        found = _accel.scan_bundle(data)
        if found is not None:
            return found
    return py_scan_bundle(data)


def entry_leaf_hashes(entries: list[bytes]) -> bytes:
    """RFC 9162 leaf hashes SHA-256(0x00 ‖ entry) of ``entries``, concatenated (the writer)."""
    if _accel is not None:
        return _accel.leaf_hashes(entries)
    return b"".join(map(_DIGEST, map(hashlib.sha256, map(_LEAF_PREFIX, entries))))


def bundle_body(entries: list[bytes]) -> bytes:
    """Entries each prefixed by its 2-byte big-endian length, as an entry bundle stores them."""
    if _accel is not None:
        return _accel.bundle(entries)
    return b"".join([len(e).to_bytes(2, "big") + e for e in entries])


def py_scan_bundle(data: bytes) -> tuple[list[tuple[int, int]], bytes]:
    """The pure-Python ``scan_bundle`` (the reference the accelerator is tested against)."""
    buf = bytearray(data)
    view = memoryview(buf)
    sha = hashlib.sha256
    spans: list[tuple[int, int]] = []
    out = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + 2 > end:
            raise TileFormatError(f"truncated length prefix of entry {len(spans)}", pos, len(spans))
        n = data[pos] << 8 | data[pos + 1]
        stop = pos + 2 + n
        if stop > end:
            msg = f"entry {len(spans)} claims {n} bytes but only {end - pos - 2} remain"
            raise TileFormatError(msg, pos, len(spans))
        spans.append((pos + 2, n))
        buf[pos + 1] = 0
        out.append(sha(view[pos + 1 : stop]).digest())
        pos = stop
    return spans, b"".join(out)


def fold(tile: bytes) -> bytes:
    """Root of the complete subtree over a full tile's hashes (a power of two of them):
    rounds of pairwise node hashes SHA-256(0x01 ‖ left ‖ right), RFC 9162 §2.1.1."""
    n = len(tile) // merkle.HASH_SIZE
    if _accel is not None and n and not n & (n - 1) and len(tile) % merkle.HASH_SIZE == 0:
        return _accel.fold(tile)
    return py_fold(tile)


def py_fold(tile: bytes) -> bytes:
    """The pure-Python ``fold``: each round one chain of C-level ``map`` calls over the
    64-byte pairs."""
    data = tile
    while len(data) > merkle.HASH_SIZE:
        pairs = map(_FIRST, struct.iter_unpack("64s", data))
        data = b"".join(map(_DIGEST, map(hashlib.sha256, map(_NODE_PREFIX, pairs))))
    return data


class TileReader:
    """Node oracle over a tile directory for a tree of a given size (proofs, roots).

    Reads only the tiles a proof touches; a Merkle node of height ``8L + k`` is rebuilt by
    hashing ``2**k`` consecutive hashes of a level-L tile.
    """

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.size = size
        self._cache: dict[tuple[int, int], bytes] = {}

    def tile(self, level: int, index: int) -> bytes:
        key = (level, index)
        data = self._cache.get(key)
        if data is None:
            data = self._read(level, index)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = data
        return data

    def _read(self, level: int, index: int) -> bytes:
        count = self.size // TILE_WIDTH**level
        width = min(TILE_WIDTH, count - index * TILE_WIDTH)
        if width <= 0:
            raise TileFormatError(f"tile {level}/{index} lies beyond tree size {self.size}")
        full = tile_path(level, index)
        if (self.root / full).exists():
            return self._bytes(full, TILE_WIDTH * merkle.HASH_SIZE)[: width * merkle.HASH_SIZE]
        rel = tile_path(level, index, width)
        try:
            return self._bytes(rel, width * merkle.HASH_SIZE)
        except FileNotFoundError:
            if (self.root / full).exists():  # the writer completed the tile and retired its partials meanwhile
                return self._bytes(full, TILE_WIDTH * merkle.HASH_SIZE)[: width * merkle.HASH_SIZE]
            raise TileFormatError(f"{rel}: missing (needed for tree size {self.size})") from None

    def _bytes(self, rel: str, expected: int) -> bytes:
        """The tile file ``rel``, which must hold exactly ``expected`` bytes (never read further)."""
        try:
            data = read_bounded(self.root / rel, expected)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise TileFormatError(f"{rel}: unreadable ({exc.strerror})") from None
        except TileFormatError as exc:
            raise TileFormatError(f"{rel}: {exc}") from None
        if len(data) != expected:
            raise TileFormatError(f"{rel}: {len(data)} bytes, expected {expected}")
        return data

    def node(self, height: int, index: int) -> bytes:
        level, k = divmod(height, TILE_HEIGHT)
        first = index << k  # first stored hash at this tile level
        tile = self.tile(level, first // TILE_WIDTH)
        off = (first % TILE_WIDTH) * merkle.HASH_SIZE
        hashes = [tile[off + i * 32 : off + i * 32 + 32] for i in range(1 << k)]
        return merkle.fold_complete(hashes)
