"""AdmissionReview ``admission.k8s.io/v1`` in and out (decode stage of the webhook).

Decoding validates every field the webhook relies on and raises ``ReviewError`` with a reason
the server turns into HTTP 400; encoding builds the response the apiserver expects.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from webhook import errors
from webhook.core.decision import Verdict

API_VERSION = "admission.k8s.io/v1"


@dataclass(frozen=True, slots=True)
class ReviewRequest:
    """The parts of ``AdmissionReview.request`` that Portcullis reads, validated."""

    uid: str
    kind: str  # request.kind.kind, e.g. "Deployment"
    group: str
    resource: str
    subresource: str
    operation: str
    namespace: str
    name: str
    username: str
    groups: tuple[str, ...]
    dry_run: bool
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None
    raw: Mapping[str, Any] | None = None  # the whole ``request``, for Gatekeeper's ``input.review``


def decode(body: bytes) -> ReviewRequest:
    """Parse and validate an AdmissionReview body; raise ``ReviewError`` saying what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.ReviewError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise errors.ReviewError("body must be a JSON object (an AdmissionReview)")
    if doc.get("apiVersion") != API_VERSION:
        raise errors.ReviewError(f"apiVersion must be {API_VERSION!r}, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != "AdmissionReview":
        raise errors.ReviewError(f"kind must be 'AdmissionReview', got {doc.get('kind')!r}")
    req = doc.get("request")
    if not isinstance(req, dict):
        raise errors.ReviewError("AdmissionReview.request is missing or not an object")
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid:
        raise errors.ReviewError("request.uid must be a non-empty string")
    kind = _mapping(req, "kind")
    resource = _mapping(req, "resource", required=False)
    user = _mapping(req, "userInfo", required=False)
    groups = user.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise errors.ReviewError("request.userInfo.groups must be a list of strings")
    obj = req.get("object")
    old = req.get("oldObject")
    for name, value in (("object", obj), ("oldObject", old)):
        if value is not None and not isinstance(value, dict):
            raise errors.ReviewError(f"request.{name} must be an object or null")
    dry_run = req.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise errors.ReviewError("request.dryRun must be a boolean")
    return ReviewRequest(
        uid=uid,
        kind=_string(kind, "kind", "request.kind.kind"),
        group=_string(kind, "group", "request.kind.group", required=False),
        resource=_string(resource, "resource", "request.resource.resource", required=False),
        subresource=_string(req, "subResource", "request.subResource", required=False),
        operation=_string(req, "operation", "request.operation"),
        namespace=_string(req, "namespace", "request.namespace", required=False),
        name=_string(req, "name", "request.name", required=False),
        username=_string(user, "username", "request.userInfo.username", required=False),
        groups=tuple(groups),
        dry_run=dry_run,
        object=obj,
        old_object=old,
        raw=req,
    )


def _mapping(doc: Mapping[str, Any], key: str, *, required: bool = True) -> Mapping[str, Any]:
    value = doc.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise errors.ReviewError(f"request.{key} must be an object")
    return value


def _string(doc: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = doc.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise errors.ReviewError(f"{where} must be a non-empty string" if required else f"{where} must be a string")
    return value


def encode(uid: str, verdict: Verdict, *, mutating: bool = False) -> bytes:
    """The AdmissionReview response for a verdict."""
    response: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": verdict.deny_message()}
    if verdict.warnings:
        response["warnings"] = list(verdict.warnings)
    if verdict.audit_annotations:
        response["auditAnnotations"] = dict(verdict.audit_annotations)
    if mutating and verdict.allowed and verdict.patches:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(list(verdict.patches))).decode("ascii")
    return orjson.dumps({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})


def encode_error(uid: str, message: str, code: int = 400) -> bytes:
    """A well-formed review whose content cannot be judged: deny with the reason."""
    response = {"uid": uid, "allowed": False, "status": {"code": code, "message": message}}
    return orjson.dumps({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
