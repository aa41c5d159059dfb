"""The privilege check: findings name the container and field, modes follow the namespace policy,
the hardened profile, config and the level override used by ``portcullis check``."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest

from webhook import config as config_mod
from webhook import errors
from webhook.checks import privilege
from webhook.checks.pipeline import Pipeline, Subject
from webhook.checks.pss import policy, registry
from webhook.checks.pss.policy import LevelVersion, Policy
from webhook.checks.services import Services
from webhook.config import Config
from webhook.core import workloads
from webhook.core.deadline import Deadline
from webhook.core.decision import Mode, Violation
from webhook.core.request import RequestContext

PSA = "pod-security.kubernetes.io/"


def container(name: str = "app", **security: Any) -> dict[str, Any]:
    return {"name": name, "image": "registry.example/app:1.2", "securityContext": security}


def restricted_container(name: str = "app", **extra: Any) -> dict[str, Any]:
    security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, **extra}
    return {"name": name, "image": "registry.example/app:1.2", "securityContext": security}


def pod(*containers: dict[str, Any], spec: Mapping[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    """A Pod that is restricted-clean unless the arguments say otherwise."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", **metadata},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": list(containers) or [restricted_container()],
            **(spec or {}),
        },
    }


def deployment(template_pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": {"metadata": template_pod["metadata"], "spec": template_pod["spec"]}},
    }


def judge(obj: Mapping[str, Any], level: str = "baseline", version: str = "latest") -> list[Violation]:
    return privilege.evaluate(workloads.pod_specs(obj), level, version, hardened_checks=())


def ids(found: list[Violation]) -> list[str]:
    return [v.check for v in found]


# --- findings name the check, the container, the field and the fix ------------------------------


def test_privileged_container_is_denied_under_baseline_with_its_field_path() -> None:
    found = judge(deployment(pod(restricted_container(), restricted_container("side", privileged=True))))
    assert ids(found) == ["pss:privileged"]
    (v,) = found
    assert v.container == "side"
    assert v.path == "spec.template.spec.containers[1].securityContext.privileged"
    assert "set it to false" in v.message
    assert "[baseline:latest]" in v.message


def test_each_offending_container_gets_its_own_finding() -> None:
    obj = pod(container("a", privileged=True), container("b", privileged=True))
    obj["spec"]["initContainers"] = [container("init", privileged=True)]
    found = judge(obj)
    assert [(v.container, v.path) for v in found] == [
        ("init", "spec.initContainers[0].securityContext.privileged"),
        ("a", "spec.containers[0].securityContext.privileged"),
        ("b", "spec.containers[1].securityContext.privileged"),
    ]


@pytest.mark.parametrize(
    ("spec", "check", "path"),
    [
        ({"hostNetwork": True}, "pss:hostNamespaces", "spec.hostNetwork"),
        ({"hostPID": True}, "pss:hostNamespaces", "spec.hostPID"),
        ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, "pss:hostPathVolumes", "spec.volumes[0].hostPath"),
        (
            {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}},
            "pss:sysctls",
            "spec.securityContext.sysctls[0].name",
        ),
        (
            {"securityContext": {"windowsOptions": {"hostProcess": True}}},
            "pss:windowsHostProcess",
            "spec.securityContext.windowsOptions.hostProcess",
        ),
    ],
)
def test_pod_level_fields_are_denied_under_baseline(spec: dict[str, Any], check: str, path: str) -> None:
    found = judge(pod(spec=spec))
    assert [(v.check, v.path, v.container) for v in found] == [(check, path, None)]


@pytest.mark.parametrize(
    ("security", "check", "field"),
    [
        ({"capabilities": {"add": ["SYS_ADMIN"]}}, "pss:capabilities_baseline", "securityContext.capabilities.add"),
        ({"procMount": "Unmasked"}, "pss:procMount", "securityContext.procMount"),
        (
            {"seccompProfile": {"type": "Unconfined"}},
            "pss:seccompProfile_baseline",
            "securityContext.seccompProfile.type",
        ),
        ({"appArmorProfile": {"type": "Unconfined"}}, "pss:appArmorProfile", "securityContext.appArmorProfile.type"),
        ({"seLinuxOptions": {"type": "spc_t"}}, "pss:seLinuxOptions", "securityContext.seLinuxOptions.type"),
        ({"seLinuxOptions": {"user": "root"}}, "pss:seLinuxOptions", "securityContext.seLinuxOptions.user"),
    ],
)
def test_container_security_context_fields_are_denied_under_baseline(
    security: dict[str, Any], check: str, field: str
) -> None:
    found = judge(pod(container("c", **security)))
    assert [(v.check, v.container, v.path) for v in found] == [(check, "c", f"spec.containers[0].{field}")]


