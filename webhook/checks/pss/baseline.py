"""The Pod Security Standards ``baseline`` checks (evaluate stage), one function per check version.

Semantics follow kubernetes/pod-security-admission ``policy/check_*.go``: which fields are read,
which values are allowed and from which policy version. Unlike PSA, which reports one aggregated
reason per check, each finding here names one field of one container, so it can be fixed alone.
Factories (``sysctls(...)``) return one function per allowed-value set: the registry tells
versions apart by function identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.checks.pss.view import (
    RELAXED,
    STRICT,
    CheckFn,
    ContainerView,
    PodView,
    Stamp,
    finding,
    items,
    mapping,
    one_of,
    screened,
)
from webhook.core.decision import Violation

NONE: list[Violation] = []  # shared "allowed" answer; callers never mutate it

_HOST_NAMESPACES = (
    ("hostNetwork", "network"),
    ("hostPID", "process ID"),
    ("hostIPC", "IPC"),
)


@screened("hostNamespaces")
def host_namespaces(pod: PodView, stamp: Stamp) -> list[Violation]:
    """hostNetwork, hostPID and hostIPC must be unset or false (v1.0+)."""
    out = NONE
    for field, what in _HOST_NAMESPACES:
        if pod.spec.get(field) is True:
            out = out or []
            out.append(
                finding(
                    stamp,
                    "pss:hostNamespaces",
                    f"the pod shares the host's {what} namespace; remove {field} or set it to false",
                    f"{pod.path}.{field}",
                )
            )
    return out


@screened("privileged")
def privileged(pod: PodView, stamp: Stamp) -> list[Violation]:
    """securityContext.privileged must be unset or false (v1.0+)."""
    out = NONE
    for c in pod.containers:
        if c.sc.get("privileged") is True:
            out = out or []
            out.append(
                finding(
                    stamp,
                    "pss:privileged",
                    "privileged containers are forbidden; remove securityContext.privileged or set it to false",
                    f"{c.path}.securityContext.privileged",
                    c.name,
                )
            )
    return out


BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)


@screened("capabilities_baseline")
def capabilities_baseline(pod: PodView, stamp: Stamp) -> list[Violation]:
    """capabilities.add may only hold the container runtime's default set (v1.0+)."""
    out = NONE
    for c in pod.containers:
        added = items(mapping(c.sc.get("capabilities")).get("add"))
        bad = [cap for cap in added if not one_of(cap, BASELINE_CAPABILITIES)]
        if bad:
            out = out or []
            out.append(
                finding(
                    stamp,
                    "pss:capabilities_baseline",
                    f"adds non-default capabilities {_quote(bad)}; remove them from securityContext.capabilities.add",
                    f"{c.path}.securityContext.capabilities.add",
                    c.name,
                )
            )
    return out


@screened("hostPathVolumes")
def host_path_volumes(pod: PodView, stamp: Stamp) -> list[Violation]:
    """No volume may be a hostPath (v1.0+)."""
    out = NONE
    for index, volume in enumerate(items(pod.spec.get("volumes"))):
        volume = mapping(volume)
        if volume.get("hostPath") is not None:
            out = out or []
            out.append(
                finding(
                    stamp,
                    "pss:hostPathVolumes",
                    f"volume {_quote([volume.get('name', '')])} mounts a host path; use an emptyDir, "
                    "configMap, secret or persistentVolumeClaim instead",
                    f"{pod.path}.volumes[{index}].hostPath",
                )
            )
    return out


@screened("hostPorts")
def host_ports(pod: PodView, stamp: Stamp) -> list[Violation]:
    """ports[*].hostPort must be unset or 0 (v1.0+)."""
    out = NONE
    for c in pod.containers:
        ports = c.container.get("ports")
        if not ports or not isinstance(ports, list):
            continue
        for index, port in enumerate(ports):
            host_port = port.get("hostPort") if (type(port) is dict or isinstance(port, Mapping)) else None
            if host_port:
                out = out or []
                out.append(
                    finding(
                        stamp,
                        "pss:hostPorts",
                        f"uses host port {host_port}; remove hostPort and expose the port through a Service",
                        f"{c.path}.ports[{index}].hostPort",
                        c.name,
                    )
                )
    return out


APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


