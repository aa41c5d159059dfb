"""The Pod Security Standards ``restricted`` checks (evaluate stage), one function per check version.

Semantics follow kubernetes/pod-security-admission ``policy/check_*.go``. Two version changes
recur: from v1.25 pods with ``spec.os.name: windows`` are exempt from the Linux-only checks
(the apiserver forbids those fields on Windows pods), and from v1.35 pods in a user namespace
(``hostUsers: false``) may run as root inside it.
"""

from __future__ import annotations

from collections.abc import Mapping

from webhook.checks.pss.baseline import NONE, SECCOMP_TYPES
from webhook.checks.pss.view import (
    EMPTY,
    RELAXED,
    STRICT,
    CheckFn,
    PodView,
    Stamp,
    finding,
    items,
    mapping,
    one_of,
    screened,
)
from webhook.core.decision import Violation


def allow_privilege_escalation(*, exempt_windows: bool) -> CheckFn:
    """allowPrivilegeEscalation must be set to false on every container (v1.8+)."""

    def check(pod: PodView, stamp: Stamp) -> list[Violation]:
        if exempt_windows and pod.windows:
            return NONE
        out = NONE
        for c in pod.containers:
            if c.sc.get("allowPrivilegeEscalation") is not False:
                out = out or []
                out.append(
                    finding(
                        stamp,
                        "pss:allowPrivilegeEscalation",
                        "privilege escalation is not disabled; set securityContext.allowPrivilegeEscalation to false",
                        f"{c.path}.securityContext.allowPrivilegeEscalation",
                        c.name,
                    )
                )
        return out

    return screened("allowPrivilegeEscalation", RELAXED if exempt_windows else STRICT)(check)


def capabilities_restricted(*, exempt_windows: bool) -> CheckFn:
    """capabilities.drop must include ALL; capabilities.add may only hold NET_BIND_SERVICE (v1.22+)."""

    def check(pod: PodView, stamp: Stamp) -> list[Violation]:
        if exempt_windows and pod.windows:
            return NONE
        out = NONE
        for c in pod.containers:
            caps = c.sc.get("capabilities")
            if not (type(caps) is dict or isinstance(caps, Mapping)):
                caps = EMPTY
            drop = caps.get("drop")
            if not (isinstance(drop, list) and "ALL" in drop):
                out = out or []
                out.append(
                    finding(
                        stamp,
                        "pss:capabilities_restricted",
                        'does not drop all capabilities; set securityContext.capabilities.drop to ["ALL"]',
                        f"{c.path}.securityContext.capabilities.drop",
                        c.name,
                    )
                )
            added = caps.get("add")
            bad = [cap for cap in added if cap != "NET_BIND_SERVICE"] if added and isinstance(added, list) else None
            if bad:
                out = out or []
                listed = ", ".join(f'"{cap}"' for cap in bad)
                out.append(
                    finding(
                        stamp,
                        "pss:capabilities_restricted",
                        f"adds capabilities {listed}; only NET_BIND_SERVICE may be added, remove the others "
                        "from securityContext.capabilities.add",
                        f"{c.path}.securityContext.capabilities.add",
                        c.name,
                    )
                )
        return out

    return screened("capabilities_restricted", RELAXED if exempt_windows else STRICT)(check)


# Inline volume sources the restricted profile allows (every other one is judged forbidden).
ALLOWED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "image",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
# Every other inline source of the core API, in PSA's order.
FORBIDDEN_VOLUMES = (
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
)


@screened("restrictedVolumes")
def restricted_volumes(pod: PodView, stamp: Stamp) -> list[Violation]:
    """Volumes may only be configMap, csi, downwardAPI, emptyDir, ephemeral, image,
    persistentVolumeClaim, projected or secret (v1.0+)."""
    out = NONE
    for index, volume in enumerate(items(pod.spec.get("volumes"))):
        volume = mapping(volume)
        if any(volume[key] is not None for key in volume if key in ALLOWED_VOLUMES):
            continue
        kind = next((k for k in FORBIDDEN_VOLUMES if volume.get(k) is not None), None)
        if kind is None:
            # No known source: the apiserver defaults such a volume to emptyDir (SetDefaults_Volume)
            # before admission, and the typed API drops unknown keys, so PSA sees an emptyDir.
            continue
        out = out or []
        out.append(
            finding(
                stamp,
                "pss:restrictedVolumes",
                f'volume "{volume.get("name", "")}" uses the restricted volume type "{kind}"; use a '
                "persistentVolumeClaim (or configMap, secret, emptyDir, projected, csi, ephemeral) instead",
                f"{pod.path}.volumes[{index}].{kind}",
            )
        )
    return out


