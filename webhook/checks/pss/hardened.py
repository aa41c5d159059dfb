"""Checks beyond the Pod Security Standards (evaluate stage): the ``hardened`` profile.

Each has its own id (``hardened:<name>``) so users can pick them one by one; they are off at
``baseline`` and ``restricted`` and on at ``hardened`` (``PrivilegeConfig.hardened_checks``,
``always_checks``).
"""

from __future__ import annotations

from collections.abc import Sequence

from webhook.checks.pss.baseline import NONE
from webhook.checks.pss.view import CheckFn, PodView, Stamp, finding, mapping, screened
from webhook.core.decision import Violation

NAMES: tuple[str, ...] = (
    "readOnlyRootFilesystem",
    "resourceLimits",
    "imageTag",
    "automountServiceAccountToken",
    "defaultServiceAccount",
)


@screened("readOnlyRootFilesystem")
def read_only_root_filesystem(pod: PodView, stamp: Stamp) -> list[Violation]:
    """Every container must set readOnlyRootFilesystem: true (Windows pods cannot, and are exempt)."""
    if pod.windows:
        return NONE
    out = NONE
    for c in pod.containers:
        if c.sc.get("readOnlyRootFilesystem") is not True:
            out = out or []
            out.append(
                finding(
                    stamp,
                    "hardened:readOnlyRootFilesystem",
                    "the root filesystem is writable; set securityContext.readOnlyRootFilesystem to true "
                    "and mount an emptyDir where the container must write",
                    f"{c.path}.securityContext.readOnlyRootFilesystem",
                    c.name,
                )
            )
    return out


def resource_limits(required: Sequence[str]) -> CheckFn:
    """Init and regular containers must set a limit for each ``required`` resource (ephemeral
    containers cannot set resources, and are exempt)."""
    required = tuple(required)

    def check(pod: PodView, stamp: Stamp) -> list[Violation]:
        out = NONE
        for c in pod.containers:
            if c.field == "ephemeralContainers":
                continue
            limits = mapping(mapping(c.container.get("resources")).get("limits"))
            missing = [r for r in required if limits.get(r) in (None, "")]
            if missing:
                out = out or []
                out.append(
                    finding(
                        stamp,
                        "hardened:resourceLimits",
                        f"no limit for {', '.join(missing)}; set resources.limits."
                        f"{' and resources.limits.'.join(missing)}",
                        f"{c.path}.resources.limits",
                        c.name,
                    )
                )
        return out

    return screened("resourceLimits", required)(check)


@screened("imageTag")
def image_tag(pod: PodView, stamp: Stamp) -> list[Violation]:
    """Images must be pinned: a tag other than ``latest``, or a digest."""
    out = NONE
    for c in pod.containers:
        image = c.container.get("image")
        if isinstance(image, str) and floating(image):
            out = out or []
            out.append(
                finding(
                    stamp,
                    "hardened:imageTag",
                    f"image {image!r} floats on the latest tag; pin a version tag or a digest (@sha256:...)",
                    f"{c.path}.image",
                    c.name,
                )
            )
    return out


def floating(image: str) -> bool:
    """True when ``image`` has no digest and its tag is absent or ``latest``."""
    if "@" in image:
        return False
    name = image.rsplit("/", 1)[-1]
    tag = name.partition(":")[2]
    return tag in ("", "latest")


@screened("automountServiceAccountToken")
def automount_service_account_token(pod: PodView, stamp: Stamp) -> list[Violation]:
    """spec.automountServiceAccountToken must be false (mount a projected token where needed)."""
    if pod.spec.get("automountServiceAccountToken") is False:
        return NONE
    return [
        finding(
            stamp,
            "hardened:automountServiceAccountToken",
            "the service account token is mounted into every container; set "
            "automountServiceAccountToken to false (use a projected token volume where the API is needed)",
            f"{pod.path}.automountServiceAccountToken",
        )
    ]


@screened("defaultServiceAccount")
def default_service_account(pod: PodView, stamp: Stamp) -> list[Violation]:
    """The pod must name its own service account, not the namespace's ``default`` one."""
    name = pod.spec.get("serviceAccountName") or pod.spec.get("serviceAccount")
    if name and name != "default":
        return NONE
    return [
        finding(
            stamp,
            "hardened:defaultServiceAccount",
            "the pod runs as the namespace's default service account; create a dedicated one and set "
            "serviceAccountName",
            f"{pod.path}.serviceAccountName",
        )
    ]


def checks(names: Sequence[str], required_limits: Sequence[str]) -> tuple[CheckFn, ...]:
    """The check functions for ``names`` (a subset of ``NAMES``), in ``NAMES`` order."""
    table: dict[str, CheckFn] = {
        "readOnlyRootFilesystem": read_only_root_filesystem,
        "resourceLimits": resource_limits(required_limits),
        "imageTag": image_tag,
        "automountServiceAccountToken": automount_service_account_token,
        "defaultServiceAccount": default_service_account,
    }
    wanted = set(names)
    return tuple(table[name] for name in NAMES if name in wanted)
