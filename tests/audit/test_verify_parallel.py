"""verify's record check in forked worker processes (``record_workers``): the same reports, in
the same order, as checking every record in one process, for bad records in the first, a
middle and the last bundle and a torn partial bundle; small logs never fork; a worker that is
killed (a real SIGKILL) or crashes is an error, never a clean verdict."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from webhook import cli, errors
from webhook.audit import note, record_workers, records, tiles, verify
from webhook.audit.log import AuditLog
from webhook.audit.tiles import ENTRIES, TILE_WIDTH

ORIGIN = "portcullis.test/log"
SIZE = 5 * TILE_WIDTH + 100  # five full bundles and a partial one


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, note.Signer]:
    """One log for the whole module (tests copy it before damaging it)."""
    root = tmp_path_factory.mktemp("parallel")
    signer = note.generate(ORIGIN)
    (root / "audit.key").write_text(signer.private_text())

    async def fill() -> None:
        log = await AuditLog.open(
            root / "log", signing_key_path=root / "audit.key", origin=ORIGIN, writer="test", commit_window=0
        )
        try:
            for start in range(0, SIZE, 300):  # several commits: partial bundles and checkpoints
                n = min(300, SIZE - start)
                await asyncio.gather(*(log.append("admission", {"n": start + i, "image": "app:1.2"}) for i in range(n)))
        finally:
            await log.close()

    asyncio.run(fill())
    return root / "log", signer


@pytest.fixture
def log(pristine: tuple[Path, note.Signer], tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(pristine[0], tmp_path / "log")
    for path in (tmp_path / "log").rglob("*"):
        if path.is_file():
            path.chmod(0o644)  # full tiles are written read-only
    return tmp_path / "log"


@pytest.fixture
def signer(pristine: tuple[Path, note.Signer]) -> note.Signer:
    return pristine[1]


@pytest.fixture
def workers_for_small_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "PARALLEL_MIN_BUNDLES", 2)


def _bundle_file(directory: Path, index: int) -> Path:
    bundle = index // TILE_WIDTH
    full = directory / tiles.tile_path(ENTRIES, bundle)
    if full.exists():
        return full
    partials = full.parent.glob(f"{bundle:03d}.p/*")
    return max(partials, key=lambda p: int(p.name))


def _bad_record(directory: Path, index: int, how: bytes = b'"n": ') -> None:
    """Entry ``index`` made non-canonical (a space after a colon), in its widest bundle file."""
    path = _bundle_file(directory, index)
    entries = tiles.decode_bundle(path.read_bytes())
    j = index % TILE_WIDTH
    entries[j] = entries[j].replace(b'"n":', how, 1)
    path.write_bytes(b"".join(tiles.encode_bundle_entry(e) for e in entries))


def _torn_partial(directory: Path) -> None:
    path = _bundle_file(directory, SIZE - 1)
    path.write_bytes(path.read_bytes()[:-5])


def _both(directory: Path, signer: note.Signer, jobs: int = 2) -> tuple[verify.Result, verify.Result]:
    alone = verify.verify(directory, signer.verifier, check_records=True, jobs=1)
    shared = verify.verify(directory, signer.verifier, check_records=True, jobs=jobs)
    return alone, shared


DAMAGE = {
    "intact": [],
    "first bundle": [0],
    "middle bundle": [2 * TILE_WIDTH + 17],
    "last full bundle": [5 * TILE_WIDTH - 1],
    "partial bundle": [SIZE - 1],
    "every bundle": [3, TILE_WIDTH + 4, 2 * TILE_WIDTH + 5, 3 * TILE_WIDTH, 4 * TILE_WIDTH + 255, SIZE - 2],
}


@pytest.mark.usefixtures("workers_for_small_logs")
@pytest.mark.parametrize("busy", [False, True], ids=["workers", "every-other-busy"])
@pytest.mark.parametrize("jobs", [2, 3, 7])
@pytest.mark.parametrize("where", DAMAGE.values(), ids=DAMAGE.keys())
def test_workers_report_exactly_what_one_process_does(
    log: Path, signer: note.Signer, where: list[int], jobs: int, busy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``busy``: every other bundle finds all workers busy and is checked in the main process,
    between the workers' ones; the reports still interleave exactly as one process makes them."""
    if busy:
        submit = record_workers.Pool.try_submit
        turn = itertools.cycle([True, False])
        monkeypatch.setattr(record_workers.Pool, "try_submit", lambda pool, data: next(turn) and submit(pool, data))
    for index in where:
        _bad_record(log, index)
    alone, shared = _both(log, signer, jobs)
    assert alone.record_jobs == 1
    assert shared.record_jobs == min(jobs, 5)  # never more workers than full bundles
    assert shared.problems == alone.problems  # the same reports in the same order
    assert replace(shared, record_jobs=1) == alone
    assert [p.position for p in alone.problems if p.record and "entry" in p.message] == where


