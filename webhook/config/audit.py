"""Config of the audit log writer (``audit:``)."""

from __future__ import annotations

from webhook.config.base import Section
from webhook.core.decision import FailureMode


class AuditConfig(Section, frozen=True):
    """Where admission decisions and alerts are recorded; off when ``directory`` is unset."""

    directory: str | None = None
    signing_key: str | None = None
    origin: str = "portcullis.local/admission"
    writer: str = ""
    commit_window: float = 0.005
    checkpoint_every: int = 1000
    checkpoint_interval: float = 10.0
    durable: bool = True
    witnesses: list[str] = []
    # Answer only once the decision is durable in the log; when the log cannot take it,
    # ``failure_mode: deny`` denies the request (fail closed) and ``allow`` only logs loudly.
    wait_durable: bool = True
    failure_mode: FailureMode = FailureMode.DENY
