"""Policy evaluation in worker processes the webhook can kill (parent side of ``policy.worker``).

Why processes: rego-cpp cannot be interrupted and some policies cost quadratically in their
input, so a thread that overran kept running, kept its memory and, once every thread was taken,
turned the webhook not-ready. Here each evaluation runs in a prefork worker that holds the
compiled policies warm; at the request's deadline the parent kills it (SIGKILL) and starts a
replacement in the background; the worker caps its own address space and CPU (rlimits), so a
runaway dies even while the parent is busy. When no worker is free within the request's bound,
the request gets the check's failure mode; readiness never depends on the workers.

One pool per rego check; ``configure`` installs a new policy version (workers are replaced, a
request in flight finishes on the version it started with).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from webhook import errors
from webhook.policy import worker as wire

log = logging.getLogger("portcullis.policy")
_SPAWN_TIMEOUT = 60.0
_RETRY_AFTER = 1.0
_REAP = "policy-worker-reap"


class PolicyTimeout(errors.UpstreamError):
    """Evaluation overran its bound; the worker was killed; the policies' failure mode decides."""


class WorkersUnavailable(errors.UpstreamError):
    """No worker could take the request in time (all busy, or none could start)."""


class WorkerDied(errors.UpstreamError):
    """The worker ended while evaluating (memory or CPU cap, engine crash)."""


