"""The optional C accelerator (``webhook/audit/_tilehash.c``) equals the pure-Python hashing
it replaces: leaf hashes, bundle scans (malformed bundles included: the Python code decides
and names the byte) and tile folds, checked against each other and against RFC 9162 by hand."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.audit import merkle, store, tiles

accel = tiles._accel
needs_accel = pytest.mark.skipif(accel is None, reason="C accelerator not built (pip install -e .)")
entries = st.lists(st.binary(max_size=300), max_size=40)


def _bundle(items: list[bytes]) -> bytes:
    return b"".join(len(e).to_bytes(2, "big") + e for e in items)


@needs_accel
@settings(max_examples=300, deadline=None)
@given(entries)
def test_scan_and_leaf_hashes_equal_the_python_code(items: list[bytes]) -> None:
    assert accel is not None
    data = _bundle(items)
    expected = (tiles.decode_spans(data), b"".join(merkle.leaf_hash(e) for e in items))
    assert accel.scan_bundle(data) == expected == tiles.py_scan_bundle(data)
    assert accel.scan_bundle(bytearray(data)) == expected
    assert accel.leaf_hashes(items) == expected[1]


@needs_accel
@settings(max_examples=300, deadline=None)
@given(entries, st.integers(1, 5))
def test_a_malformed_bundle_is_left_to_the_python_error(items: list[bytes], cut: int) -> None:
    assert accel is not None
    data = _bundle([*items, b"x" * 10])[:-cut]
    assert accel.scan_bundle(data) is None
    with pytest.raises(tiles.TileFormatError) as err:
        tiles.scan_bundle(data)
    with pytest.raises(tiles.TileFormatError) as ref:
        tiles.py_scan_bundle(data)
    assert (str(err.value), err.value.offset, err.value.count) == (str(ref.value), ref.value.offset, ref.value.count)


@needs_accel
@settings(max_examples=300, deadline=None)
@given(entries, st.integers(0, 5))
def test_split_bundle_equals_decode_bundle_and_leaves_malformed_ones_to_python(items: list[bytes], cut: int) -> None:
    """verify's record-check workers split bundles in C; a torn one gets the Python error."""
    assert accel is not None
    data = _bundle(items)
    assert accel.split_bundle(data) == tiles.split_bundle(data) == tiles.decode_bundle(data) == items
    assert accel.split_bundle(memoryview(data)) == items
    if cut:
        torn = _bundle([*items, b"x" * 10])[:-cut]
        assert accel.split_bundle(torn) is None
        with pytest.raises(tiles.TileFormatError) as err:
            tiles.split_bundle(torn)
        with pytest.raises(tiles.TileFormatError) as ref:
            tiles.decode_bundle(torn)
        assert (str(err.value), err.value.offset) == (str(ref.value), ref.value.offset)


@needs_accel
@pytest.mark.parametrize("count", [1, 2, 4, 128, 256, 1024])
def test_fold_equals_the_python_fold_and_the_rfc(count: int) -> None:
    assert accel is not None
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(count)]
    tile = b"".join(hashes)
    assert accel.fold(tile) == tiles.py_fold(tile) == merkle.root_from_leaves(hashes) == tiles.fold(tile)


@needs_accel
def test_fold_rejects_what_is_not_a_power_of_two_of_hashes() -> None:
    assert accel is not None
    for bad in (b"", b"x" * 31, b"x" * 96):
        with pytest.raises(ValueError):
            accel.fold(bad)
    with pytest.raises(TypeError):
        accel.leaf_hashes([b"a", "b"])  # type: ignore[list-item]


def test_the_python_fallbacks_still_hash_per_rfc_9162() -> None:
    items = [b"a", b"", b"c" * 300]
    data = _bundle(items)
    assert tiles.py_scan_bundle(data) == (tiles.decode_spans(data), b"".join(merkle.leaf_hash(e) for e in items))
    hashes = [merkle.leaf_hash(e) for e in (b"1", b"2", b"3", b"4")]
    assert tiles.py_fold(b"".join(hashes)) == merkle.root_from_leaves(hashes)


@needs_accel
@settings(max_examples=300, deadline=None)
@given(entries)
def test_bundle_body_equals_the_python_code(items: list[bytes]) -> None:
    assert accel is not None
    assert accel.bundle(items) == _bundle(items)
    with pytest.raises(ValueError):
        accel.bundle([b"x" * 65536])


# Times the writer may see: any second of 1970-2262 (64-bit nanoseconds), microsecond edges,
# and ones the C code leaves to Python (before 1970, past 64 bits).
_NS = st.one_of(
    st.integers(0, 2**63 - 1),
    st.sampled_from([0, 999, 1_000, 999_999_999, 1_767_225_599_999_999_999, 951_782_400 * 10**9]),
    st.integers(-(10**19), -1),
    st.integers(2**63, 2**70),
)


@needs_accel
@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["admission", "alert", "config", None]), st.binary(min_size=2, max_size=40), _NS),
        max_size=12,
    ),
    st.text(max_size=8),
)
def test_envelopes_equal_the_group_encoders_python_loop(
    items: list[tuple[str | None, bytes, int]], writer: str
) -> None:
    from webhook.audit import records

    assert accel is not None
    kinds = [k for k, _, _ in items]
    bodies = [b for _, b, _ in items]
    times = [t for _, _, t in items]
    encoder = records.GroupEncoder(writer)
    tokens = [records._KIND_TOKENS[k] if k is not None else None for k in kinds]
    built = accel.envelopes(tokens, bodies, times, encoder._tail)
    if any(k is not None and not 0 <= t < 2**63 for k, _, t in items):
        assert built is None  # left to the Python loop
    else:
        assert built == encoder._envelopes(kinds, bodies, times)


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


GROUP = store.Batch(
    files=[
        ("tile/entries/000", _bundle([b"x" * 200] * 256)),
        ("tile/entries/001.p/3", _bundle([b"a", b"", b"c"])),
        ("tile/0/x001/002", bytes(range(256)) * 32),
    ]
)


@needs_accel
@pytest.mark.parametrize("durable", [True, False])
def test_write_group_writes_what_the_python_code_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    """The writer's one C call (no GIL) and its Python version leave the same files, read-only."""
    trees = []
    for name, use in (("c", accel), ("python", None)):
        monkeypatch.setattr(tiles, "_accel", use)
        root = tmp_path / name
        root.mkdir()
        store.TileStore(root, durable).write(GROUP)
        trees.append(_tree(root))
    assert trees[0] == trees[1]
    assert {mode for _, mode in trees[0].values()} == {0o444}
    assert len(trees[0]) == 3


@needs_accel
def test_write_group_names_the_file_it_could_not_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, use in (("c", accel), ("python", None)):
        monkeypatch.setattr(tiles, "_accel", use)
        root = tmp_path / name
        (root / "tile/entries/001.p/3").mkdir(parents=True)  # a directory where the file goes
        with pytest.raises(IsADirectoryError) as caught:
            store.TileStore(root, True).write(GROUP)
        assert caught.value.filename == str(root / "tile/entries/001.p/3")
        assert (root / "tile/entries/000").read_bytes() == GROUP.files[0][1]  # the files before it


@needs_accel
def test_write_group_refuses_a_path_with_a_null_byte(tmp_path: Path) -> None:
    """As ``os.open`` does: C would read the path only up to the null, a shorter path."""
    assert accel is not None
    with pytest.raises(ValueError, match="null byte"):
        accel.write_group([os.fsencode(tmp_path / "a") + b"\0b"], [b"x"], [], False)
    assert not (tmp_path / "a").exists()
