"""The disk fills while the audit log appends: no acknowledged record is lost, the failure is loud,
and the webhook answers per its failure mode. Uses a real, tiny tmpfs (root only)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from webhook import cli
from webhook.audit import log as audit_log

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_disk_full_loses_no_acknowledged_record(tiny_disk: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert cli.main(["audit", "keygen", "--out", str(keys), "--name", "test.local/full"]) == 0
    directory = tiny_disk / "log"
    log = await audit_log.AuditLog.open(directory, signing_key_path=keys / "audit.key", origin="test.local/full",
                                        writer="w", commit_window=0.001, checkpoint_every=50)  # fmt: skip
    acknowledged: dict[int, str] = {}
    failure: BaseException | None = None
    payload = "x" * 2000
    for i in range(2000):
        try:
            index = await log.append("admission", {"n": i, "pad": payload})
        except Exception as exc:
            failure = exc
            break
        acknowledged[index] = str(i)
    with pytest.raises(Exception):  # noqa: B017 - once failed, the log refuses further appends
        await log.append("admission", {"n": -1})
    with contextlib.suppress(Exception):  # the final checkpoint cannot be written on a full disk either
        await log.close()
    assert failure is not None, "a 256 KiB disk must fill up"
    assert "No space left" in str(failure) or "ENOSPC" in repr(failure) or "space" in repr(failure).lower()
    # Free space, then reopen: recovery must keep every acknowledged record.
    stored = {index: str(record["content"]["n"]) for index, record in audit_log.read_records(directory)}
    for index, n in acknowledged.items():
        assert stored.get(index) == n, f"acknowledged record {index} lost"


async def test_real_server_with_full_audit_disk_fails_closed(tiny_disk: Path, tmp_path: Path) -> None:
    import ssl
    import uuid

    import aiohttp
    import orjson

    from webhook import config as config_mod
    from webhook.admission import certs, service

    files = certs.generate(["localhost", "127.0.0.1"], tmp_path / "tls")
    cfg = config_mod.parse(
        {"audit": {"directory": str(tiny_disk / "log"), "origin": "test.local/full", "commit_window": 0.001}}
    )
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(service.serve(cfg, service.Listen("127.0.0.1", port), files.cert, files.key,
                                             started=started, stop=stop))  # fmt: skip
    await asyncio.wait_for(started.wait(), 10)
    ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    answers: list[dict[str, Any]] = []
    big = {"name": "a", "image": "nginx:1.27", "env": [{"name": f"V{i}", "value": "y" * 200} for i in range(40)]}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            for _ in range(200):
                doc = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
                    "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "operation": "CREATE", "namespace": "default", "name": "p", "userInfo": {"username": "u"},
                    "object": {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [big]}}}}  # fmt: skip
                async with session.post(f"https://127.0.0.1:{port}/validate", data=orjson.dumps(doc)) as r:
                    assert r.status == 200
                    answers.append((await r.json())["response"])
                if not answers[-1]["allowed"] and "audit log" in answers[-1]["status"]["message"]:
                    break
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task
    assert not answers[-1]["allowed"], "with the audit disk full the webhook must fail closed"
    assert "audit log" in answers[-1]["status"]["message"]
