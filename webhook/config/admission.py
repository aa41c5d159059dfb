"""Config shared by every check: modes, failure modes, exemptions, known namespaces."""

from __future__ import annotations

from webhook.admission.decision import FailureMode, Mode
from webhook.config.base import Section


class CheckSettings(Section):
    """How one check runs: its mode, and what it yields when it cannot finish."""

    mode: Mode = Mode.ENFORCE
    failure_mode: FailureMode = FailureMode.DENY
    enabled: bool = True


class Exemption(Section):
    """Requests matching any listed namespace, username or runtime class skip ``checks``
    (all checks when empty). Like Pod Security Admission's exemptions, but per check."""

    namespaces: list[str] = []
    usernames: list[str] = []
    runtime_classes: list[str] = []
    checks: list[str] = []
    reason: str = ""


class NamespaceSettings(Section):
    """A namespace's labels when no API server is asked (CI, or as a fallback)."""

    labels: dict[str, str] = {}
