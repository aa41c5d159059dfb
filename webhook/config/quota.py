"""Config of GPU quota (``quota:``).

Amounts are in weighted GPUs: a resource's request times its weight (``nvidia.com/gpu`` = 1,
a ``mig-1g.10gb`` slice = 1/7, a time-sliced replica = 1/N). Weights and limits accept
integers, decimals ("0.5") and fractions ("1/7"), so sums stay exact. No accelerator is free:
unlisted MIG profiles weigh <g>/mig_slices, whole devices (``nvidia.com/gpu*``, ``amd.com/gpu``,
``gpu.intel.com/i915|xe``) 1, and anything else that looks like one is refused until weighted,
DRA device classes asked for as extended resources (``deviceclass.resource.kubernetes.io/*``) included.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Literal

import msgspec

from webhook.config.base import Section

Amount = int | float | str

# MIG profiles, with the device plugin's variants: compute-instance profiles (mig-1c.3g.20gb) and
# suffixes for media extensions or other options (mig-1g.10gb.me, mig-1g.10gb+me, mig-2g.20gb-x).
# A profile has at least one slice: "mig-0g..." is no profile, so not weighed 0 (free) here.
_MIG = re.compile(r"^nvidia\.com/mig-(?:\d+c\.)?(?P<g>0*[1-9]\d*)g\.(?P<mem>\d+)gb(?:[.+-][A-Za-z0-9._+-]*)?$")
# Whole devices nobody gave a weight: one GPU each. nvidia.com/gpu.shared and other renamed
# time-sliced replicas included (conservatively a whole GPU: set their weight, e.g. 1/4).
_WHOLE_DEVICE = re.compile(r"^(?:nvidia\.com/gpu|amd\.com/gpu|gpu\.intel\.com/(?:i915|xe))(?:[.-][A-Za-z0-9._-]*)?$")
# Anything else that looks like an accelerator is never free: it is refused until quota.resources
# gives it a weight (0 for a resource that is not one, e.g. nvidia.com/rdma_shared_device).
# deviceclass.resource.kubernetes.io/<class> (DRAExtendedResource, 1.34+) asks for devices of any
# DeviceClass, whatever its name says ("mig.nvidia.com"): every one is refused until weighted.
_ACCELERATOR = re.compile(
    r"^(?:(?:nvidia\.com|amd\.com|gpu\.intel\.com|habana\.ai|xilinx\.com|qualcomm\.com)/.*"
    r"|deviceclass\.resource\.kubernetes\.io/.*"
    r"|aws\.amazon\.com/neuron.*|google\.com/tpu.*|[^/]*/.*(?:gpu|tpu).*)$",
    re.IGNORECASE,
)


def parse_amount(value: Amount, what: str) -> Fraction:
    """An exact non-negative amount out of 2, 0.5, "0.5" or "1/7"; ``ValueError`` naming ``what``."""
    try:
        amount = Fraction(str(value).strip()) if not isinstance(value, int) else Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{what}: {value!r} is not a number or fraction (e.g. 2, 0.5, 1/7)") from None
    if amount < 0:
        raise ValueError(f"{what}: {value!r} must not be negative")
    return amount


class QuotaRule(Section, frozen=True):
    """One quota: a limit in weighted GPUs over the pods it matches.

    Filters combine (all must match): ``namespace`` (exact name), ``team`` (value of the
    team label on the pod's namespace), ``gpu_model`` (the product the pod selects through
    its node selector or required node affinity). ``per`` splits the limit: ``namespace``
    gives each matching namespace its own pool, ``team`` each team value.
    """

    name: str
    limit: Amount
    namespace: str | None = None
    team: str | None = None
    gpu_model: str | None = None
    per: Literal["namespace", "team"] | None = None
    # Resource names counted by this quota; empty means every weighted resource.
    resources: list[str] = []

    def __post_init__(self) -> None:
        parse_amount(self.limit, f"quota {self.name!r}: limit")
        if not self.name or "/" in self.name:
            raise ValueError(f"quota name {self.name!r} must be non-empty and contain no '/'")


class PerPodConfig(Section, frozen=True):
    """Rules on a single pod, judged even without a cluster (``portcullis check``)."""

    # Most weighted GPUs one pod may request (None: no limit).
    max_gpus: Amount | None = None
    # Every container that lists a GPU resource must request exactly its limit.
    requests_equal_limits: bool = False
    # When gpu_model quotas exist, a GPU pod must select a model (else it could dodge them).
    require_gpu_model: bool = False

    def __post_init__(self) -> None:
        if self.max_gpus is not None:
            parse_amount(self.max_gpus, "quota.per_pod.max_gpus")


class QuotaConfig(Section, frozen=True):
    """GPU quota at admission: weights, quotas, per-pod rules, and how replicas share reservations."""

    # Resource name -> weight in GPUs. MIG profiles not listed weigh <g>/mig_slices.
    resources: dict[str, Amount] = msgspec.field(default_factory=lambda: {"nvidia.com/gpu": 1})
    mig_slices: int = 7
    quotas: list[QuotaRule] = []
    per_pod: PerPodConfig = PerPodConfig()
    team_label: str = "team"
    gpu_model_label: str = "nvidia.com/gpu.product"
    # local: reservations in memory (one replica); apiserver: one ConfigMap per quota, CAS-updated.
    coordination: Literal["local", "apiserver"] = "local"
    coordination_namespace: str = "portcullis-system"
    # How long an admitted pod holds its GPUs before the pod watch sees it (seconds).
    reservation_ttl: float = 60.0
    # Past this share of a quota, admitted pods carry a warning.
    warn_ratio: float = 0.8
    # With the pod watch disconnected longer than this (seconds), usage is unknown: failure mode.
    max_staleness: float = 30.0

    def __post_init__(self) -> None:
        for name, weight in self.resources.items():
            parse_amount(weight, f"quota.resources[{name!r}]")
        names = [q.name for q in self.quotas]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"quota names must be unique; {dupes[0]!r} is used twice")
        if self.mig_slices < 1:
            raise ValueError("quota.mig_slices must be at least 1")
        if not 0 < self.warn_ratio <= 1:
            raise ValueError("quota.warn_ratio must be in (0, 1]")
        if self.reservation_ttl <= 0 or self.max_staleness <= 0:
            raise ValueError("quota.reservation_ttl and quota.max_staleness must be positive")

    def weight(self, resource: str) -> Fraction | None:
        """The weight of ``resource`` in GPUs, or None when it has none (not an accelerator, or
        one nobody weighted: see ``unweighted_accelerator``)."""
        configured = self.resources.get(resource)
        if configured is not None:
            return parse_amount(configured, resource)
        match = _MIG.match(resource)
        if match:
            return Fraction(int(match.group("g")), self.mig_slices)
        if _WHOLE_DEVICE.match(resource):
            return Fraction(1)
        return None

    def unweighted_accelerator(self, resource: str) -> bool:
        """Whether ``resource`` looks like an accelerator but has no weight (refused until it has)."""
        return self.weight(resource) is None and bool(_ACCELERATOR.match(resource))
