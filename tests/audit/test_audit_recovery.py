"""Reopening damaged logs: damage below the signed checkpoint is reported (what, where) and the
writer refuses to append without touching a file; a torn tail above it is quarantined.

The crash cases use real writer processes: one is killed with SIGKILL mid-append, the others
die (``os._exit``, no cleanup) right before each write, fsync and rename of appends and
checkpoints."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from webhook import errors
from webhook.audit import note, tiles, verify
from webhook.audit.log import AuditLog, read_records
from webhook.audit.tiles import ENTRIES

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "portcullis.test/recovery"


@pytest.fixture
def signer(tmp_path: Path) -> note.Signer:
    s = note.generate(ORIGIN)
    (tmp_path / "audit.key").write_text(s.private_text())
    return s


async def fill(directory: Path, key: Path, rounds: list[int], durable: bool = False) -> None:
    log = await AuditLog.open(
        directory, signing_key_path=key, origin=ORIGIN, writer="t", checkpoint_every=1, durable=durable
    )
    try:
        for n in rounds:
            base = log.size
            await asyncio.gather(*(log.append("admission", {"n": base + i}) for i in range(n)))
            await log._checkpoint()  # a checkpoint at each round's end, whatever the writer did meanwhile
    finally:
        await log.close()


def snapshot(directory: Path) -> dict[str, str]:
    """Every file (and directory) under the log with a hash of its bytes."""
    out = {}
    for dirpath, dirnames, names in os.walk(directory):
        for d in dirnames:
            out[Path(dirpath, d).relative_to(directory).as_posix() + "/"] = ""
        for name in names:
            path = Path(dirpath, name)
            out[path.relative_to(directory).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def writable(path: Path) -> None:
    os.chmod(path, 0o644)


def reopen(directory: Path, key: Path) -> None:
    asyncio.run(fill(directory, key, [1]))


def delete_middle_bundle(d: Path) -> str:
    (d / "tile/entries/001").unlink()
    return "tile/entries/001: missing or incomplete, yet tile/entries/002"


def truncate_full_bundle(d: Path) -> str:
    path = d / "tile/entries/000"
    writable(path)
    path.write_bytes(path.read_bytes()[:-7])
    return "tile/entries/000: torn at byte"


def truncate_signed_partial_bundle(d: Path) -> str:
    path = d / "tile/entries/002.p/88"
    writable(path)
    path.write_bytes(path.read_bytes()[:-7])
    return "tile/entries/002.p/88: torn at byte"


def delete_signed_tile(d: Path) -> str:
    (d / "tile/0/000").unlink()
    return "tile/0/000: missing, yet a signed checkpoint covers it"


def delete_signed_partial_tile(d: Path) -> str:
    (d / "tile/0/002.p/88").unlink()
    return "tile/0/002.p/88: missing"


def alter_signed_tile(d: Path) -> str:
    path = d / "tile/1/000.p/2"
    writable(path)
    path.write_bytes(b"\x00" + path.read_bytes()[1:])
    return "root hash of size 600 does not match"


def truncate_whole_tail(d: Path) -> str:
    shutil.rmtree(d / "tile/entries/002.p")
    return "entries 512..599 are covered by the signed checkpoint of size 600 but are not on disk"


DAMAGE = [
    delete_middle_bundle,
    truncate_full_bundle,
    truncate_signed_partial_bundle,
    delete_signed_tile,
    delete_signed_partial_tile,
    alter_signed_tile,
    truncate_whole_tail,
]


@pytest.mark.parametrize("damage", DAMAGE, ids=[f.__name__ for f in DAMAGE])
def test_damage_below_the_checkpoint_is_reported_and_nothing_is_touched(
    tmp_path: Path, signer: note.Signer, damage: object
) -> None:
    directory = tmp_path / "log"
    asyncio.run(fill(directory, tmp_path / "audit.key", [600]))
    where = damage(directory)  # type: ignore[operator]
    before = snapshot(directory)
    with pytest.raises(errors.AuditFormatError) as caught:
        reopen(directory, tmp_path / "audit.key")
    assert "refusing to append" in str(caught.value)
    assert where in str(caught.value)
    assert snapshot(directory) == before  # nothing unlinked, moved, rebuilt or written
    assert not verify.verify(directory, signer.verifier).ok


def test_a_crash_between_the_two_checkpoint_writes_is_not_tampering(tmp_path: Path, signer: note.Signer) -> None:
    """Both orders a crash can leave: ``checkpoint`` newer than its history copy, or older."""
    directory = tmp_path / "log"
    asyncio.run(fill(directory, tmp_path / "audit.key", [100, 50]))
    newer, older = (directory / "checkpoints/150").read_bytes(), (directory / "checkpoints/100").read_bytes()
    (directory / "checkpoints/150").unlink()  # crashed after `checkpoint`, before its copy
    assert verify.verify(directory, signer.verifier).ok
    (directory / "checkpoints/150").write_bytes(newer)
    (directory / "checkpoint").write_bytes(older)  # crashed after the copy, before `checkpoint`
    result = verify.verify(directory, signer.verifier)
    assert result.ok, result.problems
    assert result.checkpoint_size == 150
    assert any("older than checkpoints/150" in w for w in result.warnings)
    reopen(directory, tmp_path / "audit.key")  # the writer restores both and goes on
    assert verify.verify(directory, signer.verifier).ok


CRASHER = """
import asyncio, os, sys
from pathlib import Path
from webhook.audit import tiles
from webhook.audit.log import AuditLog

