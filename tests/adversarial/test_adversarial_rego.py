"""Attacks on the Rego path through the real ``portcullis serve`` (HTTPS on loopback) with the
bundled policies: pods with thousands of containers (the issue's denial of service), dry runs,
oversized policy input, and a policy that never ends. The webhook must keep judging other
requests with real verdicts, stay ready, and stay under the chart's 512Mi memory limit
(RSS of the server process plus its policy workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from webhook.admission import certs

from .conftest import RESTRICTED_SC, pod, review

ROOT = Path(__file__).resolve().parents[2]
CHART_MEMORY_LIMIT = 512 << 20
POLICIES = {"directory": str(ROOT / "policies"), "gatekeeper": [str(ROOT / "policies" / "gatekeeper")]}


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return 0


def _workers(parent: int | None = None) -> list[int]:
    """The policy workers (children running ``webhook.policy.worker``) of ``parent`` (default: us)."""
    me = str(parent if parent is not None else os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ppid == me and b"webhook.policy.worker" in cmdline:
            found.append(int(entry))
    return found


def _memory(server: int) -> int:
    return _rss(server) + sum(_rss(p) for p in _workers(server))


class _Served:
    """``python -m webhook serve`` in its own process (so its RSS is the server's alone)."""

    def __init__(self, base: str, session: aiohttp.ClientSession, pid: int) -> None:
        self.base, self.session, self.pid = base, session, pid

    async def post(self, path: str, payload: Any) -> tuple[int, Any]:
        async with self.session.post(self.base + path, data=orjson.dumps(payload)) as r:
            return r.status, orjson.loads(await r.read())


@contextlib.asynccontextmanager
async def _serve(tmp_path: Path, cfg: dict[str, Any]) -> AsyncIterator[_Served]:
    files = certs.generate(["127.0.0.1"], tmp_path / "tls")
    (tmp_path / "portcullis.yaml").write_text(yaml.safe_dump(cfg))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["serve", "--config", str(tmp_path / "portcullis.yaml"), "--listen", f"127.0.0.1:{port}"]
    args += ["--tls-cert", str(files.cert), "--tls-key", str(files.key)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webhook", *args, stderr=asyncio.subprocess.DEVNULL
    )
    ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
    served = _Served(f"https://127.0.0.1:{port}", session, proc.pid)
    try:
        for _ in range(600):  # up to a minute on a loaded machine: workers compile first
            with contextlib.suppress(aiohttp.ClientError, OSError):
                if (await _get(served, "/readyz"))[0] == 200:
                    break
            await asyncio.sleep(0.1)
        yield served
    finally:
        await session.close()
        proc.terminate()
        await proc.wait()


def _compliant(name: str) -> dict[str, Any]:
    container = {"name": "app", "image": "registry.example.com/app:1", "securityContext": RESTRICTED_SC}
    return pod(name, labels={"team": "a", "cost-center": "c"}, containers=[container])


def _untrusted(name: str) -> dict[str, Any]:
    container = {"name": "app", "image": "docker.io/library/nginx:1", "securityContext": RESTRICTED_SC}
    return pod(name, labels={"team": "a", "cost-center": "c"}, containers=[container])


def _huge(name: str, n: int) -> dict[str, Any]:
    containers = [{"name": f"c{i}", "image": f"evil.example/x{i}:1"} for i in range(n)]
    return pod(name, containers=containers)


async def _verdict(hook: Any, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
    body = review(obj)
    body["request"]["dryRun"] = dry_run
    status, answer = await hook.post("/validate", body)
    assert status == 200, answer
    response: dict[str, Any] = answer["response"]
    return response


def _message(response: dict[str, Any]) -> str:
    return str((response.get("status") or {}).get("message", ""))


@pytest.mark.slow
async def test_thousands_of_containers_cannot_take_the_webhook_down(tmp_path: Path) -> None:
    """The issue's attack (4,000-container pods, dry runs among them) at once with honest
    requests, against ``portcullis serve`` in its own process: the attack is denied by the input
    bound without evaluation, every honest request gets its real verdict (not a failure mode),
    /readyz stays 200, and server + workers stay under the chart's 512Mi."""
    peak = 0
    # Generous timeouts: the machine running the tests may be loaded; the attack is refused by
    # the input bound whatever the timeout, and honest verdicts must not be failure modes.
    cfg = {"policy": {**POLICIES, "timeout": 5.0}, "server": {"timeout_seconds": 10}}
    async with _serve(tmp_path, cfg) as hook:
        assert (await _get(hook, "/readyz"))[0] == 200
        assert len(_workers(hook.pid)) == 2  # preforked, warm

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, _memory(hook.pid))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        try:
            attacks = [_verdict(hook, _huge(f"big{i}", 4000), dry_run=i % 2 == 0) for i in range(6)]
            honest = [_verdict(hook, _compliant(f"ok{i}")) for i in range(6)]
            honest += [_verdict(hook, _untrusted(f"bad{i}")) for i in range(6)]
            answers = await asyncio.gather(*attacks, *honest)
            ready_status, ready_body = await _get(hook, "/readyz")
        finally:
            sampler.cancel()
    for attack in answers[:6]:
        assert attack["allowed"] is False
        assert "4000 containers" in _message(attack)
        assert "max_containers" in _message(attack)  # limits.* (the pipeline) or policy.* (Rego)
    for ok in answers[6:12]:
        assert ok["allowed"] is True, _message(ok)
    for bad in answers[12:]:
        assert bad["allowed"] is False
        assert "allowed-registries: image 'docker.io/library/nginx:1' is not from an allowed registry" in _message(bad)
        assert "failure mode" not in _message(bad)
    assert ready_status == 200, ready_body
    print(f"peak RSS of server + policy workers: {peak / (1 << 20):.0f} MiB")  # shown with -s
    assert 0 < peak < CHART_MEMORY_LIMIT


async def _started(hook: Any) -> float:
    """Workers that loaded the policies so far (the rego check's ``workers_started`` metric)."""
    _, text = await _get(hook, "/metrics")
    for line in text.splitlines():
        if line.startswith('portcullis_check_metric{check="rego",name="workers_started"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _get(hook: Any, path: str) -> tuple[int, str]:
    async with hook.session.get(hook.base + path) as r:
        return r.status, await r.text()


@pytest.mark.slow
async def test_a_policy_that_never_ends_costs_one_worker_for_one_budget(webhook: Any, tmp_path: Path) -> None:
    """A policy that loops for ever on a crafted object: that request follows the failure mode
    at the policy timeout, its worker is killed and replaced, other requests keep their real
    verdicts and the webhook stays ready (the thread pool used to fill up and turn it 503)."""
    (tmp_path / "loop.rego").write_text(
        "package loop\nimport rego.v1\n"
        'deny contains "slow" if {\n  input.request.name == "slow"\n'
        "  some i in numbers.range(1, 100000)\n  some j in numbers.range(1, 100000)\n  i * j == -1\n}\n"
    )
    cfg = {"policy": {"directory": str(tmp_path), "timeout": 0.5, "workers": 2}}
    before = set(_workers())  # workers of other tests' pools still being torn down
    async with webhook(cfg) as hook:
        slow = [_verdict(hook, pod("slow"), dry_run=True) for _ in range(4)]
        answers = await asyncio.gather(*slow)
        ready_status, _ = await _get(hook, "/readyz")  # at once: readiness never hangs on workers
        for _ in range(600):  # replacements start in the background (a Python start + compile)
            if await _started(hook) >= 2 + len(slow):
                break
            await asyncio.sleep(0.1)
        after = await asyncio.gather(*(_verdict(hook, pod(f"p{i}")) for i in range(4)))
        workers = set(_workers()) - before
    for answer in answers:
        assert answer["allowed"] is False
        assert "failure mode 'deny'" in _message(answer)
    for answer in after:
        assert "failure mode" not in _message(answer), _message(answer)
    assert ready_status == 200
    assert len(workers) <= 2 + 2  # replacements, plus at most the killed ones not yet reaped
