"""Crash safety: kill -9 a real writer process in a loop while it appends; every acknowledged
record must survive, the torn tail is recovered on reopen, and the log verifies."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from webhook.audit import note, verify
from webhook.audit.log import AuditLog, read_records

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "portcullis.test/crash"

WRITER = """
import asyncio, sys
from pathlib import Path
from webhook.audit.log import AuditLog

async def main(directory, key, start):
    log = await AuditLog.open(Path(directory), signing_key_path=Path(key), origin=ORIGIN_VALUE, writer="crash",
                              commit_window=0.001, checkpoint_every=97)
    seq = start
    async def one(n):
        index = await log.append("alert", {"seq": n})
        sys.stdout.write(f"{index} {n}\\n")
        sys.stdout.flush()
    while True:
        await asyncio.gather(*(one(seq + i) for i in range(37)))
        seq += 37

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
""".replace("ORIGIN_VALUE", repr(ORIGIN))


@pytest.mark.slow
def test_kill_9_in_a_loop_loses_no_acknowledged_record(tmp_path: Path) -> None:
    signer = note.generate(ORIGIN)
    key = tmp_path / "audit.key"
    key.write_text(signer.private_text())
    directory = tmp_path / "log"
    acked: dict[int, int] = {}
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = 0
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), str(key), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert proc.stdout is not None
        # Wait for some acknowledgements, then kill at a random moment mid-stream.
        want = rng.randint(50, 400)
        got = 0
        deadline = time.monotonic() + 60
        while got < want and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            index, seq = map(int, line.split())
            acked[index] = seq
            got += 1
        os.kill(proc.pid, signal.SIGKILL)
        rest, err = proc.communicate()
        for line in rest.splitlines():  # acknowledged before the kill landed
            index, seq = map(int, line.split())
            acked[index] = seq
        assert got, err
        start = max(acked.values()) + 1000

        stored = {i: rec["content"]["seq"] for i, rec in read_records(directory)}
        missing = {i: s for i, s in acked.items() if stored.get(i) != s}
        assert not missing, f"acknowledged records lost or changed: {sorted(missing)[:10]}"

    async def reopen() -> None:  # recovery then a final checkpoint covering everything
        log = await AuditLog.open(directory, signing_key_path=key, origin=ORIGIN, writer="check")
        await log.close()

    asyncio.run(reopen())
    result = verify.verify(directory, signer.verifier)
    assert result.ok, [p.message for p in result.ordered()]
    assert result.size >= len(acked)
