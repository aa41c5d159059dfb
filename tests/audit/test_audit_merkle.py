"""RFC 6962 / 9162 Merkle trees: published vectors, the RFC's own examples, and every size 1..300.

The checker here is written from the RFC text (RFC 9162 §2.1.3.2 and §2.1.4.2, RFC 6962 §2.1
definitions), not from ``webhook.audit.merkle``, so the two implementations cross-check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.audit import merkle

# -- an independent implementation, transcribed from the RFCs ------------------------------


def rfc_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def rfc_mth(entries: Sequence[bytes]) -> bytes:
    """RFC 6962 §2.1: MTH over raw entries, recursively, straight from the definition."""
    n = len(entries)
    if n == 0:
        return rfc_hash(b"")
    if n == 1:
        return rfc_hash(b"\x00" + entries[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return rfc_hash(b"\x01" + rfc_mth(entries[:k]) + rfc_mth(entries[k:]))


def rfc_path(m: int, entries: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(m, D[n])."""
    n = len(entries)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*rfc_path(m, entries[:k]), rfc_mth(entries[k:])]
    return [*rfc_path(m - k, entries[k:]), rfc_mth(entries[:k])]


def rfc_subproof(m: int, entries: Sequence[bytes], b: bool) -> list[bytes]:
    """RFC 6962 §2.1.2 SUBPROOF(m, D[n], b)."""
    n = len(entries)
    if m == n:
        return [] if b else [rfc_mth(entries)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*rfc_subproof(m, entries[:k], b), rfc_mth(entries[k:])]
    return [*rfc_subproof(m - k, entries[k:], False), rfc_mth(entries[:k])]


def rfc9162_verify_inclusion(leaf_index: int, tree_size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2, step by step."""
    if leaf_index >= tree_size:
        return False
    fn, sn = leaf_index, tree_size - 1
    r = leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = rfc_hash(b"\x01" + p + r)
            if not fn & 1:
                while not (fn & 1) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = rfc_hash(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def rfc9162_verify_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, path: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2, step by step (equal sizes: empty proof and equal roots)."""
    if first == second:
        return not path and first_hash == second_hash
    if not path or first == 0 or first > second:
        return False
    path = list(path)
    if first & (first - 1) == 0:
        path.insert(0, first_hash)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = rfc_hash(b"\x01" + c + fr)
            sr = rfc_hash(b"\x01" + c + sr)
            if not fn & 1:
                while not (fn & 1) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = rfc_hash(b"\x01" + sr + c)
        fn >>= 1
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0


# -- helpers ---------------------------------------------------------------------------------


def memory_nodes(leaves: Sequence[bytes]) -> merkle.NodeSource:
    """A node oracle over in-memory leaf hashes (complete levels only)."""
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        prev = levels[-1]
        levels.append([merkle.node_hash(prev[i], prev[i + 1]) for i in range(0, len(prev) - 1, 2)])
    return lambda height, index: levels[height][index]


ENTRIES = [bytes([i % 256, (i * 7) % 256]) + i.to_bytes(4, "big") for i in range(300)]
LEAVES = [merkle.leaf_hash(e) for e in ENTRIES]
NODES = memory_nodes(LEAVES)

# Certificate Transparency's reference inputs and tree heads (RFC 6962 test data).
CT_ENTRIES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip


# -- vectors -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", range(9))
def test_roots_match_the_rfc6962_reference_tree_heads(size: int) -> None:
    leaves = [merkle.leaf_hash(e) for e in CT_ENTRIES[:size]]
    assert merkle.root_from_leaves(leaves).hex() == CT_ROOTS[size]
    assert rfc_mth(CT_ENTRIES[:size]).hex() == CT_ROOTS[size]
    if size:
        assert merkle.root_at(memory_nodes(leaves), size).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "proof"), CT_INCLUSION)
def test_inclusion_proofs_match_the_reference_vectors(index: int, size: int, proof: list[str]) -> None:
    leaves = [merkle.leaf_hash(e) for e in CT_ENTRIES]
    got = merkle.inclusion_proof(memory_nodes(leaves), index, size)
    assert [h.hex() for h in got] == proof
    root = bytes.fromhex(CT_ROOTS[size])
    assert rfc9162_verify_inclusion(index, size, leaves[index], got, root)


def test_the_rfc6962_section_2_1_3_example_proofs() -> None:
    """RFC 6962 §2.1.3: the seven-leaf tree and its named nodes a..l."""
    d = [bytes([i]) for i in range(7)]
    a, b, c, dd, e, f, j = (rfc_mth(d[i : i + 1]) for i in range(7))
    g, h, i_ = rfc_mth(d[0:2]), rfc_mth(d[2:4]), rfc_mth(d[4:6])
    k, l_ = rfc_mth(d[0:4]), rfc_mth(d[4:7])
    assert (a, dd, e, j) == tuple(merkle.leaf_hash(d[n]) for n in (0, 3, 4, 6))
    nodes = memory_nodes([merkle.leaf_hash(x) for x in d])
    assert merkle.inclusion_proof(nodes, 0, 7) == [b, h, l_]
    assert merkle.inclusion_proof(nodes, 3, 7) == [c, g, l_]
    assert merkle.inclusion_proof(nodes, 4, 7) == [f, j, k]
    assert merkle.inclusion_proof(nodes, 6, 7) == [i_, k]
    assert merkle.consistency_proof(nodes, 3, 7) == [c, dd, g, l_]
    assert merkle.consistency_proof(nodes, 4, 7) == [l_]
    assert merkle.consistency_proof(nodes, 6, 7) == [i_, j, k]