@pytest.mark.usefixtures("workers_for_small_logs")
def test_workers_and_a_torn_partial_bundle_with_bad_records_around_it(log: Path, signer: note.Signer) -> None:
    _bad_record(log, 1)
    _bad_record(log, 4 * TILE_WIDTH + 9, b'"n":0')  # a leading zero: not JSON at all
    _torn_partial(log)
    alone, shared = _both(log, signer)
    assert shared.record_jobs == 2
    assert not alone.ok
    assert shared.problems == alone.problems
    assert replace(shared, record_jobs=1) == alone
    assert any("entry 1033" in p.message and "byte" in p.message for p in alone.problems)


@pytest.mark.usefixtures("workers_for_small_logs")
def test_the_cli_prints_the_same_report_with_any_number_of_jobs(
    log: Path, signer: note.Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _bad_record(log, TILE_WIDTH + 3)
    (tmp_path / "audit.pub").write_text(signer.verifier.vkey())
    outputs = []
    for jobs in ("1", "2", "4"):
        argv = ["audit", "verify", "--log", str(log), "--pub", str(tmp_path / "audit.pub"), "--format", "json"]
        assert cli.main([*argv, "--jobs", jobs]) == 1
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1] == outputs[2]
    assert "entry 259" in outputs[0]["logs"][0]["first_problem"]


@pytest.mark.parametrize("bad", ["0", "-1", "two", ""])
def test_jobs_must_be_a_positive_number(log: Path, tmp_path: Path, bad: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["audit", "verify", "--log", str(log), "--pub", "x", "--jobs", bad])
    assert exc.value.code == 2


