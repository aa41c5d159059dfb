"""Admission throughput and latency over real HTTPS on loopback, next to a bare aiohttp echo.

Both servers run in their own process (one core each side: server vs load generator) and are
driven by the same load generator with the same AdmissionReview body (a 3-container Deployment),
so the ratio isolates what Portcullis adds: decoding, the built-in checks, the decision.

    python bench/bench_admission.py [--seconds 5] [--rate 500] [--config FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen

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
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit("server did not start")


def measure(name: str, argv: list[str], port: int, ca: str, body: bytes, seconds: float, rate: float) -> dict:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        url = f"https://localhost:{port}/validate"
        asyncio.run(loadgen.closed_loop(url, body, ca, connections=8, seconds=1.0))  # warm-up
        peak = asyncio.run(loadgen.closed_loop(url, body, ca, connections=8, seconds=seconds))
        paced = asyncio.run(loadgen.open_loop(url, body, ca, rate=rate, seconds=seconds))
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{name:10s} peak  {peak.describe()}")
    print(f"{name:10s} @{rate:.0f}/s {paced.describe()}")
    return {"peak": peak, "paced": paced}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--config", help="webhook config file (default: built-in defaults)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    files = certs.generate(["localhost", "127.0.0.1"], tmp)
    body = review_body()
    print(f"AdmissionReview body: {len(body)} bytes (Deployment, 3 containers); {args.seconds:.0f} s per phase")
    echo_port, hook_port = free_port(), free_port()
    echo = measure(
        "echo",
        [
            sys.executable,
            str(Path(__file__).parent / "echo_server.py"),
            "--port",
            str(echo_port),
            "--cert",
            str(files.cert),
            "--key",
            str(files.key),
        ],
        echo_port,
        str(files.ca_cert),
        body,
        args.seconds,
        args.rate,
    )
    serve = [
        sys.executable,
        "-m",
        "webhook",
        "serve",
        "--listen",
        f"127.0.0.1:{hook_port}",
        "--tls-cert",
        str(files.cert),
        "--tls-key",
        str(files.key),
    ]
    if args.config:
        serve += ["--config", args.config]
    hook = measure("webhook", serve, hook_port, str(files.ca_cert), body, args.seconds, args.rate)
    ratio = hook["peak"].rps / echo["peak"].rps
    print(f"\nthroughput ratio webhook/echo: {ratio:.2f} (target >= 0.50)")
    print(
        f"p99 at {args.rate:.0f}/s: webhook {hook['paced'].percentile(99) * 1000:.2f} ms vs echo "
        f"{echo['paced'].percentile(99) * 1000:.2f} ms (target < 5 ms)"
    )


if __name__ == "__main__":
    main()
