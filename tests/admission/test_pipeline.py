"""The review pipeline: what is judged, exemptions, modes by namespace, deadlines and failure modes.

The checks here are small test checks of our own, to exercise the pipeline's mechanics; the real
checks have their own tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from webhook import config as config_mod
from webhook import errors
from webhook.checks.pipeline import Pipeline, Subject
from webhook.core.deadline import Deadline
from webhook.core.decision import CheckResult, FailureMode, Mode, Violation
from webhook.core.request import RequestContext
from webhook.core.workloads import PodSpecRef

from .conftest import pod


@dataclass
class DenyPrivileged:
    id: str = "privilege"
    failure_mode: FailureMode = FailureMode.DENY
    default_mode: Mode = Mode.ENFORCE
    does_io: bool = False
    calls: int = 0

    async def run(self, pods: Sequence[PodSpecRef], ctx: RequestContext) -> CheckResult:
        self.calls += 1
        found = []
        for p in pods:
            for i, c in enumerate(p.spec.get("containers", [])):
                if (c.get("securityContext") or {}).get("privileged"):
                    path = f"{p.path}.containers[{i}].securityContext.privileged"
                    found.append(Violation("privilege", "privileged", container=c.get("name"), path=path))
        return CheckResult(found)


@dataclass
class SlowUpstream:
    id: str = "images"
    failure_mode: FailureMode = FailureMode.DENY
    default_mode: Mode = Mode.ENFORCE
    does_io: bool = True
    delay: float = 10.0
    error: Exception | None = None
    seen: list[Any] = field(default_factory=list)

    async def run(self, pods: Sequence[PodSpecRef], ctx: RequestContext) -> CheckResult:
        if self.error is not None:
            raise self.error
        await asyncio.sleep(self.delay)
        return CheckResult(context={"digest": "sha256:00"})


def privileged_pod() -> dict[str, Any]:
    return pod(containers=[{"name": "a", "image": "x", "securityContext": {"privileged": True}}])


async def judge(pipeline: Pipeline, obj: dict[str, Any], budget: float = 2.0, **kw: Any) -> Any:
    operation = kw.pop("operation", "CREATE")
    kind = kw.pop("kind", obj.get("kind", "Pod"))
    subject = Subject(operation, kind, kw.pop("namespace", "default"), "p", obj, **kw)
    return await pipeline.evaluate(subject, Deadline.after(budget))


async def test_enforced_violation_denies_with_container_and_path() -> None:
    pipeline = Pipeline(config_mod.Config(), [DenyPrivileged()])
    outcome = await judge(pipeline, privileged_pod())
    assert not outcome.verdict.allowed
    (v,) = outcome.verdict.denials
    assert v.container == "a"
    assert v.path == "spec.containers[0].securityContext.privileged"


@pytest.mark.parametrize(
    "subresource", ["exec", "attach", "log", "status", "binding", "eviction", "proxy", "portforward"]
)
async def test_other_subresources_pass_untouched(subresource: str) -> None:
    check = DenyPrivileged()
    outcome = await judge(Pipeline(config_mod.Config(), [check]), privileged_pod(), subresource=subresource)
    assert outcome.verdict.allowed
    assert check.calls == 0


async def test_ephemeral_containers_subresource_is_judged() -> None:
    check = DenyPrivileged()
    outcome = await judge(
        Pipeline(config_mod.Config(), [check]), privileged_pod(), subresource="ephemeralcontainers", operation="UPDATE"
    )
    assert check.calls == 1
    assert not outcome.verdict.allowed


async def test_update_that_changes_nothing_judged_is_not_rejudged() -> None:
    check = DenyPrivileged()
    old = privileged_pod()
    new = privileged_pod()
    new["metadata"]["resourceVersion"] = "42"
    outcome = await judge(Pipeline(config_mod.Config(), [check]), new, operation="UPDATE", old_object=old)
    assert outcome.verdict.allowed
    assert outcome.verdict.skipped_reason
    assert check.calls == 0


async def test_update_that_changes_the_spec_is_judged() -> None:
    check = DenyPrivileged()
    old = pod()
    outcome = await judge(Pipeline(config_mod.Config(), [check]), privileged_pod(), operation="UPDATE", old_object=old)
    assert not outcome.verdict.allowed


async def test_delete_and_connect_are_not_judged() -> None:
    check = DenyPrivileged()
    for operation in ("DELETE", "CONNECT"):
        outcome = await judge(Pipeline(config_mod.Config(), [check]), privileged_pod(), operation=operation)
        assert outcome.verdict.allowed
    assert check.calls == 0


async def test_a_kind_no_check_applies_to_is_allowed_and_counted() -> None:
    check = DenyPrivileged()
    pipeline = Pipeline(config_mod.Config(), [check])
    outcome = await judge(pipeline, {"kind": "Widget"})
    assert outcome.verdict.allowed
    assert outcome.verdict.skipped_reason == "no check applies to kind 'Widget'"
    assert pipeline.unjudged_kinds == {"Widget": 1}
    assert check.calls == 0


async def test_namespace_label_sets_the_mode() -> None:
    cfg = config_mod.parse(
        {"mode_labels": "any", "namespaces": {"dev": {"labels": {"portcullis.dev/privilege": "warn"}}}}
    )
    outcome = await judge(Pipeline(cfg, [DenyPrivileged()]), privileged_pod(), namespace="dev")
    assert outcome.verdict.allowed
    assert any("privileged" in w for w in outcome.verdict.warnings)


@pytest.mark.parametrize(
    ("exemption", "kw"),
    [
        ({"namespaces": ["kube-system"]}, {"namespace": "kube-system"}),
        (
            {"usernames": ["system:serviceaccount:ops:deployer"]},
            {"username": "system:serviceaccount:ops:deployer"},
        ),
        ({"runtime_classes": ["kata"]}, {}),
    ],
)
async def test_exemptions_by_namespace_username_and_runtime_class(
    exemption: dict[str, Any], kw: dict[str, Any]
) -> None:
    cfg = config_mod.parse({"exemptions": [{**exemption, "reason": "trusted"}]})
    obj = privileged_pod()
    obj["spec"]["runtimeClassName"] = "kata"
    outcome = await judge(Pipeline(cfg, [DenyPrivileged()]), obj, **kw)
    assert outcome.verdict.allowed
    assert outcome.verdict.audit_annotations["exempt"] == "trusted"


async def test_exemption_limited_to_named_checks() -> None:
    cfg = config_mod.parse({"exemptions": [{"namespaces": ["default"], "checks": ["images"]}]})
    outcome = await judge(Pipeline(cfg, [DenyPrivileged()]), privileged_pod())
    assert not outcome.verdict.allowed


async def test_check_out_of_budget_yields_its_failure_mode_naming_what_timed_out() -> None:
    pipeline = Pipeline(config_mod.Config(), [SlowUpstream()])
    outcome = await judge(pipeline, pod(), budget=0.05)
    assert not outcome.verdict.allowed
    (v,) = outcome.verdict.denials
    assert v.check == "images"
    assert "timed out" in v.message


async def test_failure_mode_allow_lets_through_with_a_warning() -> None:
    cfg = config_mod.parse({"checks": {"images": {"failure_mode": "allow"}}})
    pipeline = Pipeline(cfg, [SlowUpstream(error=errors.RegistryError("registry.example.com: connection refused"))])
    outcome = await judge(pipeline, pod())
    assert outcome.verdict.allowed
    assert any("connection refused" in w for w in outcome.verdict.warnings)


async def test_a_crashing_check_denies_instead_of_crashing() -> None:
    pipeline = Pipeline(config_mod.Config(), [SlowUpstream(error=ZeroDivisionError("boom"))])
    outcome = await judge(pipeline, pod())
    assert not outcome.verdict.allowed
    assert "internal error" in outcome.verdict.denials[0].message


async def test_context_of_checks_is_shared_with_later_checks() -> None:
    pipeline = Pipeline(config_mod.Config(), [SlowUpstream(delay=0)])
    outcome = await judge(pipeline, pod())
    assert outcome.context == {"images": {"digest": "sha256:00"}}


async def test_exemption_selectors_must_all_match() -> None:
    rule = {"namespaces": ["monitoring"], "service_accounts": ["monitor"], "checks": ["privilege"]}
    cfg = config_mod.parse({"exemptions": [rule]})
    pipeline = Pipeline(cfg, [DenyPrivileged()])
    obj = privileged_pod()
    obj["spec"]["serviceAccountName"] = "monitor"
    assert (await judge(pipeline, obj, namespace="monitoring")).verdict.allowed
    assert not (await judge(pipeline, privileged_pod(), namespace="monitoring")).verdict.allowed  # other SA
    assert not (await judge(pipeline, obj, namespace="default")).verdict.allowed  # other namespace


def test_an_exemption_without_selectors_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="must name namespaces"):
        config_mod.parse({"exemptions": [{"checks": ["privilege"]}]})


async def test_a_review_that_cannot_be_judged_leaves_no_io_check_running() -> None:
    """An inline check finds the object unjudgeable while an I/O check (the GPU quota with API
    server coordination, say) is still under way: that one is cancelled, never left to reserve
    after the review has ended."""

    @dataclass
    class Unjudgeable:
        id: str = "privilege"
        failure_mode: FailureMode = FailureMode.DENY
        default_mode: Mode = Mode.ENFORCE
        does_io: bool = False

        async def run(self, pods: Sequence[PodSpecRef], ctx: RequestContext) -> CheckResult:
            await asyncio.sleep(0)  # let the I/O check start
            raise errors.ReviewError("cannot judge this")

    slow = SlowUpstream(delay=30.0)
    pipeline = Pipeline(config_mod.Config(), [Unjudgeable(), slow])
    before = set(asyncio.all_tasks())
    with pytest.raises(errors.ReviewError):
        await pipeline.evaluate(Subject("CREATE", "Pod", "default", "p", pod()), Deadline.after(60))
    assert set(asyncio.all_tasks()) - before == set()