crash_at = int(sys.argv[3])
calls = 0

def crash_point(real):
    def wrapped(*args, **kwargs):
        global calls
        calls += 1
        if calls == crash_at:
            os._exit(137)  # the process dies here: no cleanup, nothing after this call
        return real(*args, **kwargs)
    return wrapped

for name in ("write", "fsync", "replace"):  # every step that changes what is on disk
    setattr(os, name, crash_point(getattr(os, name)))
# The group write's Python version, so that each of its os calls is a crash point too; the C one
# (write_group) makes the same calls in the same order, and the SIGKILL test below kills it.
tiles._accel = None

async def main():
    log = await AuditLog.open(Path(sys.argv[1]), signing_key_path=Path(sys.argv[2]), origin=ORIGIN_VALUE,
                              writer="crash", commit_window=0, checkpoint_every=1)
    for start in (250, 260):  # the first batch completes tile 0, the second starts tile 1
        indexes = await asyncio.gather(*(log.append("alert", {"seq": start + i}) for i in range(6)))
        print(" ".join(map(str, indexes)), flush=True)
    await log.close()
    print("steps", calls, flush=True)

asyncio.run(main())
""".replace("ORIGIN_VALUE", repr(ORIGIN))


def _run_crasher(directory: Path, key: Path, crash_at: int) -> tuple[list[int], int | None]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, str(directory), str(key), str(crash_at)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    acked: list[int] = []
    renames = None
    for line in proc.stdout.splitlines():
        if line.startswith("steps"):
            renames = int(line.split()[1])
        else:
            acked += map(int, line.split())
    assert proc.returncode in (0, 137), proc.stderr
    return acked, renames


@pytest.mark.slow
def test_a_crash_before_any_write_fsync_or_rename_never_looks_like_tampering(
    tmp_path: Path, signer: note.Signer
) -> None:
    key = tmp_path / "audit.key"
    base = tmp_path / "base"
    asyncio.run(fill(base, key, [250], durable=True))
    shutil.copytree(base, tmp_path / "dry")
    _, total = _run_crasher(tmp_path / "dry", key, 0)
    assert total is not None
    assert total > 8
    for crash_at in range(1, total + 1):
        directory = tmp_path / f"crash{crash_at}"
        shutil.copytree(base, directory)
        acked, _ = _run_crasher(directory, key, crash_at)
        result = verify.verify(directory, signer.verifier)
        assert result.ok, (crash_at, [p.message for p in result.ordered()])
        reopen(directory, key)
        result = verify.verify(directory, signer.verifier)
        assert result.ok, (crash_at, [p.message for p in result.ordered()])
        stored = {i for i, _ in read_records(directory)}
        assert set(acked) <= stored, crash_at


def signed_files(directory: Path) -> dict[str, bytes]:
    """The files the newest checkpoint's tree is made of, with their bytes."""
    data = (directory / "checkpoint").read_bytes()
    size = note.parse_checkpoint(note.parse_note(data).text).size
    out = {}
    for level in (ENTRIES, 0, 1, 2):
        count = size // tiles.TILE_WIDTH ** max(level, 0)
        nfull, width = divmod(count, tiles.TILE_WIDTH)
        rels = [tiles.tile_path(level, k) for k in range(nfull)]
        if width:
            rels.append(tiles.tile_path(level, nfull, width))
        out.update({rel: (directory / rel).read_bytes() for rel in rels})
    return out


WRITER = """
import asyncio, sys
from pathlib import Path
from webhook.audit.log import AuditLog

async def main():
    log = await AuditLog.open(Path(sys.argv[1]), signing_key_path=Path(sys.argv[2]), origin=ORIGIN_VALUE,
                              writer="kill", commit_window=0.001, checkpoint_every=53)
    seq = 0
    while True:
        got = await asyncio.gather(*(log.append("alert", {"seq": seq + i}) for i in range(29)))
        print(got[-1], flush=True)
        seq += 29

asyncio.run(main())
""".replace("ORIGIN_VALUE", repr(ORIGIN))


@pytest.mark.slow
def test_kill_9_mid_append_never_changes_a_signed_file(tmp_path: Path, signer: note.Signer) -> None:
    key = tmp_path / "audit.key"
    directory = tmp_path / "log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kept: dict[str, bytes] = {}
    for round_ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), str(key)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = 0
        while seen < 5 + 3 * round_ and time.monotonic() < deadline:
            if not proc.stdout.readline():
                break
            seen += 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert seen, "the writer acknowledged nothing"
        for rel, data in kept.items():  # every file an earlier checkpoint covered is intact
            assert (directory / rel).read_bytes() == data, rel
        kept.update(signed_files(directory))
    reopen(directory, key)
    result = verify.verify(directory, signer.verifier)
    assert result.ok, [p.message for p in result.ordered()]
    for rel, data in kept.items():
        assert (directory / rel).read_bytes() == data, rel
