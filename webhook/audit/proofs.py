"""Proofs read from a log directory's tiles, and C2SP tlog-proof files.

Called by ``portcullis audit prove`` / ``consistency`` / ``verify-proof`` and by reports.
Proofs touch only the tiles on the proof path (``tiles.TileReader``), never a full rescan.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook import errors
from webhook.audit import merkle, note, tiles
from webhook.audit.tiles import ENTRIES, TILE_WIDTH

HEADER = "c2sp.org/tlog-proof@v1"


@dataclass(frozen=True)
class InclusionProof:
    leaf_index: int
    tree_size: int
    leaf_hash: bytes
    root_hash: bytes
    hashes: list[bytes]
    entry: bytes
    checkpoint: bytes

    def as_json(self) -> dict[str, Any]:
        return {
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "leaf_hash": self.leaf_hash.hex(),
            "root_hash": self.root_hash.hex(),
            "hashes": [h.hex() for h in self.hashes],
        }


def latest_checkpoint(directory: Path) -> tuple[note.Checkpoint, bytes]:
    path = directory / "checkpoint"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise errors.AuditFormatError(f"{path}: cannot read the checkpoint ({exc.strerror})") from exc
    return note.parse_checkpoint(note.parse_note(data, str(path)).text, str(path)), data


def read_entry(directory: Path, index: int, size: int) -> bytes:
    bundle, offset = divmod(index, TILE_WIDTH)
    width = min(TILE_WIDTH, size - bundle * TILE_WIDTH)
    path = directory / tiles.tile_path(ENTRIES, bundle)
    if not path.exists():
        path = directory / tiles.tile_path(ENTRIES, bundle, width)
    try:
        entries = tiles.decode_bundle(path.read_bytes())
    except (OSError, tiles.TileFormatError) as exc:
        raise errors.AuditFormatError(f"{path}: cannot read entry {index}: {exc}") from exc
    if offset >= len(entries):
        raise errors.AuditFormatError(f"{path}: entry {index} is missing")
    return entries[offset]


def inclusion(directory: Path, index: int) -> InclusionProof:
    """Inclusion proof of entry ``index`` against the latest checkpoint (self-checked)."""
    cp, signed = latest_checkpoint(directory)
    if not 0 <= index < cp.size:
        raise errors.InputError(f"--index {index}: the latest checkpoint covers 0..{cp.size - 1}")
    reader = tiles.TileReader(directory, cp.size)
    try:
        path = merkle.inclusion_proof(reader.node, index, cp.size)
    except tiles.TileFormatError as exc:
        raise errors.AuditFormatError(f"{directory}: {exc}") from exc
    entry = read_entry(directory, index, cp.size)
    leaf = merkle.leaf_hash(entry)
    try:
        merkle.verify_inclusion(leaf, index, cp.size, path, cp.root)
    except merkle.ProofError as exc:
        raise errors.AuditFormatError(f"{directory}: tiles disagree with the checkpoint ({exc}); run verify") from exc
    return InclusionProof(index, cp.size, leaf, cp.root, path, entry, signed)


def consistency(directory: Path, old: int, new: int | None) -> dict[str, Any]:
    cp, _ = latest_checkpoint(directory)
    new = cp.size if new is None else new
    if not 0 <= old <= new <= cp.size:
        raise errors.InputError(f"--old {old} --new {new}: need 0 <= old <= new <= {cp.size}")
    reader = tiles.TileReader(directory, cp.size)
    try:
        hashes = merkle.consistency_proof(reader.node, old, new)
        old_root, new_root = merkle.root_at(reader.node, old), merkle.root_at(reader.node, new)
        # Self-checked, as ``inclusion`` is: the proof must lead from the old root to the new one,
        # and the new root on to the signed checkpoint's. Altered tiles below intact ones would
        # otherwise yield roots and hashes that no verifier accepts.
        merkle.verify_consistency(old, new, old_root, new_root, hashes)
        to_signed = merkle.consistency_proof(reader.node, new, cp.size)
        merkle.verify_consistency(new, cp.size, new_root, cp.root, to_signed)
    except tiles.TileFormatError as exc:
        raise errors.AuditFormatError(f"{directory}: {exc}") from exc
    except merkle.ProofError as exc:
        raise errors.AuditFormatError(f"{directory}: tiles disagree with the checkpoint ({exc}); run verify") from exc
    return {
        "old_size": old,
        "new_size": new,
        "old_root": old_root.hex(),
        "new_root": new_root.hex(),
        "hashes": [h.hex() for h in hashes],
    }


def tlog_proof_text(proof: InclusionProof) -> str:
    """C2SP tlog-proof: header, extra (the record itself), index, hashes, blank, checkpoint."""
    lines = [HEADER, "extra " + base64.b64encode(proof.entry).decode(), f"index {proof.leaf_index}"]
    lines += [base64.b64encode(h).decode() for h in proof.hashes]
    return "\n".join(lines) + "\n\n" + proof.checkpoint.decode()


def verify_tlog_proof(
    data: bytes,
    record: bytes | None,
    log_key: note.Verifier,
    witness_keys: list[note.Verifier],
    required: int = 0,
) -> str | None:
    """Check a tlog-proof offline; returns the problem, or None if it verifies."""
    head, sep, checkpoint = data.partition(b"\n\n")
    lines = head.decode("utf-8", "replace").split("\n")
    if not sep or lines[0] != HEADER:
        return f"not a {HEADER} file"
    rest = lines[1:]
    extra = None
    if rest and rest[0].startswith("extra "):
        extra = rest.pop(0).removeprefix("extra ")
    digits = rest[0][6:] if rest and rest[0].startswith("index ") else ""
    if not (digits.isascii() and digits.isdigit()):  # isdigit() alone accepts "²"
        return "missing 'index N' line (N in ASCII decimal digits)"
    if len(digits) > 20:  # int() refuses over 4300 digits; a uint64 has at most 20
        return f"index {digits[:20]}... is larger than any tree"
    index = int(digits)
    try:
        hashes = [base64.b64decode(h, validate=True) for h in rest[1:]]
        if record is None and extra is not None:
            record = base64.b64decode(extra, validate=True)
    except (ValueError, binascii.Error):  # ValueError: non-ASCII text in a str
        return "a hash or extra line is not base64"
    if record is None:
        return "no record given and no extra line"
    try:
        cp, signed = note.open_checkpoint(checkpoint, log_key)
        wkeys = [k for k in witness_keys if k.sig_type == note.SIG_COSIGNATURE_V1]  # never the log's key
        cosigners = note.verified_by(signed, wkeys) if wkeys else {}
    except note.NoteError as exc:
        return str(exc)
    need = required or len(witness_keys)
    if len(cosigners) < need:
        return f"{len(cosigners)} of {need} required witness cosignatures"
    try:
        merkle.verify_inclusion(merkle.leaf_hash(record), index, cp.size, hashes, cp.root)
    except merkle.ProofError as exc:
        return str(exc)
    return None
