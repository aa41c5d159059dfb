"""Admission cost of the GPU quota check with many pods in the ledger (target: O(1), < 20 µs).

Run: python bench/bench_gpu.py. Prints µs per admission and the ratio to a bare dict lookup
measured in the same run, for ledgers of 1,000 / 10,000 / 100,000 pods (flat cost = O(1)).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from webhook.checks import gpu
from webhook.config import parse
from webhook.core.request import RequestContext
from webhook.core.workloads import pod_specs
from webhook.quota import coordination
from webhook.quota.ledger import Ledger, PodRecord
from webhook.quota.model import QuotaModel

QUOTA = {
    "resources": {"nvidia.com/gpu": 1, "nvidia.com/gpu.shared": "1/4"},
    "quotas": [
        {"name": "cluster", "limit": 10**9},
        {"name": "per-ns", "per": "namespace", "limit": 10**7},
        {"name": "per-team", "per": "team", "limit": 10**8},
        {"name": "a100", "gpu_model": "A100", "limit": 10**9},
    ],
    "per_pod": {"max_gpus": 8, "requests_equal_limits": True},
}


def pod(name: str, namespace: str, gpus: int) -> dict[str, Any]:
    res = {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus, "cpu": "4", "memory": "16Gi"}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": "A100"},
            "initContainers": [{"name": "fetch", "image": "x", "resources": {"requests": {"cpu": "1"}}}],
            "containers": [
                {"name": "train", "image": "trainer:1", "resources": res},
                {"name": "log", "image": "fluent:1", "resources": {"requests": {"cpu": "100m"}}},
            ],
        },
    }


def fill(model: QuotaModel, ledger: Ledger, pods: int) -> None:
    records = []
    for i in range(pods):
        ns = f"ns-{i % 100}"
        labels = {"team": f"team-{i % 10}"}
        demand = model.demand(pod(f"p{i}", ns, 1 + i % 4)["spec"])
        records.append((f"uid-p{i}", PodRecord(ns, f"p{i}", demand, model.charges(ns, labels, demand), labels["team"])))
    ledger.replace(records)


def per_op(func: Callable[[], object], n: int) -> float:
    """Best µs per call over many short batches: the machine is shared, the minimum is the cost."""
    best = float("inf")
    for _ in range(30):
        start = time.perf_counter()
        for _ in range(n):
            func()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def run_check(check: gpu.GpuCheck, pods: list[Any], ctx: RequestContext) -> Any:
    coro = check.run(pods, ctx)  # local coordination never awaits: drive the coroutine directly
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the local gpu check awaited")


def main() -> None:
    config = parse({"quota": QUOTA})
    n = 2_000
    table: dict[str, int] = {f"k{i}": i for i in range(10_000)}
    baseline = per_op(lambda: table.get("k5000"), n)
    print(f"baseline dict lookup: {baseline:.3f} µs")
    print(
        f"{'pods in ledger':>15} {'ledger.admit µs':>16} {'x base':>8} {'check.run µs':>13} {'x base':>8} {'+reserve µs':>12}"
    )
    for pods in (1_000, 10_000, 100_000):
        admit, full, reserve = measure(config, pods, n)
        print(
            f"{pods:>15,} {admit:>16.2f} {admit / baseline:>8.0f} {full:>13.2f} {full / baseline:>8.0f} {reserve:>12.2f}"
        )


def measure(config: Any, pods: int, n: int) -> tuple[float, float, float]:
    """µs per op: ledger.admit alone, the whole check (dry-run), the whole check reserving."""
    model = QuotaModel(config.quota)
    ledger = Ledger(3600.0)
    fill(model, ledger, pods)
    check = gpu.GpuCheck(config, model, ledger=ledger, coordinator=coordination.LocalCoordinator(ledger))
    obj = pod("new", "ns-7", 2)
    specs = pod_specs(obj)
    labels = {"team": "team-7"}
    dry = RequestContext("CREATE", "Pod", "ns-7", "new", labels, dry_run=True, object=obj)
    wet = RequestContext("CREATE", "Pod", "ns-7", "new", labels, object=obj)
    charges = model.charges("ns-7", labels, model.demand(obj["spec"]))
    assert not run_check(check, specs, dry).violations
    admit = per_op(lambda: ledger.admit(("uid-new", "ns-7/new"), charges, reserve=False), n)
    full = per_op(lambda: run_check(check, specs, dry), n)
    reserve = per_op(lambda: run_check(check, specs, wet), n // 4)  # the same pod re-reserves
    return admit, full, reserve


if __name__ == "__main__":
    main()
