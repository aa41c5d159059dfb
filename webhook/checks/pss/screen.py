"""One pass over a pod spec that answers "would this plan find anything?" (evaluate stage).

Most pods admitted are compliant, and for them the per-check evaluation is pure overhead: a
pod view, then one walk of the containers per check (15 at restricted), each re-reading the
same fields. A plan's screen reads each field once, straight from the decoded JSON, and builds
nothing. It answers ``True`` only when every check function of the plan would return no
finding; any doubt (a field it might read differently, an annotation key that is not a string,
a check function that declared no ``Rule``) answers ``False``, and the plan then runs the exact
per-check evaluation, which alone writes findings, their messages and their order. So the
screen can only ever save time: a pod it passes is one the checks pass.

Each check function declares its ``Rule`` next to its code (``view.screened``); a plan's rules
are merged into one set of needs: a flag per check, the intersection of allowed-value sets when
two versions of a check run in one plan (a value both allow), the strictest variant of a check
with a relaxed one, the union of required resource limits. ``tests/checks/test_pss_screen.py``
holds the screen to the checks: on every PSA fixture, at every level and version, and on
generated and mutated pods, it passes exactly the pods the checks find nothing in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from webhook.checks.pss import baseline, hardened, restricted
from webhook.checks.pss.view import EMPTY, RELAXED, STRICT, CheckFn, items, rule_of
from webhook.core.workloads import CONTAINER_FIELDS

Screen = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]
"""``screen(spec, metadata)``: True when the plan's checks find nothing in this pod spec."""

_FLAGS = frozenset(
    {
        "hostNamespaces",
        "privileged",
        "capabilities_baseline",
        "hostPathVolumes",
        "hostPorts",
        "appArmorProfile",
        "seccompAnnotations",
        "seccompProfile_baseline",
        "windowsHostProcess",
        "hostProbesAndHostLifecycle",
        "restrictedVolumes",
        "readOnlyRootFilesystem",
        "imageTag",
        "automountServiceAccountToken",
        "defaultServiceAccount",
    }
)
_ALLOWED_SETS = frozenset({"seLinuxOptions", "sysctls"})
_STRICTNESS = frozenset(
    {
        "procMount",
        "allowPrivilegeEscalation",
        "capabilities_restricted",
        "runAsNonRoot",
        "runAsUser",
        "seccompProfile_restricted",
    }
)


def compile_screen(fns: Iterable[CheckFn]) -> Screen | None:
    """The screen for a plan running ``fns``; None when one of them declared no rule."""
    flags: set[str] = set()
    allowed: dict[str, frozenset[str]] = {}
    strictness: dict[str, int] = {}
    limits: list[str] = []
    for fn in fns:
        rule = rule_of(fn)
        if rule is None:
            return None
        need, arg = rule
        if need in _FLAGS:
            flags.add(need)
        elif need in _ALLOWED_SETS:
            allowed[need] = allowed[need] & arg if need in allowed else frozenset(arg)
        elif need in _STRICTNESS:
            if arg not in (RELAXED, STRICT):
                return None
            strictness[need] = max(strictness.get(need, 0), arg)
        elif need == "resourceLimits":
            limits += [name for name in arg if name not in limits]
        else:
            return None
    return _screen(flags, allowed, strictness, tuple(limits))


