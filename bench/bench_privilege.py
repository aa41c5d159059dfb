"""Per-pod cost of the Pod Security checks, next to baselines measured in the same run.

Run: ``python bench/bench_privilege.py``. The subject is a typical 3-container pod (app, sidecar,
metrics; probes, ports, resources, volumes), once restricted-clean and once with a few baseline
and restricted violations. Baselines: ``orjson.loads`` of the same pod (the cheapest possible
decode of an AdmissionReview's object) and a bare walk reading each container's securityContext.
Figures: best µs per pod over several rounds, and the median ratio to each baseline timed\nright before it in the same round.
"""

from __future__ import annotations

import asyncio
import copy
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from webhook.checks import privilege
from webhook.checks.services import Services
from webhook.config import Config
from webhook.core import workloads
from webhook.core.request import RequestContext


def _container(name: str, image: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "ports": [{"containerPort": port, "name": "http"}],
        "env": [{"name": "MODE", "value": "prod"}, {"name": "LOG", "value": "info"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": port}},
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}, {"name": "config", "mountPath": "/etc/app"}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
    }


CLEAN: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-7d4b9", "namespace": "shop", "labels": {"app": "web"}, "annotations": {"a": "b"}},
    "spec": {
        "serviceAccountName": "web",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            _container("app", "registry.example/shop/web:1.4.2", 8080),
            _container("envoy", "registry.example/envoy:1.30", 9901),
            _container("metrics", "registry.example/exporter:0.9", 9100),
        ],
        "volumes": [
            {"name": "cache", "emptyDir": {}},
            {"name": "config", "configMap": {"name": "web"}},
        ],
    },
}
DIRTY = copy.deepcopy(CLEAN)
DIRTY["spec"]["containers"][1]["securityContext"] = {"privileged": True}
DIRTY["spec"]["containers"][2]["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
DIRTY["spec"]["hostNetwork"] = True


def _walk(obj: dict[str, Any]) -> int:
    """The bare minimum any check does: reach each container's securityContext."""
    n = 0
    for c in obj["spec"]["containers"]:
        sc = c.get("securityContext") or {}
        n += len(sc)
    return n


def _per_call(fn: Callable[[], object], number: int) -> float:
    """µs per call of one timed batch."""
    return timeit.timeit(fn, number=number) / number * 1e6


def _sync(coro: Any) -> Any:
    """Drive a coroutine that never suspends (the privilege check does no I/O) without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the check suspended")


def _measure(
    fn: Callable[[], object], baselines: list[Callable[[], object]], number: int, rounds: int
) -> tuple[float, list[float]]:
    """Best µs per call, and the median ratio to each baseline timed right before it in each round
    (interleaving keeps the ratios honest on a machine shared with other work)."""
    best = float("inf")
    ratios: list[list[float]] = [[] for _ in baselines]
    for _ in range(rounds):
        base = [_per_call(b, number) for b in baselines]
        us = _per_call(fn, number)
        best = min(best, us)
        for i, b in enumerate(base):
            ratios[i].append(us / b)
    return best, [statistics.median(r) for r in ratios]


def main() -> None:
    number, rounds = 2000, 9
    check = privilege.build(Config(), Services())
    ctx = RequestContext("CREATE", "Pod", "shop", "web")
    raw = orjson.dumps(CLEAN)

    def loads() -> object:
        return orjson.loads(raw)

    def walk() -> object:
        return _walk(CLEAN)

    base_loads = min(_per_call(loads, number) for _ in range(rounds))
    base_walk = min(_per_call(walk, number) for _ in range(rounds))
    print(f"baseline  orjson.loads of the pod ({len(raw)} bytes): {base_loads:7.2f} µs (best)")
    print(f"baseline  bare securityContext walk:             {base_walk:7.2f} µs (best)")
    print()
    print(f"{'case (3-container pod)':62} {'µs/pod':>7} {'× loads':>8} {'× walk':>7}")
    for label, obj in (("clean", CLEAN), ("violating", DIRTY)):
        pods = workloads.pod_specs(obj)
        cases: list[tuple[str, Callable[[], object]]] = [
            (f"evaluate baseline:latest, {label}", lambda p=pods: privilege.evaluate(p, "baseline")),
            (f"evaluate restricted:latest, {label}", lambda p=pods: privilege.evaluate(p, "restricted")),
            (f"evaluate hardened:latest, {label}", lambda p=pods: privilege.evaluate(p, "hardened")),
            (
                f"check.run default (enforce baseline, warn+audit restr.), {label}",
                lambda p=pods: _sync(check.run(p, ctx)),
            ),
        ]
        for name, fn in cases:
            us, (r_loads, r_walk) = _measure(fn, [loads, walk], number, rounds)
            print(f"{name:62} {us:7.2f} {r_loads:8.1f} {r_walk:7.0f}")
    # The check inside an event loop, as the webhook runs it.
    pods = workloads.pod_specs(CLEAN)

    async def loop_run() -> float:
        start = timeit.default_timer()
        for _ in range(number):
            await check.run(pods, ctx)
        return (timeit.default_timer() - start) / number * 1e6

    us = min(asyncio.run(loop_run()) for _ in range(3))
    print(
        f"{'check.run default awaited in an asyncio loop, clean':62} {us:7.2f} {us / base_loads:8.1f} {us / base_walk:7.0f}"
    )


if __name__ == "__main__":
    main()
