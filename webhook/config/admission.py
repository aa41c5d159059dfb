"""Config shared by every check: modes, failure modes, exemptions, known namespaces, input limits."""

from __future__ import annotations

from typing import Annotated

import msgspec

from webhook.config.base import Section
from webhook.core.decision import FailureMode, Mode


class CheckSettings(Section, frozen=True):
    """How one check runs: its mode, and what it yields when it cannot finish."""

    mode: Mode = Mode.ENFORCE
    failure_mode: FailureMode = FailureMode.DENY
    enabled: bool = True


class Exemption(Section, frozen=True):
    """A request matching this rule skips ``checks`` (all checks when empty).

    Every selector the rule lists must match (namespace AND service account, say); an empty
    selector matches anything; list several rules for "or". A rule must list at least one
    selector, so no rule exempts everything by accident.
    """

    namespaces: list[str] = []
    usernames: list[str] = []
    runtime_classes: list[str] = []
    service_accounts: list[str] = []  # the pod's serviceAccountName ("default" when unset)
    checks: list[str] = []
    reason: str = ""

    def __post_init__(self) -> None:
        if not (self.namespaces or self.usernames or self.runtime_classes or self.service_accounts):
            raise ValueError("an exemption must name namespaces, usernames, runtime_classes or service_accounts")
        if self.service_accounts and not self.namespaces:
            # A service account name means nothing outside its namespace: anyone who can create
            # one named "monitor" in their own namespace would otherwise inherit the exemption.
            raise ValueError(
                "an exemption by service_accounts must also name its namespaces "
                "(service account names are only unique within a namespace)"
            )


class NamespaceSettings(Section, frozen=True):
    """A namespace's labels when no API server is asked (CI, or as a fallback)."""

    labels: dict[str, str] = {}


class InputLimits(Section, frozen=True):
    """How big a pod spec Portcullis judges; a larger one is denied, naming the limit.

    Judging costs time in proportion to the containers, volumes and environment entries of a
    pod, all of it on the event loop every other review waits on: a crafted pod with 16,000
    containers took seconds. Real pods stay far below these defaults (the request body itself is
    bounded by ``server.max_body_bytes``).
    """

    # init + regular + ephemeral containers of one pod spec
    max_containers: Annotated[int, msgspec.Meta(gt=0)] = 256
    max_volumes: Annotated[int, msgspec.Meta(gt=0)] = 512
    # env + envFrom entries of one container
    max_env: Annotated[int, msgspec.Meta(gt=0)] = 1024
