"""The monitor DaemonSet the chart renders starts, reports ready only once events flow, and alerts.

No cluster runs here, so the test does what the kubelet would: it renders the chart with the Helm
SDK, lays out every volume of the monitor's pod under a temporary root (the rules ConfigMap as
the kubelet's atomic writer does, timestamped directory and ``..data`` symlink included; the
config file through its subPath; the projected service account token and cluster CA), expands
``$(NODE_IP)`` in the container's args, points the mount paths at that root, and runs
``portcullis monitor`` with exactly those args. The kubelet itself is a small local aiohttp server
over real TLS speaking the kubelet's ``/pods`` wire format (a PodList) and checking the token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import helm_python as helm
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

pytestmark = pytest.mark.helm

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "portcullis"
TOKEN = "projected-token-abc"
NODE_IP = "127.0.0.1"
# What the kubelet's /pods answers: a PodList (v1), one pod with two containers on this node.
POD_LIST: dict[str, Any] = {
    "kind": "PodList",
    "apiVersion": "v1",
    "metadata": {},
    "items": [
        {
            "metadata": {"name": "llm-0", "namespace": "serving", "uid": "u-1", "labels": {"app": "llm"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "server", "image": "ghcr.io/acme/vllm:0.4.2"}]},
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "server", "containerID": "containerd://" + "9d" * 32, "image": "ghcr.io/acme/vllm:0.4.2",
                     "imageID": "ghcr.io/acme/vllm@sha256:" + "ab" * 32},
                ],
                "initContainerStatuses": [
                    {"name": "fetch", "containerID": "containerd://" + "ab" * 32, "image": "busybox:1.36"}
                ],
            },
        }
    ],
}  # fmt: skip


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A kubelet serving certificate for 127.0.0.1 (self-signed, so it is its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(NODE_IP))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "kubelet.crt", tmp_path / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    files = chart.render(values, name="pc", namespace="portcullis", is_install=True)
    return [d for path, text in sorted(files.items()) if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]


def configmap_dir(root: Path, data: dict[str, str]) -> None:
    """A ConfigMap volume as the kubelet writes it: data in ``..<timestamp>``, ``..data`` linking
    there, and each key a symlink through ``..data``."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = "..2026_12_04_06_00_00.123456789"
    (root / stamp).mkdir()
    for key, text in data.items():
        (root / stamp / key).write_text(text)
    (root / "..data").symlink_to(stamp)
    for key in data:
        (root / key).symlink_to(Path("..data") / key)


class Pod:
    """The monitor container of the rendered DaemonSet, its volumes laid out under ``root``."""

    def __init__(self, objects: list[dict[str, Any]], root: Path, kubelet_ca: Path) -> None:
        (ds,) = [o for o in objects if o["kind"] == "DaemonSet"]
        self.spec = ds["spec"]["template"]["spec"]
        (self.container,) = self.spec["containers"]
        maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
        volumes = {v["name"]: v for v in self.spec["volumes"]}
        self.root = root
        self.mounts: dict[str, Path] = {}
        for mount in self.container["volumeMounts"]:
            where = root / mount["mountPath"].lstrip("/")
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                data = maps[volume["configMap"]["name"]]
                if "subPath" in mount:
                    where.parent.mkdir(parents=True, exist_ok=True)
                    where.write_text(data[mount["subPath"]])
                else:
                    configmap_dir(where, data)
            elif "projected" in volume:
                files = {}
                for src in volume["projected"]["sources"]:
                    if "serviceAccountToken" in src:
                        files[src["serviceAccountToken"]["path"]] = TOKEN
                    else:
                        assert src["configMap"]["name"] == "kube-root-ca.crt"
                        for item in src["configMap"]["items"]:
                            files[item["path"]] = kubelet_ca.read_text()
                configmap_dir(where, files)  # projected volumes use the same atomic writer
            elif "hostPath" in volume:
                where.parent.mkdir(parents=True, exist_ok=True)
                where.symlink_to(volume["hostPath"]["path"])
            else:
                where.mkdir(parents=True, exist_ok=True)
            self.mounts[mount["mountPath"]] = where

    def args(self) -> list[str]:
        env = {"NODE_IP": NODE_IP, "NODE_NAME": "node-1"}
        out = []
        for arg in self.container["args"]:
            for name, value in env.items():
                arg = arg.replace(f"$({name})", value)
            for mount_path in sorted(self.mounts, key=len, reverse=True):
                if arg == mount_path or arg.startswith(mount_path.rstrip("/") + "/"):
                    arg = str(self.mounts[mount_path]) + arg[len(mount_path) :]
                    break
            out.append(arg)
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def kubelet(tmp_path: Path) -> AsyncIterator[tuple[int, Path, list[str]]]:
    """A kubelet's /pods over TLS; records the Authorization header of each call."""
    cert, key = self_signed(tmp_path)
    seen: list[str] = []

    async def pods(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401)
        return web.json_response(POD_LIST)

    app = web.Application()
    app.router.add_get("/pods", pods)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield port, cert, seen
    await runner.cleanup()


