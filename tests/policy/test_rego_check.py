"""The rego check end to end through the real pipeline: the policy library, failure modes,
Gatekeeper constraints, and the ``portcullis policy`` commands."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from webhook import config as config_mod
from webhook import errors
from webhook.checks import rego as rego_check
from webhook.checks.pipeline import Pipeline, Subject
from webhook.checks.services import Services
from webhook.cli import main
from webhook.core.deadline import Deadline
from webhook.policy import gatekeeper, rego, testing

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "policies"


def deployment(image: str = "registry.example.com/app:1", labels: dict[str, str] | None = None, **spec: Any) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "ml",
            "labels": labels if labels is not None else {"team": "a", "cost-center": "c"},
        },
        "spec": {
            "replicas": 1,
            "template": {"metadata": {}, "spec": {"containers": [{"name": "app", "image": image}], **spec}},
        },
    }


_OPEN: list[Pipeline] = []


@pytest.fixture(autouse=True)
async def _close_pipelines() -> AsyncIterator[None]:
    """Every pipeline a test built is closed after it (its policy worker processes end)."""
    yield
    while _OPEN:
        await _OPEN.pop().close()


def pipeline_for(policy: dict[str, Any], checks: dict[str, Any] | None = None) -> Pipeline:
    cfg = config_mod.parse({"policy": policy, "checks": checks or {}})
    check = rego_check.build(cfg, Services())
    assert check is not None
    pipeline = Pipeline(cfg, [check])
    _OPEN.append(pipeline)
    return pipeline


async def judge(pipeline: Pipeline, obj: dict) -> Any:
    subject = Subject("CREATE", obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"], obj)
    return await pipeline.evaluate(subject, Deadline.after(5))


def test_check_is_off_unless_configured() -> None:
    assert rego_check.build(config_mod.parse({}), Services()) is None


async def test_library_admits_a_compliant_deployment() -> None:
    outcome = await judge(pipeline_for({"directory": str(LIBRARY)}), deployment())
    assert outcome.verdict.allowed, outcome.verdict.findings
    assert "allowed-registries" in outcome.context["rego"]["policies"]


async def test_library_denies_untrusted_registry_with_field_path() -> None:
    outcome = await judge(pipeline_for({"directory": str(LIBRARY)}), deployment("docker.io/nginx"))
    (denial,) = outcome.verdict.denials
    assert denial.check == "rego"
    assert denial.message.startswith("allowed-registries: image 'docker.io/nginx'")
    assert denial.path == "spec.template.spec.containers[0].image"


async def test_metadata_warn_mode_only_warns_for_missing_labels() -> None:
    outcome = await judge(pipeline_for({"directory": str(LIBRARY)}), deployment(labels={}))
    assert outcome.verdict.allowed
    assert any("required-labels: label 'cost-center' is missing" in w for w in outcome.verdict.warnings)


async def test_multi_gpu_host_ipc_is_denied() -> None:
    gpu = {"limits": {"nvidia.com/gpu": "4"}}
    obj = deployment(hostIPC=True, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])
    obj["spec"]["template"]["spec"]["containers"][0]["resources"] = gpu
    outcome = await judge(pipeline_for({"directory": str(LIBRARY)}), obj)
    assert [d.message.split(":")[0] for d in outcome.verdict.denials] == ["no-host-ipc-multi-gpu"]


def _erroring(tmp_path: Path, failure_mode: str) -> Path:
    (tmp_path / "e.rego").write_text(
        f"# METADATA\n# custom:\n#   id: conflicted\n#   failure_mode: {failure_mode}\n"
        "package e\nimport rego.v1\ndeny := input.request.name\ndeny := 1 if input.request\n"
    )
    return tmp_path


async def test_eval_error_denies_under_failure_mode_deny(tmp_path: Path) -> None:
    outcome = await judge(pipeline_for({"directory": str(_erroring(tmp_path, "deny"))}), deployment())
    (denial,) = outcome.verdict.denials
    assert "conflicted" in denial.message
    assert "denied by failure mode 'deny'" in denial.message


async def test_eval_error_allows_under_failure_mode_allow(tmp_path: Path) -> None:
    outcome = await judge(pipeline_for({"directory": str(_erroring(tmp_path, "allow"))}), deployment())
    assert outcome.verdict.allowed
    assert any("allowed by failure mode 'allow'" in w for w in outcome.verdict.warnings)


async def test_overrunning_policy_follows_failure_mode(tmp_path: Path) -> None:
    """The worker evaluating a runaway policy is killed at the bound and replaced: the next
    request is judged by a fresh worker, and the check never reports not-ready."""
    (tmp_path / "slow.rego").write_text(
        "package slow\nimport rego.v1\n"
        'deny contains "x" if { input.request.name == "slow"\n'
        "  some i in numbers.range(1, 100000)\n  some j in numbers.range(1, 100000)\n  i * j == -1 }\n"
    )
    pipeline = pipeline_for({"directory": str(tmp_path), "timeout": 0.3, "workers": 1})
    await pipeline.start()
    try:
        slow = deployment()
        slow["metadata"]["name"] = "slow"
        outcome = await judge(pipeline, slow)
        (denial,) = outcome.verdict.denials
        assert "exceeded 300 ms" in denial.message
        assert "worker was stopped" in denial.message
        assert pipeline.ready()
        check = pipeline.checks[0]
        assert isinstance(check, rego_check.RegoCheck)
        assert check.pool.stats.killed == 1
        await check.pool.start()  # wait for the replacement (it starts in the background)
        assert (await judge(pipeline, deployment())).verdict.allowed
    finally:
        await pipeline.close()


def test_broken_policy_fails_build_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "b.rego").write_text("package b\ndeny contains x if {\n  x := \n}\n")
    cfg = config_mod.parse({"policy": {"directory": str(tmp_path)}})
    with pytest.raises(errors.PolicyLoadError, match=r"b\.rego:\d+:\d+"):
        rego_check.build(cfg, Services())


async def test_reload_picks_up_a_new_policy_without_restart(tmp_path: Path) -> None:
    (tmp_path / "a.rego").write_text('package a\nimport rego.v1\ndeny contains "no" if false\n')
    cfg = config_mod.parse({"policy": {"directory": str(tmp_path), "reload_interval": 0}})
    check = rego_check.build(cfg, Services())
    pipeline = Pipeline(cfg, [check])
    assert (await judge(pipeline, deployment())).verdict.allowed
    (tmp_path / "b.rego").write_text('package b\nimport rego.v1\ndeny contains "no" if true\n')
    assert await check.reload()
    assert isinstance(check, rego_check.RegoCheck)
    await check.pool.start()  # the new version's workers (the previous ones serve until then)
    assert not (await judge(pipeline, deployment())).verdict.allowed
    await pipeline.close()


async def test_gatekeeper_constraints_run_beside_rego() -> None:
    pipeline = pipeline_for({"gatekeeper": [str(LIBRARY / "gatekeeper")]})
    outcome = await judge(pipeline, deployment(labels={"team": "Bad_Name"}))
    (denial,) = outcome.verdict.denials
    assert denial.message.startswith("K8sRequiredLabels/workloads-need-team: label <team")
    await pipeline.close()


async def test_gatekeeper_excluded_namespace_is_not_judged() -> None:
    obj = deployment(labels={})
    obj["metadata"]["namespace"] = "kube-system"
    outcome = await judge(pipeline_for({"gatekeeper": [str(LIBRARY / "gatekeeper")]}), obj)
    assert outcome.verdict.allowed


def test_constraint_for_unknown_template_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "apiVersion: constraints.gatekeeper.sh/v1beta1\nkind: K8sNope\nmetadata: {name: x}\nspec: {}\n"
    )
    cfg = config_mod.parse({"policy": {"gatekeeper": [str(tmp_path)]}})
    with pytest.raises(errors.PolicyLoadError, match=r"c\.yaml:1: constraint x has kind 'K8sNope'"):
        rego_check.build(cfg, Services())


def test_policy_test_command_passes_on_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "test", str(LIBRARY)]) == 0
    out = capsys.readouterr().out
    assert "PASS portcullis.host_ipc_test.test_exempted_pod_passes" in out
    assert "PASS required-labels/team-label/team-fails-regex" in out


def test_policy_test_command_fails_on_a_failing_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.rego").write_text('package p\nimport rego.v1\ndeny contains "x" if input.a == 1\n')
    (tmp_path / "p_test.rego").write_text(
        "package p_test\nimport rego.v1\nimport data.p\n"
        "test_ok if { count(p.deny) == 1 with input.a as 1 }\n"
        "test_wrong if { count(p.deny) == 1 with input.a as 2 }\n"
    )
    assert main(["policy", "test", str(tmp_path), "--format", "json"]) == 1
    out = capsys.readouterr().out
    assert '"failed": 1' in out
    assert '"passed": 1' in out


def test_suite_with_wrong_expectation_fails(tmp_path: Path) -> None:
    src = LIBRARY / "gatekeeper" / "gpu-limit"
    for name in ("template.yaml", "constraint.yaml"):
        (tmp_path / name).write_text((src / name).read_text())
    (tmp_path / "pod.yaml").write_text((src / "samples" / "sixteen.yaml").read_text())
    (tmp_path / "ns.yaml").write_text((src / "samples" / "namespaces.yaml").read_text())
    (tmp_path / "suite.yaml").write_text(
        "kind: Suite\nmetadata: {name: s}\ntests:\n- name: t\n  template: template.yaml\n"
        "  constraint: constraint.yaml\n  cases:\n  - name: c\n    object: pod.yaml\n"
        "    inventory: [ns.yaml]\n    assertions: [{violations: 1}]\n"
    )
    (result,) = testing.run_suite(tmp_path / "suite.yaml")
    assert not result.passed
    assert "expected 1 violation(s)" in result.message


def test_policy_validate_lists_policies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", str(LIBRARY), "--gatekeeper", str(LIBRARY / "gatekeeper")]) == 0
    out = capsys.readouterr().out
    assert "ok policy gpu-resources" in out
    assert "ok constraint K8sGpuLimit/at-most-eight-gpus" in out


def test_policy_validate_reports_bad_policy_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.rego").write_text("package x\nimport rego.v1\ndeny contains y if { y := nofn() }\n")
    assert main(["policy", "validate", str(tmp_path)]) == 2
    assert "x.rego:3:" in capsys.readouterr().err


def test_policy_test_exits_2_when_a_policy_does_not_compile_even_without_tests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.rego").write_text("package broken\nimport rego.v1\ndeny contains x if {\n  x := \n}\n")
    assert main(["policy", "test", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "broken.rego:" in err
    assert "no tests found" not in err


def test_a_template_the_engine_refuses_is_reported_with_its_message_not_a_placeholder(tmp_path: Path) -> None:
    """`[_]` under `not` inside call arguments cannot be hoisted; the error names file and line."""
    source = (
        'package k8snot\nviolation[{"msg": "m"}] {\n'
        "  not startswith(input.review.object.metadata.name, input.parameters.prefixes[_])\n}\n"
    )
    template = {
        "apiVersion": "templates.gatekeeper.sh/v1",
        "kind": "ConstraintTemplate",
        "metadata": {"name": "k8snot"},
        "spec": {
            "crd": {"spec": {"names": {"kind": "K8sNot"}}},
            "targets": [{"target": "admission.k8s.gatekeeper.sh", "rego": source}],
        },
    }
    import yaml

    (tmp_path / "t.yaml").write_text(yaml.safe_dump(template, default_style=None))
    with pytest.raises(errors.PolicyLoadError) as caught:
        gatekeeper.load([tmp_path / "t.yaml"])
    message = str(caught.value)
    assert "could not build a bundle" not in message
    assert "Invalid bracket argument" in message
    assert "t.yaml:" in message


def test_wildcard_in_call_arguments_iterates_like_opa(tmp_path: Path) -> None:
    (tmp_path / "w.rego").write_text(
        "package w\nimport rego.v1\n"
        "deny contains msg if {\n"
        '  msg := object.get(input.rules[_], "host", "none")\n'
        "  startswith(msg, input.prefixes[_])\n}\n"
    )
    compiled = rego.load_directory([tmp_path])
    (result,) = compiled.evaluate(
        {"rules": [{"host": "a.example"}, {"x": 1}, {"host": "b.example"}], "prefixes": ["a", "n"]}
    )
    assert [i.msg for i in result.deny] == ["a.example", "none"]


def test_policy_rules_prints_chart_values_for_the_selected_kinds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "svc.rego").write_text(
        "# METADATA\n# custom:\n#   kinds: [Service, ClusterRole, Deployment]\npackage svc\nimport rego.v1\n"
        'deny contains "x" if false\n'
    )
    assert main(["policy", "rules", str(tmp_path), "--gatekeeper", str(LIBRARY / "gatekeeper")]) == 0
    import yaml

    rules = yaml.safe_load(capsys.readouterr().out)["webhook"]["validating"]["extraRules"]
    assert {"apiGroups": ["*"], "resources": ["clusterroles"], "scope": "Cluster"} in rules
    assert {"apiGroups": ["*"], "resources": ["services"], "scope": "Namespaced"} in rules
    assert {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "scope": "Namespaced"} in rules
    assert not any("deployments" in r["resources"] for r in rules)  # the chart's own rules have them
