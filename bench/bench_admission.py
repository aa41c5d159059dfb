"""Admission throughput and latency over real HTTPS on loopback, next to a bare aiohttp echo.

Both servers (``portcullis serve`` with defaults, and ``echo_server.py``: aiohttp + uvloop, same
certificate, same TLS) run pinned to one CPU and are driven from another by external load
generators: ``wrk`` (16 keep-alive connections, closed loop) for peak requests/s and ``hey``
(open loop at a fixed rate) for latency percentiles; the body is the same AdmissionReview (a
3-container Deployment). Rounds alternate echo, webhook, echo, webhook, ... so drift on a shared
machine hits both alike; each ratio is taken within its round, and the median is reported.

    python bench/bench_admission.py [--seconds 5] [--rounds 3] [--rate 500] [--config FILE]
        [--server-cpu 0] [--client-cpu 1]

Needs ``wrk`` and ``hey`` on PATH (Debian packages of the same names).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from webhook.admission import certs


def deployment() -> dict:
    container = {
        "image": "registry.example.com/team/app:1.2.3",
        "ports": [{"containerPort": 8080}],
        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "initContainers": [{**container, "name": "init"}],
                    "containers": [{**container, "name": "app"}, {**container, "name": "sidecar"}],
                },
            },
        },
    }


def review_body() -> bytes:
    return orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "b2c4f0c6-0b1e-4a8e-9d7e-0f1e2d3c4b5a",
                "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
                "operation": "CREATE",
                "namespace": "default",
                "name": "web",
                "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
                "object": deployment(),
                "oldObject": None,
                "dryRun": False,
            },
        }
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit("server did not start")


@dataclass(frozen=True)
class Figures:
    rps: float  # wrk, closed loop
    cpu_us: float  # server CPU time per request during the wrk run (steadier than req/s when shared)
    p50_ms: float  # hey, open loop at --rate
    p99_ms: float
    errors: int


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(url: str, script: Path, seconds: float, cpu: str) -> tuple[float, int, int]:
    argv = ["taskset", "-c", cpu, "wrk", "-t1", "-c16", f"-d{seconds:g}s", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    done = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if rps is None or done is None:
        raise SystemExit(f"wrk printed no rate:\n{out}")
    failed = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in errors.groups()) if errors else 0)
    return float(rps.group(1)), int(done.group(1)), failed


def _hey(url: str, body: Path, seconds: float, rate: float, cpu: str) -> tuple[float, float, int]:
    workers = 10
    argv = ["taskset", "-c", cpu, "hey", "-z", f"{seconds:g}s", "-c", str(workers), "-q", f"{rate / workers:g}"]
    argv += ["-m", "POST", "-T", "application/json", "-D", str(body), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    p50 = re.search(r"50%+ in ([\d.]+) secs", out)
    p99 = re.search(r"99%+ in ([\d.]+) secs", out)
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    if p50 is None or p99 is None:
        raise SystemExit(f"hey printed no latency distribution:\n{out}")
    failed = sum(int(n) for code, n in codes.items() if code != "200")
    return float(p50.group(1)) * 1000, float(p99.group(1)) * 1000, failed


def measure(argv: list[str], port: int, files: Path, args: argparse.Namespace) -> Figures:
    """Start one server pinned to the server CPU, drive it with wrk then hey, stop it."""
    proc = subprocess.Popen(
        ["taskset", "-c", args.server_cpu, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(port, proc)
        url = f"https://127.0.0.1:{port}/validate"
        _wrk(url, files / "post.lua", 1.0, args.client_cpu)  # warm-up: connections, caches
        before = _cpu_seconds(proc.pid)  # taskset execs the server: same pid
        rps, done, failed = _wrk(url, files / "post.lua", args.seconds, args.client_cpu)
        cpu_us = (_cpu_seconds(proc.pid) - before) / max(1, done) * 1e6
        p50, p99, failed_paced = _hey(url, files / "body.json", args.seconds, args.rate, args.client_cpu)
    finally:
        proc.terminate()
        proc.wait(10)
    return Figures(rps, cpu_us, p50, p99, failed + failed_paced)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--config", help="webhook config file (default: built-in defaults)")
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    args = parser.parse_args()
    for tool in ("wrk", "hey", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install wrk hey util-linux)")
    tmp = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    tls = certs.generate(["localhost", "127.0.0.1"], tmp)
    body = review_body()
    (tmp / "body.json").write_bytes(body)
    (tmp / "post.lua").write_text(
        f'local f = io.open("{tmp / "body.json"}", "rb")\nwrk.method = "POST"\nwrk.body = f:read("*a")\n'
        'f:close()\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    echo_port, hook_port = free_port(), free_port()
    echo = [sys.executable, str(Path(__file__).parent / "echo_server.py"), "--port", str(echo_port)]
    echo += ["--cert", str(tls.cert), "--key", str(tls.key)]
    hook = [sys.executable, "-m", "webhook", "serve", "--listen", f"127.0.0.1:{hook_port}"]
    hook += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    if args.config:
        hook += ["--config", args.config]
    print(
        f"AdmissionReview body: {len(body)} bytes (Deployment, 3 containers); server on CPU {args.server_cpu}, "
        f"wrk/hey on CPU {args.client_cpu}; {args.rounds} interleaved rounds of {args.seconds:g} s per phase "
        f"(load average {os.getloadavg()[0]:.2f}: on a shared machine only the ratios mean much)"
    )
    ratios, p99_ratios, cpu_ratios = [], [], []
    for round_ in range(1, args.rounds + 1):
        e = measure(echo, echo_port, tmp, args)
        w = measure(hook, hook_port, tmp, args)
        ratios.append(w.rps / e.rps)
        p99_ratios.append(w.p99_ms / e.p99_ms)
        cpu_ratios.append(e.cpu_us / w.cpu_us)
        for name, f in (("echo", e), ("webhook", w)):
            print(
                f"round {round_} {name:8s} wrk {f.rps:8.0f} req/s, {f.cpu_us:6.1f} us CPU/req | hey @{args.rate:.0f}/s p50 {f.p50_ms:6.2f} ms "
                f"p99 {f.p99_ms:6.2f} ms | errors {f.errors}"
            )
        print(
            f"round {round_} ratios: throughput {ratios[-1]:.2f}x echo, CPU per request echo/webhook "
            f"{cpu_ratios[-1]:.2f}, p99 {p99_ratios[-1]:.2f}x echo"
        )
    print(
        f"\nmedian throughput webhook/echo: {statistics.median(ratios):.2f} (target >= 0.70; CPU per request "
        f"echo/webhook {statistics.median(cpu_ratios):.2f}); "
        f"median p99 at {args.rate:.0f}/s webhook/echo: {statistics.median(p99_ratios):.2f} (target <= 2.0)"
    )


if __name__ == "__main__":
    main()
