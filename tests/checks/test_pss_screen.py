"""The Pod Security screen (``pss.screen``) against the check functions it stands in for.

A plan skips the per-check evaluation of every pod its screen passes, so the screen must pass
exactly the pods in which the plan's functions find nothing (never one with a finding: that would
admit it; and, to be worth having, no pod they find nothing in), and a plan must give the same
findings, in the same order, with the same messages, whether it screens or not. Held to that here:

- every public Pod Security Admission fixture (``../shared/conformance/psa``, pass and fail) under
  every distinct plan: each level at each policy version, with the hardened checks, and policies
  mixing levels, versions and modes as namespaces do;
- the same fixtures with one to three fields changed: set to another allowed or forbidden value,
  to a value of the wrong JSON type, or removed (hypothesis, derandomized);
- inputs the checks read in their own way: wrong types, nulls, strings where objects go, huge
  lists, an annotation key that is not a string (the checks fail on it; so must the screened plan).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook.checks.pss import hardened, registry
from webhook.checks.pss.policy import LevelVersion, Plan, Policy, compile_plan
from webhook.checks.pss.registry import Level
from webhook.config.privilege import ALL_HARDENED
from webhook.core import workloads
from webhook.core.decision import Violation
from webhook.core.workloads import PodSpecRef

TESTDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "psa" / "testdata"
FIXTURES = sorted(TESTDATA.glob("*/v1.*/*/*.yaml"))
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
VERSIONS = [f"v1.{minor}" for minor in range(registry.NEWEST_MINOR + 1)] + ["latest"]
LEVELS = (Level.BASELINE, Level.RESTRICTED, Level.HARDENED)
HARDENED = hardened.checks(ALL_HARDENED, ("cpu", "memory"))
ALWAYS = hardened.checks(("imageTag", "resourceLimits"), ("cpu", "memory", "nvidia.com/gpu"))


@cache
def _fixture(path: Path) -> Mapping[str, Any]:
    loaded: Mapping[str, Any] = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    return loaded


def _single(level: Level, version: str) -> Plan:
    lv = LevelVersion(level, version)
    return compile_plan(Policy(lv, lv, lv), hardened=HARDENED, modes=False)


def _mixed() -> list[Plan]:
    """Policies as namespaces hold them: three modes, each its own level and version."""
    out = []
    for enforce, warn, audit in (
        (("baseline", "latest"), ("restricted", "latest"), ("restricted", "latest")),  # the defaults
        (("privileged", "latest"), ("restricted", "v1.24"), ("hardened", "latest")),  # a template
        (("baseline", "v1.0"), ("restricted", "v1.18"), ("restricted", "v1.35")),
        (("baseline", "v1.34"), ("baseline", "v1.30"), ("restricted", "v1.22")),
        (("restricted", "v1.25"), ("restricted", "v1.8"), ("baseline", "v1.19")),
        (("hardened", "v1.34"), ("restricted", "latest"), ("baseline", "v1.26")),
    ):
        policy = Policy(*(LevelVersion(Level(level), version) for level, version in (enforce, warn, audit)))
        out.append(compile_plan(policy, hardened=HARDENED, always=ALWAYS))
    return out


@cache
def plans() -> tuple[Plan, ...]:
    """Every distinct plan of one level (versions with the same functions make the same plan),
    and the mixed ones."""
    distinct: dict[tuple[object, ...], Plan] = {}
    for level in LEVELS:
        for version in VERSIONS:
            plan = _single(level, version)
            distinct.setdefault(tuple(fn for fns, _ in plan.groups for fn in fns), plan)
    return (*distinct.values(), *_mixed())


def exact(plan: Plan, pods: list[PodSpecRef]) -> list[Violation]:
    """The plan's findings from its check functions alone (no screen)."""
    return Plan(plan.groups).evaluate(pods)


