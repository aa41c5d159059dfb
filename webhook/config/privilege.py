"""Config of the least-privilege (Pod Security Standards) and runtime class checks.

With no file at all: enforce ``baseline``, warn and audit ``restricted``, at the latest version;
namespaces may change that with the standard ``pod-security.kubernetes.io/*`` labels.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from webhook.config.base import Section
from webhook.core.decision import FailureMode

PssLevel = Literal["privileged", "baseline", "restricted", "hardened"]
HardenedCheck = Literal[
    "readOnlyRootFilesystem",
    "resourceLimits",
    "imageTag",
    "automountServiceAccountToken",
    "defaultServiceAccount",
]
ALL_HARDENED: tuple[HardenedCheck, ...] = (
    "readOnlyRootFilesystem",
    "resourceLimits",
    "imageTag",
    "automountServiceAccountToken",
    "defaultServiceAccount",
)
_VERSION = re.compile(r"^(latest|v1\.(0|[1-9][0-9]*))$")


def _check_version(key: str, value: str | None) -> None:
    if value is not None and not _VERSION.match(value):
        raise ValueError(f'{key}: invalid Pod Security version {value!r} (use "latest" or "v1.N", e.g. v1.30)')


class NamespacePrivilege(Section, frozen=True):
    """Per-namespace override; unset fields keep the global value. It wins over namespace labels
    (the config is the cluster admin's; labels may be set by namespace owners)."""

    level: PssLevel | None = None
    version: str | None = None
    warn_level: PssLevel | None = None
    warn_version: str | None = None
    audit_level: PssLevel | None = None
    audit_version: str | None = None

    def __post_init__(self) -> None:
        for key in ("version", "warn_version", "audit_version"):
            _check_version(key, getattr(self, key))


class PrivilegeConfig(Section, frozen=True):
    """Pod Security levels (enforce = ``level``), versions, overrides and hardened checks."""

    level: PssLevel = "baseline"
    version: str = "latest"
    warn_level: PssLevel = "restricted"
    warn_version: str = "latest"
    audit_level: PssLevel = "restricted"
    audit_version: str = "latest"
    # Read the pod-security.kubernetes.io/* namespace labels (as Pod Security Admission does).
    namespace_labels: bool = True
    # Workload templates (Deployment, Job, CronJob, ...): `warn` judges them as Pod Security
    # Admission does, at the warn and audit levels only (their pods are enforced when created);
    # `enforce` also denies a template that breaks the enforce level, so a Deployment whose pods
    # could never start is refused at once. `portcullis check` always judges templates at enforce.
    workload_templates: Literal["warn", "enforce"] = "warn"
    # Apply these levels everywhere, ignoring labels and per-namespace overrides
    # (set by `portcullis check --level/--pss-version`).
    pinned: bool = False
    namespaces: dict[str, NamespacePrivilege] = {}
    # Checks the `hardened` level adds to `restricted`; `always_checks` run at every level but privileged.
    hardened_checks: list[HardenedCheck] = msgspec.field(default_factory=lambda: list(ALL_HARDENED))
    always_checks: list[HardenedCheck] = []
    # Resources every (init) container must limit under hardened:resourceLimits.
    required_limits: list[str] = msgspec.field(default_factory=lambda: ["cpu", "memory"])

    def __post_init__(self) -> None:
        for key in ("version", "warn_version", "audit_version"):
            _check_version(key, getattr(self, key))


class RuntimeClassConfig(Section, frozen=True):
    """Runtime class rules: GPU pods, untrusted namespaces, a denylist, classes the cluster lacks."""

    # Extended resources that make a pod a GPU pod; a trailing '*' matches any suffix. The default
    # covers what GPU quotas charge by default: whole devices (shared replicas such as
    # nvidia.com/gpu.shared included), MIG profiles with any suffix, AMD and Intel GPUs.
    gpu_resources: list[str] = msgspec.field(
        default_factory=lambda: ["nvidia.com/gpu*", "nvidia.com/mig-*", "amd.com/gpu*", "gpu.intel.com/*"]
    )
    # Runtime classes GPU pods must use; empty turns the GPU rule off.
    gpu_runtime_classes: list[str] = []
    # DRA DeviceClasses whose devices make a pod with resourceClaims a GPU pod ('*' at the end
    # matches any suffix). A claim whose class cannot be read counts as a GPU claim.
    gpu_device_classes: list[str] = msgspec.field(default_factory=lambda: ["gpu.nvidia.com", "mig.nvidia.com"])
    # The resource.k8s.io version claims and templates are read at (v1 from Kubernetes 1.34).
    dra_api_version: Literal["v1", "v1beta2", "v1beta1"] = "v1"
    # A namespace whose label `untrusted_label` has one of `untrusted_values` must use a sandbox.
    untrusted_label: str = "portcullis.dev/untrusted"
    untrusted_values: list[str] = msgspec.field(default_factory=lambda: ["true"])
    sandboxed_runtime_classes: list[str] = msgspec.field(default_factory=lambda: ["gvisor", "kata"])
    denied_runtime_classes: list[str] = []
    # Ask the API server (when one is configured) whether a named runtime class exists.
    lookup: bool = True
    lookup_timeout_seconds: float = 2.0
    cache_seconds: float = 60.0
    # When the lookup fails and no cached list is at hand: deny the pod, or allow it with a warning.
    lookup_failure_mode: FailureMode = FailureMode.DENY

    def __post_init__(self) -> None:
        if self.lookup_timeout_seconds <= 0:
            raise ValueError("lookup_timeout_seconds must be positive")
        if self.cache_seconds < 0:
            raise ValueError("cache_seconds must not be negative")
        for key in ("gpu_resources", "gpu_device_classes"):
            for pattern in getattr(self, key):
                if "*" in pattern.rstrip("*") or not pattern.strip("*"):
                    raise ValueError(f"{key}: {pattern!r}: '*' is allowed only at the end of a name")
