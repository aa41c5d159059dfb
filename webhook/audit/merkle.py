"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

Proof *generation* runs over a node oracle (``NodeSource``) so the same code serves an
in-memory tree, the tile store on disk and the writer; callers never rescan every leaf.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

# node(height, index) -> hash of the complete subtree covering leaves
# [index * 2**height, (index + 1) * 2**height).
NodeSource = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A proof does not verify, or its parameters are out of range."""


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 §2.1.1: SHA-256(0x00 ‖ entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def fold_complete(hashes: Sequence[bytes]) -> bytes:
    """Root of a complete subtree whose leaves (a power of two of them) are ``hashes``."""
    level = list(hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def root_from_leaves(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (RFC 9162 §2.1.1), iteratively, for any size."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])  # an odd node is promoted unchanged
        level = nxt
    return level[0]


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_hash(node: NodeSource, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for a range the RFC recursion can produce (start aligned)."""
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        height = n.bit_length() - 1
        return node(height, start >> height)
    k = _split(n)
    return node_hash(subtree_hash(node, start, start + k), subtree_hash(node, start + k, end))


def inclusion_proof(node: NodeSource, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 6962 §2.1.1, leaf sibling first."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            proof.append(subtree_hash(node, start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(node, start, start + k))
            start += k
    proof.reverse()
    return proof


def consistency_proof(node: NodeSource, old: int, new: int) -> list[bytes]:
    """PROOF(old, D[0:new]) of RFC 6962 §2.1.2 (empty when old is 0 or equal to new)."""
    if not 0 <= old <= new:
        raise ProofError(f"cannot prove consistency from size {old} to size {new}")
    if old in (0, new):
        return []
    proof: list[bytes] = []
    start, end, m = 0, new, old
    while m != end:
        k = _split(end - start)
        if m - start <= k:
            proof.append(subtree_hash(node, start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(node, start, start + k))
            start += k
    # SUBPROOF's flag b turns false once the walk steps into a right child: then the
    # subtree equal to the old tree is not the old root itself and must be sent.
    if start != 0:
        proof.append(subtree_hash(node, start, end))
    proof.reverse()
    return proof


def root_at(node: NodeSource, size: int) -> bytes:
    """Root hash of the tree of ``size`` leaves."""
    return subtree_hash(node, 0, size)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check an inclusion proof by walking the tree's shape (raises ``ProofError``).

    Our own verifier walks the index's bits from the leaf up; the test suite carries a
    second verifier transcribed from RFC 9162 §2.1.3.2 to cross-check this one.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    # Levels where the leaf's path has a right sibling inside the tree ('inner'), and the
    # levels above where the path runs along the right border with no sibling ('border').
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    if len(proof) != inner + border:
        raise ProofError(f"inclusion proof has {len(proof)} hashes, expected {inner + border}")
    h = leaf
    for i in range(inner):
        h = node_hash(proof[i], h) if (index >> i) & 1 else node_hash(h, proof[i])
    for sibling in proof[inner:]:
        h = node_hash(sibling, h)
    if h != root:
        raise ProofError("inclusion proof does not lead to the root hash")


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Check a consistency proof (raises ``ProofError``)."""
    if not 0 <= old <= new:
        raise ProofError(f"old size {old} is larger than new size {new}")
    if old == new:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("equal sizes with different roots")
        return
    if old == 0:
        if proof:
            raise ProofError("a proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("empty consistency proof")
    # Strip the common right-border levels where old's subtree is complete (RFC 9162 §2.1.4.2).
    shift = (old & -old).bit_length() - 1
    fn, sn = (old - 1) >> shift, (new - 1) >> shift
    seed = old_root if fn == 0 else proof[0]
    rest = proof if fn == 0 else proof[1:]
    inner = (fn ^ sn).bit_length()
    border = bin(fn >> inner).count("1")
    if len(rest) != inner + border:
        raise ProofError(f"consistency proof has {len(proof)} hashes, expected {inner + border}")
    h1 = h2 = seed
    for i in range(inner):
        if (fn >> i) & 1:
            h1 = node_hash(rest[i], h1)
            h2 = node_hash(rest[i], h2)
        else:
            h2 = node_hash(h2, rest[i])
    for sibling in rest[inner:]:
        h1 = node_hash(sibling, h1)
        h2 = node_hash(sibling, h2)
    if h1 != old_root:
        raise ProofError("consistency proof does not lead to the old root")
    if h2 != new_root:
        raise ProofError("consistency proof does not lead to the new root")


class CompactRange:
    """The right border of a growing tree: one complete-subtree hash per set bit of the size.

    ``on_node(height, index, hash)`` sees every complete node as it is formed, which is how
    the writer learns the tile hashes of the levels above 0.
    """

    __slots__ = ("_stack", "size")

    def __init__(self, size: int = 0, stack: Sequence[bytes] = ()) -> None:
        self.size = size
        self._stack = list(stack)

    def append(self, leaf: bytes, on_node: Callable[[int, int, bytes], None] | None = None) -> None:
        h = leaf
        size, height = self.size, 0
        stack = self._stack
        while (size >> height) & 1:
            h = node_hash(stack.pop(), h)
            height += 1
            if on_node is not None:
                on_node(height, size >> height, h)
        stack.append(h)
        self.size += 1

    def append_node(self, height: int, h: bytes, on_node: Callable[[int, int, bytes], None] | None = None) -> None:
        """Append a complete subtree of ``2**height`` leaves (the size must be aligned to it)."""
        size = self.size
        if size % (1 << height):
            raise ProofError(f"a subtree of height {height} cannot start at leaf {size}")
        stack = self._stack
        self.size += 1 << height
        while (size >> height) & 1:
            h = node_hash(stack.pop(), h)
            height += 1
            if on_node is not None:
                on_node(height, size >> height, h)
        stack.append(h)

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self._stack)

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        h = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            h = node_hash(left, h)
        return h

    @classmethod
    def from_nodes(cls, node: NodeSource, size: int) -> CompactRange:
        """Rebuild the border of a tree of ``size`` leaves from stored nodes."""
        stack = []
        start = 0
        for height in range(size.bit_length() - 1, -1, -1):
            if (size >> height) & 1:
                stack.append(node(height, start >> height))
                start += 1 << height
        return cls(size, stack)
