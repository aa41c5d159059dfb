"""A background scan of 10,000 pods against the local wire-format API server (tests/scan/kubeapi.py),
next to a bare paged list of the same pods through the same client as the baseline.

The API server runs in its own process (one core for it, one for the scanner); the pods are
spread over 100 namespaces, a third of them violating Pod Security baseline, a third restricted.
The scan judges each pod with the privilege check (the other checks need a registry, quotas or
runtime classes) and writes 100 PolicyReports (the server here does not validate them against the
CRD schema, as the tests do: in Python that costs more than the whole scan). Rounds interleave baseline and scan; the
scanner's judging rate limit is lifted to measure its own speed (with the default of 2000
objects/s a 10,000-pod pass takes at least ~4.8 s by design).

    python bench/bench_scan.py [--pods 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from webhook import config as config_mod  # noqa: E402
from webhook.admission import service  # noqa: E402
from webhook.scan.api import RestApi  # noqa: E402
from webhook.scan.scanner import Scanner  # noqa: E402


def _kubeapi() -> Any:
    spec = importlib.util.spec_from_file_location("bench_kubeapi", ROOT / "tests" / "scan" / "kubeapi.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pod(i: int) -> dict[str, Any]:
    ctx: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    if i % 3 == 1:
        ctx["privileged"] = True
    elif i % 3 == 2:
        ctx["allowPrivilegeEscalation"] = True
    spec = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "app", "image": "registry.local/app:1", "securityContext": ctx}],
    }
    return {"metadata": {"name": f"pod-{i}", "namespace": f"ns-{i % 100}", "labels": {"app": "x"}}, "spec": spec}


def _serve(pods: int, port_out: Any, validate: bool = False) -> None:
    kubeapi = _kubeapi()
    import yaml

    async def main() -> None:
        server = kubeapi.FakeKubeApi()
        for plural in ("policyreports", "clusterpolicyreports"):
            crd = yaml.safe_load((ROOT / "charts/portcullis/files/crds" / f"{plural}.yaml").read_text())
            server.install_crd(crd)
            if not validate:  # kube-apiserver validates in Go; Python jsonschema here would dominate
                names = crd["spec"]["names"]
                server.register(
                    "wgpolicyk8s.io", "v1alpha2", plural, names["kind"], crd["spec"]["scope"] == "Namespaced"
                )
        for n in range(100):
            server.put("", "namespaces", {"metadata": {"name": f"ns-{n}"}})
        for i in range(pods):
            server.put("", "pods", _pod(i))
        server.history.clear()  # a fresh server: watches start from the list
        await server.start()
        port_out.send(server.port)
        await asyncio.Event().wait()

    asyncio.run(main())


def _config(port: int) -> config_mod.Config:
    return config_mod.parse(
        {
            "checks": {name: {"enabled": False} for name in ("runtimeclass", "images", "gpu")},
            "kubernetes": {"api_url": f"http://127.0.0.1:{port}", "request_timeout": 30, "list_page_size": 500},
            "scan": {"objects_per_second": 1e9, "burst": 1_000_000, "writes_per_second": 1e6},
        }
    )


async def _list_only(cfg: config_mod.Config) -> tuple[float, int]:
    services = service.cluster_services(cfg)
    assert services.kube_api is not None
    rest = RestApi(services.kube_api, 30)
    started = time.perf_counter()
    count, token = 0, None
    while True:
        query = {"limit": 500, "continue": token} if token else {"limit": 500}
        body = await rest.call("list pods", "GET", "/api/v1/pods", **query)
        count += len(body["items"])
        token = body["metadata"].get("continue")
        if not token:
            break
    elapsed = time.perf_counter() - started
    await asyncio.to_thread(services.kube_api.close)
    return elapsed, count


async def _scan(cfg: config_mod.Config) -> tuple[float, int, dict[str, int]]:
    services = service.cluster_services(cfg)
    assert services.kube_api is not None
    pipeline = service.build_pipeline(cfg, services)
    rest = RestApi.build(cfg.kubernetes)
    await pipeline.start()
    try:
        scanner = Scanner(pipeline, rest, cfg.kubernetes, cfg.scan)
        started = time.perf_counter()
        await scanner.once()
        elapsed = time.perf_counter() - started
        return elapsed, scanner.object_count, dict(scanner.metrics.writes)
    finally:
        await pipeline.close()
        await asyncio.to_thread(rest.close)
        await asyncio.to_thread(services.kube_api.close)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    receive, send = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.Process(target=_serve, args=(args.pods, send), daemon=True)
    server.start()
    try:
        port = receive.recv()
        cfg = _config(port)
        lists, scans = [], []
        for round_ in range(args.rounds):
            list_s, listed = asyncio.run(_list_only(cfg))
            scan_s, judged, writes = asyncio.run(_scan(cfg))
            lists.append(list_s)
            scans.append(scan_s)
            print(
                f"round {round_ + 1}: list {listed} pods {list_s:.2f} s | scan {judged} objects {scan_s:.2f} s "
                f"({judged / scan_s:,.0f}/s), report writes {json.dumps(writes, sort_keys=True)}"
            )
        list_m, scan_m = statistics.median(lists), statistics.median(scans)
        print(
            f"median: scan of {args.pods} pods {scan_m:.2f} s; bare paged list {list_m:.2f} s; "
            f"ratio scan/list {scan_m / list_m:.1f}x (shared 2-core machine; figures vary with load)"
        )
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    main()