@dataclass(slots=True)
class PoolStats:
    """Counters for /metrics: what the isolation absorbed."""

    evaluations: int = 0
    killed: int = 0  # overran the deadline
    died: int = 0  # ended on its own (rlimit, crash)
    unavailable: int = 0  # no worker within the bound
    started: int = 0


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process, generation: int) -> None:
        self.proc = proc
        self.generation = generation

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def send(self, payload: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(wire.frame(payload))
        await self.proc.stdin.drain()

    async def receive(self) -> Any:
        assert self.proc.stdout is not None
        head = await self.proc.stdout.readexactly(4)
        size = int.from_bytes(head, "big")
        if size > wire.MAX_FRAME:
            raise ValueError(f"worker sent a frame of {size} bytes")
        return orjson.loads(await self.proc.stdout.readexactly(size))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    async def reap(self) -> int | None:
        with contextlib.suppress(Exception):
            return await asyncio.wait_for(self.proc.wait(), 5)
        return None


class WorkerPool:
    """``size`` prefork worker processes running one policy version at a time."""

    def __init__(self, size: int, *, memory_bytes: int = 0, cpu_seconds: float = 0.0) -> None:
        self.size = size
        self.memory_bytes = memory_bytes
        self.cpu_seconds = cpu_seconds
        self.stats = PoolStats()
        self.last_error: str | None = None
        self._spec: bytes | None = None
        self._generation = 0
        self._idle: list[Worker] = []
        self._busy: set[Worker] = set()
        self._starting = 0
        self._waiters: deque[asyncio.Future[Worker]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # A pool dropped without ``close`` (a test, a CI run that failed) must not leave its
        # workers blocked on a pipe for ever: they are killed when the pool is collected.
        self._pids: set[int] = set()
        weakref.finalize(self, _kill_all, self._pids)

    @property
    def configured(self) -> bool:
        return self._spec is not None

    @property
    def warm(self) -> bool:
        """Whether a worker ever loaded the policies (readiness waits for the first one only)."""
        return self.stats.started > 0

    def configure(self, spec: dict[str, Any]) -> int:
        """Install a policy version (``worker.Loaded``'s load message); return its generation.
        Workers of the previous version retire as the new version's workers become ready."""
        self._generation += 1
        message = {**spec, "op": "load", "memory_bytes": self.memory_bytes, "cpu_seconds": self.cpu_seconds}
        self._spec = orjson.dumps(message)
        self.last_error = None
        # Previous-version workers keep serving until current ones are ready (``_take_idle``).
        with contextlib.suppress(RuntimeError):  # no running loop yet: ``start`` fills the pool
            self._fill()
        return self._generation

    async def start(self) -> None:
        """Prefork the workers and wait until they hold the compiled policies."""
        self._fill()
        while self._starting and not self._closed:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self._closed = True
        self._fail_waiters(WorkersUnavailable("the policy workers are shutting down"))
        for w in [*self._idle, *self._busy]:
            w.kill()
        for w in [*self._idle, *self._busy]:
            await w.reap()
        _kill_all(self._pids)  # still starting ones too
        self._idle.clear()
        self._busy.clear()
        # Reaps finish (bounded); starts and retries are cancelled. Awaiting one can start
        # another (a start that completes as it is cancelled retires its worker): drain until
        # none is left, so no worker outlives the loop that owns its pipes.
        while self._tasks:
            for task in list(self._tasks):
                if task.get_name() != _REAP:
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                self._tasks.discard(task)

    def pids(self) -> list[int]:
        return [w.pid for w in [*self._idle, *self._busy]]

    async def evaluate(self, payload: bytes, bound: float) -> Any:
        """Evaluate an encoded request (``worker.Loaded.evaluate``) on a worker within ``bound``
        seconds; return its answer (a JSON value whose shape the caller checks)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        worker = await self.acquire(bound)
        return await self.exchange(worker, payload, max(0.0, deadline - loop.time()))

    async def exchange(self, worker: Worker, payload: bytes, bound: float) -> Any:
        """Send ``payload`` to an acquired worker and read its answer within ``bound`` seconds;
        the worker goes back to the pool (or is killed and replaced)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        try:
            await worker.send(payload)
            answer = await asyncio.wait_for(worker.receive(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            self.stats.killed += 1
            self._discard(worker)
            raise PolicyTimeout(
                f"Rego evaluation exceeded {bound * 1000:.0f} ms; the worker was stopped (look for "
                f"comprehensions or numbers.range that grow with the input)"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, orjson.JSONDecodeError) as exc:
            self.stats.died += 1
            self._discard(worker)
            code = worker.proc.returncode
            if code is None:
                with contextlib.suppress(TimeoutError):
                    code = await asyncio.wait_for(worker.proc.wait(), 0.2)
            raise WorkerDied(
                f"the policy worker ended while evaluating ({_exit_reason(code)}); a policy needed "
                f"more memory or CPU than its cap allows, or the engine crashed ({type(exc).__name__})"
            ) from None
        except BaseException:
            self._discard(worker)  # cancelled mid-exchange: the stream is out of step
            raise
        self.stats.evaluations += 1
        self._release(worker)
        return answer

    def release(self, worker: Worker) -> None:
        """Give back an acquired worker that was not used (``exchange`` releases by itself)."""
        self._release(worker)

    # --- the pool's bookkeeping ------------------------------------------------------------

    async def acquire(self, bound: float) -> Worker:
        """A worker within ``bound`` seconds; its ``generation`` says which policy version it
        holds (a previous one while the current version's workers are still starting)."""
        if self._closed:
            raise WorkersUnavailable("the policy workers are shut down")
        while True:
            worker = self._take_idle()
            if worker is None:
                break
            if worker.proc.returncode is None:
                self._busy.add(worker)
                return worker
            self._retire(worker)
        self._fill()
        waiter: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if not self.stats.started:
            # Never warm yet (a pool used without ``start``: CI, tests): the first request waits
            # for the first worker. The webhook starts the pool before it reports ready.
            bound = max(bound, _SPAWN_TIMEOUT)
        try:
            worker = await asyncio.wait_for(asyncio.shield(waiter), bound)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())  # handed over just as the bound passed
            else:
                waiter.cancel()
            self.stats.unavailable += 1
            why = f": {self.last_error}" if self.last_error else ""
            raise WorkersUnavailable(
                f"no policy worker free within {bound * 1000:.0f} ms ({self.size} busy or starting{why})"
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        return worker

    def _fail_waiters(self, exc: Exception) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    def _current_ready(self) -> int:
        return sum(1 for w in [*self._idle, *self._busy] if w.generation == self._generation)

    def _take_idle(self) -> Worker | None:
        """An idle worker of the current version; one of a previous version only while no
        current one is ready yet (a reload keeps serving instead of failing requests)."""
        for i in range(len(self._idle) - 1, -1, -1):
            if self._idle[i].generation == self._generation:
                return self._idle.pop(i)
        if self._idle and not self._current_ready():
            return self._idle.pop()
        return None

    def _release(self, worker: Worker) -> None:
        self._busy.discard(worker)
        stale = worker.generation != self._generation and self._current_ready() > 0
        if self._closed or stale or worker.proc.returncode is not None:
            self._retire(worker)
            self._fill()
            return
        self._hand_over(worker)

    def _hand_over(self, worker: Worker) -> None:
        if worker.generation == self._generation:
            for old in [w for w in self._idle if w.generation != self._generation][:1]:
                self._idle.remove(old)  # one previous-version worker leaves per current one ready
                self._retire(old)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._busy.add(worker)
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    def _discard(self, worker: Worker) -> None:
        self._busy.discard(worker)
        self._retire(worker)
        self._fill()

    def _retire(self, worker: Worker) -> None:
        worker.kill()
        self._pids.discard(worker.pid)
        self._spawn_task(worker.reap(), _REAP)

    def _fill(self) -> None:
        """Start workers until ``size`` exist (idle, busy or starting) for the current version."""
        if self._closed or self._spec is None:
            return
        for _ in range(self.size - self._current_ready() - self._starting):
            self._starting += 1
            self._spawn_task(self._start_one(self._generation, self._spec))

    def _spawn_task(self, coro: Any, name: str = "policy-worker-start") -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self, generation: int, spec: bytes) -> None:
        worker: Worker | None = None
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "webhook.policy.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=wire.MAX_FRAME,
                env=worker_environment(),
            )
            worker = Worker(proc, generation)
            self._pids.add(proc.pid)
            await worker.send(spec)
            summary = await asyncio.wait_for(worker.receive(), _SPAWN_TIMEOUT)
            if not isinstance(summary, dict) or summary.get("ok") is not True:
                why = summary.get("error") if isinstance(summary, dict) else None
                raise WorkersUnavailable(f"a policy worker could not load the policies: {why or summary!r}")
        except asyncio.CancelledError:  # the pool is closing: end what was started, then stop
            if worker is not None:
                worker.kill()
                self._pids.discard(worker.pid)
                await worker.reap()
            raise
        except Exception as exc:
            message = str(exc) if isinstance(exc, WorkersUnavailable) else f"a policy worker did not start: {exc!r}"
            if self.last_error != message:
                log.error("%s", message)
            self.last_error = message
            if worker is not None:
                self._retire(worker)
            self._starting -= 1
            if not self.warm:  # nothing ever loaded: waiting requests learn why now
                self._fail_waiters(WorkersUnavailable(message))
            await asyncio.sleep(_RETRY_AFTER)  # then try again, unless replaced meanwhile
            self._fill()
            return
        self._starting -= 1
        self.stats.started += 1
        if self._closed or generation != self._generation:
            self._retire(worker)
            self._fill()
            return
        self.last_error = None
        self._hand_over(worker)


# What a worker needs of the webhook's environment to start Python and find the package.
_WORKER_ENV = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


def worker_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The workers' environment: only what starting Python needs. Policies are evaluated there,
    and a built-in that reads the environment (``opa.runtime``, refused at load) must find
    none of the webhook's credentials even if a future engine adds another such built-in."""
    source = os.environ if environ is None else environ
    return {k: source[k] for k in _WORKER_ENV if k in source}


def _kill_all(pids: set[int]) -> None:
    for pid in list(pids):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    pids.clear()


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        names = {6: "SIGABRT: allocation failed or engine abort", 9: "SIGKILL", 11: "SIGSEGV", 24: "SIGXCPU: CPU cap"}
        return f"signal {-code}, {names.get(-code, 'killed')}"
    return f"exit {code}"
