"""Crash probe: compile and evaluate policies in a child process before the webhook installs them.

rego-cpp 1.x can abort or segfault on some valid-looking Rego (a local variable named like a
function, some ``with`` forms). In-process, that would take the webhook down at start-up or,
worse, on a reload. The probe compiles the same files in a child and evaluates every policy
on sample requests; a crash becomes a ``PolicyLoadError`` naming the policy, and the webhook
keeps its last good bundle. Called by ``rego.engine`` and ``gatekeeper.reloadable`` loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from webhook import errors

_TIMEOUT = 60.0


def _container(name: str, gpus: str | None) -> dict[str, Any]:
    # One compliant-looking and one suspicious sample, so deny branches run too.
    resources = {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus}} if gpus else {}
    image = "docker.io/library/probe:latest" if gpus else "registry.example.com/probe@sha256:" + "0" * 64
    return {"name": name, "image": image, "resources": resources}


def _deployment(gpus: str | None, host_ipc: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [_container("main", gpus)], "hostIPC": host_ipc}
    if gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    labels = {"app": "probe", "team": "probe", "cost-center": "probe", "app.kubernetes.io/component": "inference"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "probe", "namespace": "probe", "labels": labels, "annotations": {"a": "b"}},
        "spec": {"replicas": 2, "template": {"metadata": {"labels": labels, "annotations": {"a": "b"}}, "spec": spec}},
    }


SAMPLES: tuple[dict[str, Any], ...] = (_deployment(None, False), _deployment("4", True))


def sample_review(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "uid": "probe",
        "kind": {"group": "apps", "version": "v1", "kind": obj["kind"]},
        "name": "probe",
        "namespace": "probe",
        "operation": "CREATE",
        "subResource": "",
        "userInfo": {"username": "probe", "groups": []},
        "dryRun": False,
        "object": obj,
        "oldObject": None,
    }


def sample_document(obj: dict[str, Any]) -> dict[str, Any]:
    template = obj["spec"]["template"]
    return {
        "apiVersion": "portcullis.dev/v1",
        "request": sample_review(obj),
        "pods": [{"path": "spec.template.spec", "metadata": template["metadata"], "spec": template["spec"]}],
        "namespace": {"name": "probe", "labels": {}},
        "context": {},
    }


def check(
    kind: str,
    paths: Sequence[Path],
    *,
    strict_builtins: bool = False,
    sources: Sequence[tuple[str, str]] | None = None,
) -> None:
    """Raise ``PolicyLoadError`` if loading or evaluating ``paths`` fails or crashes the engine.

    ``sources`` (``(name, text)`` of the Rego modules or Gatekeeper YAML files): probe exactly
    these instead of reading ``paths`` again, so the caller compiles what was probed even if a file changes
    between the two (an unprobed version could crash the webhook's own compile)."""
    args = [sys.executable, "-m", "webhook.policy.probe_child", kind, "strict" if strict_builtins else "lax"]
    stdin = None
    if sources is not None:
        args.append("-")
        stdin = json.dumps([list(s) for s in sources])
    else:
        args += map(str, paths)
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise errors.PolicyLoadError(f"compiling the policies took over {_TIMEOUT:.0f} s") from exc
    if proc.returncode == 0:
        return
    if proc.returncode == 2:
        raise errors.PolicyLoadError(proc.stderr.strip())
    last = (proc.stdout.strip().splitlines() or ["(compiling)"])[-1]
    detail = (proc.stderr.strip().splitlines() or [""])[-1]
    raise errors.PolicyLoadError(
        f"{last}: the embedded Rego engine crashed (exit {proc.returncode}) on a sample request"
        f"{': ' + detail if detail else ''}; rename local variables that shadow rules or functions "
        f"and avoid `with input as`, then reload"
    )
