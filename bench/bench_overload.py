"""Overload: the real webhook at 10x its sustainable rate (open loop, loopback, bounded).

Phases, all against one ``python -m webhook serve`` subprocess:
  1. idle RSS after a warm-up;
  2. sustainable rate R: closed loop, 8 keep-alive connections (as bench_admission.py);
  3. 1x R open loop (the baseline for latency), then 10x R open loop, from several client
     processes with many connections (an apiserver fans out like that), each request with a client
     timeout equal to the apiserver's (server.timeout_seconds).
Reports p50/p99 of answered reviews, shed (429) vs answered, errors and timeouts, answered reviews
over the deadline (timeout - margin), and the server's peak RSS (sampled VmRSS, and VmHWM) vs idle.

    python bench/bench_overload.py [--seconds 4] [--factor 10] [--max-in-flight 512] [--max-requests 40000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen
import orjson
from bench_admission import free_port, review_body, wait_ready

from webhook.admission import certs


def heavy_body(containers: int) -> bytes:
    """bench_admission's review with ``containers`` containers: judging it costs the server far more
    CPU than sending it costs a client, so the server (not the Python load generator) saturates."""
    doc = orjson.loads(review_body())
    spec = doc["request"]["object"]["spec"]["template"]["spec"]
    spec["containers"] = [{**spec["containers"][0], "name": f"c{i}"} for i in range(containers)]
    return orjson.dumps(doc)


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in KiB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


class RssSampler:
    """Samples the server's VmRSS every 50 ms in a thread; keeps the maximum."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid).get("VmRSS", 0))
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _client(
    url: str, body: bytes, ca: str, rate: float, total: int, connections: int, timeout: float, q: mp.Queue
) -> None:
    """One client process: ``total`` requests at ``rate``/s; latency counted from the scheduled time.

    Niced, so on a small machine the server gets the CPU it asks for and is the bottleneck."""
    os.nice(10)

    async def run() -> dict:
        ok: list[float] = []
        shed: list[float] = []
        other = errors = timeouts = 0
        ctx = ssl.create_default_context(cafile=ca)
        connector = aiohttp.TCPConnector(ssl=ctx, limit=connections)
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
            await asyncio.gather(*(session.get(url.rsplit("/", 1)[0] + "/healthz") for _ in range(min(8, connections))))

            async def one(scheduled: float) -> None:
                nonlocal other, errors, timeouts
                try:
                    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                        await r.read()
                        elapsed = time.perf_counter() - scheduled
                        if r.status == 200:
                            ok.append(elapsed)
                        elif r.status == 429:
                            shed.append(elapsed)
                        else:
                            other += 1
                except TimeoutError:
                    timeouts += 1
                except aiohttp.ClientError:
                    errors += 1

            tasks = []
            start = time.perf_counter()
            for i in range(total):
                scheduled = start + i / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(scheduled)))
            await asyncio.gather(*tasks)
            return {"ok": ok, "shed": shed, "other": other, "errors": errors, "timeouts": timeouts,
                    "seconds": time.perf_counter() - start}  # fmt: skip

    q.put(asyncio.run(run()))


