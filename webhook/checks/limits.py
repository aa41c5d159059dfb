"""Bounded input: a pod spec larger than ``limits`` is refused before any check judges it.

Called by ``checks.pipeline`` on every judged review (webhook and ``portcullis check``). Every
check is linear in the containers, volumes and environment entries of a pod and runs on the
event loop; bounding them bounds the CPU one review can take, so no crafted pod can hold the
loop (and every other review) past its budget.
"""

from __future__ import annotations

from collections.abc import Sequence

from webhook import errors
from webhook.config.admission import InputLimits
from webhook.core import workloads
from webhook.core.decision import Violation
from webhook.core.workloads import PodSpecRef

# Findings kept per finding id (``Violation.check``) of one check; the rest are summed up in one.
MAX_FINDINGS = 100


def check(pods: Sequence[PodSpecRef], limits: InputLimits) -> None:
    """Raise ``ReviewError`` naming the field, its size and the setting when a pod is too large."""
    for pod in pods:
        spec = pod.spec
        count = sum(len(spec.get(f) or ()) for f in workloads.CONTAINER_FIELDS)
        if count > limits.max_containers:
            raise errors.ReviewError(
                _too_many(f"{pod.path}: {count} containers", limits.max_containers, "max_containers")
            )
        volumes = spec.get("volumes")
        if isinstance(volumes, list) and len(volumes) > limits.max_volumes:
            where = f"{pod.path}.volumes: {len(volumes)} volumes"
            raise errors.ReviewError(_too_many(where, limits.max_volumes, "max_volumes"))
        for field in workloads.CONTAINER_FIELDS:  # raw lists, no per-container records: hot path
            for index, container in enumerate(spec.get(field) or ()):
                env, env_from = container.get("env"), container.get("envFrom")
                entries = (len(env) if type(env) is list else 0) + (len(env_from) if type(env_from) is list else 0)
                if entries > limits.max_env:
                    where = f"{pod.path}.{field}[{index}]: {entries} env/envFrom entries"
                    raise errors.ReviewError(_too_many(where, limits.max_env, "max_env"))


def _too_many(what: str, limit: int, key: str) -> str:
    return f"{what}, more than the {limit} Portcullis judges (limits.{key}); split the workload or raise the limit"


def bounded(found: list[Violation]) -> list[Violation]:
    """At most ``MAX_FINDINGS`` findings per id, then one saying how many more (at the strongest
    mode among them), so no pod makes a verdict, a response or an audit record huge."""
    if len(found) <= MAX_FINDINGS + 1:
        return found
    totals: dict[str, int] = {}
    for v in found:
        totals[v.check] = totals.get(v.check, 0) + 1
    # an id with one more than the limit is left alone: a check that bounds itself (Pod Security)
    # already ends its list with such a summary
    over = {check_id for check_id, n in totals.items() if n > MAX_FINDINGS + 1}
    if not over:
        return found
    kept: list[Violation] = []
    rest: dict[str, list[Violation]] = {}
    counts: dict[str, int] = {}
    for v in found:
        n = counts[v.check] = counts.get(v.check, 0) + 1
        if v.check not in over or n <= MAX_FINDINGS:
            kept.append(v)
        else:
            rest.setdefault(v.check, []).append(v)
    for check_id, more in rest.items():
        mode = max((v.mode for v in more), key=lambda m: _RANK[m], default=None)
        kept.append(
            Violation(
                check_id,
                f"and {len(more)} more {check_id} findings like the ones above (only the first {MAX_FINDINGS} "
                f"are listed); fix them all",
                mode=mode,
            )
        )
    return kept


_RANK = {None: 0, "off": 0, "audit": 1, "warn": 2, "enforce": 3}