def run_as_non_root(*, relax_for_user_namespace: bool) -> CheckFn:
    """runAsNonRoot must be true on the pod or on every container, and false nowhere (v1.0+)."""

    def check(pod: PodView, stamp: Stamp) -> list[Violation]:
        if relax_for_user_namespace and pod.user_namespace:
            return NONE
        out = NONE
        pod_value = pod.sc.get("runAsNonRoot")
        if pod_value is False:
            out = [_non_root_explicit(stamp, pod.path, None)]
        for c in pod.containers:
            value = c.sc.get("runAsNonRoot")
            if value is False:
                out = out or []
                out.append(_non_root_explicit(stamp, c.path, c.name))
            elif value is None and pod_value is not True:
                out = out or []
                out.append(
                    finding(
                        stamp,
                        "pss:runAsNonRoot",
                        "may run as root; set securityContext.runAsNonRoot to true on the pod or the container",
                        f"{c.path}.securityContext.runAsNonRoot",
                        c.name,
                    )
                )
        return out

    return screened("runAsNonRoot", RELAXED if relax_for_user_namespace else STRICT)(check)


def _non_root_explicit(stamp: Stamp, where: str, container: str | None) -> Violation:
    return finding(
        stamp,
        "pss:runAsNonRoot",
        "sets runAsNonRoot to false; set securityContext.runAsNonRoot to true",
        f"{where}.securityContext.runAsNonRoot",
        container,
    )


def run_as_user(*, relax_for_user_namespace: bool) -> CheckFn:
    """runAsUser must not be 0 on the pod or any container (v1.23+).

    0.0 (or 0e0) is 0 too: kubectl reads a manifest's number as a float when it is written as one,
    and sends it as ``0`` (Go's JSON writes a whole float without a fraction), so ``portcullis
    check`` must judge it as the root UID the cluster will see. A boolean is not a UID (the API
    server refuses it), though ``False == 0`` in Python."""

    def check(pod: PodView, stamp: Stamp) -> list[Violation]:
        if relax_for_user_namespace and pod.user_namespace:
            return NONE
        out = NONE
        for where, sc, container in pod.contexts:
            user = sc.get("runAsUser")
            if user == 0 and type(user) is not bool:
                out = out or []
                out.append(
                    finding(
                        stamp,
                        "pss:runAsUser",
                        "runs as user 0 (root); set securityContext.runAsUser to a non-zero UID",
                        f"{where}.securityContext.runAsUser",
                        container,
                    )
                )
        return out

    return screened("runAsUser", RELAXED if relax_for_user_namespace else STRICT)(check)


def seccomp_restricted(*, exempt_windows: bool) -> CheckFn:
    """seccompProfile.type must be RuntimeDefault or Localhost, set on the pod or on every
    container (v1.19+)."""

    def check(pod: PodView, stamp: Stamp) -> list[Violation]:
        if exempt_windows and pod.windows:
            return NONE
        out = NONE
        pod_profile = pod.sc.get("seccompProfile")
        pod_set = False
        if pod_profile is not None:
            if one_of(mapping(pod_profile).get("type"), SECCOMP_TYPES):
                pod_set = True
            else:
                out = [_seccomp_bad(stamp, pod.path, None, pod_profile)]
        for c in pod.containers:
            profile = c.sc.get("seccompProfile")
            if profile is not None:
                if not one_of(mapping(profile).get("type"), SECCOMP_TYPES):
                    out = out or []
                    out.append(_seccomp_bad(stamp, c.path, c.name, profile))
            elif not pod_set:
                out = out or []
                out.append(
                    finding(
                        stamp,
                        "pss:seccompProfile_restricted",
                        "runs without a seccomp profile; set securityContext.seccompProfile.type to "
                        "RuntimeDefault (or Localhost) on the pod or the container",
                        f"{c.path}.securityContext.seccompProfile.type",
                        c.name,
                    )
                )
        return out

    return screened("seccompProfile_restricted", RELAXED if exempt_windows else STRICT)(check)


def _seccomp_bad(stamp: Stamp, where: str, container: str | None, profile: object) -> Violation:
    kind = mapping(profile).get("type", "")
    return finding(
        stamp,
        "pss:seccompProfile_restricted",
        f'forbidden seccomp profile type "{kind}"; set seccompProfile.type to RuntimeDefault or Localhost',
        f"{where}.securityContext.seccompProfile.type",
        container,
    )
