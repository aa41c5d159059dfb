"""AdmissionReview ``admission.k8s.io/v1`` in and out (decode stage of the webhook).

Decoding validates every field the webhook relies on and raises ``ReviewError`` with a reason
the server turns into HTTP 400; encoding builds the response the apiserver expects.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec
import orjson

from webhook import errors
from webhook.core import shown
from webhook.core.decision import Verdict

API_VERSION = "admission.k8s.io/v1"
# The API server always sends the new object for these (DELETE and CONNECT may carry none).
_NEEDS_OBJECT = frozenset({"CREATE", "UPDATE"})
# The API server keeps at most 4096 characters of warnings per request (``truncateAtTotalRunes``
# in its warning recorder; past it every warning is cut to 256) and drops any warning holding a
# control character. Ours stay within that, so the user sees them whole.
MAX_WARNING_CHARS = 4096
_MAX_ONE_WARNING = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ReviewRequest(msgspec.Struct, frozen=True):
    """The parts of ``AdmissionReview.request`` that Portcullis reads, validated.

    A frozen ``msgspec.Struct`` (not a frozen dataclass): built for every review, and a frozen
    dataclass's ``__init__`` costs several times more.
    """

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


class RawRequest(Mapping[str, Any]):
    """The review's ``request`` verbatim (``requestKind``, ``options``, ...), decoded only when
    read: Gatekeeper's ``input.review`` needs it, the typed hot path does not."""

    __slots__ = ("_body", "_request")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._request: dict[str, Any] | None = None

    def _get(self) -> dict[str, Any]:
        if self._request is None:
            try:
                doc = orjson.loads(self._body)
            except orjson.JSONDecodeError:  # deeper than orjson reads: the typed fields still hold
                doc = None
            request = doc.get("request") if isinstance(doc, dict) else None
            self._request = request if isinstance(request, dict) else {}
        return self._request

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class _Kind(msgspec.Struct, frozen=True):
    group: str | None = None
    version: str | None = None
    kind: str | None = None


class _Resource(msgspec.Struct, frozen=True):
    group: str | None = None
    version: str | None = None
    resource: str | None = None


class _User(msgspec.Struct, frozen=True):
    username: str | None = None
    groups: list[str] | None = None


class _Request(msgspec.Struct, frozen=True, rename="camel"):
    uid: str | None = None
    kind: _Kind | None = None
    resource: _Resource | None = None
    sub_resource: str | None = None
    operation: str | None = None
    namespace: str | None = None
    name: str | None = None
    user_info: _User | None = None
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = None
    dry_run: bool | None = None


class _Review(msgspec.Struct, frozen=True, rename={"api_version": "apiVersion"}):
    api_version: Any = None  # any JSON value: a wrong one is named below, with what it is
    kind: Any = None
    request: _Request | None = None


# Types are checked while parsing (in C): a review is decoded in one pass, with no walk over
# dicts afterwards; unknown fields (requestKind, options, ...) are skipped.
_DECODER = msgspec.json.Decoder(_Review)


