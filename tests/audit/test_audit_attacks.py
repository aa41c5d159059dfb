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
    # not part of a log, so verify fails the log: the writer refuses too (changing nothing), no crash
    with pytest.raises(errors.AuditFormatError, match="checkpoints/\u00b2: file not part of a tile log"):
        asyncio.run(_fill(directory, tmp_path / "audit.key", [1]))


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


# -- verify and the writer agree --------------------------------------------------------------------


def _link_tile_outside(directory: Path) -> None:
    tile = directory / "tile/0/000.p/200"
    outside = directory.parent / "outside"
    outside.write_bytes(tile.read_bytes())  # the same bytes: only where they live differs
    tile.unlink()
    tile.symlink_to(outside)


FOREIGN = {
    "history name with a leading zero": (
        lambda d: shutil.copy(d / "checkpoints/200", d / "checkpoints/0200"),
        "checkpoints/0200: file not part of a tile log",
    ),
    "partial of width 0": (lambda d: (d / "tile/entries/002.p/0").write_bytes(b""), "002.p/0: file not part"),
    "tile linked to identical bytes outside the log": (_link_tile_outside, "a symbolic link, not a file of the log"),
    "FIFO named as a partial": (lambda d: os.mkfifo(d / "tile/entries/002.p/100"), "002.p/100: not a regular file"),
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_what_verify_calls_tampering_the_writer_refuses_to_append_over(
    tmp_path: Path, signer: note.Signer, case: str
) -> None:
    """A name no writer makes, a link, a FIFO: ``verify`` fails the log, so a writer that
    appended and signed on top of it would leave a log that never verifies again. It refuses,
    naming the file, and changes nothing."""
    directory = build(tmp_path)
    damage, said = FOREIGN[case]
    damage(directory)
    assert said in problems(verify.verify(directory, signer.verifier))
    assert said in reopen_refused_untouched(directory, tmp_path / "audit.key")


def test_a_deleted_checkpoint_file_is_damage_not_restored(tmp_path: Path, signer: note.Signer) -> None:
    """The writer writes ``checkpoint`` before its history copy and never removes it, so no
    crash leaves it missing: deleted, it is reported (as ``verify`` does), not quietly rewritten
    from the history."""
    directory = build(tmp_path)
    (directory / "checkpoint").unlink()
    assert "checkpoint: missing" in problems(verify.verify(directory, signer.verifier))
    assert "checkpoint: missing, yet checkpoints/600 is signed" in reopen_refused_untouched(
        directory, tmp_path / "audit.key"
    )


def test_a_log_whose_checkpoints_were_all_deleted_is_not_signed_again(tmp_path: Path, signer: note.Signer) -> None:
    """Delete every checkpoint, rewrite an entry (and the tiles over it): with nothing signed
    left, a writer that trusted what it found would sign the forged history with the log's own
    key. A new log signs its empty tree at creation, so entries without any checkpoint can only
    mean deleted checkpoints: the writer refuses."""
    directory = build(tmp_path)
    (directory / "checkpoint").unlink()
    shutil.rmtree(directory / "checkpoints")
    bundle = directory / "tile/entries/000"
    bundle.write_bytes(bundle.read_bytes().replace(b'"n":1}', b'"n":7}', 1))
    message = reopen_refused_untouched(directory, tmp_path / "audit.key")
    assert "600 entries on disk but no signed checkpoint" in message


async def test_a_new_log_signs_its_empty_tree_before_its_first_append(tmp_path: Path, signer: note.Signer) -> None:
    directory = tmp_path / "log"
    log = await AuditLog.open(directory, signing_key_path=tmp_path / "audit.key", origin=ORIGIN, writer="w")
    try:
        assert sorted(p.name for p in (directory / "checkpoints").iterdir()) == ["0"]
        result = verify.verify(directory, signer.verifier)
        assert result.ok, problems(result)
        assert result.size == 0
    finally:
        await log.close()

    # a crash right after the first appends (no checkpoint due yet) reopens: size 0 is the floor
    async def crash_after_appends() -> None:
        crashed = await AuditLog.open(directory, signing_key_path=tmp_path / "audit.key", origin=ORIGIN, writer="w")
        await asyncio.gather(*(crashed.append("config", {"i": i}) for i in range(5)))
        crashed._store.close()  # the process dies: no close(), no checkpoint of size 5
        assert crashed._task is not None
        crashed._task.cancel()

    await crash_after_appends()
    await _reopen_and_append(directory, tmp_path / "audit.key")


async def _reopen_and_append(directory: Path, key: Path) -> None:
    log = await AuditLog.open(directory, signing_key_path=key, origin=ORIGIN, writer="w")
    try:
        assert await log.append("config", {"after": "crash"}) == 5
    finally:
        await log.close()