def test_host_port_and_probe_host_name_the_exact_field() -> None:
    c = container("web")
    c["ports"] = [{"containerPort": 80}, {"containerPort": 443, "hostPort": 443}]
    c["livenessProbe"] = {"httpGet": {"host": "10.0.0.1", "port": 80}}
    found = judge(pod(c))
    assert [(v.check, v.path) for v in found] == [
        ("pss:hostPorts", "spec.containers[0].ports[1].hostPort"),
        ("pss:hostProbesAndHostLifecycle", "spec.containers[0].livenessProbe.httpGet.host"),
    ]


def test_probe_host_is_allowed_before_v1_34() -> None:
    c = container("web")
    c["readinessProbe"] = {"tcpSocket": {"host": "::1", "port": 80}}
    assert judge(pod(c), version="v1.33") == []
    assert ids(judge(pod(c), version="v1.34")) == ["pss:hostProbesAndHostLifecycle"]


def test_apparmor_and_seccomp_annotations_are_judged_on_template_metadata() -> None:
    obj = deployment(
        pod(
            annotations={
                "container.apparmor.security.beta.kubernetes.io/app": "unconfined",
                "seccomp.security.alpha.kubernetes.io/pod": "unconfined",
            }
        )
    )
    found = judge(obj, version="v1.18")
    assert [(v.check, v.path) for v in found] == [
        (
            "pss:appArmorProfile",
            "spec.template.metadata.annotations[container.apparmor.security.beta.kubernetes.io/app]",
        ),
        ("pss:seccompProfile_baseline", "spec.template.metadata.annotations[seccomp.security.alpha.kubernetes.io/pod]"),
    ]
    # From v1.19 the seccomp annotation is no longer judged (the field is).
    assert ids(judge(obj, version="v1.19")) == ["pss:appArmorProfile"]


# --- restricted and versions ---------------------------------------------------------------------


def test_restricted_requires_the_hardening_fields_and_says_how() -> None:
    obj = pod(container("bare"), spec={"securityContext": {}})
    found = judge(obj, "restricted")
    assert sorted(ids(found)) == [
        "pss:allowPrivilegeEscalation",
        "pss:capabilities_restricted",
        "pss:runAsNonRoot",
        "pss:seccompProfile_restricted",
    ]
    by_check = {v.check: v for v in found}
    assert "set securityContext.allowPrivilegeEscalation to false" in by_check["pss:allowPrivilegeEscalation"].message
    assert by_check["pss:capabilities_restricted"].path == "spec.containers[0].securityContext.capabilities.drop"


def test_restricted_allows_only_net_bind_service_to_be_added() -> None:
    ok = pod(restricted_container(capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}))
    bad = pod(restricted_container(capabilities={"drop": ["ALL"], "add": ["CHOWN"]}))
    assert judge(ok, "restricted") == []
    assert [v.path for v in judge(bad, "restricted")] == ["spec.containers[0].securityContext.capabilities.add"]
    # Before v1.22 the restricted level judges capabilities with the baseline list (CHOWN allowed).
    assert ids(judge(bad, "restricted", "v1.21")) == []


def test_run_as_user_zero_is_denied_from_v1_23_unless_in_a_user_namespace() -> None:
    obj = pod(restricted_container(runAsUser=0))
    assert ids(judge(obj, "restricted", "v1.22")) == []
    assert ids(judge(obj, "restricted", "v1.23")) == ["pss:runAsUser"]
    obj["spec"]["hostUsers"] = False
    assert ids(judge(obj, "restricted", "v1.34")) == ["pss:runAsUser"]
    assert ids(judge(obj, "restricted", "v1.35")) == []


def test_windows_pods_are_exempt_from_linux_only_restricted_checks_from_v1_25() -> None:
    obj = pod(container("win"), spec={"os": {"name": "windows"}})
    assert ids(judge(obj, "restricted", "v1.25")) == []
    assert "pss:allowPrivilegeEscalation" in ids(judge(obj, "restricted", "v1.24"))


