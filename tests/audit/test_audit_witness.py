"""C2SP tlog-witness against a real aiohttp witness on 127.0.0.1: the log pushes checkpoints,
the witness checks signatures and consistency, answers cosignature/v1 lines, 409/403/404/422,
and verify / tlog-proof require k of n cosignatures."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from webhook.audit import merkle, note, proofs, tiles, verify, witness
from webhook.audit.log import AuditLog

ORIGIN = "portcullis.test/witnessed"


class Running:
    def __init__(self, url: str, key: note.Signer, wit: witness.Witness) -> None:
        self.url, self.key, self.wit = url, key, wit

    @property
    def endpoint(self) -> str:
        return f"{self.url} {self.key.verifier.vkey()}"


@pytest.fixture
def log_key(tmp_path: Path) -> note.Signer:
    s = note.generate(ORIGIN)
    (tmp_path / "audit.key").write_text(s.private_text())
    return s


async def start(tmp_path: Path, name: str, log_keys: list[note.Verifier]) -> tuple[Running, web.AppRunner]:
    key = note.generate(f"witness.test/{name}", note.SIG_COSIGNATURE_V1)
    wit = witness.Witness(key, log_keys, tmp_path / f"state-{name}")
    runner = web.AppRunner(witness.make_app(wit))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return Running(f"http://127.0.0.1:{port}", key, wit), runner


@pytest.fixture
async def w1(tmp_path: Path, log_key: note.Signer) -> AsyncIterator[Running]:
    running, runner = await start(tmp_path, "w1", [log_key.verifier])
    yield running
    await runner.cleanup()


@pytest.fixture
async def w2(tmp_path: Path, log_key: note.Signer) -> AsyncIterator[Running]:
    running, runner = await start(tmp_path, "w2", [log_key.verifier])
    yield running
    await runner.cleanup()


async def write_log(tmp_path: Path, endpoints: list[str], rounds: list[int]) -> Path:
    directory = tmp_path / "log"
    log = await AuditLog.open(
        directory, signing_key_path=tmp_path / "audit.key", origin=ORIGIN, writer="w",
        commit_window=0, checkpoint_every=1, witnesses=endpoints,
    )  # fmt: skip
    for n in rounds:
        await asyncio.gather(*(log.append("config", {"i": i}) for i in range(n)))
        await asyncio.sleep(0.05)  # let the push of this checkpoint run
    await log.close()
    return directory


async def test_the_log_collects_cosignatures_and_verify_counts_them(
    tmp_path: Path, log_key: note.Signer, w1: Running, w2: Running
) -> None:
    directory = await write_log(tmp_path, [w1.endpoint, w2.endpoint], [10, 300, 5])
    wkeys = [w1.key.verifier, w2.key.verifier]
    result = verify.verify(directory, log_key.verifier, wkeys, 2)
    assert result.ok, result.ordered()
    assert len(result.cosigners) == 2
    assert w1.wit.latest(ORIGIN) == note.parse_checkpoint(note.parse_note((directory / "checkpoint").read_bytes()).text)
    stranger = note.generate("witness.test/other", note.SIG_COSIGNATURE_V1).verifier
    short = verify.verify(directory, log_key.verifier, [*wkeys, stranger], 3)
    assert not short.ok
    assert "2 of 3" in str(short.first())


async def test_a_tlog_proof_carries_cosignatures_and_verifies_offline(
    tmp_path: Path, log_key: note.Signer, w1: Running
) -> None:
    directory = await write_log(tmp_path, [w1.endpoint], [40])
    text = proofs.tlog_proof_text(proofs.inclusion(directory, 17)).encode()
    assert text.count("— witness.test/w1 ".encode()) == 1
    assert proofs.verify_tlog_proof(text, None, log_key.verifier, [w1.key.verifier], 1) is None
    other = note.generate("witness.test/w9", note.SIG_COSIGNATURE_V1).verifier
    assert "0 of 1" in str(proofs.verify_tlog_proof(text, None, log_key.verifier, [other], 1))


def _checkpoint(signer: note.Signer, leaves: list[bytes], origin: str = ORIGIN) -> bytes:
    cp = note.Checkpoint(origin, len(leaves), merkle.root_from_leaves(leaves))
    return note.sign_checkpoint(cp, signer)


async def post(url: str, body: bytes) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.post(url + "/add-checkpoint", data=body) as resp:
        return resp.status, await resp.text(), resp.content_type


async def test_add_checkpoint_follows_the_protocol(tmp_path: Path, log_key: note.Signer, w1: Running) -> None:
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(20)]
    nodes = _memory(leaves)
    cp5, cp20 = _checkpoint(log_key, leaves[:5]), _checkpoint(log_key, leaves)

    status, text, _ = await post(w1.url, witness.encode_request(0, [], cp5))
    assert status == 200
    assert text.startswith("— witness.test/w1 ")
    signed = note.parse_note(cp5 + text.encode())
    assert note.verified_by(signed, [w1.key.verifier])

    status, text, ctype = await post(w1.url, witness.encode_request(0, [], cp20))
    assert (status, text, ctype) == (409, "5\n", "text/x.tlog.size")

    bad = [b"\x00" * 32] * len(merkle.consistency_proof(nodes, 5, 20))
    status, _, _ = await post(w1.url, witness.encode_request(5, bad, cp20))
    assert status == 422

    status, text, _ = await post(w1.url, witness.encode_request(5, merkle.consistency_proof(nodes, 5, 20), cp20))
    assert status == 200

    forked = _checkpoint(log_key, [*leaves[:19], merkle.leaf_hash(b"fork")])
    status, _, _ = await post(w1.url, witness.encode_request(20, [], forked))
    assert status == 422  # same size, different root

    stranger = note.generate(ORIGIN)
    status, _, _ = await post(w1.url, witness.encode_request(20, [], _checkpoint(stranger, leaves)))
    assert status == 403
    status, _, _ = await post(w1.url, witness.encode_request(0, [], _checkpoint(log_key, leaves, "other.test/log")))
    assert status == 404
    status, _, _ = await post(w1.url, b"old 01\n\n" + cp20)
    assert status == 400
    status, _, _ = await post(w1.url, witness.encode_request(30, [], cp20))
    assert status == 400

    origin_hash = __import__("hashlib").sha256(ORIGIN.encode()).hexdigest()
    async with aiohttp.ClientSession() as session, session.get(f"{w1.url}/{origin_hash}/checkpoint") as resp:
        body = await resp.read()
    assert resp.status == 200
    assert body.startswith(cp20.split(b"\n\n")[0])


async def test_an_unreachable_witness_never_blocks_appends(tmp_path: Path, log_key: note.Signer) -> None:
    directory = await write_log(tmp_path, ["http://127.0.0.1:9"], [5])
    assert verify.verify(directory, log_key.verifier).ok


def _memory(leaves: list[bytes]) -> merkle.NodeSource:
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        prev = levels[-1]
        levels.append([merkle.node_hash(prev[i], prev[i + 1]) for i in range(0, len(prev) - 1, 2)])
    return lambda h, i: levels[h][i]


def test_request_bodies_round_trip() -> None:
    body = witness.encode_request(
        3, [b"\x01" * 32], b"o\n3\n" + base64.b64encode(b"\x02" * 32) + "\n\n— o AAAA\n".encode()
    )
    req = witness.parse_request(body)
    assert (req.old, req.proof) == (3, [b"\x01" * 32])
    assert req.checkpoint.startswith(b"o\n3\n")
    assert tiles.TILE_WIDTH == 256


async def test_witness_state_is_fsynced_then_renamed_then_its_directory_fsynced(
    tmp_path: Path, log_key: note.Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Power-loss safety: the state file's bytes reach the disk before its rename, and the
    directory entry after it, so a witness never comes back at an older size (and cosigns a
    fork). Real syscalls, recorded as they run."""
    import os

    key = note.generate("witness.test/durable", note.SIG_COSIGNATURE_V1)
    state = tmp_path / "state"
    wit = witness.Witness(key, [log_key.verifier], state)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(3)]
    await wit.add_checkpoint(witness.parse_request(witness.encode_request(0, [], _checkpoint(log_key, leaves))))
    target = str(wit._state_path(ORIGIN))
    assert events == [("fsync", target + ".tmp"), ("rename", target), ("fsync", str(state))]
    restarted = witness.Witness(key, [log_key.verifier], state)
    latest = restarted.latest(ORIGIN)
    assert latest is not None
    assert latest.size == 3