async def readyz(
    session: aiohttp.ClientSession, url: str, want: int, proc: asyncio.subprocess.Process, saying: str = ""
) -> str:
    """Poll /readyz until it answers ``want`` with ``saying`` in its text (bounded: the run fails
    if the monitor exits). Ready means a batch arrived; its events are counted as they are judged."""
    text = ""
    for _ in range(1800):  # bpftrace attaching the chart's rules' probes took 20-60 s on a loaded 2-core CI box
        if proc.returncode is not None:
            raise AssertionError(f"monitor exited with {proc.returncode} before /readyz said {want}")
        try:
            async with session.get(url) as resp:
                text = await resp.text()
                if resp.status == want and saying in text:
                    return text
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz never answered {want} with {saying!r}; last: {text!r}")


async def start(pod: Pod, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    argv = [*pod.args(), "--metrics-listen", f"127.0.0.1:{port}", *extra]
    assert argv[0] == "monitor"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webhook", *argv,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=pod.root,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


SHADOW = {"evt.num": 1, "evt.type": "openat", "evt.is_open_read": True, "fd.num": 3, "fd.name": "/etc/shadow",
          "proc.name": "cat", "proc.cmdline": "cat /etc/shadow", "container.id": "host"}  # fmt: skip


def test_the_rendered_args_name_the_configmap_directory_and_the_kubelet(chart: helm.Chart, tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("")
    pod = Pod(render(chart, {}), tmp_path / "root", ca)
    args = pod.args()
    rules_dir = Path(args[args.index("--rules") + 1])
    assert (rules_dir / "..data").is_symlink()
    assert args[args.index("--kubelet") + 1] == f"https://{NODE_IP}:10250"
    assert Path(args[args.index("--kubelet-token") + 1]).read_text() == TOKEN


async def test_the_rendered_monitor_starts_reads_the_configmap_rules_and_the_kubelet(
    chart: helm.Chart, tmp_path: Path, kubelet: tuple[int, Path, list[str]]
) -> None:
    """A recorded stream (stdin) stands in for bpftrace; everything else is as rendered."""
    port, ca, seen = kubelet
    pod = Pod(render(chart, {"monitor": {"kubelet": {"port": port}}}), tmp_path / "root", ca)
    proc, base = await start(pod, "--source", "jsonl", "--input", "-")
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        async with aiohttp.ClientSession() as session:
            why = await readyz(session, base + "/readyz", 503, proc)
            assert "waiting for the first events" in why
            assert await (await session.get(base + "/healthz")).text() == "ok\n"
            # The stream source hands over 512 lines at a time: one batch, then events have flowed.
            lines = [SHADOW] + [{**SHADOW, "evt.num": n, "fd.name": "/tmp/x"} for n in range(2, 513)]
            proc.stdin.write(b"".join(json.dumps(e).encode() + b"\n" for e in lines))
            await proc.stdin.drain()
            assert "ok: 512 events" in await readyz(session, base + "/readyz", 200, proc, "ok: 512 events")
            alert = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
            assert alert["rule"] == "Read of shadow password file"
            proc.stdin.close()
            code = await asyncio.wait_for(proc.wait(), 60)
        err = (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err
    snapshot = json.loads(err.strip().splitlines()[-1])
    assert snapshot["source"]["kubelet_fetches"] >= 1, err
    assert snapshot["source"]["kubelet_errors"] == 0, err
    assert snapshot["source"]["pods_containers"] == 2
    assert seen
    assert set(seen) == {f"Bearer {TOKEN}"}


@pytest.mark.root
@pytest.mark.ebpf
@pytest.mark.slow
async def test_the_rendered_monitor_attaches_bpftrace_becomes_ready_and_alerts(
    chart: helm.Chart, tmp_path: Path, kubelet: tuple[int, Path, list[str]]
) -> None:
    """The rendered args unchanged (``--source ebpf``): ready once the probes are attached and
    kernel events flow; a real read of /etc/shadow alerts; SIGTERM stops it cleanly."""
    if os.geteuid() != 0 or shutil.which("bpftrace") is None:
        pytest.skip("needs root and bpftrace")
    port, ca, _ = kubelet
    pod = Pod(render(chart, {"monitor": {"kubelet": {"port": port}}}), tmp_path / "root", ca)
    proc, base = await start(pod)
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        async with aiohttp.ClientSession() as session:
            # Ready needs events to flow: keep this otherwise quiet test box doing a little, as
            # any node does (execs and opens), until the monitor says so.
            async def activity() -> None:
                while True:
                    busy = await asyncio.create_subprocess_exec(
                        "cat", "/etc/hostname", stdout=asyncio.subprocess.DEVNULL
                    )
                    await busy.wait()
                    await asyncio.sleep(0.05)

            busy_task = asyncio.create_task(activity())
            try:
                await readyz(session, base + "/readyz", 200, proc)
            finally:
                busy_task.cancel()
            alert: dict[str, Any] = {}
            for _ in range(100):  # each read is a new attempt; stop at the first alert
                subprocess.run(["cat", "/etc/shadow"], capture_output=True, check=False)
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), 2)
                except TimeoutError:
                    continue
                alert = json.loads(line)
                if alert["rule"] == "Read of shadow password file":
                    break
            assert alert.get("rule") == "Read of shadow password file"
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 60)
        err = (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err
    assert json.loads(err.strip().splitlines()[-1])["source"]["kubelet_errors"] == 0