@screened("appArmorProfile")
def app_armor_profile(pod: PodView, stamp: Stamp) -> list[Violation]:
    """appArmorProfile.type may only be RuntimeDefault or Localhost; the beta annotations may only
    name runtime/default or localhost/* (v1.0+)."""
    out = NONE
    fix = "set appArmorProfile.type to RuntimeDefault or Localhost, or remove it"
    for where, sc, container in pod.contexts:
        profile = sc.get("appArmorProfile")
        if profile is not None and not one_of(mapping(profile).get("type"), APPARMOR_TYPES):
            out = out or []
            kind = mapping(profile).get("type", "")
            out.append(
                finding(
                    stamp,
                    "pss:appArmorProfile",
                    f"forbidden AppArmor profile type {_quote([kind])}; {fix}",
                    f"{where}.securityContext.appArmorProfile.type",
                    container,
                )
            )
    for key, value in pod.annotations.items():
        if key.startswith(APPARMOR_ANNOTATION) and not allowed_apparmor_annotation(value):
            out = out or []
            out.append(
                finding(
                    stamp,
                    "pss:appArmorProfile",
                    f"annotation {key}={value!r} disables or overrides AppArmor; "
                    "set it to runtime/default or localhost/<profile>, or remove it",
                    f"{pod.meta_path}.annotations[{key}]",
                    key.removeprefix(APPARMOR_ANNOTATION),
                )
            )
    return out


def allowed_apparmor_annotation(value: object) -> bool:
    return value in ("", "runtime/default") or (isinstance(value, str) and value.startswith("localhost/"))


def selinux_options(allowed_types: frozenset[str]) -> CheckFn:
    """seLinuxOptions.type must be one of ``allowed_types``; user and role must be unset."""

    def check(pod: PodView, stamp: Stamp) -> list[Violation]:
        out = NONE
        for where, sc, container in pod.contexts:
            options = sc.get("seLinuxOptions")
            if options is None:
                continue
            options = mapping(options)
            path = f"{where}.securityContext.seLinuxOptions"
            kind = options.get("type")
            if kind is None:
                kind = ""  # unset: PSA reads the typed field's zero value
            if not one_of(kind, allowed_types):
                out = out or []
                allowed = ", ".join(sorted(t for t in allowed_types if t))
                out.append(
                    finding(
                        stamp,
                        "pss:seLinuxOptions",
                        f"forbidden SELinux type {_quote([kind])}; use one of {allowed} or remove it",
                        f"{path}.type",
                        container,
                    )
                )
            for key in ("user", "role"):
                value = options.get(key)
                if value is not None and value != "":  # any other value, of any type, is custom
                    out = out or []
                    out.append(
                        finding(
                            stamp,
                            "pss:seLinuxOptions",
                            f"a custom SELinux {key} is forbidden; remove seLinuxOptions.{key}",
                            f"{path}.{key}",
                            container,
                        )
                    )
        return out

    return screened("seLinuxOptions", allowed_types)(check)


def proc_mount(check_id: str, *, relax_for_user_namespace: bool) -> CheckFn:
    """procMount must be unset or Default (unless relaxed for pods with ``hostUsers: false``)."""

    def check(pod: PodView, stamp: Stamp) -> list[Violation]:
        if relax_for_user_namespace and pod.user_namespace:
            return NONE
        out = NONE
        for c in pod.containers:
            mount = c.sc.get("procMount")
            if mount is not None and mount != "Default":
                out = out or []
                out.append(
                    finding(
                        stamp,
                        check_id,
                        f"procMount {_quote([mount])} unmasks /proc; remove securityContext.procMount "
                        "or set it to Default",
                        f"{c.path}.securityContext.procMount",
                        c.name,
                    )
                )
        return out

    return screened("procMount", RELAXED if relax_for_user_namespace else STRICT)(check)


SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
SECCOMP_POD_ANNOTATION = "seccomp.security.alpha.kubernetes.io/pod"
SECCOMP_CONTAINER_ANNOTATION = "container.seccomp.security.alpha.kubernetes.io/"


@screened("seccompAnnotations")
def seccomp_annotations(pod: PodView, stamp: Stamp) -> list[Violation]:
    """The alpha seccomp annotations may only name runtime/default, docker/default or
    localhost/* (v1.0 to v1.18; from v1.19 the fields are judged instead)."""
    out = NONE
    keys: list[tuple[str, str | None]] = [(SECCOMP_POD_ANNOTATION, None)]
    keys += [(SECCOMP_CONTAINER_ANNOTATION + c.name, c.name) for c in pod.containers]
    for key, container in keys:
        if key not in pod.annotations:
            continue
        value = pod.annotations[key]
        if allowed_seccomp_annotation(value):
            continue
        out = out or []
        out.append(
            finding(
                stamp,
                "pss:seccompProfile_baseline",
                f"annotation {key}={value!r} disables seccomp; set it to runtime/default or "
                "localhost/<profile>, or remove it",
                f"{pod.meta_path}.annotations[{key}]",
                container,
            )
        )
    return out