def agree(plan: Plan, obj: Mapping[str, Any]) -> bool:
    """Assert the screen passes ``obj`` exactly when the functions find nothing, and the screened
    plan finds what they find (or fails as they fail); return whether it was clean."""
    assert plan.screen is not None
    spec, metadata = obj.get("spec"), obj.get("metadata") or {}
    if not isinstance(spec, dict) or not isinstance(metadata, dict):
        return False  # not a pod spec (``workloads.pod_specs`` refuses it before any check)
    # built here, not by ``pod_specs``: it refuses some shapes (a container list that is not a
    # list) that the checks still read their own way, and those must agree too
    pods = [PodSpecRef(spec, metadata, "spec")]
    try:
        found = exact(plan, pods)
    except Exception as exc:
        assert plan.screen(spec, metadata) is False
        with pytest.raises(type(exc)):
            plan.evaluate(pods)
        return False
    assert plan.screen(spec, metadata) is (found == []), found
    # a plan with several groups screens each of them, too (for a pod its own screen did not pass)
    assert len(plan.group_screens) == (len(plan.groups) if len(plan.groups) > 1 else 0)
    for (fns, stamp), group_screen in zip(plan.groups, plan.group_screens, strict=False):
        assert group_screen is not None
        group_found = Plan(((fns, stamp),)).evaluate(pods)
        assert group_screen(spec, metadata) is (group_found == []), group_found
    assert plan.evaluate(pods) == found
    return found == []


def test_every_check_function_declares_its_rule() -> None:
    """A function without a rule turns the screen off (the plan stays exact, only slower): none of
    ours may lack one."""
    for plan in plans():
        assert plan.screen is not None


def test_a_function_without_a_rule_turns_the_screen_off() -> None:
    lv = LevelVersion(Level.BASELINE)
    plan = compile_plan(Policy(lv, lv, lv), always=[lambda pod, stamp: []], modes=False)
    assert plan.screen is None
    assert plan.evaluate(workloads.pod_specs(_privileged_pod(), "Pod"))


@pytest.mark.slow
@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_psa_fixtures_under_every_plan(level: str) -> None:
    """Every fixture filed under ``level``, judged by every plan (not only its own level and
    version, so each plan sees pods that pass and pods that fail it)."""
    fixtures = [p for p in FIXTURES if p.parts[-4] == level]
    assert len(fixtures) > 1000
    clean = 0
    for plan in plans():
        for path in fixtures:
            clean += agree(plan, _fixture(path))
    assert clean > 1000, "the screen must pass the pods that are clean, too"


def _privileged_pod() -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "securityContext": {"privileged": True}}]}}


def _container(name: str | None, **extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "image": f"registry.example/{name}:1.2",
        "resources": {"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            "readOnlyRootFilesystem": True,
        },
        **extra,
    }
    if name is not None:
        container["name"] = name
    return container


