"""Input bounds checked before any policy runs (stage before ``policy.isolation``).

rego-cpp's cost grows faster than its input (a per-container rule over 1,000 containers took
seconds, over 4,000 most of a minute), so an object beyond these bounds is denied with a
message naming the bound instead of being evaluated: no legitimate pod needs hundreds of
containers, and the worker's deadline then only has to catch pathological policies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from webhook.core import workloads
from webhook.core.workloads import PodSpecRef


def pods_over_bounds(pods: Sequence[PodSpecRef], max_containers: int) -> str | None:
    """Why the pods are too large to evaluate, or None."""
    for pod in pods:
        n = sum(len(c) for f in workloads.CONTAINER_FIELDS if isinstance(c := pod.spec.get(f), list))
        if n > max_containers:
            return (
                f"the pod spec at {pod.path} has {n} containers (init, regular and ephemeral together); "
                f"policies judge at most {max_containers} (policy.max_containers), so it is denied "
                f"without evaluation"
            )
    return None


def encoded(request: Any) -> bytes:
    """The evaluation request as the worker receives it (its size is what is bounded)."""
    return orjson.dumps(request, option=orjson.OPT_NON_STR_KEYS)


def within(request: Any, max_bytes: int | None) -> bytes | str:
    """The encoded request, or why it is denied without evaluation: the encoder refuses it, or
    it is over ``max_bytes`` (None: not bounded). The embedded engine and a remote OPA alike."""
    try:
        payload = encoded(request)
    except orjson.JSONEncodeError as exc:
        return unencodable(exc)
    return too_many_bytes(len(payload), max_bytes) if max_bytes is not None and len(payload) > max_bytes else payload


def unencodable(exc: Exception) -> str:
    """Why an input the encoder refuses (nested past its 255 levels, an integer beyond 64 bits)
    is denied: it cannot reach the policies, and a failure mode of ``allow`` must not admit it."""
    return (
        f"the policy input cannot be encoded for the policies ({exc}: nested deeper than 255 levels, "
        "or an integer beyond 64 bits), so it is denied without evaluation"
    )


def too_many_bytes(size: int, max_bytes: int) -> str:
    return (
        f"the policy input is {size} bytes; policies judge at most {max_bytes} "
        f"(policy.max_input_bytes), so it is denied without evaluation"
    )
