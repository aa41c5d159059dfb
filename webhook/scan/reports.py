"""Verdicts into ``wgpolicyk8s.io/v1alpha2`` PolicyReport results (decide stage of scans; pure).

One result per (object, check), in the format Kyverno's and Gatekeeper's report consumers read
(Policy Reporter, ``kubectl get polr``): ``policy`` is the check, ``result`` one of
pass / fail / warn / error / skip, ``resources`` names the object. ``fail`` means the check
would deny the object at admission now (enforce mode); ``warn`` that its findings only warn or
audit; ``error`` that it could not finish (failure mode applied); ``skip`` that an exemption or
mode ``off`` keeps it from judging the object. Namespaced objects go to a ``PolicyReport`` in
their namespace, cluster-scoped ones to the ``ClusterPolicyReport``.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhook.checks.pipeline import Outcome
from webhook.core.decision import Mode

API_VERSION = "wgpolicyk8s.io/v1alpha2"
SOURCE = "portcullis"
MANAGED_BY = {"app.kubernetes.io/managed-by": "portcullis"}
RESULTS = ("pass", "fail", "warn", "error", "skip")
# Results per report object: etcd refuses objects over ~1.5 MiB; a result is ~300-600 bytes.
MAX_RESULTS = 1000
_MAX_MESSAGE = 1024
_MAX_LISTED = 10
_CATEGORY = {
    "privilege": "Pod Security",
    "runtimeclass": "Runtime Class",
    "images": "Supply Chain",
    "gpu": "GPU Quota",
    "rego": "Custom Policy",
}
_SEVERITY = {"fail": "high", "warn": "medium", "error": "medium"}


@dataclass(frozen=True, slots=True)
class ObjectRef:
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str

    def to_json(self) -> dict[str, str]:
        ref = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid}
        if self.namespace:
            ref["namespace"] = self.namespace
        return ref


def timestamp(seconds: float) -> dict[str, int]:
    """``metav1.Timestamp`` (seconds and nanos since the epoch)."""
    whole = int(seconds)
    return {"seconds": whole, "nanos": round((seconds - whole) * 1e9) % 1_000_000_000}


def results_for(ref: ObjectRef, outcome: Outcome, checks: Sequence[str], *, now: float) -> list[dict[str, Any]]:
    """The results of one judged object, one per check that applies to its kind."""
    verdict = outcome.verdict
    by_check = {
        check: [(f.violation.describe(), f.mode) for f in found] for check, found in outcome.findings_by_check.items()
    }
    out: list[dict[str, Any]] = []
    for check in checks:
        if check not in outcome.applicable:
            continue  # the check has nothing to say about this kind (no policy selects it)
        if check == "rego" and check in outcome.checks_run and not _policies_ran(outcome):
            continue  # no policy or constraint matched the object: nothing to report
        if check not in outcome.checks_run:
            reason = verdict.exempt_reason or "check mode is off for this namespace"
            out.append(_result(ref, check, "skip", f"not judged: {reason}", now))
        elif check in outcome.errors:
            out.append(_result(ref, check, "error", f"could not finish: {outcome.errors[check]}", now))
        elif check in by_check:
            found = by_check[check]
            result = "fail" if any(mode is Mode.ENFORCE for _, mode in found) else "warn"
            out.append(_result(ref, check, result, _listed([m for m, _ in found]), now, violations=len(found)))
        else:
            out.append(_result(ref, check, "pass", "no violations", now))
    return out


def error_results(
    ref: ObjectRef, checks: Sequence[str], message: str, *, pod_kind: bool, now: float
) -> list[dict[str, Any]]:
    """An object the pipeline cannot judge at all (malformed): ``error`` for every check."""
    return [
        _result(ref, check, "error", f"cannot judge the object: {message}", now)
        for check in checks
        if pod_kind or check == "rego"
    ]


def _policies_ran(outcome: Outcome) -> bool:
    context = outcome.context.get("rego")
    return not isinstance(context, Mapping) or bool(context.get("policies")) or bool(context.get("failed"))


def _result(
    ref: ObjectRef, check: str, result: str, message: str, now: float, *, violations: int = 0
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "source": SOURCE,
        "policy": check,
        "category": _CATEGORY.get(check, "Portcullis"),
        "result": result,
        "scored": True,
        "message": message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 6] + "…[cut]",
        "resources": [ref.to_json()],
        "timestamp": timestamp(now),
    }
    if result in _SEVERITY:
        entry["severity"] = _SEVERITY[result]
    if violations:
        entry["properties"] = {"violations": str(violations)}
    return entry


def _listed(messages: list[str]) -> str:
    text = "; ".join(messages[:_MAX_LISTED])
    return f"{text}; and {len(messages) - _MAX_LISTED} more" if len(messages) > _MAX_LISTED else text


def same_result(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal but for the time it was found (a re-judgement with the same answer keeps its time)."""
    return {k: v for k, v in a.items() if k != "timestamp"} == {k: v for k, v in b.items() if k != "timestamp"}


def summary(results: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = Counter(r["result"] for r in results)
    return {name: counts.get(name, 0) for name in RESULTS}


def _sort_key(result: Mapping[str, Any]) -> tuple[str, str, str, str]:
    ref = result["resources"][0]
    return (ref["kind"], ref["name"], ref["uid"], result["policy"])


def reports(namespace: str, base_name: str, results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The report objects for one namespace ("" = the cluster report), by name.

    Up to ``MAX_RESULTS`` results fit one report named ``base_name``; more are spread over
    ``<base_name>-<i>-of-<n>`` by a stable hash of each object (n a power of two, so an object
    moves only when the count crosses one). No results: no report.
    """
    if not results:
        return {}
    shards = 1
    while len(results) > shards * MAX_RESULTS * 3 // 4 and len(results) > MAX_RESULTS:
        shards *= 2
    buckets: dict[int, list[Mapping[str, Any]]] = {}
    for result in results:
        ref = result["resources"][0]
        index = zlib.crc32(f"{ref['kind']}/{ref['name']}/{ref['uid']}".encode()) % shards if shards > 1 else 0
        buckets.setdefault(index, []).append(result)
    out: dict[str, dict[str, Any]] = {}
    for index, items in sorted(buckets.items()):
        name = base_name if shards == 1 else f"{base_name}-{index}-of-{shards}"
        out[name] = report(namespace, name, sorted(items, key=_sort_key))
    return out


def report(namespace: str, name: str, results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": dict(MANAGED_BY)}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": API_VERSION,
        "kind": "PolicyReport" if namespace else "ClusterPolicyReport",
        "metadata": metadata,
        "summary": summary(results),
        "results": [dict(r) for r in results],
    }


def path(namespace: str, name: str = "") -> str:
    """REST path of a report (or the collection, without ``name``)."""
    group = f"/apis/{API_VERSION}"
    base = f"{group}/namespaces/{namespace}/policyreports" if namespace else f"{group}/clusterpolicyreports"
    return f"{base}/{name}" if name else base
