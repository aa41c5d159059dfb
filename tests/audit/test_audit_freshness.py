"""Rollback: truncate a log and copy an older signed checkpoint over ``checkpoint``. Every file
left verifies, so only an anchor from outside the directory can tell; verify says whether it has
one, and can require it. The witness case uses a real witness on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from webhook import cli
from webhook.audit import freshness, note, verify, witness
from webhook.audit.log import AuditLog
from webhook.audit.recovery import QUARANTINE


async def start(tmp_path: Path, log_key: note.Verifier) -> tuple[str, note.Signer, web.AppRunner]:
    """A real witness (``portcullis audit witness``'s app) on an ephemeral loopback port."""
    key = note.generate("witness.test/w1", note.SIG_COSIGNATURE_V1)
    runner = web.AppRunner(witness.make_app(witness.Witness(key, [log_key], tmp_path / "witness-state")))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}", key, runner


ORIGIN = "portcullis.test/witnessed"  # the witness fixture trusts this origin


@pytest.fixture
def signer(tmp_path: Path) -> note.Signer:
    s = note.generate(ORIGIN)
    (tmp_path / "audit.key").write_text(s.private_text())
    (tmp_path / "audit.pub").write_text(s.verifier.vkey())
    return s


async def append(directory: Path, key: Path, n: int, witnesses: list[str] = ()) -> None:  # type: ignore[assignment]
    log = await AuditLog.open(
        directory, signing_key_path=key, origin=ORIGIN, writer="w", commit_window=0, witnesses=witnesses
    )
    await asyncio.gather(*(log.append("config", {"i": i}) for i in range(n)))
    await log.close()


def roll_back(directory: Path, to: Path) -> None:
    """Truncate ``directory`` to the files of an older state ``to`` and copy the older signed
    checkpoint over ``checkpoint``: what an attacker with write access (and no key) can do."""
    old = {p.relative_to(to) for p in to.rglob("*") if p.is_file()}
    for path in sorted(directory.rglob("*"), reverse=True):
        rel = path.relative_to(directory)
        if path.is_file() and rel not in old:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    size = note.parse_checkpoint(note.parse_note((to / "checkpoint").read_bytes()).text).size
    shutil.copyfile(directory / "checkpoints" / str(size), directory / "checkpoint")


def build_and_roll_back(tmp_path: Path, witnesses: list[str] = ()) -> tuple[Path, Path]:  # type: ignore[assignment]
    directory, older = tmp_path / "log", tmp_path / "older"
    asyncio.run(append(directory, tmp_path / "audit.key", 300, witnesses))
    shutil.copytree(directory, older)
    asyncio.run(append(directory, tmp_path / "audit.key", 300, witnesses))
    shutil.copyfile(directory / "checkpoint", tmp_path / "saved-600")  # a verifier kept this copy
    roll_back(directory, older)
    return directory, tmp_path / "saved-600"


def test_a_rolled_back_log_verifies_but_is_reported_unanchored(
    tmp_path: Path, signer: note.Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    directory, _ = build_and_roll_back(tmp_path)
    result = verify.verify(directory, signer.verifier)
    assert result.ok  # every file left is consistent: the directory alone cannot tell
    assert result.size == 300
    assert not result.anchored
    pub = str(tmp_path / "audit.pub")
    assert cli.main(["audit", "verify", "--log", str(directory), "--pub", pub]) == 0
    assert "freshness not anchored" in capsys.readouterr().out
    assert cli.main(["audit", "verify", "--log", str(directory), "--pub", pub, "--require-fresh"]) == 1
    assert "freshness not anchored" in capsys.readouterr().out


def test_a_trusted_checkpoint_or_known_size_exposes_the_rollback(
    tmp_path: Path, signer: note.Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    directory, saved = build_and_roll_back(tmp_path)
    anchors = freshness.Anchors(trusted=[saved], require=True)
    result = verify.verify(directory, signer.verifier, anchors=anchors)
    assert not result.ok
    assert "signed size 600 but the log holds 300 entries" in str(result.first())
    result = verify.verify(directory, signer.verifier, anchors=freshness.Anchors(min_size=600))
    assert "below the known size 600" in str(result.first())
    pub = str(tmp_path / "audit.pub")
    args = ["audit", "verify", "--log", str(directory), "--pub", pub, "--format", "json"]
    assert cli.main([*args, "--trusted-checkpoint", str(saved)]) == 1
    capsys.readouterr()
    assert cli.main([*args, "--min-size", "250", "--require-fresh"]) == 0
    assert '"fresh": true' in capsys.readouterr().out


def test_an_intact_log_is_anchored_by_its_own_newer_state(tmp_path: Path, signer: note.Signer) -> None:
    directory = tmp_path / "log"
    asyncio.run(append(directory, tmp_path / "audit.key", 300))
    saved = tmp_path / "saved"
    shutil.copyfile(directory / "checkpoint", saved)
    asyncio.run(append(directory, tmp_path / "audit.key", 10))
    result = verify.verify(directory, signer.verifier, anchors=freshness.Anchors(trusted=[saved], require=True))
    assert result.ok, result.problems
    assert [a.size for a in result.anchors] == [300]
    forged = tmp_path / "forged"
    forged.write_bytes(note.sign_checkpoint(note.Checkpoint(ORIGIN, 900, b"\x00" * 32), note.generate(ORIGIN)))
    result = verify.verify(directory, signer.verifier, anchors=freshness.Anchors(trusted=[forged]))
    assert "not signed by" in str(result.first())


async def test_the_witness_latest_checkpoint_exposes_a_rollback_to_an_older_cosigned_one(
    tmp_path: Path, signer: note.Signer
) -> None:
    url, wkey, runner = await start(tmp_path, signer.verifier)
    endpoint = f"{url} {wkey.verifier.vkey()}"
    try:
        directory, older = tmp_path / "log", tmp_path / "older"
        await append(directory, tmp_path / "audit.key", 300, [endpoint])
        shutil.copytree(directory, older)
        await append(directory, tmp_path / "audit.key", 300, [endpoint])
        await asyncio.to_thread(roll_back, directory, older)
        # The rolled-back checkpoint still carries the witness's (old) cosignature ...
        result = verify.verify(directory, signer.verifier, [wkey.verifier])
        assert result.ok
        assert result.anchored
        assert "compare with its latest" in result.anchors[0].how
        # ... and the witness's latest, fetched from it, shows the log went back.
        latest_url = f"{url}/{hashlib.sha256(ORIGIN.encode()).hexdigest()}/checkpoint"
        async with aiohttp.ClientSession() as session, session.get(latest_url) as resp:
            latest = tmp_path / "witness-latest"
            latest.write_bytes(await resp.read())
        anchors = freshness.Anchors(trusted=[latest])
        result = verify.verify(directory, signer.verifier, [wkey.verifier], anchors=anchors)
        assert not result.ok
        assert "signed size 600 but the log holds 300" in str(result.first())
    finally:
        await runner.cleanup()


def test_quarantine_is_not_mistaken_for_log_files(tmp_path: Path, signer: note.Signer) -> None:
    directory = tmp_path / "log"
    asyncio.run(append(directory, tmp_path / "audit.key", 3))
    (directory / QUARANTINE / "x" / "tile").mkdir(parents=True)
    (directory / QUARANTINE / "x" / "tile" / "junk").write_bytes(b"cut")
    assert verify.verify(directory, signer.verifier).ok