def test_a_small_log_is_checked_in_this_process(
    log: Path, signer: note.Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below ``PARALLEL_MIN_BUNDLES`` full bundles nothing is forked, whatever ``jobs`` says."""
    assert SIZE // TILE_WIDTH < verify.PARALLEL_MIN_BUNDLES

    def no_fork() -> int:
        raise AssertionError("forked for a small log")

    monkeypatch.setattr(os, "fork", no_fork)
    result = verify.verify(log, signer.verifier, jobs=8)
    assert result.ok, result.problems
    assert result.record_jobs == 1


def _children() -> set[int]:
    """Our child processes, zombies included, read from /proc (nothing is reaped: other tests'
    children, such as the session's registry, are not ours to wait for)."""
    me, found = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == me:
            found.add(int(stat.parent.name))
    return found


_BEFORE: set[int] = set()


@pytest.fixture(autouse=True)
def _children_before() -> None:
    _BEFORE.clear()
    _BEFORE.update(_children())


def _no_children_left() -> bool:
    """No child started by this test is left, running or unreaped."""
    return not (_children() - _BEFORE)


def _die(how: str) -> object:
    """A worker's check that dies for real (SIGKILL) or crashes. Only in workers: the main
    process checks the bundles no worker has room for with ``records`` directly. The first
    bundle always goes to a worker (every pipe is empty), so at least one worker dies."""

    def check_bundle(data: bytes) -> record_workers.Found:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise MemoryError("worker ran out of memory")

    return check_bundle


@pytest.mark.usefixtures("workers_for_small_logs")
@pytest.mark.parametrize(
    ("how", "said"), [("kill", "was killed by signal 9 (SIGKILL)"), ("crash", "exited with status 1")]
)
def test_a_worker_that_dies_is_an_error_never_a_clean_log(
    log: Path, signer: note.Signer, monkeypatch: pytest.MonkeyPatch, how: str, said: str
) -> None:
    monkeypatch.setattr(record_workers, "check_bundle", _die(how))
    with pytest.raises(errors.AuditWorkerError) as exc:
        verify.verify(log, signer.verifier, jobs=2)
    assert said in str(exc.value)
    assert re.search(r"record check worker [12] of 2 \(pid \d+\)", str(exc.value))
    assert "were not checked" in str(exc.value)
    assert _no_children_left()


@pytest.mark.usefixtures("workers_for_small_logs")
def test_a_killed_worker_makes_the_cli_exit_2_with_the_reason(
    log: Path, signer: note.Signer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(record_workers, "check_bundle", _die("kill"))
    (tmp_path / "audit.pub").write_text(signer.verifier.vkey())
    code = cli.main(["audit", "verify", "--log", str(log), "--pub", str(tmp_path / "audit.pub"), "--jobs", "2"])
    captured = capsys.readouterr()
    assert code == 2
    assert "OK" not in captured.out
    assert "SIGKILL" in captured.err
    assert _no_children_left()


@pytest.mark.usefixtures("workers_for_small_logs")
def test_an_error_in_the_main_process_kills_and_reaps_the_workers(
    log: Path, signer: note.Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tree check failing half-way (here: a tile read raising) leaves no worker behind."""
    calls = [0]
    leaves = verify._TreeCheck.leaves

    def failing(self: verify._TreeCheck, hashes: bytes) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError("disk gone")
        leaves(self, hashes)

    monkeypatch.setattr(verify._TreeCheck, "leaves", failing)
    with pytest.raises(OSError, match="disk gone"):
        verify.verify(log, signer.verifier, jobs=2)
    assert _no_children_left()


@pytest.mark.usefixtures("workers_for_small_logs")
def test_workers_report_the_same_without_the_c_accelerator(
    log: Path, signer: note.Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forked workers inherit the pure-Python code (``tiles.split_bundle`` falls back to
    ``decode_bundle``, ``records`` to its regex float scan): the reports do not change."""
    _bad_record(log, 7)
    _bad_record(log, 3 * TILE_WIDTH + 1)
    _torn_partial(log)
    with_accel = verify.verify(log, signer.verifier, jobs=1)
    monkeypatch.setattr(tiles, "_accel", None)
    monkeypatch.setattr(records, "_accel", None)
    alone, shared = _both(log, signer)
    assert shared.record_jobs == 2
    assert shared.problems == alone.problems == with_accel.problems


@pytest.mark.usefixtures("workers_for_small_logs")
def test_no_fork_while_other_threads_run(log: Path, signer: note.Signer) -> None:
    """A fork copies whatever lock another thread holds at that moment: one process then."""
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        result = verify.verify(log, signer.verifier, jobs=2)
    finally:
        release.set()
        other.join()
    assert result.ok
    assert result.record_jobs == 1


@pytest.mark.usefixtures("workers_for_small_logs")
def test_a_worker_killed_from_outside_is_an_error(
    log: Path, signer: note.Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the OOM killer or an operator would: SIGKILL to a worker's pid while verify runs.
    A worker answers only once its pipe closes, so it cannot have answered yet."""
    submit = record_workers.Pool.try_submit
    killed: list[int] = []

    def submit_then_kill(pool: record_workers.Pool, data: bytes) -> bool:
        sent = submit(pool, data)
        if not killed:
            killed.append(pool._pids[0])
            os.kill(pool._pids[0], signal.SIGKILL)
        return sent

    monkeypatch.setattr(record_workers.Pool, "try_submit", submit_then_kill)
    with pytest.raises(errors.AuditWorkerError) as exc:
        verify.verify(log, signer.verifier, jobs=2)
    assert f"record check worker 1 of 2 (pid {killed[0]}) was killed by signal 9 (SIGKILL)" in str(exc.value)
    assert _no_children_left()