def allowed_seccomp_annotation(value: object) -> bool:
    return value in ("runtime/default", "docker/default") or (isinstance(value, str) and value.startswith("localhost/"))


@screened("seccompProfile_baseline")
def seccomp_baseline(pod: PodView, stamp: Stamp) -> list[Violation]:
    """seccompProfile.type, where set, must be RuntimeDefault or Localhost (v1.19+)."""
    out = NONE
    for where, sc, container in pod.contexts:
        profile = sc.get("seccompProfile")
        if profile is not None and not one_of(mapping(profile).get("type"), SECCOMP_TYPES):
            out = out or []
            out.append(
                finding(
                    stamp,
                    "pss:seccompProfile_baseline",
                    f"forbidden seccomp profile type {_quote([mapping(profile).get('type', '')])}; "
                    "set seccompProfile.type to RuntimeDefault or Localhost",
                    f"{where}.securityContext.seccompProfile.type",
                    container,
                )
            )
    return out


def sysctls(allowed: frozenset[str]) -> CheckFn:
    """spec.securityContext.sysctls may only name the ``allowed`` (namespaced, isolated) ones."""

    def check(pod: PodView, stamp: Stamp) -> list[Violation]:
        out = NONE
        for index, sysctl in enumerate(items(pod.sc.get("sysctls"))):
            name = mapping(sysctl).get("name", "")
            if not one_of(name, allowed):
                out = out or []
                out.append(
                    finding(
                        stamp,
                        "pss:sysctls",
                        f"sysctl {_quote([name])} is not in the safe set; remove it "
                        "(set it on the node if it is really needed)",
                        f"{pod.path}.securityContext.sysctls[{index}].name",
                    )
                )
        return out

    return screened("sysctls", allowed)(check)


@screened("windowsHostProcess")
def windows_host_process(pod: PodView, stamp: Stamp) -> list[Violation]:
    """windowsOptions.hostProcess must be unset or false (v1.0+)."""
    out = NONE
    for where, sc, container in pod.contexts:
        options = sc.get("windowsOptions")
        if options and mapping(options).get("hostProcess") is True:
            out = out or []
            out.append(
                finding(
                    stamp,
                    "pss:windowsHostProcess",
                    "Windows host process containers are forbidden; remove "
                    "securityContext.windowsOptions.hostProcess or set it to false",
                    f"{where}.securityContext.windowsOptions.hostProcess",
                    container,
                )
            )
    return out


PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
HANDLERS = ("postStart", "preStop")
ACTIONS = ("httpGet", "tcpSocket")


@screened("hostProbesAndHostLifecycle")
def host_probes_and_lifecycle(pod: PodView, stamp: Stamp) -> list[Violation]:
    """Probes and lifecycle handlers must not set httpGet.host or tcpSocket.host (v1.34+)."""
    out = NONE
    for c in pod.containers:
        container = c.container
        for where in PROBES:
            handler = container.get(where)
            if handler and sets_host(handler):
                out = _handler_hosts(stamp, c, where, handler, out)
        lifecycle = container.get("lifecycle")
        if lifecycle and (type(lifecycle) is dict or isinstance(lifecycle, Mapping)):
            for hook in HANDLERS:
                handler = lifecycle.get(hook)
                if handler and sets_host(handler):
                    out = _handler_hosts(stamp, c, f"lifecycle.{hook}", handler, out)
    return out


def sets_host(handler: Any) -> bool:
    """Whether a probe or lifecycle handler names a host (the screen reads it too)."""
    if not (type(handler) is dict or isinstance(handler, Mapping)):
        return False
    for action in ACTIONS:
        target = handler.get(action)
        if target and (type(target) is dict or isinstance(target, Mapping)) and target.get("host"):
            return True
    return False


def _handler_hosts(stamp: Stamp, c: ContainerView, where: str, handler: Any, out: list[Violation]) -> list[Violation]:
    for action in ACTIONS:
        host = mapping(handler.get(action)).get("host")
        if host:
            out = out or []
            out.append(
                finding(
                    stamp,
                    "pss:hostProbesAndHostLifecycle",
                    f"{action} targets host {_quote([host])}; remove the host field so the "
                    "kubelet targets the pod's own IP",
                    f"{c.path}.{where}.{action}.host",
                    c.name,
                )
            )
    return out


def _quote(values: list[object]) -> str:
    return ", ".join(f'"{v}"' for v in values)
