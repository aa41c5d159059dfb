"""One request as a check sees it: who asks, for what object, within which time budget."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from msgspec import field

from webhook.core.deadline import Deadline


class RequestContext(msgspec.Struct, frozen=True):
    """Everything about one admission request a check may look at.

    A frozen ``msgspec.Struct`` rather than a frozen dataclass: one is built for every review,
    and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost about
    3 us of the webhook's per-review budget; the Struct's, made in C, a tenth of that.
    """

    operation: str  # CREATE | UPDATE (CONNECT/DELETE never reach checks)
    kind: str  # the object's kind, e.g. "Deployment"
    namespace: str
    name: str
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    username: str = ""
    groups: tuple[str, ...] = ()
    uid: str = ""
    dry_run: bool = False
    subresource: str = ""
    deadline: Deadline = field(default_factory=Deadline.never)
    object: Mapping[str, Any] = field(default_factory=dict)
    old_object: Mapping[str, Any] | None = None
    # The AdmissionReview ``request`` as the apiserver sent it (resource, requestKind, options...),
    # when the subject came from one; Gatekeeper templates read it as ``input.review``.
    admission_request: Mapping[str, Any] | None = None
    # Results of checks that ran earlier in the same request (e.g. image verdicts for Rego).
    shared: dict[str, Any] = field(default_factory=dict)