def _base(variant: str) -> dict[str, Any]:
    """A pod every plan finds nothing in (so one change to it is judged on its own): ``plain``;
    ``userns`` (hostUsers: false) and ``windows`` (spec.os.name), which some checks relax for;
    ``rich``, with every field the checks read set to an allowed value, so a change meets fields
    that are present rather than absent; ``nameless``, whose ephemeral container has no name."""
    spec: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [_container("init")],
        "containers": [_container("app"), _container("sidecar", ports=[{"containerPort": 8080}])],
        "ephemeralContainers": [
            {
                "name": "debug",
                "image": "busybox:1.36",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                },
            }
        ],
        "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "conf", "configMap": {"name": "c"}}],
        "automountServiceAccountToken": False,
        "serviceAccountName": "app",
    }
    annotations: dict[str, Any] = {"team": "a"}
    if variant == "userns":
        spec["hostUsers"] = False
    elif variant == "windows":
        spec["os"] = {"name": "windows"}
    elif variant == "nameless":
        del spec["ephemeralContainers"][0]["name"]
    elif variant == "rich":
        benign = {
            "privileged": False,
            "procMount": "Default",
            "runAsUser": 1000,
            "runAsNonRoot": True,
            "seLinuxOptions": {"type": "container_t", "level": "s0:c1", "user": "", "role": ""},
            "appArmorProfile": {"type": "RuntimeDefault"},
            "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
            "windowsOptions": {"hostProcess": False, "gmsaCredentialSpecName": "x"},
        }
        spec["securityContext"] |= {**benign, "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}
        spec["securityContext"].pop("procMount")
        spec["securityContext"].pop("privileged")
        handler = {"httpGet": {"path": "/", "port": 80}, "tcpSocket": {"port": 80}}
        for field in ("initContainers", "containers", "ephemeralContainers"):
            for container in spec[field]:
                container["securityContext"] |= benign
                container["livenessProbe"] = handler
                container["readinessProbe"] = {"tcpSocket": {"port": 80, "host": ""}}
                container["lifecycle"] = {"preStop": handler}
                container["ports"] = [{"containerPort": 80, "hostPort": 0}]
        spec["volumes"].append({"name": "v", "csi": {"driver": "d"}, "hostPath": None})
        annotations |= {
            "seccomp.security.alpha.kubernetes.io/pod": "runtime/default",
            "container.seccomp.security.alpha.kubernetes.io/app": "localhost/p",
            "container.apparmor.security.beta.kubernetes.io/app": "runtime/default",
        }
    return {"metadata": {"name": "p", "annotations": annotations}, "spec": spec}


VARIANTS = ("plain", "userns", "windows", "nameless", "rich")


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_base_pods_are_clean_under_every_plan(variant: str) -> None:
    for plan in plans():
        assert agree(plan, _base(variant)), plan


# What to put in the fields the checks read: allowed, forbidden and wrong-typed values, or nothing.
_AWKWARD: list[Any] = [None, True, 0, "", "x", [], {}, [None]]
_CONTEXT: dict[str, list[Any]] = {
    "privileged": [True, False, "true"],
    "allowPrivilegeEscalation": [True, False],
    "capabilities": [
        {"drop": ["ALL"]},
        {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
        {"drop": ["ALL"], "add": ["CHOWN"]},
        {"drop": ["ALL", "NET_RAW"], "add": ["SYS_ADMIN"]},
        {"add": ["SYS_ADMIN"]},
        {"drop": "ALL"},
        {"drop": ["NET_RAW"]},
        {"drop": ["all"]},
        {"drop": ["ALL"], "add": [1]},
        {"drop": ["ALL"], "add": "CHOWN"},
        {"drop": ["ALL"], "add": []},
    ],
    "seccompProfile": [{"type": "RuntimeDefault"}, {"type": "Localhost"}, {"type": "Unconfined"}, {"type": None}],
    "appArmorProfile": [{"type": "RuntimeDefault"}, {"type": "Unconfined"}, {"localhostProfile": "x"}],
    "seLinuxOptions": [
        {"type": "container_t"},
        {"type": "container_engine_t"},
        {"type": "spc_t"},
        {"user": ""},
        {"user": "root"},
        {"role": 0},
        {"type": None, "level": "s0"},
    ],
    "procMount": ["Default", "Unmasked", ""],
    "runAsNonRoot": [True, False, "true", 1],
    "runAsUser": [0, 1000, -1, 0.0, False],
    "readOnlyRootFilesystem": [True, False],
    "windowsOptions": [{"hostProcess": True}, {"hostProcess": False}, {"hostProcess": "true"}],
    "sysctls": [
        [{"name": "kernel.shm_rmid_forced", "value": "0"}],
        [{"name": "net.ipv4.ip_local_reserved_ports"}],
        [{"name": "net.ipv4.tcp_keepalive_time"}],
        [{"name": "net.ipv4.tcp_rmem"}],
        [{"name": "net.ipv4.tcp_notsent_lowat"}],
        [{"name": "kernel.msgmax"}],
        [{}],
        [{"name": ["kernel.shm_rmid_forced"]}],
    ],
}
_HANDLERS: list[Any] = [
    {"httpGet": {"host": "10.0.0.1", "port": 80}},
    {"tcpSocket": {"port": 1, "host": "h"}},
    {"tcpSocket": {"port": 1}},
    {"httpGet": {"host": ""}},
    {"httpGet": "host"},
    {"exec": {"command": ["true"]}},
]
_CONTAINER: dict[str, list[Any]] = {
    "securityContext": [{}, "privileged"],
    "ports": [[{"containerPort": 80}], [{"hostPort": 8080}], [{"hostPort": 0}], ["80"], [{"hostPort": "1"}]],
    "image": ["nginx", "nginx:latest", "nginx:1.27", "r.io/a@sha256:00", "host:5000/a", "host:5000/a:latest"],
    "resources": [
        {"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}},
        {"limits": {"cpu": "", "memory": "1Gi", "nvidia.com/gpu": "1"}},
        {"limits": {"cpu": "1", "memory": "1Gi"}},
        {"requests": {"cpu": "1"}},
    ],
    "livenessProbe": _HANDLERS,
    "startupProbe": _HANDLERS,
    "lifecycle": [{"postStart": h} for h in _HANDLERS] + [{"preStop": "x"}],
    "name": ["app", "sidecar", 7],
}
_SPEC: dict[str, list[Any]] = {
    "hostNetwork": [True, False],
    "hostPID": [True, "true"],
    "hostIPC": [True],
    "hostUsers": [False, True],
    "os": [{"name": "windows"}, {"name": "linux"}, "windows"],
    "volumes": [
        [{"name": "v", "hostPath": {"path": "/"}}],
        [{"name": "v", "emptyDir": {}}],
        [{"name": "v", "nfs": {"server": "x"}}],
        [{"name": "v", "emptyDir": {}, "hostPath": {"path": "/"}}],
        [{"name": "v", "configMap": None, "gitRepo": {}}],
        [{"name": "v", "unknownSource": {}}],
        [{"name": "v", "hostPath": None}],
        ["v"],
    ],
    "automountServiceAccountToken": [False, True],
    "serviceAccountName": ["app", "default", ""],
    "serviceAccount": ["legacy", "default"],
    "containers": [[{"name": "app", "image": "busybox"}], "app"],
    "initContainers": [[_container("init", securityContext={"privileged": True})], "x"],
    "ephemeralContainers": [[{"name": "debug", "image": "busybox:1"}]],
}
_ANNOTATIONS: dict[str, list[Any]] = {
    "container.apparmor.security.beta.kubernetes.io/app": ["runtime/default", "unconfined", "localhost/p", 1],
    "seccomp.security.alpha.kubernetes.io/pod": ["runtime/default", "docker/default", "unconfined", "localhost/x"],
    **{
        f"container.seccomp.security.alpha.kubernetes.io/{name}": ["unconfined", "runtime/default"]
        for name in ("app", "init", "debug", "ephemeralContainers[0]", "absent")
    },
}
_DELETE = object()
# (where, table): where a change goes (see ``_target``) and what may go there
_PLACES: list[tuple[tuple[str, ...], dict[str, list[Any]]]] = [
    (("spec",), _SPEC),
    (("podContext",), _CONTEXT),
    (("annotations",), _ANNOTATIONS),
    *(
        ((kind, field, index), table)
        for field, index in (("initContainers", "0"), ("containers", "1"), ("ephemeralContainers", "0"))
        for kind, table in (("container", _CONTAINER), ("context", _CONTEXT))
    ),
]


def _target(obj: dict[str, Any], where: tuple[str, ...]) -> Any:
    """The object a change at ``where`` goes into (None when the pod no longer has it)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return None
    if where[0] == "spec":
        return spec
    if where[0] == "podContext":
        return spec.setdefault("securityContext", {})
    if where[0] == "annotations":
        meta = obj.setdefault("metadata", {})
        return meta.setdefault("annotations", {}) if isinstance(meta, dict) else None
    listed = spec.get(where[1])
    index = int(where[2])
    if not isinstance(listed, list) or len(listed) <= index or not isinstance(listed[index], dict):
        return None
    if where[0] == "container":
        return listed[index]
    sc = listed[index].get("securityContext")
    if not isinstance(sc, dict):
        sc = listed[index]["securityContext"] = {}
    return sc


def _change(obj: dict[str, Any], where: tuple[str, ...], key: str, value: Any) -> None:
    target = _target(obj, where)
    if not isinstance(target, dict):
        return
    if value is _DELETE:
        target.pop(key, None)
    else:
        target[key] = copy.deepcopy(value)


def _single_changes() -> list[tuple[tuple[str, ...], str, Any]]:
    return [
        (where, key, value)
        for where, table in _PLACES
        for key, values in table.items()
        for value in [*values, *_AWKWARD, _DELETE]
    ]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_single_change_to_a_clean_pod(variant: str) -> None:
    """Each value of each field above, put alone into a pod every plan finds nothing in, under
    every plan: a check the screen misses (or reads differently) shows here on its own."""
    checked = dirty = 0
    base = _base(variant)
    for where, key, value in _single_changes():
        obj = copy.deepcopy(base)
        _change(obj, where, key, value)
        for plan in plans():
            dirty += not agree(plan, obj)
            checked += 1
    assert dirty > checked // 10, "the changes must make some pods dirty"


@st.composite
def _changed(draw: st.DrawFn) -> dict[str, Any]:
    """A PSA fixture or a clean pod, with one to three fields changed."""
    if draw(st.booleans()):
        obj = copy.deepcopy(dict(_fixture(draw(st.sampled_from(FIXTURES)))))
    else:
        obj = _base(draw(st.sampled_from(VARIANTS)))
    for _ in range(draw(st.integers(1, 3))):
        where, table = draw(st.sampled_from(_PLACES))
        key = draw(st.sampled_from(sorted(table)))
        value = draw(st.sampled_from([*table[key], *_AWKWARD, _DELETE]))
        _change(obj, where, key, value)
    return obj


@settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(obj=_changed(), index=st.integers(0, 10_000))
def test_changed_pods_under_random_plans(obj: dict[str, Any], index: int) -> None:
    """Changes combined (a user-namespaced pod that also drops runAsNonRoot, say)."""
    every = plans()
    for step in (0, 7, 19):
        agree(every[(index + step) % len(every)], obj)


def _pod(spec: Any, annotations: Any = None) -> dict[str, Any]:
    return {"metadata": {"name": "p", "annotations": annotations}, "spec": spec}


_ODD = [
    _pod({"containers": [{"name": "a", "securityContext": "privileged"}]}),
    _pod({"containers": [{"name": "a", "securityContext": None}], "securityContext": "x"}),
    _pod({"containers": [{"name": "a", "securityContext": {"capabilities": "ALL"}}]}),
    _pod({"containers": [{"name": "a", "securityContext": {"capabilities": {"drop": None, "add": None}}}]}),
    _pod({"containers": [{"name": "a", "ports": {"hostPort": 1}}, {"name": "b", "ports": [None, 3, "x"]}]}),
    _pod({"containers": [{"name": "a", "livenessProbe": {"httpGet": "host"}, "lifecycle": ["x"]}]}),
    _pod({"containers": [{"name": "a"}], "volumes": {"name": "v", "hostPath": {}}}),
    _pod({"containers": [{"name": "a"}], "volumes": [None, 1, "x", [], {"hostPath": None}]}),
    _pod({"containers": [{"name": "a"}], "os": None, "hostUsers": "false", "securityContext": {"sysctls": "x"}}),
    _pod({"containers": [{"name": "a"}]}, annotations="x"),
    _pod({"containers": [{"name": "a"}]}, annotations=["container.apparmor.security.beta.kubernetes.io/a"]),
    _pod({"containers": [{"name": "a"}]}, annotations={1: "x"}),  # the checks raise on it, as they did
    _pod({"containers": [{"name": "a"}]}, annotations={None: "x", "b": 2}),
    _pod({"containers": []}),
    _pod({}),
    # huge lists: many containers, volumes and ports, clean and not
    _pod(
        {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": f"c{i}",
                    "image": f"r.io/a:{i}",
                    "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                    },
                    "ports": [{"containerPort": p} for p in range(50)],
                }
                for i in range(300)
            ],
            "volumes": [{"name": f"v{i}", "emptyDir": {}} for i in range(500)],
            "automountServiceAccountToken": False,
            "serviceAccountName": "app",
        }
    ),
    _pod({"containers": [{"name": f"c{i}", "securityContext": {"privileged": True}} for i in range(500)]}),
]


@pytest.mark.parametrize("obj", _ODD, ids=range(len(_ODD)))
def test_odd_inputs_behave_as_before(obj: dict[str, Any]) -> None:
    for plan in plans():
        agree(plan, obj)


def test_the_huge_compliant_pod_is_screened_clean() -> None:
    """The 300-container pod above is clean at every level: the screen, not the checks, says so."""
    pods = workloads.pod_specs(_ODD[-2], "Pod")
    for level in LEVELS:
        for version in VERSIONS:
            screen = _single(level, version).screen
            assert screen is not None
            assert screen(pods[0].spec, pods[0].metadata)


def test_a_hand_built_pod_ref_the_view_cannot_read_fails_as_it_always_did() -> None:
    """Not reachable from a review (``pod_specs`` builds the path), but exact all the same."""
    spec = {"containers": [{"name": "a", "image": "r.io/a:1"}]}
    plan = _single(Level.BASELINE, "latest")
    with pytest.raises(AttributeError):
        plan.evaluate([PodSpecRef(spec, {}, None)])  # type: ignore[arg-type]


def test_a_non_string_annotation_key_fails_as_it_always_did() -> None:
    pods = workloads.pod_specs(_pod({"containers": [{"name": "a"}]}, annotations={1: "x"}), "Pod")
    plan = _single(Level.BASELINE, "latest")
    with pytest.raises(AttributeError):
        plan.evaluate(pods)
