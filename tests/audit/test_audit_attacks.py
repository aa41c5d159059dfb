"""Damaged and tampered log directories seen by an attacker: odd names, symlinks, directories
where files belong, huge files, oversized checkpoint fields. ``verify`` must report each one
(never say OK, never crash), and ``AuditLog.open`` must refuse or repair without a traceback
and without touching a signed file. Proofs must pass an independent RFC 9162 verifier."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from webhook import errors
from webhook.audit import note, proofs, verify
from webhook.audit.log import AuditLog

ORIGIN = "portcullis.test/attacks"


@pytest.fixture
def signer(tmp_path: Path) -> note.Signer:
    s = note.generate(ORIGIN)
    (tmp_path / "audit.key").write_text(s.private_text())
    return s


async def _fill(directory: Path, key: Path, rounds: list[int]) -> None:
    log = await AuditLog.open(
        directory, signing_key_path=key, origin=ORIGIN, writer="t", checkpoint_every=10**9, durable=False
    )
    try:
        for n in rounds:
            base = log.size
            await asyncio.gather(*(log.append("admission", {"n": base + i}) for i in range(n)))
            await log._checkpoint()
    finally:
        await log.close()


def build(tmp_path: Path, rounds: list[int] = [200, 200, 200]) -> Path:  # noqa: B006
    directory = tmp_path / "log"
    asyncio.run(_fill(directory, tmp_path / "audit.key", rounds))
    for path in directory.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return directory


def snapshot(directory: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, names in os.walk(directory):
        for name in names + dirnames:
            path = Path(dirpath, name)
            rel = path.relative_to(directory).as_posix()
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file() and path.stat().st_size > 1 << 24:  # the huge sparse files below
                st = path.stat()
                out[rel] = f"{st.st_size} bytes, mtime {st.st_mtime_ns}"
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel + "/"] = ""
    return out


def reopen_refused_untouched(directory: Path, key: Path) -> str:
    """``AuditLog.open`` refuses with a clear report and changes nothing."""
    before = snapshot(directory)
    with pytest.raises(errors.AuditFormatError) as info:
        asyncio.run(_fill(directory, key, [1]))
    assert snapshot(directory) == before
    return str(info.value)


def problems(result: verify.Result) -> str:
    return "\n".join(p.message for p in result.problems)


# -- odd names -------------------------------------------------------------------------------------


def test_a_checkpoint_history_name_in_non_ascii_digits_is_reported_not_a_crash(
    tmp_path: Path, signer: note.Signer
) -> None:
    directory = build(tmp_path)
    shutil.copy(directory / "checkpoints/200", directory / "checkpoints/\u00b2")  # '²'.isdigit()
    result = verify.verify(directory, signer.verifier)
    assert not result.ok
    assert "checkpoints/\u00b2" in problems(result)
    asyncio.run(_fill(directory, tmp_path / "audit.key", [1]))  # not part of the log: ignored, no crash


def test_a_nested_copy_does_not_hide_a_tampered_history_checkpoint(tmp_path: Path, signer: note.Signer) -> None:
    directory = build(tmp_path)
    (directory / "checkpoints/sub").mkdir()
    shutil.copy(directory / "checkpoints/200", directory / "checkpoints/sub/200")
    forged = bytearray((directory / "checkpoints/200").read_bytes())
    forged[-10] ^= 1  # the signature no longer verifies
    (directory / "checkpoints/200").write_bytes(bytes(forged))
    result = verify.verify(directory, signer.verifier)
    assert not result.ok
    assert "checkpoints/200:" in problems(result)
    assert "checkpoints/sub/200: file not part of a tile log" in problems(result)


@pytest.mark.parametrize(
    "rel",
    [
        "tile/0/000.p/2\u0660\u0660",  # Arabic-Indic zeros: int() reads 200
        "tile/entries/000.p/2\u0660\u0660",
        "tile/1\u0660/000",  # level "10"
    ],
)
def test_tile_names_in_non_ascii_digits_are_not_tiles(tmp_path: Path, signer: note.Signer, rel: str) -> None:
    directory = build(tmp_path)
    canonical = rel.replace("\u0660", "0")
    source = directory / canonical if (directory / canonical).exists() else directory / "tile/0/000"
    (directory / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, directory / rel)
    result = verify.verify(directory, signer.verifier)
    assert not result.ok
    assert f"{rel}: file not part of a tile log" in problems(result)


# -- symlinks and directories where files belong ----------------------------------------------------


def test_a_symlinked_bundle_or_directory_is_reported(tmp_path: Path, signer: note.Signer) -> None:
    directory = build(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(directory / "tile/entries/000", outside / "000")
    os.symlink(outside / "000", directory / "tile/entries/000")
    os.symlink(outside, directory / "elsewhere")
    result = verify.verify(directory, signer.verifier)
    assert not result.ok
    assert "tile/entries/000: a symbolic link" in problems(result)
    assert "elsewhere: a symbolic link" in problems(result)


def test_a_directory_named_checkpoint_is_reported_not_a_crash(tmp_path: Path, signer: note.Signer) -> None:
    directory = build(tmp_path)
    (directory / "checkpoint").unlink()
    (directory / "checkpoint").mkdir()
    result = verify.verify(directory, signer.verifier)
    assert not result.ok
    assert "checkpoint: " in problems(result)
    message = reopen_refused_untouched(directory, tmp_path / "audit.key")
    assert "checkpoint" in message


# -- truncated signed partials kept behind their full bundle -----------------------------------------


@pytest.mark.parametrize("keep", [0, 100])
def test_a_truncated_signed_partial_bundle_behind_its_full_bundle_is_reported(
    tmp_path: Path, signer: note.Signer, keep: int
) -> None:
    """``checkpoints/200`` names ``tile/entries/000.p/200``: a client of that size fetches it,
    so losing its entries is damage even though the full bundle still holds them (recovery
    already refuses to open such a log; verify must not call it OK)."""
    directory = build(tmp_path)
    path = directory / "tile/entries/000.p/200"
    path.write_bytes(path.read_bytes()[:keep])
    result = verify.verify(directory, signer.verifier)
    assert not result.ok
    assert "tile/entries/000.p/200" in problems(result)
    assert "tile/entries/000.p/200" in reopen_refused_untouched(directory, tmp_path / "audit.key")


# -- huge fields and files ---------------------------------------------------------------------------


def test_a_checkpoint_size_of_thousands_of_digits_is_reported_not_a_crash(tmp_path: Path, signer: note.Signer) -> None:
    directory = build(tmp_path)
    lines = (directory / "checkpoint").read_bytes().split(b"\n")
    lines[1] = b"9" * 5000  # int() refuses more than 4300 digits
    (directory / "checkpoint").write_bytes(b"\n".join(lines))
    result = verify.verify(directory, signer.verifier)
    assert not result.ok
    assert "checkpoint:" in problems(result)
    assert "checkpoint" in reopen_refused_untouched(directory, tmp_path / "audit.key")
    with pytest.raises(note.NoteError, match="tree size"):
        note.parse_checkpoint(b"o\n" + b"1" * 21 + b"\n" + b"A" * 43 + b"=\n")


def _sparse(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    with path.open("wb") as f:
        f.truncate(size)


@pytest.mark.parametrize("rel", ["tile/entries/000", "tile/entries/000.p/200", "tile/0/000", "checkpoints/200"])
def test_a_huge_file_is_reported_without_reading_it(tmp_path: Path, signer: note.Signer, rel: str) -> None:
    """A sparse file of 4 GiB: larger than any file of the log can be. Reading it (or, for a
    bundle of zero bytes, splitting it into two billion empty entries) would exhaust memory."""
    directory = build(tmp_path)
    _sparse(directory / rel, 4 << 30)
    result = verify.verify(directory, signer.verifier)
    assert not result.ok
    assert rel in problems(result)
    assert rel in reopen_refused_untouched(directory, tmp_path / "audit.key")


# -- proofs against an independent RFC 9162 verifier ---------------------------------------------------


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _rfc9162_consistency(m: int, n: int, first: bytes, second: bytes, path: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2, written out independently of ``merkle``."""
    if m == n:
        return not path and first == second
    if not 0 < m < n or not path:
        return False
    hashes = [first, *path] if m & (m - 1) == 0 else list(path)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = hashes[0]
    for c in hashes[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _h(b"\x01" + c + fr), _h(b"\x01" + c + sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _h(b"\x01" + sr + c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first and sr == second and sn == 0


def test_a_consistency_proof_from_altered_tiles_is_refused_not_printed(tmp_path: Path, signer: note.Signer) -> None:
    """A level-0 tile altered under an intact level-1 tile: the old root and the proof come from
    the altered hashes, the new root from the intact ones. ``audit consistency`` must not print
    a proof that any RFC 9162 verifier rejects (``prove`` already checks its own)."""
    directory = build(tmp_path, [70000])
    cp, _ = proofs.latest_checkpoint(directory)
    good = proofs.consistency(directory, 1283, cp.size)
    args = [bytes.fromhex(good[k]) for k in ("old_root", "new_root")]
    assert _rfc9162_consistency(1283, cp.size, *args, [bytes.fromhex(h) for h in good["hashes"]])
    path = directory / "tile/0/005"
    data = bytearray(path.read_bytes())
    data[3 * 32] ^= 1  # leaf hash 1283
    path.write_bytes(bytes(data))
    with pytest.raises(errors.AuditFormatError, match="tiles disagree with the checkpoint"):
        proofs.consistency(directory, 1283, cp.size)


# -- witness cosignatures ------------------------------------------------------------------------------


def test_a_cosignature_time_beyond_any_date_is_reported_not_a_crash(tmp_path: Path, signer: note.Signer) -> None:
    """The cosignature time is a signed uint64: a witness key can sign 2**64 - 1."""
    directory = build(tmp_path)
    witness = note.generate("witness.test/w1", note.SIG_COSIGNATURE_V1)
    text = note.parse_note((directory / "checkpoint").read_bytes()).text
    line = witness.sign_line(text, timestamp=(1 << 64) - 1)
    (directory / "checkpoint").write_bytes((directory / "checkpoint").read_bytes() + line.encode())
    result = verify.verify(directory, signer.verifier, [witness.verifier], 1)
    assert result.cosigners == [witness.verifier.vkey()]
    assert any("out of range" in a.how for a in result.anchors)


async def test_a_partial_named_in_non_ascii_digits_does_not_stop_the_writer(
    tmp_path: Path, signer: note.Signer
) -> None:
    """``'²'.isdigit()`` is true, yet ``int`` refuses it: a file so named in the edge bundle's
    ``.p/`` directory made retiring partials raise once the bundle filled, which stopped the
    writer and closed the log. It is not a partial; the writer goes on and leaves it alone."""
    directory, key = tmp_path / "log", tmp_path / "audit.key"
    log = await AuditLog.open(directory, signing_key_path=key, origin=ORIGIN, writer="w", commit_window=0)
    for i in range(100):
        await log.append("config", {"i": i})
    stray = directory / "tile/entries/000.p/\u00b2"
    stray.write_bytes(b"")
    assert (await asyncio.gather(*(log.append("config", {"i": 100 + i}) for i in range(300))))[-1] == 399
    await log.close()
    assert stray.exists()
    assert not [p.name for p in (directory / "tile/entries/000.p").iterdir() if p.name.isascii()]


@pytest.mark.parametrize("size", ["9" * 21, "1" * 5000])
def test_a_witness_request_with_an_oversized_old_size_is_a_400(size: str) -> None:
    """An ``old`` size beyond 64 bits (or past ``int``'s 4300 digits) is a bad request, not a crash."""
    from webhook.audit import witness

    with pytest.raises(witness.RequestError) as caught:
        witness.parse_request(f"old {size}\n\nexample.org/log\n1\nAAAA\n".encode())
    assert caught.value.status == 400


def test_a_writer_with_another_origin_is_refused_and_changes_nothing(tmp_path: Path, signer: note.Signer) -> None:
    """Opening a log under a new origin would sign the same tree under two names, which verify
    then reports as mixed origins. It is refused, naming both, before anything is written."""
    directory = build(tmp_path, [50])
    before = snapshot(directory)

    async def reopen() -> None:
        await AuditLog.open(directory, signing_key_path=tmp_path / "audit.key", origin="other.test/log", writer="t")

    with pytest.raises(errors.AuditFormatError, match=r"portcullis\.test/attacks.*other\.test/log"):
        asyncio.run(reopen())
    assert snapshot(directory) == before


def test_an_older_checkpoint_of_a_fork_signed_with_the_log_key_is_refused(tmp_path: Path, signer: note.Signer) -> None:
    """Recovery checked only the newest checkpoint's root. Another tree at an older size, signed
    with the log key (a fork), let the writer append on top; verify reported it. Now ``open``
    refuses it as damage, naming the file, and changes nothing."""
    directory = build(tmp_path, [200, 200])
    text = note.Checkpoint(ORIGIN, 200, hashlib.sha256(b"another tree").digest()).text()
    (directory / "checkpoints/200").write_bytes(text + b"\n" + signer.sign_line(text).encode())
    assert "checkpoints/200" in problems(verify.verify(directory, signer.verifier))
    message = reopen_refused_untouched(directory, tmp_path / "audit.key")
    assert "checkpoints/200: root hash of size 200" in message
    assert "fork" in message