def test_restricted_volumes_replace_the_host_path_check() -> None:
    obj = pod(spec={"volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "n", "nfs": {"server": "x"}}]})
    found = judge(obj, "restricted")
    assert [(v.check, v.path) for v in found] == [
        ("pss:restrictedVolumes", "spec.volumes[0].hostPath"),
        ("pss:restrictedVolumes", "spec.volumes[1].nfs"),
    ]


def test_versions_newer_than_the_newest_mean_the_newest() -> None:
    assert registry.checks_for(registry.Level.RESTRICTED, 99) == registry.checks_for(
        registry.Level.RESTRICTED, registry.LATEST
    )


def test_sysctl_allow_list_grows_with_the_version() -> None:
    obj = pod(spec={"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_notsent_lowat", "value": "1"}]}})
    assert ids(judge(obj, version="v1.36")) == ["pss:sysctls"]
    assert judge(obj, version="v1.37") == []


def test_privileged_level_allows_everything() -> None:
    assert judge(pod(container(privileged=True)), "privileged") == []


@pytest.mark.parametrize(("level", "version"), [("root", "latest"), ("baseline", "1.25"), ("baseline", "v2.0")])
def test_an_unknown_level_or_version_is_a_config_error(level: str, version: str) -> None:
    with pytest.raises(errors.ConfigError, match="Pod Security"):
        privilege.evaluate([], level, version)


def test_malformed_fields_read_as_absent_instead_of_crashing() -> None:
    obj = pod(spec={"securityContext": "nonsense", "volumes": "x"})
    obj["spec"]["containers"] = [{"name": "c", "securityContext": ["x"], "ports": "80"}]
    assert ids(judge(obj)) == []
    assert "pss:runAsNonRoot" in ids(judge(obj, "restricted"))


# --- hardened ------------------------------------------------------------------------------------


def hardened_pod() -> dict[str, Any]:
    c = restricted_container(readOnlyRootFilesystem=True)
    c["resources"] = {"limits": {"cpu": "1", "memory": "1Gi"}}
    return pod(c, spec={"automountServiceAccountToken": False, "serviceAccountName": "app"})


def test_a_hardened_pod_passes_the_hardened_level() -> None:
    assert privilege.evaluate(workloads.pod_specs(hardened_pod()), "hardened") == []


@pytest.mark.parametrize(
    ("mutate", "check", "path"),
    [
        (
            lambda p: p["spec"]["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"),
            "hardened:readOnlyRootFilesystem",
            "spec.containers[0].securityContext.readOnlyRootFilesystem",
        ),
        (
            lambda p: p["spec"]["containers"][0]["resources"]["limits"].pop("memory"),
            "hardened:resourceLimits",
            "spec.containers[0].resources.limits",
        ),
        (
            lambda p: p["spec"]["containers"][0].update(image="registry:5000/team/app"),
            "hardened:imageTag",
            "spec.containers[0].image",
        ),
        (
            lambda p: p["spec"]["containers"][0].update(image="app:latest"),
            "hardened:imageTag",
            "spec.containers[0].image",
        ),
        (
            lambda p: p["spec"].pop("automountServiceAccountToken"),
            "hardened:automountServiceAccountToken",
            "spec.automountServiceAccountToken",
        ),
        (
            lambda p: p["spec"].update(serviceAccountName="default"),
            "hardened:defaultServiceAccount",
            "spec.serviceAccountName",
        ),
    ],
)
def test_each_hardened_check_has_its_own_id(mutate: Any, check: str, path: str) -> None:
    obj = hardened_pod()
    mutate(obj)
    found = privilege.evaluate(workloads.pod_specs(obj), "hardened")
    assert [(v.check, v.path) for v in found] == [(check, path)]
    assert privilege.evaluate(workloads.pod_specs(obj), "restricted") == []


def test_a_digest_pins_an_image_even_without_a_tag() -> None:
    obj = hardened_pod()
    obj["spec"]["containers"][0]["image"] = "app@sha256:" + "0" * 64
    assert privilege.evaluate(workloads.pod_specs(obj), "hardened") == []