def test_leaf_and_node_hashes_use_domain_separation_prefixes() -> None:
    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert merkle.node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()
    assert merkle.EMPTY_ROOT.hex() == CT_ROOTS[0]


# -- every size 1..300 -------------------------------------------------------------------------


def test_every_inclusion_proof_up_to_size_300_verifies_with_the_rfc_algorithm() -> None:
    for size in range(1, 301):
        root = merkle.root_at(NODES, size)
        assert root == merkle.root_from_leaves(LEAVES[:size])
        for index in range(size):
            proof = merkle.inclusion_proof(NODES, index, size)
            assert rfc9162_verify_inclusion(index, size, LEAVES[index], proof, root), (index, size)
            merkle.verify_inclusion(LEAVES[index], index, size, proof, root)


def test_every_consistency_proof_up_to_size_300_verifies_with_the_rfc_algorithm() -> None:
    roots = [merkle.EMPTY_ROOT] + [merkle.root_at(NODES, n) for n in range(1, 301)]
    for new in range(1, 301):
        for old in range(1, new + 1):
            proof = merkle.consistency_proof(NODES, old, new)
            assert rfc9162_verify_consistency(old, new, roots[old], roots[new], proof), (old, new)
            merkle.verify_consistency(old, new, roots[old], roots[new], proof)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 64, 100])
def test_proofs_equal_the_rfc6962_recursive_definitions(size: int) -> None:
    for index in range(size):
        assert merkle.inclusion_proof(NODES, index, size) == rfc_path(index, ENTRIES[:size])
    for old in range(1, size + 1):
        assert merkle.consistency_proof(NODES, old, size) == rfc_subproof(old, ENTRIES[:size], True)


# -- properties: tampering is always rejected, by both verifiers ------------------------------


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_a_changed_inclusion_proof_never_verifies(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, 300))
    index = data.draw(st.integers(0, size - 1))
    root = merkle.root_at(NODES, size)
    proof = merkle.inclusion_proof(NODES, index, size)
    # (The tree size is not a mutation: the root alone does not bind it; the signed
    # checkpoint does, which is why proofs are always checked against one.)
    mutation = data.draw(st.sampled_from(["flip", "drop", "extra", "index", "leaf"]))
    leaf, idx, n = LEAVES[index], index, size
    if mutation == "flip" and proof:
        pos = data.draw(st.integers(0, len(proof) - 1))
        proof[pos] = bytes([proof[pos][0] ^ 1]) + proof[pos][1:]
    elif mutation == "drop" and proof:
        proof.pop(data.draw(st.integers(0, len(proof) - 1)))
    elif mutation == "extra":
        proof.append(b"\x07" * 32)
    elif mutation == "index" and size > 1:
        idx = (index + data.draw(st.integers(1, size - 1))) % size
    else:
        leaf = merkle.leaf_hash(b"forged")
    assert not rfc9162_verify_inclusion(idx, n, leaf, proof, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(leaf, idx, n, proof, root)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_a_changed_consistency_proof_never_verifies(data: st.DataObject) -> None:
    new = data.draw(st.integers(2, 300))
    old = data.draw(st.integers(1, new - 1))
    roots = {n: merkle.root_at(NODES, n) for n in (old, new)}
    proof = merkle.consistency_proof(NODES, old, new)
    mutation = data.draw(st.sampled_from(["flip", "drop", "extra", "old_root", "new_root"]))
    old_root, new_root = roots[old], roots[new]
    if mutation == "flip":
        pos = data.draw(st.integers(0, len(proof) - 1))
        proof[pos] = bytes([proof[pos][0] ^ 0x80]) + proof[pos][1:]
    elif mutation == "drop":
        proof.pop(data.draw(st.integers(0, len(proof) - 1)))
    elif mutation == "extra":
        proof.append(b"\x07" * 32)
    elif mutation == "old_root":
        old_root = merkle.leaf_hash(b"other")
    else:
        new_root = merkle.leaf_hash(b"other")
    assert not rfc9162_verify_consistency(old, new, old_root, new_root, proof)
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(old, new, old_root, new_root, proof)


def test_compact_range_tracks_the_root_and_reports_tile_nodes() -> None:
    seen: list[tuple[int, int]] = []
    border = merkle.CompactRange()
    for i, leaf in enumerate(LEAVES):
        border.append(leaf, lambda h, idx, _n: seen.append((h, idx)))
        assert border.root() == merkle.root_from_leaves(LEAVES[: i + 1])
    assert (8, 0) in seen
    assert (9, 0) not in seen
    rebuilt = merkle.CompactRange.from_nodes(NODES, 300)
    assert rebuilt.root() == border.root()


def test_out_of_range_requests_are_refused() -> None:
    with pytest.raises(merkle.ProofError):
        merkle.inclusion_proof(NODES, 5, 5)
    with pytest.raises(merkle.ProofError):
        merkle.consistency_proof(NODES, 6, 5)


def test_appending_a_whole_subtree_equals_appending_its_leaves() -> None:
    one, bulk = merkle.CompactRange(), merkle.CompactRange()
    for leaf in LEAVES[:256]:
        one.append(leaf)
    bulk.append_node(8, merkle.fold_complete(LEAVES[:256]))
    assert (bulk.size, bulk.root()) == (one.size, one.root())
    bulk.append(LEAVES[256])
    with pytest.raises(merkle.ProofError):
        bulk.append_node(1, LEAVES[0])
