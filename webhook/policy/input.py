"""The input document every Rego policy sees (embedded engine and remote OPA alike).

Stable contract, documented in ``docs/policy-input.md``; bump ``INPUT_VERSION`` on any change
that could break a policy. Built once per request by ``checks.rego`` from the request context,
the pod specs the decode stage extracted and what the earlier checks learnt (``ctx.shared``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from webhook.core.request import RequestContext
from webhook.core.workloads import PodSpecRef

INPUT_VERSION = "portcullis.dev/v1"


def request(ctx: RequestContext) -> dict[str, Any]:
    """The AdmissionReview ``request`` as the apiserver sends it (the fields Portcullis keeps)."""
    group, version = _group_version(ctx.object.get("apiVersion"))
    return {
        "uid": ctx.uid,
        "kind": {"group": group, "version": version, "kind": ctx.kind},
        "name": ctx.name,
        "namespace": ctx.namespace,
        "operation": ctx.operation,
        "subResource": ctx.subresource,
        "userInfo": {"username": ctx.username, "groups": list(ctx.groups)},
        "dryRun": ctx.dry_run,
        "object": ctx.object,
        "oldObject": ctx.old_object,
    }


def review(ctx: RequestContext) -> dict[str, Any]:
    """``input.review`` as Gatekeeper builds it: the apiserver's AdmissionRequest verbatim
    (``resource``, ``requestKind``, ``options``, ...) when the subject came from a review, else
    what ``request`` reconstructs (CI, scans); plus ``_unstable.namespace``, the Namespace
    object of a namespaced request, as far as Portcullis knows it (name and labels)."""
    out = dict(ctx.admission_request) if ctx.admission_request else request(ctx)
    out["object"] = ctx.object
    out["oldObject"] = ctx.old_object
    namespace = namespace_object(ctx.namespace, ctx.namespace_labels)
    if namespace is not None:
        out["_unstable"] = {"namespace": namespace}
    return out


def namespace_object(name: str, labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The Namespace object a Gatekeeper match and template see (None: cluster-scoped)."""
    if not name:
        return None
    metadata: dict[str, Any] = {"name": name, "labels": dict(labels)}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def build(ctx: RequestContext, pods: Sequence[PodSpecRef]) -> dict[str, Any]:
    """The whole input document: ``request``, ``pods``, ``namespace`` and ``context``."""
    return {
        "apiVersion": INPUT_VERSION,
        "request": request(ctx),
        "pods": [{"path": p.path, "metadata": p.metadata, "spec": p.spec} for p in pods],
        "namespace": {"name": ctx.namespace, "labels": dict(ctx.namespace_labels)},
        "context": plain(ctx.shared) if ctx.shared else {},
    }


def plain(value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` as plain JSON types (checks may store dataclasses, enums, sets, tuples)."""
    encoded = orjson.dumps(value, default=_fallback, option=orjson.OPT_NON_STR_KEYS)
    decoded: dict[str, Any] = orjson.loads(encoded)
    return decoded


def _fallback(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "to_json"):
        return value.to_json()
    return str(value)


def _group_version(api_version: Any) -> tuple[str, str]:
    if not isinstance(api_version, str) or not api_version:
        return "", ""
    group, _, version = api_version.rpartition("/")
    return group, version
