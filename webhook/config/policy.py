"""Config of Rego policies (``policy:``).

The rego check is off until something is configured: a ``directory`` of Rego modules and/or
``gatekeeper`` directories for the embedded engine, or ``engine: opa`` with an ``opa_url``.
Nothing is picked up implicitly (a stray ``policies/`` folder must not start denying pods).
"""

from __future__ import annotations

from typing import Literal

from webhook.config.base import Section
from webhook.core.decision import FailureMode


class SyncedKind(Section, frozen=True):
    """One kind replicated into ``data.inventory`` (Gatekeeper's ``syncOnly`` entry)."""

    group: str = ""
    version: str = "v1"
    kind: str = ""
    resource: str = ""  # the plural, when the API's default rule (lowercase + "s") is wrong

    def __post_init__(self) -> None:
        if not self.kind or not self.version:
            raise ValueError("policy.sync[]: kind and version are required")


class PolicyConfig(Section, frozen=True):
    """Where policies come from and how they run.

    - ``engine``: ``embedded`` (regopy, in process) or ``opa`` (a remote OPA's Data API).
    - ``directory``: Rego modules (``*_test.rego`` are skipped), relative to the config file.
    - ``gatekeeper``: directories of ConstraintTemplate + constraint YAML (embedded engine only).
    - ``opa_url`` / ``opa_path``: the OPA server and the data path whose document holds every
      policy's ``deny``/``warn`` (e.g. ``portcullis`` → ``POST /v1/data/portcullis``).
    - ``timeout``: seconds for one evaluation (embedded) or one OPA call; always capped by the
      request's deadline.
    - ``failure_mode``: what a policy that errors, returns the wrong shape or overruns yields,
      unless its ``# METADATA`` sets ``custom.failure_mode``.
    - ``reload_interval``: seconds between checks for changed files (0 = never reload).
    - ``crash_probe``: compile and evaluate each new policy version in a child process first, so
      an engine crash (rego-cpp can abort on some constructs) rejects it instead of killing the
      webhook (costs ~0.5 s per load).
    - ``strict_builtin_errors``: a built-in that errors fails the policy instead of making the
      expression undefined (OPA's ``--strict-builtin-errors``).
    - ``workers``: evaluation worker processes (killed at the deadline, replaced in background).
    - ``worker_memory_mb``: address space a worker may add after compiling the policies
      (``RLIMIT_AS``); an evaluation that needs more ends the worker (failure mode).
    - ``sync``: kinds listed and watched into ``data.inventory`` for referential Gatekeeper
      templates (``{group, version, kind}``, like Gatekeeper's ``syncOnly``); needs the API.
    - ``max_containers`` / ``max_input_bytes``: bounds checked before evaluation; an object beyond
      them is denied without being evaluated (rego-cpp's cost grows faster than its input).
    """

    engine: Literal["embedded", "opa"] = "embedded"
    directory: str | None = None
    gatekeeper: list[str] = []
    opa_url: str | None = None
    opa_path: str = "portcullis"
    opa_token: str | None = None
    timeout: float = 1.0
    failure_mode: FailureMode = FailureMode.DENY
    reload_interval: float = 2.0
    strict_builtin_errors: bool = False
    workers: int = 2
    worker_memory_mb: int = 128
    max_containers: int = 128
    max_input_bytes: int = 3 << 20
    sync: list[SyncedKind] = []
    crash_probe: bool = True

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("policy.timeout must be a positive number of seconds")
        if self.workers < 1:
            raise ValueError("policy.workers must be at least 1")
        if self.worker_memory_mb < 16:
            raise ValueError("policy.worker_memory_mb must be at least 16")
        if self.max_containers < 1 or self.max_input_bytes < 1024:
            raise ValueError("policy.max_containers must be at least 1 and policy.max_input_bytes at least 1024")
        if self.engine == "opa" and not self.opa_url:
            raise ValueError("policy.engine is 'opa' but policy.opa_url is not set")

    @property
    def configured(self) -> bool:
        """Whether the rego check has anything to run."""
        if self.engine == "opa":
            return True
        return self.directory is not None or bool(self.gatekeeper)
