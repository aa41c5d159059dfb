"""atheris: audit log inputs — signed checkpoints, tlog-proofs, entry bundles, records, keys."""

from __future__ import annotations

import base64
import sys

import atheris
import harness

with atheris.instrument_imports(include=["webhook"]):
    from webhook import errors
    from webhook.audit import merkle, note, proofs, records, tiles, witness

SIGNER = note.generate("fuzz.example/log")
RECORD = records.encode_record("2026-01-01T00:00:00Z", "admission", "w", {"a": 1})
CHECKPOINT = note.sign_checkpoint(note.Checkpoint("fuzz.example/log", 1, merkle.leaf_hash(RECORD)), SIGNER)
PROOF = f"{proofs.HEADER}\nextra {base64.b64encode(RECORD).decode()}\nindex 0\n\n".encode() + CHECKPOINT


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 5)
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        if which == 0:
            note.open_checkpoint(body, SIGNER.verifier)
        elif which == 1:
            proofs.verify_tlog_proof(body, None, SIGNER.verifier, [])
        elif which == 2:
            tiles.decode_bundle(body)
        elif which == 3:
            records.decode_record(body)
        elif which == 4:
            note.parse_vkey(body.decode("utf-8", "replace"))
        else:
            witness.parse_request(body)
    except Exception as exc:
        harness.tolerate(exc, errors.AuditFormatError, tiles.TileFormatError, witness.RequestError)


def main() -> None:
    # Seeds: valid inputs for each branch (first byte picks the branch).
    atheris.Setup(harness.argv(), test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.exit(main())
