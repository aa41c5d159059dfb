"""Per-review cost of the embedded Rego engine with the whole policies/ library loaded.

Prints µs per review next to baselines measured in the same run: orjson encoding of the same
input, a trivial `allow := true` bundle, and the library query recompiled per request.
Run: python bench/bench_rego.py
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import regopy

from webhook import config as config_mod
from webhook.admission import workloads
from webhook.admission.deadline import Deadline
from webhook.admission.pipeline import Pipeline, Subject
from webhook.checks import rego as rego_check
from webhook.checks.base import RequestContext
from webhook.checks.services import Services
from webhook.policy import gatekeeper, modules, native, rego
from webhook.policy import input as policy_input

ROOT = Path(__file__).resolve().parents[1]


def deployment() -> dict:
    container = {
        "name": "train",
        "image": "registry.example.com/ml/train:1.4",
        "resources": {"limits": {"nvidia.com/gpu": "4", "cpu": "8"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "train", "namespace": "ml", "labels": {"team": "vision", "cost-center": "cc-1"}},
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {"labels": {"app": "train"}},
                "spec": {
                    "containers": [container, {**container, "name": "sidecar", "resources": {}}],
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                },
            },
        },
    }


def per_call_us(fn: Callable[[], object], n: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


async def pipeline_us(obj: dict, n: int) -> float:
    """The rego check as the webhook runs it: input build, worker-thread hop, findings."""
    cfg = config_mod.parse({"policy": {"directory": str(ROOT / "policies"), "reload_interval": 0}})
    check = rego_check.build(cfg, Services())
    assert check is not None
    pipeline = Pipeline(cfg, [check])
    subject = Subject("CREATE", "Deployment", "ml", "train", obj)
    await pipeline.evaluate(subject, Deadline.after(5))
    start = time.perf_counter()
    for _ in range(n):
        await pipeline.evaluate(subject, Deadline.after(5))
    elapsed = (time.perf_counter() - start) / n * 1e6
    await pipeline.close()
    return elapsed


def main() -> None:
    obj = deployment()
    ctx = RequestContext("CREATE", "Deployment", "ml", "train", object=obj, shared={"images": {"verified": True}})
    pods = workloads.pod_specs(obj)
    document = policy_input.build(ctx, pods)
    library = rego.load_directory([ROOT / "policies"])
    trivial = rego.compile_modules([modules.parse("t.rego", "package t\nimport rego.v1\ndeny := set()\n")])
    recompiled = regopy.Interpreter()
    for module in library.modules:
        recompiled.add_module(module.name, module.source)
    recompiled.add_module("w.rego", rego.wrapper_source(library.policies))

    def recompile() -> object:
        recompiled.set_input(regopy.Input(document))
        return recompiled.query("x := data.portcullis_bundle.result")

    n = 2000
    encode = per_call_us(lambda: orjson.dumps(document), n)
    build_input = per_call_us(lambda: policy_input.build(ctx, pods), n)
    convert_us = per_call_us(lambda: native.new_input(document), n)
    trivial_us = per_call_us(lambda: trivial.evaluate(document), n)
    library_us = per_call_us(lambda: library.evaluate(document), n)
    recompile_us = per_call_us(recompile, 100)
    templates = gatekeeper.load([ROOT / "policies" / "gatekeeper"])
    labels: dict[str, str] = {}
    gatekeeper_us = per_call_us(lambda: templates.evaluate(document["request"], labels), n)
    pipeline = asyncio.run(pipeline_us(obj, n))
    print(f"policies loaded: {len(library.policies)} ({', '.join(library.policy_ids)})")
    print(f"orjson encode of the input        {encode:8.1f} µs  (baseline, 1.0x)")
    print(f"build input document              {build_input:8.1f} µs  ({build_input / encode:6.1f}x)")
    print(f"copy input into rego-cpp          {convert_us:8.1f} µs  ({convert_us / encode:6.1f}x)")
    print(f"trivial bundle (1 policy)         {trivial_us:8.1f} µs  ({trivial_us / encode:6.1f}x)")
    print(
        f"whole library, compiled bundle    {library_us:8.1f} µs  ({library_us / encode:6.1f}x, {library_us / trivial_us:.1f}x trivial)"
    )
    print(f"whole library, query recompiled   {recompile_us:8.1f} µs  ({recompile_us / library_us:6.1f}x the bundle)")
    print(
        f"rego check in the pipeline        {pipeline:8.1f} µs  ({pipeline / library_us:6.2f}x the bundle evaluation)"
    )
    n_constraints = len(templates.constraints)
    print(
        f"gatekeeper, {n_constraints} constraints           {gatekeeper_us:8.1f} µs  ({gatekeeper_us / encode:6.1f}x)"
    )


if __name__ == "__main__":
    main()
