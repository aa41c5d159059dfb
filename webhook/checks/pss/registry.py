"""Which Pod Security checks apply at a level and policy version (the standard's version table).

Mirrors how Pod Security Admission builds its evaluator: each check has versions, each valid
from a minimum policy version until the next; a restricted check may override a baseline one
(e.g. ``restrictedVolumes`` replaces ``hostPathVolumes``); restricted runs every baseline check
it does not override; versions newer than the newest known, and ``latest``, mean the newest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from webhook.checks.pss import baseline as b
from webhook.checks.pss import restricted as r
from webhook.checks.pss.view import CheckFn


class Level(StrEnum):
    """Pod Security levels, least to most strict; ``hardened`` is restricted plus our extras."""

    PRIVILEGED = "privileged"
    BASELINE = "baseline"
    RESTRICTED = "restricted"
    HARDENED = "hardened"


STRICTNESS = {Level.PRIVILEGED: 0, Level.BASELINE: 1, Level.RESTRICTED: 2, Level.HARDENED: 3}


@dataclass(frozen=True, slots=True)
class Versioned:
    """One version of one check: valid from policy v1.<since>."""

    since: int
    fn: CheckFn
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckDef:
    id: str
    level: Level
    versions: tuple[Versioned, ...]


def _v(since: int, fn: CheckFn, *overrides: str) -> Versioned:
    return Versioned(since, fn, overrides)


_SYSCTLS_1_0 = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
    }
)
_SYSCTLS_1_27 = _SYSCTLS_1_0 | {"net.ipv4.ip_local_reserved_ports"}
_SYSCTLS_1_29 = _SYSCTLS_1_27 | {
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
_SYSCTLS_1_32 = _SYSCTLS_1_29 | {"net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"}
_SYSCTLS_1_37 = _SYSCTLS_1_32 | {"net.ipv4.tcp_slow_start_after_idle", "net.ipv4.tcp_notsent_lowat"}
_SELINUX_1_0 = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
_SELINUX_1_31 = _SELINUX_1_0 | {"container_engine_t"}

_B, _R = Level.BASELINE, Level.RESTRICTED
_PROC_MOUNT_STRICT = b.proc_mount("pss:procMount", relax_for_user_namespace=False)

CHECKS: tuple[CheckDef, ...] = (
    CheckDef("appArmorProfile", _B, (_v(0, b.app_armor_profile),)),
    CheckDef("capabilities_baseline", _B, (_v(0, b.capabilities_baseline),)),
    CheckDef("hostNamespaces", _B, (_v(0, b.host_namespaces),)),
    CheckDef("hostPathVolumes", _B, (_v(0, b.host_path_volumes),)),
    CheckDef("hostPorts", _B, (_v(0, b.host_ports),)),
    CheckDef("hostProbesAndHostLifecycle", _B, (_v(34, b.host_probes_and_lifecycle),)),
    CheckDef("privileged", _B, (_v(0, b.privileged),)),
    CheckDef(
        "procMount",
        _B,
        (_v(0, _PROC_MOUNT_STRICT), _v(35, b.proc_mount("pss:procMount", relax_for_user_namespace=True))),
    ),
    CheckDef("seLinuxOptions", _B, (_v(0, b.selinux_options(_SELINUX_1_0)), _v(31, b.selinux_options(_SELINUX_1_31)))),
    CheckDef("seccompProfile_baseline", _B, (_v(0, b.seccomp_annotations), _v(19, b.seccomp_baseline))),
    CheckDef(
        "sysctls",
        _B,
        tuple(
            _v(since, b.sysctls(allowed))
            for since, allowed in (
                (0, _SYSCTLS_1_0),
                (27, _SYSCTLS_1_27),
                (29, _SYSCTLS_1_29),
                (32, _SYSCTLS_1_32),
                (37, _SYSCTLS_1_37),
            )
        ),
    ),
    CheckDef("windowsHostProcess", _B, (_v(0, b.windows_host_process),)),
    CheckDef(
        "allowPrivilegeEscalation",
        _R,
        (
            _v(8, r.allow_privilege_escalation(exempt_windows=False)),
            _v(25, r.allow_privilege_escalation(exempt_windows=True)),
        ),
    ),
    CheckDef(
        "capabilities_restricted",
        _R,
        (
            _v(22, r.capabilities_restricted(exempt_windows=False), "capabilities_baseline"),
            _v(25, r.capabilities_restricted(exempt_windows=True), "capabilities_baseline"),
        ),
    ),
    CheckDef(
        "procMount_restricted",
        _R,
        (_v(35, b.proc_mount("pss:procMount_restricted", relax_for_user_namespace=False), "procMount"),),
    ),
    CheckDef("restrictedVolumes", _R, (_v(0, r.restricted_volumes, "hostPathVolumes"),)),
    CheckDef(
        "runAsNonRoot",
        _R,
        (
            _v(0, r.run_as_non_root(relax_for_user_namespace=False)),
            _v(35, r.run_as_non_root(relax_for_user_namespace=True)),
        ),
    ),
    CheckDef(
        "runAsUser",
        _R,
        (
            _v(23, r.run_as_user(relax_for_user_namespace=False)),
            _v(35, r.run_as_user(relax_for_user_namespace=True)),
        ),
    ),
    CheckDef(
        "seccompProfile_restricted",
        _R,
        (
            _v(19, r.seccomp_restricted(exempt_windows=False), "seccompProfile_baseline"),
            _v(25, r.seccomp_restricted(exempt_windows=True), "seccompProfile_baseline"),
        ),
    ),
)

# The newest policy version any check knows; ``latest`` and every newer version mean this one.
NEWEST_MINOR = max(v.since for c in CHECKS for v in c.versions)
LATEST = -1  # the minor number ``latest`` parses to
_VERSION = re.compile(r"^v1\.(0|[1-9][0-9]*)$")


def parse_version(text: str) -> int:
    """``"v1.N"`` → N, ``"latest"`` → ``LATEST``; raise ``ValueError`` for anything else."""
    if text == "latest":
        return LATEST
    match = _VERSION.match(text)
    if match is None:
        raise ValueError(f'invalid Pod Security version {text!r}: must be "latest" or "v1.N"')
    return int(match.group(1))


def effective_minor(minor: int) -> int:
    """The policy version whose checks apply: ``latest`` and future versions mean the newest."""
    return NEWEST_MINOR if minor == LATEST or minor > NEWEST_MINOR else minor


def _active(check: CheckDef, minor: int) -> Versioned | None:
    current = None
    for version in check.versions:
        if version.since <= minor:
            current = version
    return current


@cache
def checks_for(level: Level, minor: int) -> tuple[CheckFn, ...]:
    """The check functions to run at ``level`` (baseline or restricted) and version ``minor``,
    baseline checks first, each group in id order (as PSA runs them)."""
    minor = effective_minor(minor)
    if level is Level.PRIVILEGED:
        return ()
    active = {c.id: (c, v) for c in CHECKS if (v := _active(c, minor)) is not None}
    wanted = {_B} if level is Level.BASELINE else {_B, _R}
    overridden = {o for c, v in active.values() if c.level in wanted for o in v.overrides}
    ordered = sorted(active.values(), key=lambda cv: (cv[0].level is _R, cv[0].id))
    return tuple(v.fn for c, v in ordered if c.level in wanted and c.id not in overridden)
