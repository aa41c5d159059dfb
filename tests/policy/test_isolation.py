"""Policy worker processes (``policy.isolation`` + ``policy.worker``) with real rego-cpp: the
deadline kill, the memory and CPU caps, replacement, saturation, input bounds and reload."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import orjson
import pytest

from webhook import config as config_mod
from webhook.checks import rego as rego_check
from webhook.checks.pipeline import Pipeline, Subject
from webhook.checks.services import Services
from webhook.core.deadline import Deadline
from webhook.policy import isolation, rego

LOOP = (
    "package loop\nimport rego.v1\n"
    'deny contains "never" if {\n  input.n > 0\n'
    "  some i in numbers.range(1, 100000)\n  some j in numbers.range(1, 100000)\n  i * j == -1\n}\n"
)
MEMORY = (
    "package memory\nimport rego.v1\n"
    'deny contains "big" if {\n  input.n > 0\n  count([y | some y in numbers.range(1, input.n)]) < 0\n}\n'
)


def _pool(tmp_path: Path, source: str, **kwargs: Any) -> isolation.WorkerPool:
    (tmp_path / "p.rego").write_text(source)
    compiled = rego.load_directory([tmp_path])
    pool = isolation.WorkerPool(kwargs.pop("size", 1), **kwargs)
    pool.configure(rego_check.worker_spec(compiled, None, strict=False))
    return pool


def _request(n: int) -> bytes:
    return orjson.dumps({"document": {"n": n}, "review": None, "constraints": []})


async def test_an_overrunning_evaluation_is_killed_and_its_worker_replaced(tmp_path: Path) -> None:
    pool = _pool(tmp_path, LOOP)
    await pool.start()
    try:
        (first,) = pool.pids()
        with pytest.raises(isolation.PolicyTimeout, match="exceeded 300 ms; the worker was stopped"):
            await pool.evaluate(_request(1), 0.3)
        assert pool.stats.killed == 1
        answer = await pool.evaluate(_request(0), 30)  # a fresh worker answers
        assert answer == {"bundle": [[[], [], None]], "constraints": []}
        assert first not in pool.pids()
    finally:
        await pool.close()


async def test_the_memory_cap_ends_a_worker_not_the_webhook(tmp_path: Path) -> None:
    pool = _pool(tmp_path, MEMORY, memory_bytes=64 << 20)
    await pool.start()
    try:
        with pytest.raises(isolation.WorkerDied, match="ended while evaluating"):
            await pool.evaluate(_request(50_000_000), 30)
        assert pool.stats.died == 1
        answer = await pool.evaluate(_request(10), 30)
        assert answer["bundle"] == [[[], [], None]]
    finally:
        await pool.close()


async def test_the_cpu_cap_ends_a_worker_the_parent_stopped_waiting_for(tmp_path: Path) -> None:
    """RLIMIT_CPU backs the deadline: even with an unbounded wait, the worker ends itself."""
    pool = _pool(tmp_path, LOOP, cpu_seconds=1.0)
    await pool.start()
    try:
        # The reason reads "signal 24, SIGXCPU" (asserted when run alone; across test event
        # loops asyncio's child watcher may lose the exit status and report exit 255).
        with pytest.raises(isolation.WorkerDied, match="ended while evaluating"):
            await pool.evaluate(_request(1), 120)
    finally:
        await pool.close()


async def test_saturated_workers_are_a_failure_not_a_wait_past_the_bound(tmp_path: Path) -> None:
    pool = _pool(tmp_path, LOOP)
    await pool.start()
    try:
        busy = asyncio.ensure_future(pool.evaluate(_request(1), 1.0))
        await asyncio.sleep(0.05)
        with pytest.raises(isolation.WorkersUnavailable, match="no policy worker free within 100 ms"):
            await pool.evaluate(_request(0), 0.1)
        with pytest.raises(isolation.PolicyTimeout):
            await busy
        assert pool.stats.unavailable == 1
    finally:
        await pool.close()


async def test_a_worker_that_cannot_load_fails_the_waiting_request_with_the_reason() -> None:
    pool = isolation.WorkerPool(1)
    pool.configure({"strict": False, "rego": [["bad.rego", "package bad\ndeny contains x if {\n"]]})
    try:
        with pytest.raises(isolation.WorkersUnavailable, match=r"could not load the policies: .*bad\.rego:2"):
            await pool.evaluate(_request(0), 0.5)
        assert not pool.warm
    finally:
        await pool.close()


def _pipeline(tmp_path: Path, **policy: Any) -> tuple[Pipeline, rego_check.RegoCheck]:
    cfg = config_mod.parse({"policy": {"directory": str(tmp_path), "reload_interval": 0, **policy}})
    check = rego_check.build(cfg, Services())
    assert isinstance(check, rego_check.RegoCheck)
    return Pipeline(cfg, [check]), check


def _pod(n: int, **extra: Any) -> dict[str, Any]:
    containers = [{"name": f"c{i}", "image": "x"} for i in range(n)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "d", **extra},
        "spec": {"containers": containers},
    }


async def test_inputs_beyond_the_bounds_are_denied_without_evaluation(tmp_path: Path) -> None:
    (tmp_path / "a.rego").write_text('package a\nimport rego.v1\ndeny contains "seen" if input.pods[0]\n')
    pipeline, check = _pipeline(tmp_path, max_containers=8, max_input_bytes=4096)
    await pipeline.start()
    try:
        many = await pipeline.evaluate(Subject("CREATE", "Pod", "d", "p", _pod(9)), Deadline.after(10))
        (denial,) = many.verdict.denials
        assert "has 9 containers" in denial.message
        assert "policy.max_containers" in denial.message
        big = _pod(1, annotations={"a": "x" * 5000})
        (denial,) = (
            await pipeline.evaluate(Subject("CREATE", "Pod", "d", "p", big), Deadline.after(10))
        ).verdict.denials
        assert "policy.max_input_bytes" in denial.message
        fine = await pipeline.evaluate(Subject("CREATE", "Pod", "d", "p", _pod(8)), Deadline.after(10))
        assert [d.message for d in fine.verdict.denials] == ["a: seen"]
        assert check.pool.stats.evaluations == 1
        assert check.metrics()["inputs_over_bounds"] == 2
    finally:
        await pipeline.close()


async def test_reload_reaches_the_workers(tmp_path: Path) -> None:
    (tmp_path / "a.rego").write_text('package a\nimport rego.v1\ndeny contains "old" if input.pods[0]\n')
    pipeline, check = _pipeline(tmp_path)
    await pipeline.start()
    try:
        subject = Subject("CREATE", "Pod", "d", "p", _pod(1))
        assert [d.message for d in (await pipeline.evaluate(subject, Deadline.after(10))).verdict.denials] == ["a: old"]
        (tmp_path / "a.rego").write_text('package a\nimport rego.v1\ndeny contains "new!" if input.pods[0]\n')
        assert await check.reload()
        # Until the new version's workers are up, the previous version keeps answering (a reload
        # never turns requests into failures); then only the new version answers.
        during = (await pipeline.evaluate(subject, Deadline.after(30))).verdict.denials
        assert [d.message for d in during] in (["a: old"], ["a: new!"])
        await check.pool.start()
        found = (await pipeline.evaluate(subject, Deadline.after(30))).verdict.denials
        assert [d.message for d in found] == ["a: new!"]
    finally:
        await pipeline.close()


def test_closing_during_a_reload_leaves_no_worker_behind(tmp_path: Path) -> None:
    """``close`` can race a reload: a start that completes as it is cancelled retires its worker
    in a task of its own. Every worker must be reaped before ``close`` returns; a process left
    to the closed loop surfaces later, in whatever runs next, as an unraisable error (a CI run
    failed that way). Each scenario runs in a loop of its own that is closed at once, then the
    garbage collector runs, so any transport left open fails this test and not another."""
    (tmp_path / "p.rego").write_text('package p\nimport rego.v1\ndeny contains "x" if input.n > 0\n')
    compiled = rego.load_directory([tmp_path])
    spec = rego_check.worker_spec(compiled, None, strict=False)

    async def scenario(delay: float) -> None:
        pool = isolation.WorkerPool(2)
        pool.configure(spec)
        await pool.start()
        pool.configure(spec)  # a reload: two more workers start, the first two retire
        await asyncio.sleep(delay)
        await pool.close()
        assert not pool._tasks  # every reap awaited
        assert not pool.pids()

    for delay in (0.0, 0.005, 0.02, 0.05, 0.1, 0.2, 0.3):
        asyncio.run(scenario(delay))
        gc.collect()
