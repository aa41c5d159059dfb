"""What every check sees (the request context) and what it must look like (the ``Check`` protocol).

A check's judgement is a pure function of (pod specs, context); only checks that need the
outside world (registry, API server, OPA) await anything, always inside ``ctx.deadline``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from webhook.admission.deadline import Deadline
from webhook.admission.decision import CheckResult, FailureMode, Mode
from webhook.admission.workloads import PodSpecRef


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Everything about one admission request a check may look at."""

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
    # Results of checks that ran earlier in the same request (e.g. image verdicts for Rego).
    shared: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Check(Protocol):
    """A named check. ``run`` returns findings; it raises only ``UpstreamError`` subclasses
    (turned into the check's failure mode by the pipeline) or ``DeadlineExceeded``."""

    id: str
    failure_mode: FailureMode
    default_mode: Mode

    async def run(self, pods: Sequence[PodSpecRef], ctx: RequestContext) -> CheckResult: ...
