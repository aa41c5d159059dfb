"""Per-pod cost of the Pod Security checks, next to baselines measured in the same run.

Run: ``python bench/bench_privilege.py``. The subject is a typical 3-container pod (app, sidecar,
metrics; probes, ports, resources, volumes), once restricted-clean and once with a few baseline
and restricted violations. Baselines: ``orjson.loads`` of the same pod (the cheapest possible
decode of an AdmissionReview's object) and a bare walk reading each container's securityContext.
Figures are the best of several repeats, in µs per pod, with ratios to the baselines.
"""

from __future__ import annotations

import asyncio
import copy
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from webhook.admission import workloads
from webhook.checks import privilege
from webhook.checks.base import RequestContext
from webhook.checks.services import Services
from webhook.config import Config


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


def _best(fn: Callable[[], object], number: int) -> float:
    """Best µs per call over several repeats."""
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def _sync(coro: Any) -> Any:
    """Drive a coroutine that never suspends (the privilege check does no I/O) without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the check suspended")


def main() -> None:
    number = 2000
    check = privilege.build(Config(), Services())
    ctx = RequestContext("CREATE", "Pod", "shop", "web")
    raw = orjson.dumps(CLEAN)
    base_loads = _best(lambda: orjson.loads(raw), number)
    base_walk = _best(lambda: _walk(CLEAN), number)
    print(f"baseline  orjson.loads of the pod ({len(raw)} bytes): {base_loads:7.2f} µs")
    print(f"baseline  bare securityContext walk:             {base_walk:7.2f} µs")
    print()
    print(f"{'case':58} {'µs/pod':>8} {'× loads':>8} {'× walk':>8}")
    for label, obj in (("clean", CLEAN), ("violating", DIRTY)):
        pods = workloads.pod_specs(obj)
        cases: list[tuple[str, Callable[[], object]]] = [
            (f"evaluate baseline:latest, {label}", lambda p=pods: privilege.evaluate(p, "baseline")),
            (f"evaluate restricted:latest, {label}", lambda p=pods: privilege.evaluate(p, "restricted")),
            (f"evaluate hardened:latest, {label}", lambda p=pods: privilege.evaluate(p, "hardened")),
            (
                f"check.run default (enforce baseline, warn+audit restricted), {label}",
                lambda p=pods: _sync(check.run(p, ctx)),
            ),
        ]
        for name, fn in cases:
            us = _best(fn, number)
            print(f"{name:58} {us:8.2f} {us / base_loads:8.1f} {us / base_walk:8.1f}")
    # The check inside an event loop, as the webhook runs it.
    pods = workloads.pod_specs(CLEAN)

    async def loop_run() -> float:
        start = timeit.default_timer()
        for _ in range(number):
            await check.run(pods, ctx)
        return (timeit.default_timer() - start) / number * 1e6

    us = min(asyncio.run(loop_run()) for _ in range(3))
    print(f"{'check.run default in an asyncio loop, clean':58} {us:8.2f} {us / base_loads:8.1f} {us / base_walk:8.1f}")


if __name__ == "__main__":
    main()
