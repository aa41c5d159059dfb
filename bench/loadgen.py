"""A small HTTPS load generator of our own (aiohttp client, keep-alive connections).

Closed loop (as fast as the server answers, N connections) for throughput, and open loop (a
fixed request rate) for latency percentiles at a given load.
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import time
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def describe(self) -> str:
        return (
            f"{self.rps:8.0f} req/s  p50 {self.percentile(50) * 1000:6.2f} ms  "
            f"p99 {self.percentile(99) * 1000:6.2f} ms  errors {self.errors}"
        )


def client_context(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


async def closed_loop(url: str, body: bytes, ca: str, *, connections: int = 8, seconds: float = 5.0) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(ssl=client_context(ca), limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return LoadResult(len(latencies), errors, elapsed, latencies)


async def open_loop(
    url: str, body: bytes, ca: str, *, rate: float, seconds: float = 5.0, connections: int = 32
) -> LoadResult:
    """Send ``rate`` requests per second on schedule; latency counts from the scheduled time."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(ssl=client_context(ca), limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm the connection pool so handshakes do not count as request latency.
        await asyncio.gather(*(session.get(url.rsplit("/", 1)[0] + "/healthz") for _ in range(4)))

        async def one(scheduled: float) -> None:
            nonlocal errors
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - scheduled)

        tasks = []
        start = time.perf_counter()
        total = int(rate * seconds)
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return LoadResult(len(latencies), errors, elapsed, latencies)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
