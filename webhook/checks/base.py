"""What every check must look like (the ``Check`` protocol); what it sees is ``core.request``.

A check's judgement is a pure function of (pod specs, context); only checks that need the
outside world (registry, API server, OPA) await anything, always inside ``ctx.deadline``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from webhook.core.decision import CheckResult, FailureMode, Mode
from webhook.core.request import RequestContext
from webhook.core.workloads import PodSpecRef


@runtime_checkable
class Check(Protocol):
    """A named check. ``run`` returns findings; it raises only ``UpstreamError`` subclasses
    (turned into the check's failure mode by the pipeline) or ``DeadlineExceeded``."""

    id: str
    failure_mode: FailureMode
    default_mode: Mode

    async def run(self, pods: Sequence[PodSpecRef], ctx: RequestContext) -> CheckResult: ...