def _screen(
    flags: set[str], allowed: dict[str, frozenset[str]], strictness: dict[str, int], limits: tuple[str, ...]
) -> Screen:
    """The merged needs as one closure; every need is a local (no lookups per pod)."""
    host_namespaces = "hostNamespaces" in flags
    privileged = "privileged" in flags
    caps_baseline = "capabilities_baseline" in flags
    host_path = "hostPathVolumes" in flags
    host_ports = "hostPorts" in flags
    apparmor = "appArmorProfile" in flags
    seccomp_annotations = "seccompAnnotations" in flags
    seccomp_baseline = "seccompProfile_baseline" in flags
    windows_host_process = "windowsHostProcess" in flags
    host_probes = "hostProbesAndHostLifecycle" in flags
    restricted_volumes = "restrictedVolumes" in flags
    read_only_root = "readOnlyRootFilesystem" in flags
    image_tag = "imageTag" in flags
    automount = "automountServiceAccountToken" in flags
    default_sa = "defaultServiceAccount" in flags
    selinux = allowed.get("seLinuxOptions")
    sysctls = allowed.get("sysctls")
    proc_mount = strictness.get("procMount", 0)
    no_escalation = strictness.get("allowPrivilegeEscalation", 0)
    caps_restricted = strictness.get("capabilities_restricted", 0)
    non_root = strictness.get("runAsNonRoot", 0)
    run_as_user = strictness.get("runAsUser", 0)
    seccomp_restricted = strictness.get("seccompProfile_restricted", 0)
    reads_windows = bool(read_only_root or RELAXED in (no_escalation, caps_restricted, seccomp_restricted))
    reads_user_ns = RELAXED in (proc_mount, non_root, run_as_user)
    scans_volumes = host_path or restricted_volumes
    annotation_checks = apparmor or seccomp_annotations
    reads_caps = caps_baseline or bool(caps_restricted)
    hardened_container = bool(limits or image_tag)
    # The securityContext fields that are fine when absent (the checks reading them find nothing
    # then): a context holding none of them is skipped by one set test instead of a read per field.
    absent_ok = frozenset(
        name
        for name, wanted in (
            ("privileged", privileged),
            ("procMount", proc_mount),
            ("appArmorProfile", apparmor),
            ("seLinuxOptions", selinux is not None),
            ("seccompProfile", seccomp_baseline),
            ("windowsOptions", windows_host_process),
            ("runAsUser", run_as_user),
        )
        if wanted
    )

    baseline_caps = baseline.BASELINE_CAPABILITIES
    apparmor_types = baseline.APPARMOR_TYPES
    apparmor_prefix = baseline.APPARMOR_ANNOTATION
    allowed_apparmor = baseline.allowed_apparmor_annotation
    allowed_seccomp_annotation = baseline.allowed_seccomp_annotation
    seccomp_prefix = baseline.SECCOMP_CONTAINER_ANNOTATION
    seccomp_pod_key = baseline.SECCOMP_POD_ANNOTATION
    seccomp_types = baseline.SECCOMP_TYPES
    probes = baseline.PROBES
    probe_keys = frozenset((*probes, "lifecycle"))
    hooks = baseline.HANDLERS
    sets_host = baseline.sets_host
    allowed_volumes = restricted.ALLOWED_VOLUMES
    forbidden_volumes = restricted.FORBIDDEN_VOLUMES
    floating = hardened.floating

    def context_clean(sc: Mapping[str, Any], container: bool, check_proc_mount: int, check_run_as_user: int) -> bool:
        """The ``absent_ok`` fields of one securityContext (the pod's, or a container's)."""
        if container and privileged and sc.get("privileged") is True:
            return False
        if container and check_proc_mount:
            mount = sc.get("procMount")
            if mount is not None and mount != "Default":
                return False
        if apparmor:
            profile = sc.get("appArmorProfile")
            if profile is not None:
                kind = _mapping(profile).get("type")
                if not (isinstance(kind, str) and kind in apparmor_types):
                    return False
        if selinux is not None:
            options = sc.get("seLinuxOptions")
            if options is not None:
                options = _mapping(options)
                kind = options.get("type")
                if kind is None:
                    kind = ""  # as the check reads it
                if not (isinstance(kind, str) and kind in selinux):
                    return False
                for key in ("user", "role"):
                    value = options.get(key)
                    if value is not None and value != "":
                        return False
        if seccomp_baseline:
            profile = sc.get("seccompProfile")
            if profile is not None:
                kind = _mapping(profile).get("type")
                if not (isinstance(kind, str) and kind in seccomp_types):
                    return False
        if windows_host_process:
            options = sc.get("windowsOptions")
            if options and _mapping(options).get("hostProcess") is True:
                return False
        if check_run_as_user:
            user = sc.get("runAsUser")
            if user == 0 and type(user) is not bool:  # as the check reads it (0.0 is root too)
                return False
        return True

    def hardened_clean(container: Mapping[str, Any], ephemeral: bool) -> bool:
        """The container fields only the hardened checks read."""
        if limits and not ephemeral:
            given = _mapping(_mapping(container.get("resources")).get("limits"))
            for resource in limits:
                if given.get(resource) in (None, ""):
                    return False
        if image_tag:
            image = container.get("image")
            if isinstance(image, str) and floating(image):
                return False
        return True

    def seccomp_annotations_clean(spec: Mapping[str, Any], annotations: Mapping[str, Any]) -> bool:
        """The alpha seccomp annotations (policies before v1.19): the pod's, and each container's
        by its name as the checks name it."""
        if seccomp_pod_key in annotations and not allowed_seccomp_annotation(annotations[seccomp_pod_key]):
            return False
        for field in CONTAINER_FIELDS:
            listed = spec.get(field)
            if not listed or not isinstance(listed, list):
                continue
            for index, container in enumerate(listed):
                name = _mapping(container).get("name")
                if not isinstance(name, str):
                    name = f"{field}[{index}]"
                key = seccomp_prefix + name
                if key in annotations and not allowed_seccomp_annotation(annotations[key]):
                    return False
        return True

    def clean(spec: Mapping[str, Any], metadata: Mapping[str, Any]) -> bool:
        pod_sc = spec.get("securityContext")
        if type(pod_sc) is not dict:
            pod_sc = _mapping(pod_sc)
        os_field = spec.get("os")
        windows = reads_windows and os_field is not None and _mapping(os_field).get("name") == "windows"
        user_ns = reads_user_ns and spec.get("hostUsers") is False
        if host_namespaces and (
            spec.get("hostNetwork") is True or spec.get("hostPID") is True or spec.get("hostIPC") is True
        ):
            return False
        if scans_volumes:
            for volume in items(spec.get("volumes")):
                volume = _mapping(volume)
                if host_path and volume.get("hostPath") is not None:
                    return False
                if (
                    restricted_volumes
                    and not any(volume[key] is not None for key in volume if key in allowed_volumes)
                    and any(volume.get(key) is not None for key in forbidden_volumes)
                ):
                    return False
        if sysctls is not None:
            for sysctl in items(pod_sc.get("sysctls")):
                name = _mapping(sysctl).get("name", "")
                if not (isinstance(name, str) and name in sysctls):
                    return False
        if automount and spec.get("automountServiceAccountToken") is not False:
            return False
        if default_sa:
            account = spec.get("serviceAccountName") or spec.get("serviceAccount")
            if not (account and account != "default"):
                return False
        annotations = metadata.get("annotations") if annotation_checks else EMPTY
        if type(annotations) is not dict:
            annotations = _mapping(annotations)
        if apparmor:
            for key, value in annotations.items():
                if not isinstance(key, str):
                    return False  # the checks fail on such a key: let them, as they always did
                if key.startswith(apparmor_prefix) and not allowed_apparmor(value):
                    return False
        if seccomp_annotations and annotations and not seccomp_annotations_clean(spec, annotations):
            return False
        check_proc_mount = proc_mount and not (proc_mount == RELAXED and user_ns)
        check_run_as_user = run_as_user and not (run_as_user == RELAXED and user_ns)
        if not pod_sc.keys().isdisjoint(absent_ok) and not context_clean(
            pod_sc, False, check_proc_mount, check_run_as_user
        ):
            return False
        check_non_root = non_root and not (non_root == RELAXED and user_ns)
        pod_non_root = pod_sc.get("runAsNonRoot") if check_non_root else None
        if pod_non_root is False:
            return False
        check_seccomp = seccomp_restricted and not (seccomp_restricted == RELAXED and windows)
        pod_seccomp_set = False
        if check_seccomp:
            profile = pod_sc.get("seccompProfile")
            if profile is not None:
                kind = (profile if type(profile) is dict else _mapping(profile)).get("type")
                if not (isinstance(kind, str) and kind in seccomp_types):
                    return False
                pod_seccomp_set = True
        check_escalation = no_escalation and not (no_escalation == RELAXED and windows)
        check_caps = caps_restricted and not (caps_restricted == RELAXED and windows)
        check_read_only = read_only_root and not windows
        for field in CONTAINER_FIELDS:
            listed = spec.get(field)
            if not listed or not isinstance(listed, list):
                continue
            ephemeral = field == "ephemeralContainers"
            for container in listed:
                if type(container) is not dict:
                    container = _mapping(container)
                sc = container.get("securityContext")
                if type(sc) is not dict:
                    sc = _mapping(sc)
                if not sc.keys().isdisjoint(absent_ok) and not context_clean(
                    sc, True, check_proc_mount, check_run_as_user
                ):
                    return False
                if check_escalation and sc.get("allowPrivilegeEscalation") is not False:
                    return False
                if reads_caps:
                    caps = sc.get("capabilities")
                    if type(caps) is not dict:
                        caps = _mapping(caps)
                    added = caps.get("add")
                    if caps_baseline and isinstance(added, list):
                        for cap in added:
                            if not (isinstance(cap, str) and cap in baseline_caps):
                                return False
                    if check_caps:
                        drop = caps.get("drop")
                        if not (isinstance(drop, list) and "ALL" in drop):
                            return False
                        if added and isinstance(added, list):
                            for cap in added:
                                if cap != "NET_BIND_SERVICE":
                                    return False
                if check_non_root:
                    value = sc.get("runAsNonRoot")
                    if value is False or (value is None and pod_non_root is not True):
                        return False
                if check_seccomp:
                    profile = sc.get("seccompProfile")
                    if profile is not None:
                        kind = (profile if type(profile) is dict else _mapping(profile)).get("type")
                        if not (isinstance(kind, str) and kind in seccomp_types):
                            return False
                    elif not pod_seccomp_set:
                        return False
                if check_read_only and sc.get("readOnlyRootFilesystem") is not True:
                    return False
                if host_ports:
                    ports = container.get("ports")
                    if ports and isinstance(ports, list):
                        for port in ports:
                            if (type(port) is dict or isinstance(port, Mapping)) and port.get("hostPort"):
                                return False
                if host_probes and not container.keys().isdisjoint(probe_keys):
                    for where in probes:
                        handler = container.get(where)
                        if handler and sets_host(handler):
                            return False
                    lifecycle = container.get("lifecycle")
                    if lifecycle and (type(lifecycle) is dict or isinstance(lifecycle, Mapping)):
                        for hook in hooks:
                            handler = lifecycle.get(hook)
                            if handler and sets_host(handler):
                                return False
                if hardened_container and not hardened_clean(container, ephemeral):
                    return False
        return True

    return clean


def _mapping(value: Any) -> Mapping[str, Any]:
    """``view.mapping``, inlined here for the common dict (this runs for every field read)."""
    if type(value) is dict:
        return value
    return value if (value is not None and isinstance(value, Mapping)) else EMPTY