def open_loop(url: str, body: bytes, ca: str, *, rate: float, seconds: float, max_requests: int, processes: int,
              connections: int, timeout: float) -> dict:  # fmt: skip
    total = min(int(rate * seconds), max_requests)
    q: mp.Queue = mp.Queue()
    share = [total // processes + (1 if i < total % processes else 0) for i in range(processes)]
    procs = [
        mp.Process(target=_client, args=(url, body, ca, rate / processes, n, connections, timeout, q)) for n in share
    ]
    for p in procs:
        p.start()
    parts = [q.get() for _ in procs]
    for p in procs:
        p.join()
    merged = {"ok": [], "shed": [], "other": 0, "errors": 0, "timeouts": 0, "sent": total,
              "seconds": max(p["seconds"] for p in parts)}  # fmt: skip
    for p in parts:
        merged["ok"] += p["ok"]
        merged["shed"] += p["shed"]
        for k in ("other", "errors", "timeouts"):
            merged[k] += p[k]
    return merged


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_metrics(base: str, ca: str) -> dict[str, float]:
    """Shed count and the handler-time histogram of /validate, as the server itself saw them."""

    async def fetch() -> str:
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=ca))
        async with aiohttp.ClientSession(connector=connector) as session, session.get(base + "/metrics") as r:
            return await r.text()

    out: dict[str, float] = {}
    for line in asyncio.run(fetch()).splitlines():
        if line.startswith("portcullis_requests_shed_total "):
            out["shed"] = float(line.split()[1])
        elif line.startswith('portcullis_request_duration_seconds_bucket{endpoint="validate",le='):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out[f"le_{bound}"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith('portcullis_request_duration_seconds_count{endpoint="validate"}'):
            out["count"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith('portcullis_request_duration_seconds_sum{endpoint="validate"}'):
            out["sum"] = float(line.rsplit(" ", 1)[1])
    return out


def pct(values: list[float], p: float) -> float:
    return loadgen.LoadResult(len(values), 0, 1, values).percentile(p) * 1000 if values else float("nan")


def describe(name: str, r: dict, deadline: float) -> str:
    sent = r["sent"]
    late = sum(1 for v in r["ok"] if v > deadline)
    return (
        f"{name:9s} sent {sent:6d} in {r['seconds']:5.1f}s ({sent / r['seconds']:6.0f}/s achieved) | answered {len(r['ok']) / sent:6.1%} "
        f"p50 {pct(r['ok'], 50):7.1f} ms p99 {pct(r['ok'], 99):7.1f} ms | shed(429) {len(r['shed']) / sent:6.1%} "
        f"p99 {pct(r['shed'], 99):7.1f} ms | timeouts {r['timeouts']} errors {r['errors']} other {r['other']} | "
        f"answered after the {deadline:.1f}s deadline: {late}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--max-in-flight", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=5.0, help="server.timeout_seconds (the apiserver's)")
    parser.add_argument("--max-requests", type=int, default=40_000)
    parser.add_argument("--level", default="hardened", help="privilege.level (hardened runs every check)")
    parser.add_argument("--containers", type=int, default=200, help="containers in the reviewed Deployment")
    parser.add_argument(
        "--fraction",
        type=float,
        default=0.5,
        help="sustainable rate R = this fraction of the closed-loop peak (1x must stay healthy)",
    )
    parser.add_argument("--processes", type=int, default=2, help="client processes for the open loop")
    parser.add_argument("--connections", type=int, default=64, help="connections per client process")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="portcullis-overload-"))
    files = certs.generate(["localhost", "127.0.0.1"], tmp)
    margin = 0.5
    cfg = tmp / "portcullis.yaml"
    cfg.write_text(f"server:\n  max_in_flight: {args.max_in_flight}\n  timeout_seconds: {args.timeout}\n"
                   f"  margin_seconds: {margin}\nprivilege:\n  level: {args.level}\n")  # fmt: skip
    port = free_port()
    argv = [sys.executable, "-m", "webhook", "serve", "--config", str(cfg), "--listen", f"127.0.0.1:{port}",
            "--tls-cert", str(files.cert), "--tls-key", str(files.key)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body, ca, url = heavy_body(args.containers), str(files.ca_cert), f"https://localhost:{port}/validate"
    deadline = args.timeout - margin
    try:
        wait_ready(port, proc)
        asyncio.run(loadgen.closed_loop(url, body, ca, connections=8, seconds=1.0))  # warm-up
        idle = rss_kib(proc.pid)["VmRSS"]
        peak = asyncio.run(loadgen.closed_loop(url, body, ca, connections=8, seconds=args.seconds))
        rate = peak.rps * args.fraction
        common = {"seconds": args.seconds, "max_requests": args.max_requests, "processes": args.processes,
                  "connections": args.connections, "timeout": args.timeout}  # fmt: skip
        base = open_loop(url, body, ca, rate=rate, **common)
        cpu0, wall0 = cpu_seconds(proc.pid), time.perf_counter()
        with RssSampler(proc.pid) as sampler:
            over = open_loop(url, body, ca, rate=rate * args.factor, **common)
        cpu = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - wall0)
        after = rss_kib(proc.pid)
        seen = server_metrics(url.rsplit("/", 1)[0], ca)
        alive = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"review: Deployment with {args.containers} containers, {len(body)} bytes")
    print(f"webhook privilege.level={args.level} max_in_flight={args.max_in_flight} timeout={args.timeout}s margin={margin}s; "
          f"{args.processes} client processes x {args.connections} connections; {os.cpu_count()} CPUs")  # fmt: skip
    print(
        f"closed-loop peak (8 conns): {peak.rps:.0f} req/s p99 {peak.percentile(99) * 1000:.1f} ms; "
        f"sustainable rate R = {args.fraction:g} x peak = {rate:.0f} req/s"
    )
    print(describe("1x R", base, deadline))
    print(describe(f"{args.factor:g}x R", over, deadline))
    p99_ratio = pct(over["ok"], 99) / pct(base["ok"], 99) if base["ok"] and over["ok"] else float("nan")
    print(f"p99 of answered reviews, {args.factor:g}x vs 1x: {p99_ratio:.1f}x")
    count = seen.get("count") or 1
    fast = max((v for k, v in seen.items() if k in ("le_0.025", "le_0.05")), default=float("nan"))
    print(f"server's own view: {seen.get('shed', 0):.0f} shed, {count:.0f} reviews handled, mean handler time "
          f"{seen.get('sum', 0) / count * 1000:.2f} ms, {fast / count:.1%} under 50 ms; server CPU during 10x: "
          f"{cpu:.2f} cores (one event loop: 1.0 = saturated)")  # fmt: skip
    print(f"server RSS: idle {idle / 1024:.1f} MiB, peak sampled {sampler.peak / 1024:.1f} MiB "
          f"({sampler.peak / idle:.2f}x idle), VmHWM {after['VmHWM'] / 1024:.1f} MiB, after {after['VmRSS'] / 1024:.1f} MiB; "
          f"server {'still running' if alive else 'DIED'}")  # fmt: skip


if __name__ == "__main__":
    main()