def test_hardened_checks_can_be_picked() -> None:
    obj = pod()
    found = privilege.evaluate(workloads.pod_specs(obj), "hardened", hardened_checks=["imageTag"])
    assert found == []
    found = privilege.evaluate(workloads.pod_specs(obj), "hardened", hardened_checks=["defaultServiceAccount"])
    assert ids(found) == ["hardened:defaultServiceAccount"]


# --- policy per namespace: labels, overrides, modes ----------------------------------------------


def ctx(namespace: str = "team", labels: Mapping[str, str] | None = None) -> RequestContext:
    return RequestContext("CREATE", "Pod", namespace, "p", namespace_labels=labels or {})


def test_with_no_config_baseline_is_enforced_and_restricted_warned_at_latest() -> None:
    check = privilege.build(Config(), Services())
    found, problems = check.policy_for("any", {})
    assert (str(found.enforce), str(found.warn)) == ("baseline:latest", "restricted:latest")
    assert problems == []


async def test_findings_carry_the_mode_of_the_level_that_found_them() -> None:
    check = privilege.build(Config(), Services())
    obj = pod(container("c", privileged=True))
    result = await check.run(workloads.pod_specs(obj), ctx())
    modes = {v.check: v.mode for v in result.violations}
    assert modes["pss:privileged"] is Mode.ENFORCE
    assert modes["pss:allowPrivilegeEscalation"] is Mode.WARN
    # a violation of both levels is reported once, at the stronger mode
    assert ids(result.violations).count("pss:privileged") == 1
    assert result.context == {
        "pss": {"enforce": "baseline:latest", "warn": "restricted:latest", "audit": "restricted:latest"}
    }


async def test_audit_only_findings_have_mode_audit() -> None:
    labels = {PSA + "enforce": "privileged", PSA + "warn": "baseline", PSA + "audit": "restricted"}
    check = privilege.build(Config(), Services())
    obj = pod(container("c", privileged=True))
    result = await check.run(workloads.pod_specs(obj), ctx(labels=labels))
    modes = {v.check: v.mode for v in result.violations}
    assert modes == {
        "pss:privileged": Mode.WARN,
        "pss:allowPrivilegeEscalation": Mode.AUDIT,
        "pss:capabilities_restricted": Mode.AUDIT,
    }


def test_labels_follow_pod_security_admission_semantics() -> None:
    defaults = Policy(*(LevelVersion(registry.Level.PRIVILEGED),) * 3)
    found, problems = policy.from_labels({PSA + "enforce": "restricted", PSA + "enforce-version": "v1.24"}, defaults)
    # warn follows a stricter enforce level when it is not labelled itself
    assert (str(found.enforce), str(found.warn), str(found.audit)) == (
        "restricted:v1.24",
        "restricted:v1.24",
        "privileged:latest",
    )
    assert problems == []
    found, problems = policy.from_labels(
        {PSA + "enforce": "bogus", PSA + "warn": "bogus", PSA + "audit-version": "1.2"}, defaults
    )
    # an unreadable enforce level fails closed, warn and audit fail open, a bad version is latest
    assert (found.enforce.level, found.warn.level, found.audit.version) == ("restricted", "privileged", "latest")
    assert len(problems) == 3


async def test_invalid_labels_are_reported_as_warnings() -> None:
    check = privilege.build(Config(), Services())
    result = await check.run(workloads.pod_specs(pod()), ctx(labels={PSA + "enforce": "strict"}))
    assert any("pod-security.kubernetes.io/enforce" in w for w in result.warnings)


