"""The writer end to end on a real directory: group commit, reopen, torn-tail recovery,
readers, the CLI, and tamper detection (every kind of damage detected and located)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from webhook import cli, errors
from webhook.audit import merkle, note, proofs, store, tiles, verify
from webhook.audit.log import AuditLog, LogClosedError, iter_entries, read_records
from webhook.audit.tiles import ENTRIES

ORIGIN = "portcullis.test/log"


@pytest.fixture
def signer(tmp_path: Path) -> note.Signer:
    s = note.generate(ORIGIN)
    (tmp_path / "audit.key").write_text(s.private_text())
    (tmp_path / "audit.pub").write_text(s.verifier.vkey())
    return s


async def fill(directory: Path, key: Path, rounds: list[int], **kw: object) -> list[int]:
    log = await AuditLog.open(
        directory,
        signing_key_path=key,
        origin=ORIGIN,
        writer="test",
        checkpoint_every=10**9,  # checkpoints exactly at the end of each round (below)
        **kw,  # type: ignore[arg-type]
    )
    out: list[int] = []
    try:
        for n in rounds:
            base = log.size
            out += await asyncio.gather(*(log.append("admission", {"n": base + i}) for i in range(n)))
            await log._checkpoint()  # a checkpoint at each round's end, whatever the writer did meanwhile
    finally:
        await log.close()
    return out


def build(tmp_path: Path, rounds: list[int] = [200, 200, 200]) -> Path:  # noqa: B006
    directory = tmp_path / "log"
    asyncio.run(fill(directory, tmp_path / "audit.key", rounds, commit_window=0, durable=False))
    return directory


def check(directory: Path, signer: note.Signer) -> verify.Result:
    return verify.verify(directory, signer.verifier)


# -- writing and reading -------------------------------------------------------------------------


async def test_appends_return_consecutive_indexes_once_durable(tmp_path: Path, signer: note.Signer) -> None:
    got = await fill(tmp_path / "log", tmp_path / "audit.key", [300, 1, 44])
    assert got == list(range(345))
    result = check(tmp_path / "log", signer)
    assert result.ok, result.problems
    assert result.size == 345
    assert result.checkpoint_size == 345
    assert [i for i, _ in read_records(tmp_path / "log")] == list(range(345))
    assert next(read_records(tmp_path / "log"))[1]["content"] == {"n": 0}


async def test_reopening_continues_the_same_tree_with_consistent_checkpoints(
    tmp_path: Path, signer: note.Signer
) -> None:
    await fill(tmp_path / "log", tmp_path / "audit.key", [70])
    await fill(tmp_path / "log", tmp_path / "audit.key", [300])
    result = check(tmp_path / "log", signer)
    assert result.ok, result.problems
    assert result.checkpoints_checked >= 3  # latest + history at 70 and 370
    leaves = [merkle.leaf_hash(e) for _, e in iter_entries(tmp_path / "log")]
    assert result.root == merkle.root_from_leaves(leaves)


async def test_full_tiles_are_read_only_and_only_unsigned_partials_retire(tmp_path: Path, signer: note.Signer) -> None:
    """A partial tile a signed checkpoint named is kept even once its full tile exists;
    partials no checkpoint covers are retired (tlog-tiles allows it)."""
    log = await AuditLog.open(
        tmp_path / "log", signing_key_path=tmp_path / "audit.key", origin=ORIGIN, writer="t", checkpoint_every=10**9
    )
    for n in (100, 50, 50, 100):  # a checkpoint at 100 only; batches end at 150, 200, 300
        await asyncio.gather(*(log.append("admission", {"n": i}) for i in range(n)))
        if log.size == 100:
            await log._checkpoint()
    await log.close()
    directory = tmp_path / "log"
    assert (directory / tiles.tile_path(0, 0)).stat().st_mode & 0o777 == 0o444
    assert sorted(p.name for p in (directory / "tile/0/000.p").iterdir()) == ["100"]
    assert sorted(p.name for p in (directory / "tile/entries/000.p").iterdir()) == ["100"]
    assert (directory / "tile/entries/001.p/44").exists()
    assert sorted(p.name for p in (directory / "checkpoints").iterdir()) == ["0", "100", "300"]  # 0: signed at creation
    assert check(directory, signer).ok


async def test_groups_on_bundle_boundaries_write_no_partial_and_a_reopened_partial_retires(tmp_path: Path) -> None:
    """A group that ends on a bundle boundary is written as whole bundles: no partial is made,
    so none is deleted a group later. A partial left by an earlier run (here: a log without a
    key, so no checkpoint names it) is still retired once its bundle is full."""
    directory = tmp_path / "log"

    async def run(n: int) -> None:
        log = await AuditLog.open(directory, signing_key_path=None, origin=ORIGIN, writer="t")
        await asyncio.gather(*(log.append("admission", {"n": i}) for i in range(n)))
        await log.close()

    await run(512)
    assert sorted(p.name for p in (directory / "tile/entries").iterdir()) == ["000", "001"]
    await run(40)
    assert sorted(p.name for p in (directory / "tile/entries/002.p").iterdir()) == ["40"]
    await run(216)
    assert not any((directory / "tile/entries/002.p").iterdir())
    assert (directory / "tile/entries/002").exists()
    assert [i for i, _ in iter_entries(directory)] == list(range(768))


def test_a_staged_group_retires_a_bundle_only_if_it_made_a_partial_of_it(tmp_path: Path) -> None:
    tilestore = store.TileStore(tmp_path)
    whole = tilestore.stage([b"x"] * 256)
    assert [rel for rel, _ in whole.files] == ["tile/entries/000"]
    assert not whole.retired
    part, rest = tilestore.stage([b"x"] * 100), tilestore.stage([b"x"] * 156)
    assert [rel for rel, _ in part.files] == ["tile/entries/001.p/100"]
    assert not part.retired
    assert [rel for rel, _ in rest.files] == ["tile/entries/001"]
    assert rest.retired == [tiles.TileId(ENTRIES, 1)]


async def test_appends_after_close_are_refused(tmp_path: Path, signer: note.Signer) -> None:
    log = await AuditLog.open(tmp_path / "log", signing_key_path=tmp_path / "audit.key", origin=ORIGIN, writer="w")
    await log.close()
    with pytest.raises(LogClosedError):
        await log.append("config", {})


async def test_a_bad_record_is_refused_before_it_reaches_the_log(tmp_path: Path, signer: note.Signer) -> None:
    log = await AuditLog.open(tmp_path / "log", signing_key_path=tmp_path / "audit.key", origin=ORIGIN, writer="w")
    with pytest.raises(errors.AuditFormatError):
        await log.append("config", {"too": "x" * 70000})
    assert await log.append("config", {"ok": 1}) == 0
    await log.close()


async def test_append_takes_the_record_at_the_call_and_fails_only_its_own_future(
    tmp_path: Path, signer: note.Signer
) -> None:
    """``append`` is a plain function: the record is staged when it is called, and what cannot be
    encoded (an unknown kind, content nested past any encoder's depth) fails its own future with
    ``RecordError``, never the call, so ``gather`` over a batch keeps every good record."""
    log = await AuditLog.open(tmp_path / "log", signing_key_path=tmp_path / "audit.key", origin=ORIGIN, writer="w")
    nested: dict[str, object] = {}
    inner = nested
    for _ in range(5000):
        inner["a"] = inner = {}
    futures = [
        log.append("config", {"i": 0}),
        log.append("config", nested),
        log.append("nope", {"i": -1}),  # type: ignore[arg-type]
        log.append("config", {"i": 1}),
    ]
    assert all(isinstance(f, asyncio.Future) for f in futures)
    assert log.size == 0
    assert len(log._pending) == 2
    results = await asyncio.gather(*futures, return_exceptions=True)
    await log.close()
    assert results[0] == 0
    assert results[3] == 1
    assert isinstance(results[1], errors.AuditFormatError)
    assert "nested too deeply" in str(results[1])
    assert isinstance(results[2], errors.AuditFormatError)
    assert "kind" in str(results[2])
    assert check(tmp_path / "log", signer).ok


async def test_one_group_mixing_odd_records_keeps_every_good_one_in_order(tmp_path: Path, signer: note.Signer) -> None:
    """The writer encodes a whole group at once: records off the fast path (floats, non-ASCII,
    nulls), one too big only once its float is spelled out, and refused ones in the same group
    leave the good ones written exactly as ``encode_record`` writes them, with no index gap."""
    from webhook.audit import records

    log = await AuditLog.open(
        tmp_path / "log", signing_key_path=tmp_path / "audit.key", origin=ORIGIN, writer="w", commit_window=0.05
    )
    contents: list[dict[str, object]] = [
        {"a": 1},
        {"f": 1.5, "g": [0.1, 2e-7]},
        {"s": "caf\u00e9"},
        {"n": None},
        {"nan": float("nan")},
        {"big": 2**60},
        {"huge": "x" * 70000},
        {"e": "1e5", "tag": "app:1.2.3"},
        {"f": 1e300},
    ]
    results = await asyncio.gather(*(log.append("alert", c) for c in contents), return_exceptions=True)
    await log.close()
    refused = {i for i, r in enumerate(results) if isinstance(r, errors.AuditFormatError)}
    assert refused == {4, 5, 6}
    assert [r for i, r in enumerate(results) if i not in refused] == list(range(6))
    stored = [entry for _, entry in iter_entries(tmp_path / "log")]
    for entry, content in zip(stored, [c for i, c in enumerate(contents) if i not in refused], strict=True):
        record = records.decode_record(entry)  # canonical, or it raises
        assert record["content"] == content
        assert entry == records.encode_record(record["time"], "alert", "w", content)
    assert check(tmp_path / "log", signer).ok


async def test_a_log_without_a_key_writes_tiles_but_no_checkpoint(tmp_path: Path) -> None:
    log = await AuditLog.open(tmp_path / "log", signing_key_path=None, origin=ORIGIN, writer="w")
    assert await log.append("config", {"a": 1}) == 0
    await log.close()
    assert not (tmp_path / "log" / "checkpoint").exists()
    assert next(iter(read_records(tmp_path / "log")))[1]["kind"] == "config"


# -- recovery ------------------------------------------------------------------------------------


def _writable(path: Path) -> None:
    os.chmod(path, 0o644)


def test_a_missing_tile_above_the_checkpoint_is_rebuilt_from_the_entries(
    tmp_path: Path, signer: note.Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash after the bundle was renamed but before its tiles: only above the checkpoint."""
    directory = build(tmp_path, [200, 100])
    (directory / "checkpoint").write_bytes((directory / "checkpoints/200").read_bytes())
    (directory / "checkpoints/300").unlink()  # the crash came before the checkpoint of 300
    (directory / "tile/0/001.p/44").unlink()
    (directory / "tile/0/000").unlink()
    with caplog.at_level(logging.WARNING):
        asyncio.run(fill(directory, tmp_path / "audit.key", [10]))
    assert "rebuilding missing tile tile/0/000" in caplog.text
    assert check(directory, signer).ok


def test_a_torn_tail_above_the_checkpoint_is_quarantined_not_deleted(
    tmp_path: Path, signer: note.Signer, caplog: pytest.LogCaptureFixture
) -> None:
    directory = build(tmp_path, [300])
    torn = {
        "tile/entries/001.p/50": b"\x00\x05ab",  # torn, never acknowledged
        "tile/0/001.p/50": b"\x00" * 50 * 32,
        "tile/0/003": b"\x00" * 8192,
        "tile/0/002.p/1.tmp": b"half",
    }
    for rel, data in torn.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(data)
    with caplog.at_level(logging.WARNING):
        asyncio.run(fill(directory, tmp_path / "audit.key", [1]))
    assert "torn tail" in caplog.text
    (kept,) = (directory / "quarantine").iterdir()
    assert {rel: (kept / rel).read_bytes() for rel in torn} == torn
    result = check(directory, signer)
    assert result.ok, result.problems
    assert result.size == 301
    assert any("quarantine/" in w for w in result.warnings)


# -- tampering: every kind detected and located ----------------------------------------------------


def _rewrite_bundle(directory: Path, rel: str, change: object) -> None:
    path = directory / rel
    _writable(path)
    entries = tiles.decode_bundle(path.read_bytes())
    entries = change(entries)  # type: ignore[operator]
    path.write_bytes(b"".join(tiles.encode_bundle_entry(e) for e in entries))


def _flip(directory: Path, rel: str, offset: int) -> None:
    path = directory / rel
    _writable(path)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def tamper_flip_entry_byte(d: Path) -> None:
    _flip(d, "tile/entries/001", 2 + 40)  # inside record 256


def tamper_flip_tile_hash(d: Path) -> None:
    _flip(d, "tile/0/001", 32 * 5 + 3)  # leaf hash 261


def tamper_delete_record(d: Path) -> None:
    _rewrite_bundle(d, "tile/entries/001", lambda es: es[:10] + es[11:] + [es[-1]])


def tamper_reorder_records(d: Path) -> None:
    _rewrite_bundle(d, "tile/entries/001", lambda es: [*es[:20], es[21], es[20], *es[22:]])


def tamper_duplicate_record(d: Path) -> None:
    _rewrite_bundle(d, "tile/entries/001", lambda es: [*es[:30], es[29], *es[31:]])


def tamper_truncate_bundle(d: Path) -> None:
    path = d / "tile/entries/002.p/88"
    _writable(path)
    path.write_bytes(path.read_bytes()[:-7])


def tamper_delete_bundle(d: Path) -> None:
    (d / "tile/entries/001").unlink()


def tamper_swap_segments(d: Path) -> None:
    a, b = d / "tile/entries/000", d / "tile/entries/001"
    _writable(a)
    _writable(b)
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def tamper_forge_checkpoint(d: Path) -> None:
    path = d / "checkpoint"
    lines = path.read_text().split("\n")
    lines[1] = "601"
    path.write_text("\n".join(lines))


def tamper_unknown_file(d: Path) -> None:
    (d / "tile/0/notes.txt").write_text("hello")


def tamper_rewrite_everything_consistently(d: Path) -> None:
    """An attacker without the key alters record 450 and recomputes every tile."""
    _rewrite_bundle(d, "tile/entries/001", lambda es: [*es[:194], es[194].replace(b'"n":450', b'"n":451'), *es[195:]])
    leaves = [merkle.leaf_hash(e) for _, e in iter_entries(d)]
    for level0 in (0, 1):
        path = d / tiles.tile_path(0, level0)
        _writable(path)
        path.write_bytes(b"".join(leaves[level0 * 256 : level0 * 256 + 256]))
        for path in (d / tiles.tile_path(0, level0)).parent.glob(f"{level0:03d}.p/*"):
            _writable(path)
            path.write_bytes(b"".join(leaves[level0 * 256 : level0 * 256 + int(path.name)]))
    for path in (d / "tile/1/000.p").iterdir():
        _writable(path)
        w = int(path.name)
        path.write_bytes(b"".join(merkle.fold_complete(leaves[i * 256 : i * 256 + 256]) for i in range(w)))


TAMPERS = {
    tamper_flip_entry_byte: "entry 256",
    tamper_flip_tile_hash: "leaf 261",
    tamper_delete_record: "leaf 266",
    tamper_reorder_records: "leaf 276",
    tamper_duplicate_record: "leaf 286",
    tamper_truncate_bundle: "tile/entries/002.p/88: byte 8265",
    tamper_delete_bundle: "tile/entries/001: missing",
    tamper_swap_segments: "leaf 0",
    tamper_forge_checkpoint: "checkpoint",
    tamper_unknown_file: "tile/0/notes.txt",
    tamper_rewrite_everything_consistently: "400..599",
}


@pytest.mark.parametrize(("tamper", "where"), TAMPERS.items(), ids=[f.__name__ for f in TAMPERS])
def test_tampering_is_detected_and_located(tmp_path: Path, signer: note.Signer, tamper: object, where: str) -> None:
    directory = build(tmp_path)
    assert check(directory, signer).ok
    tamper(directory)  # type: ignore[operator]
    result = check(directory, signer)
    assert not result.ok
    first = result.first()
    assert first is not None
    assert where in first.message, [p.message for p in result.ordered()]


@pytest.mark.parametrize("tamper", [None, *TAMPERS], ids=["intact", *(f.__name__ for f in TAMPERS)])
def test_verify_reports_the_same_with_and_without_the_c_accelerator(
    tmp_path: Path, signer: note.Signer, tamper: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every report, in order, is the same whether ``tiles`` hashes in C or in Python."""
    directory = build(tmp_path)
    if tamper is not None:
        tamper(directory)  # type: ignore[operator]
    with_accel = verify.verify(directory, signer.verifier, check_records=True).ordered()
    monkeypatch.setattr(tiles, "_accel", None)
    assert verify.verify(directory, signer.verifier, check_records=True).ordered() == with_accel


@pytest.mark.parametrize("tamper", [None, *TAMPERS], ids=["intact", *(f.__name__ for f in TAMPERS)])
def test_verify_reports_the_same_with_record_check_workers(
    tmp_path: Path, signer: note.Signer, tamper: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every report, in the same order, whether records are checked here or by forked workers
    (the threshold is lowered so this 3-bundle log is dealt out to two of them)."""
    directory = build(tmp_path)
    if tamper is not None:
        tamper(directory)  # type: ignore[operator]
    alone = verify.verify(directory, signer.verifier, check_records=True, jobs=1)
    monkeypatch.setattr(verify, "PARALLEL_MIN_BUNDLES", 1)
    shared = verify.verify(directory, signer.verifier, check_records=True, jobs=2)
    full_bundles = len(list((directory / "tile/entries").glob("[0-9][0-9][0-9]")))
    assert (alone.record_jobs, shared.record_jobs) == (1, 2 if full_bundles >= 2 else 1)
    assert shared.problems == alone.problems  # the raw list, not only the ranked one
    assert replace(shared, record_jobs=1) == alone


def test_a_checkpoint_signed_by_another_key_is_rejected(tmp_path: Path, signer: note.Signer) -> None:
    directory = build(tmp_path)
    other = note.generate(ORIGIN)
    cp = note.Checkpoint(ORIGIN, 600, check(directory, signer).root)
    (directory / "checkpoint").write_bytes(note.sign_checkpoint(cp, other))
    result = check(directory, signer)
    assert not result.ok
    assert "not signed by" in str(result.first())


# -- CLI ---------------------------------------------------------------------------------------------


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().out


def test_cli_keygen_append_verify_prove_consistency_and_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, log = tmp_path / "keys", tmp_path / "log"
    code, out = run_cli(["audit", "keygen", "--out", str(keys), "--name", ORIGIN], capsys)
    assert code == 0
    assert out.startswith(ORIGIN + "+")
    assert (keys / "audit.key").stat().st_mode & 0o777 == 0o600
    lines = "".join(json.dumps({"i": i}) + "\n" for i in range(300)) + '{"kind": "alert", "content": {"x": 1}}\n'
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    code, out = run_cli(["audit", "append", "--log", str(log), "--key", str(keys / "audit.key")], capsys)
    assert code == 0
    assert out.startswith("tree_size 301 root_hash ")
    pub = str(keys / "audit.pub")
    assert run_cli(["audit", "verify", "--log", str(log), "--pub", pub], capsys)[0] == 0

    code, out = run_cli(["audit", "prove", "--log", str(log), "--index", "257"], capsys)
    proof = json.loads(out)
    assert set(proof) == {"leaf_index", "tree_size", "leaf_hash", "root_hash", "hashes"}
    entry = proofs.read_entry(log, 257, 301)
    assert proof["leaf_hash"] == merkle.leaf_hash(entry).hex()
    merkle.verify_inclusion(
        bytes.fromhex(proof["leaf_hash"]), 257, 301, [bytes.fromhex(h) for h in proof["hashes"]],
        bytes.fromhex(proof["root_hash"]),
    )  # fmt: skip

    code, out = run_cli(["audit", "consistency", "--log", str(log), "--old", "100", "--new", "301"], capsys)
    cons = json.loads(out)
    assert set(cons) == {"old_size", "new_size", "old_root", "new_root", "hashes"}
    merkle.verify_consistency(
        100, 301, bytes.fromhex(cons["old_root"]), bytes.fromhex(cons["new_root"]),
        [bytes.fromhex(h) for h in cons["hashes"]],
    )  # fmt: skip

    proof_file = tmp_path / "r.tlog-proof"
    run_cli(
        ["audit", "prove", "--log", str(log), "--index", "300", "--format", "tlog-proof", "--out", str(proof_file)],
        capsys,
    )
    assert proof_file.read_text().startswith("c2sp.org/tlog-proof@v1\nextra ")
    assert run_cli(["audit", "verify-proof", "--proof", str(proof_file), "--pub", pub], capsys)[0] == 0
    (tmp_path / "wrong").write_bytes(entry)
    assert (
        run_cli(
            ["audit", "verify-proof", "--proof", str(proof_file), "--pub", pub, "--record", str(tmp_path / "wrong")],
            capsys,
        )[0]
        == 1
    )

    code, out = run_cli(["audit", "tail", "--log", str(log), "-n", "2"], capsys)
    assert [json.loads(line)["index"] for line in out.splitlines()] == [299, 300]
    code, out = run_cli(["audit", "show", "--log", str(log), "--kind", "alert"], capsys)
    assert json.loads(out)["record"]["content"] == {"x": 1}

    _flip(log, "tile/entries/000", 100)
    code, out = run_cli(["audit", "verify", "--log", str(log), "--pub", pub], capsys)
    assert code == 1
    assert "TAMPERED: first bad place" in out


def test_cli_input_errors_exit_2_with_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, signer: note.Signer
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"ok": 1}\nnot json\n'))
    code = cli.main(["audit", "append", "--log", str(tmp_path / "log"), "--key", str(tmp_path / "audit.key")])
    assert code == 2
    assert "<stdin>:2" in capsys.readouterr().err
    assert not (tmp_path / "log").exists()
    assert cli.main(["audit", "prove", "--log", str(tmp_path / "nolog"), "--index", "0"]) == 2
    assert cli.main(["audit", "verify", "--log", str(tmp_path), "--pub", "garbage+1+2"]) == 2
    pub = str(tmp_path / "audit.pub")
    assert cli.main(["audit", "verify", "--log", str(tmp_path / "missing"), "--pub", pub]) == 2
    # the log's own key is not a witness: it must not count as a cosignature
    assert cli.main(["audit", "verify", "--log", str(tmp_path), "--pub", pub, "--witness-key", pub]) == 2


def test_verify_takes_several_logs_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = []
    for name in ("a", "b"):
        s = note.generate(f"portcullis.test/{name}")
        (tmp_path / f"{name}.key").write_text(s.private_text())
        (tmp_path / f"{name}.pub").write_text(s.verifier.vkey())
        asyncio.run(_fill_named(tmp_path / name, tmp_path / f"{name}.key", s.name))
        args += ["--log", str(tmp_path / name), "--pub", str(tmp_path / f"{name}.pub")]
    code, out = run_cli(["audit", "verify", *args, "--format", "json"], capsys)
    assert code == 0
    assert [r["origin"] for r in json.loads(out)["logs"]] == ["portcullis.test/a", "portcullis.test/b"]


async def _fill_named(directory: Path, key: Path, origin: str) -> None:
    log = await AuditLog.open(directory, signing_key_path=key, origin=origin, writer="w")
    await log.append("config", {"origin": origin})
    await log.close()


def test_entries_are_found_in_the_bundle_their_index_names(tmp_path: Path, signer: note.Signer) -> None:
    directory = build(tmp_path, [600])
    assert tiles.decode_bundle((directory / tiles.tile_path(ENTRIES, 2, 88)).read_bytes())[0] == proofs.read_entry(
        directory, 512, 600
    )


def test_a_published_checkpoint_exposes_truncation_of_the_whole_log(tmp_path: Path, signer: note.Signer) -> None:
    published = tmp_path / "published"
    asyncio.run(fill(tmp_path / "log", tmp_path / "audit.key", [300], witnesses=[f"dir:{published}"]))
    assert verify.verify(tmp_path / "log", signer.verifier, published=[published]).ok
    # Whoever holds the key rewrites history: a fresh, shorter log, validly signed.
    shutil.rmtree(tmp_path / "log")
    asyncio.run(fill(tmp_path / "log", tmp_path / "audit.key", [10]))
    assert verify.verify(tmp_path / "log", signer.verifier).ok  # looks fine on its own
    result = verify.verify(tmp_path / "log", signer.verifier, published=[published])
    assert not result.ok
    assert "records removed" in str(result.first())


async def test_only_one_writer_may_open_a_log(tmp_path: Path, signer: note.Signer) -> None:
    first = await AuditLog.open(tmp_path / "log", signing_key_path=tmp_path / "audit.key", origin=ORIGIN, writer="a")
    with pytest.raises(errors.AuditFormatError, match="another writer"):
        await AuditLog.open(tmp_path / "log", signing_key_path=tmp_path / "audit.key", origin=ORIGIN, writer="b")
    await first.close()
    second = await AuditLog.open(tmp_path / "log", signing_key_path=tmp_path / "audit.key", origin=ORIGIN, writer="b")
    await second.close()


def test_a_crash_leftover_temp_file_is_a_warning_not_tampering(tmp_path: Path, signer: note.Signer) -> None:
    directory = build(tmp_path, [10])
    (directory / "tile/0/000.p/11.tmp").write_bytes(b"half")
    result = check(directory, signer)
    assert result.ok
    assert "unfinished write" in result.warnings[0]
