"""Pod Security check CPU per review, in process: screened plans next to the same plans judging
every pod with the per-check functions (what they did before the screen), interleaved.

    python bench/bench_pss.py [--reviews 20000] [--rounds 5]

Pods: the Deployment ``bench_admission.py`` sends (3 containers, restricted-clean), a bigger
compliant pod (6 containers with probes, ports, runAsUser), a pod with no securityContext (clean at
baseline only, like most pods in the wild) and a privileged one: for these two the screen answers
"not clean" and the checks run, so their figures show what a miss costs.
Plans: the defaults for a workload template (warn and audit restricted) and for a Pod (enforce
baseline too: two groups, each screened on a miss), and a namespace labelled enforce=restricted. CPU time (``process_time``), best of the rounds; the machine may be shared,
so compare the two columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_admission import deployment

from webhook.checks.pss.policy import LevelVersion, Plan, Policy, compile_plan
from webhook.checks.pss.registry import Level
from webhook.core import workloads


def _big_pod() -> dict[str, Any]:
    obj = copy.deepcopy(deployment())
    spec = obj["spec"]["template"]["spec"]
    probe = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10}
    for c in spec["containers"]:
        c["securityContext"]["runAsUser"] = 1000
        c["livenessProbe"] = c["readinessProbe"] = probe
    spec["containers"] += copy.deepcopy(spec["containers"]) + copy.deepcopy(spec["initContainers"])
    for i, c in enumerate(spec["containers"]):
        c["name"] = f"c{i}"
    spec["volumes"] = [{"name": "tmp", "emptyDir": {}}, {"name": "conf", "configMap": {"name": "c"}}]
    return obj


def _privileged() -> dict[str, Any]:
    obj = copy.deepcopy(deployment())
    obj["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    return obj


def _unrestricted() -> dict[str, Any]:
    """Baseline-clean, not restricted-clean: no securityContext anywhere (most pods in the wild)."""
    obj = copy.deepcopy(deployment())
    spec = obj["spec"]["template"]["spec"]
    del spec["securityContext"]
    for c in spec["containers"] + spec["initContainers"]:
        del c["securityContext"]
    return obj


def _cpu_us(fn: Callable[[], object], reviews: int) -> float:
    start = time.process_time()
    for _ in range(reviews):
        fn()
    return (time.process_time() - start) / reviews * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    restricted, privileged = LevelVersion(Level.RESTRICTED), LevelVersion(Level.PRIVILEGED)
    baseline = LevelVersion(Level.BASELINE)
    plans = {
        "template defaults": compile_plan(Policy(privileged, restricted, restricted)),
        "Pod defaults": compile_plan(Policy(baseline, restricted, restricted)),
        "enforce=restricted": compile_plan(Policy(restricted, restricted, restricted)),
    }
    pods = {
        "Deployment (bench_admission)": deployment(),
        "6 containers, probes": _big_pod(),
        "not restricted (findings)": _unrestricted(),
        "privileged (findings)": _privileged(),
    }
    print(
        f"{args.reviews} reviews x best of {args.rounds} rounds; CPU per review, us (shared machine: compare columns)"
    )
    print(f"{'plan':20s} {'pod':30s} {'checks only':>12s} {'screened':>9s} {'ratio':>6s}")
    for plan_name, plan in plans.items():
        exact = Plan(plan.groups)  # the same checks, no screen
        for pod_name, obj in pods.items():
            specs = workloads.pod_specs(obj)
            assert plan.evaluate(specs) == exact.evaluate(specs)
            before, after = [], []
            for _ in range(args.rounds):
                before.append(_cpu_us(lambda e=exact, s=specs: e.evaluate(s), args.reviews))
                after.append(_cpu_us(lambda p=plan, s=specs: p.evaluate(s), args.reviews))
            b, a = min(before), min(after)
            print(f"{plan_name:20s} {pod_name:30s} {b:12.2f} {a:9.2f} {a / b:6.2f}")


if __name__ == "__main__":
    main()