async def test_a_remembered_namespace_policy_is_the_one_its_labels_give_now() -> None:
    """The check remembers each namespace's resolved policy by its labels: every review, also
    after a namespace's labels change, is judged as a check meeting that namespace first would."""
    config = config_mod.parse({"privilege": {"namespaces": {"ml": {"level": "restricted", "version": "v1.30"}}}})
    remembering = privilege.build(config, Services())
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("team", "Pod", {}),
        ("team", "Pod", {PSA + "enforce": "restricted"}),
        ("team", "Pod", {PSA + "enforce": "restricted", PSA + "enforce-version": "v1.24"}),
        ("team", "Deployment", {PSA + "enforce": "restricted", PSA + "enforce-version": "v1.24"}),
        ("team", "Pod", {PSA + "enforce": "strict", "other": "x"}),  # invalid: warned on each review
        ("team", "Pod", {PSA + "enforce": "strict", "other": "y"}),
        ("team", "Pod", {PSA + "warn": "baseline", PSA + "audit": "privileged"}),
        ("team", "Pod", {"unrelated": "label"}),
        ("team", "Pod", {PSA + "warn": "privileged", PSA + "audit": "restricted"}),
        ("team", "Pod", {PSA + "warn": "privileged", PSA + "audit": "baseline"}),
        ("team", "Pod", {PSA + "warn": "privileged", PSA + "audit": "restricted", PSA + "audit-version": "v1.22"}),
        ("team", "Pod", {PSA + "enforce": "hardened"}),  # warn follows the stricter enforce level
        ("team", "Pod", {PSA + "enforce": "hardened", PSA + "warn": None}),  # ... unless warn is present
        ("ml", "Pod", {PSA + "enforce": "privileged"}),  # the config's override wins
        ("ml", "Pod", {}),
        ("ml", "CronJob", {PSA + "warn": "hardened"}),
        ("team", "Pod", {PSA + "enforce": ["restricted"]}),  # does not hash: judged, not remembered
        ("team", "Pod", {PSA + "enforce": "restricted"}),
    ]
    obj = pod(container("c", privileged=True, runAsUser=0))
    for _ in range(2):
        for namespace, kind, labels in steps:
            request = RequestContext("CREATE", kind, namespace, "p", namespace_labels=labels)
            pods = workloads.pod_specs(obj, "Pod")
            fresh = await privilege.build(config, Services()).run(pods, request)
            again = await remembering.run(pods, request)
            assert again == fresh, (namespace, kind, labels)
            assert again.warnings is not fresh.warnings


def test_a_per_namespace_override_wins_over_labels() -> None:
    config = config_mod.parse({"privilege": {"namespaces": {"ml": {"level": "restricted", "version": "v1.30"}}}})
    check = privilege.build(config, Services())
    found, _ = check.policy_for("ml", {PSA + "enforce": "privileged"})
    assert str(found.enforce) == "restricted:v1.30"
    found, _ = check.policy_for("other", {PSA + "enforce": "privileged"})
    assert str(found.enforce) == "privileged:latest"


def test_labels_can_be_ignored() -> None:
    config = config_mod.parse({"privilege": {"namespace_labels": False}})
    found, _ = privilege.build(config, Services()).policy_for("x", {PSA + "enforce": "privileged"})
    assert str(found.enforce) == "baseline:latest"


def test_with_level_pins_the_level_and_version_everywhere() -> None:
    config = privilege.with_level(Config(), "restricted", "v1.25")
    check = privilege.build(config, Services())
    found, _ = check.policy_for("x", {PSA + "enforce": "privileged"})
    assert str(found.enforce) == "restricted:v1.25"
    with pytest.raises(errors.ConfigError):
        privilege.with_level(Config(), "paranoid")


async def test_always_checks_run_at_baseline_too() -> None:
    config = config_mod.parse(
        {"privilege": {"always_checks": ["imageTag"], "warn_level": "baseline", "audit_level": "baseline"}}
    )
    check = privilege.build(config, Services())
    obj = pod(container("c"))
    obj["spec"]["containers"][0]["image"] = "app"
    result = await check.run(workloads.pod_specs(obj), ctx())
    assert [(v.check, v.mode) for v in result.violations] == [("hardened:imageTag", Mode.ENFORCE)]


@pytest.mark.parametrize(
    "bad",
    [
        {"privilege": {"level": "paranoid"}},
        {"privilege": {"version": "1.30"}},
        {"privilege": {"hardened_checks": ["noRoot"]}},
        {"privilege": {"namespaces": {"a": {"warn_version": "v1"}}}},
        {"privilege": {"unknown": True}},
    ],
)
def test_bad_config_is_a_config_error_naming_the_key(bad: dict[str, Any]) -> None:
    with pytest.raises(errors.ConfigError, match="privilege"):
        config_mod.parse(bad)


# --- end to end through the admission pipeline ---------------------------------------------------


class _Namespaces:
    def __init__(self, labels: Mapping[str, Mapping[str, str]]) -> None:
        self._labels = labels

    def labels(self, namespace: str) -> Mapping[str, str] | None:
        return self._labels.get(namespace)


_ENFORCE_TEMPLATES = config_mod.parse({"privilege": {"workload_templates": "enforce"}})