def decode(body: bytes) -> ReviewRequest:
    """Parse and validate an AdmissionReview body; raise ``ReviewError`` saying what is wrong."""
    try:
        try:
            doc = _DECODER.decode(body)
        except RecursionError:
            # msgspec stops sooner than orjson (1024 levels): judge such an object (or refuse it,
            # naming the depth) the way the rest of the webhook does, rather than answer 400
            doc = msgspec.convert(orjson.loads(body), _Review)
    except msgspec.ValidationError as exc:
        raise errors.ReviewError(_explain(exc)) from exc
    except (msgspec.DecodeError, orjson.JSONDecodeError) as exc:
        raise errors.ReviewError(f"body is not valid JSON: {exc}") from exc
    if doc.api_version != API_VERSION:
        raise errors.ReviewError(f"apiVersion must be {API_VERSION!r}, got {doc.api_version!r}")
    if doc.kind != "AdmissionReview":
        raise errors.ReviewError(f"kind must be 'AdmissionReview', got {doc.kind!r}")
    req = doc.request
    if req is None:
        raise errors.ReviewError("AdmissionReview.request is missing or not an object")
    if not req.uid:
        raise errors.ReviewError("request.uid must be a non-empty string")
    if req.kind is None:
        raise errors.ReviewError("request.kind must be an object")
    kind = req.kind.kind
    if not kind:
        raise errors.ReviewError("request.kind.kind must be a non-empty string")
    operation = req.operation
    if not operation:
        raise errors.ReviewError("request.operation must be a non-empty string")
    if req.object is None and operation in _NEEDS_OBJECT:
        raise errors.ReviewError(f"request.object must be an object for a {operation} (got null)")
    user = req.user_info
    resource = req.resource
    return ReviewRequest(
        uid=req.uid,
        kind=kind,
        group=req.kind.group or "",
        resource=(resource.resource or "") if resource is not None else "",
        subresource=req.sub_resource or "",
        operation=operation,
        namespace=req.namespace or "",
        name=req.name or "",
        username=(user.username or "") if user is not None else "",
        groups=tuple(user.groups or ()) if user is not None else (),
        dry_run=bool(req.dry_run),
        object=req.object,
        old_object=req.old_object,
        raw=RawRequest(body),
    )


def _explain(exc: msgspec.ValidationError) -> str:
    """msgspec's "Expected `str`, got `int` - at `$.request.uid`" as "request.uid: expected `str`, got `int`"."""
    message, _, where = str(exc).partition(" - at ")
    where = where.strip("`").removeprefix("$").removeprefix(".") or "body"
    if where == "body" and "got `" in message:
        return f"body must be a JSON object (an AdmissionReview): {message[:1].lower()}{message[1:]}"
    if where == "request" and message.startswith("Expected `object"):
        return "AdmissionReview.request is missing or not an object"
    return f"{where}: {message[:1].lower()}{message[1:]}"


# The response to most reviews (admitted, nothing to say) around its uid: the bytes orjson makes
# of the dicts below, without building them.
_ALLOWED_HEAD = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":'
_ALLOWED_TAIL = b',"allowed":true}}'


def encode(uid: str, verdict: Verdict, *, mutating: bool = False) -> bytes:
    """The AdmissionReview response for a verdict."""
    if verdict.allowed and not verdict.warnings and not verdict.audit_annotations and not verdict.patches:
        return _ALLOWED_HEAD + orjson.dumps(uid) + _ALLOWED_TAIL
    response: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        # kubectl prints the message as it is, to a terminal or a CI log: escaped as for one
        response["status"] = {"code": 403, "reason": "Forbidden", "message": shown.terminal(verdict.deny_message())}
    if verdict.warnings:
        response["warnings"] = bounded_warnings(verdict.warnings)
    if verdict.audit_annotations:
        response["auditAnnotations"] = dict(verdict.audit_annotations)
    if mutating and verdict.allowed and verdict.patches:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(list(verdict.patches))).decode("ascii")
    return orjson.dumps({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})


def bounded_warnings(warnings: Sequence[str], limit: int = MAX_WARNING_CHARS) -> list[str]:
    """Warnings the API server passes on whole: control characters replaced (and any CI logging
    command, see ``shown.without_log_commands``: kubectl prints warnings), each cut to 512
    characters, in order while the total (with a final "… N more warnings") stays within ``limit``."""
    out: list[str] = []
    total = 0
    for index, text in enumerate(warnings):
        text = shown.without_log_commands(_CONTROL.sub(" ", text), "\\x5b")
        if len(text) > _MAX_ONE_WARNING:
            text = text[: _MAX_ONE_WARNING - 1] + "…"
        rest = len(warnings) - index - 1
        tail = len(_more(rest)) if rest else 0
        if total + len(text) + tail > limit:
            out.append(_more(len(warnings) - index))
            return out
        out.append(text)
        total += len(text)
    return out


def _more(count: int) -> str:
    return f"… {count} more warning{'s' if count != 1 else ''}"


def encode_error(uid: str, message: str, code: int = 400) -> bytes:
    """A well-formed review whose content cannot be judged: deny with the reason."""
    response = {"uid": uid, "allowed": False, "status": {"code": code, "message": message}}
    return orjson.dumps({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