async def test_pipeline_denies_baseline_violations_and_warns_restricted_ones() -> None:
    config = Config()
    pipeline = Pipeline(config, [privilege.build(config, Services())])
    obj = pod(container("c"))
    outcome = await pipeline.evaluate(Subject("CREATE", "Pod", "team", "p", obj), Deadline.never())
    assert outcome.verdict.allowed
    assert any("pss:allowPrivilegeEscalation" in w for w in outcome.verdict.warnings)
    bad = pod(container("c", privileged=True))
    outcome = await pipeline.evaluate(Subject("CREATE", "Pod", "team", "p", bad), Deadline.never())
    assert not outcome.verdict.allowed
    assert "spec.containers[0].securityContext.privileged" in outcome.verdict.deny_message()


async def test_workload_templates_only_warn_by_default_as_in_pod_security_admission() -> None:
    """PSA evaluates controllers at the warn and audit levels and never denies them: their pods
    are enforced when the controller creates them."""
    config = Config()
    pipeline = Pipeline(config, [privilege.build(config, Services())])
    bad = deployment(pod(container("c", privileged=True)))
    outcome = await pipeline.evaluate(Subject("CREATE", "Deployment", "team", "d", bad), Deadline.never())
    assert outcome.verdict.allowed
    assert any("spec.template.spec.containers[0].securityContext.privileged" in w for w in outcome.verdict.warnings)


async def test_workload_templates_only_warn_at_the_warn_level_not_the_enforce_level() -> None:
    """PSA: a namespace enforcing baseline but warning at privileged says nothing about a template."""
    labels = {PSA + "enforce": "baseline", PSA + "warn": "privileged", PSA + "audit": "privileged"}
    config = Config()
    pipeline = Pipeline(config, [privilege.build(config, Services())], namespaces=_Namespaces({"team": labels}))
    bad = deployment(pod(container("c", privileged=True)))
    outcome = await pipeline.evaluate(Subject("CREATE", "Deployment", "team", "d", bad), Deadline.never())
    assert outcome.verdict.allowed
    assert outcome.verdict.findings == ()


async def test_workload_templates_are_denied_when_configured_to_enforce() -> None:
    pipeline = Pipeline(_ENFORCE_TEMPLATES, [privilege.build(_ENFORCE_TEMPLATES, Services())])
    bad = deployment(pod(container("c", privileged=True)))
    outcome = await pipeline.evaluate(Subject("CREATE", "Deployment", "team", "d", bad), Deadline.never())
    assert not outcome.verdict.allowed
    assert "spec.template.spec.containers[0].securityContext.privileged" in outcome.verdict.deny_message()


async def test_ci_judges_workload_templates_at_the_enforce_level() -> None:
    config = Config()
    pipeline = Pipeline(config, [privilege.build(config, Services(ci=True))])
    bad = deployment(pod(container("c", privileged=True)))
    outcome = await pipeline.evaluate(Subject("CREATE", "Deployment", "team", "d", bad), Deadline.never())
    assert not outcome.verdict.allowed


async def test_pipeline_judges_updates_that_change_the_pod_spec() -> None:
    config = _ENFORCE_TEMPLATES
    namespaces = _Namespaces({"locked": {PSA + "enforce": "restricted"}})
    pipeline = Pipeline(config, [privilege.build(config, Services())], namespaces=namespaces)
    old = deployment(pod())
    new = copy.deepcopy(old)
    new["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    outcome = await pipeline.evaluate(Subject("UPDATE", "Deployment", "locked", "d", new, old), Deadline.never())
    assert not outcome.verdict.allowed
    assert [f.violation.check for f in outcome.verdict.findings] == ["pss:allowPrivilegeEscalation"]


def test_the_shared_empty_answer_is_never_mutated() -> None:
    from webhook.checks.pss import baseline

    obj = pod(container("a", privileged=True, capabilities={"add": ["SYS_ADMIN"]}), spec={"hostPID": True})
    assert privilege.evaluate(workloads.pod_specs(obj), "hardened")
    assert baseline.NONE == []


def test_every_check_id_is_documented() -> None:
    import webhook.checks.pss as pss_package
    from webhook.checks.pss import hardened

    documented = pss_package.__doc__ or ""
    for check in registry.CHECKS:
        assert f"``pss:{check.id}``" in documented
    for name in hardened.NAMES:
        assert f"``hardened:{name}``" in documented
