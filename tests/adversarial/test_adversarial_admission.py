"""Attacks on the admission path itself: kinds and API versions, subresources, UPDATE skipping,
labels, exemptions, and reviews crafted to crash the webhook.

The webhook's Service is reachable from any pod in the cluster, so a crafted AdmissionReview
is a real input: it must never get an HTTP 500 (with ``failurePolicy: Ignore`` the apiserver
admits on a 500) and never a hang.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from webhook import config as config_mod
from webhook import errors

from .conftest import RESTRICTED_SC, checks_found, judge, pod, privileged, review

ENFORCE_TEMPLATES = {"privilege": {"workload_templates": "enforce"}}


def _deployment(api_version: str, containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "default"},
        "spec": {"template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": containers}}},
    }


# -- crafted reviews straight at the Service (fixed: internal errors deny, never HTTP 500) -----


_DEEP = b'{"a":' * 990 + b"{}" + b"}" * 990  # deeper than orjson.dumps goes, within orjson.loads


def _with_deep_affinity(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body).replace(b'"affinity":"DEEP"', b'"affinity":' + _DEEP)


@pytest.mark.parametrize(
    ("obj", "old", "judgeable"),
    [
        # a runtimeClassName that is a list reached a set() in the exemption matcher (TypeError);
        # the container is privileged, so whether judged or not it must be denied
        (pod(runtimeClassName=["gvisor"], containers=[privileged()]), None, False),
        # identical, deeply nested old and new objects: comparing them overflowed the stack
        (pod(affinity="DEEP"), pod(affinity="DEEP"), True),
    ],
    ids=["unhashable-runtime-class", "deep-update-compare"],
)
async def test_crafted_review_that_breaks_the_pipeline_never_gets_a_500(
    webhook: Any, obj: Any, old: Any, judgeable: bool
) -> None:
    """An HTTP 500 goes to failurePolicy (``Ignore`` admits); a bug must answer "denied" itself.
    A later fix that judges these objects properly is fine too: then the verdict is the pod's."""
    async with webhook() as hook:
        body = review(obj, operation="UPDATE" if old else "CREATE", old=old)
        raw = _with_deep_affinity(body)
        for path in ("/validate", "/mutate"):
            status, answer = await hook.post(path, raw)
            assert status == 200, answer
            response = answer["response"]
            assert response["uid"] == body["request"]["uid"]
            if response["allowed"]:
                assert judgeable or path == "/mutate", response  # /mutate only pins, never denies
            else:
                assert response["status"]["message"]


async def test_an_update_nested_as_deep_as_the_decoder_reads_is_judged_not_an_internal_error(webhook: Any) -> None:
    """Fixed: old and new objects 1,010 levels deep (orjson reads 1,024; Python's ``==`` gives
    up near 1,000) made the UPDATE comparison raise RecursionError, answered as "internal error;
    denied" (code 500 in the review) where the same object on CREATE is judged. Now such an
    update counts as changed and is judged like the CREATE."""
    deep = b'{"a":' * 1010 + b"{}" + b"}" * 1010
    obj = pod(affinity="DEEP", containers=[privileged()])
    async with webhook() as hook:
        answers = {}
        for operation in ("CREATE", "UPDATE"):
            old = pod(affinity="DEEP", containers=[{"name": "app", "image": "nginx:1.26"}])
            body = review(obj, operation=operation, old=old if operation == "UPDATE" else None)
            status, answer = await hook.post("/validate", orjson.dumps(body).replace(b'"DEEP"', deep))
            assert status == 200, answer
            answers[operation] = answer["response"]
    for response in answers.values():
        assert response["allowed"] is False
        assert response["status"]["code"] == 403, response["status"]
        assert "pss:privileged" in response["status"]["message"]
        assert "internal error" not in response["status"]["message"]


async def test_webhook_keeps_serving_after_a_crafted_review(webhook: Any) -> None:
    async with webhook() as hook:
        await hook.post("/validate", review(pod(runtimeClassName={"x": 1})))
        status, answer = await hook.post("/validate", review(pod(containers=[privileged()])))
        assert status == 200
        assert answer["response"]["allowed"] is False
        assert "pss:privileged" in answer["response"]["status"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"\\ud800"}}',
        b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","x":1e400}}',
    ],
    ids=["nesting-beyond-the-parser", "lone-surrogate", "infinite-number"],
)
async def test_pathological_json_is_a_400(webhook: Any, body: bytes) -> None:
    async with webhook() as hook:
        status, answer = await hook.post("/validate", body)
        assert status == 400
        assert "invalid AdmissionReview" in answer["error"]


async def test_duplicate_keys_take_the_last_value_like_the_apiserver(webhook: Any) -> None:
    """Go's encoding/json keeps the last of duplicate keys, and so does orjson: a review that
    says ``privileged: false`` first and ``true`` last is judged privileged (the apiserver itself
    never sends duplicates, but a reviewer of our decoder will try)."""
    body = review(pod(containers=[{"name": "a", "image": "nginx:1.27", "securityContext": {}}]))
    raw = orjson.dumps(body).replace(
        b'"securityContext":{}', b'"securityContext":{"privileged":false,"privileged":true}'
    )
    async with webhook() as hook:
        status, answer = await hook.post("/validate", raw)
        assert status == 200
        assert answer["response"]["allowed"] is False


# -- kinds, groups and versions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "version"),
    [("apps", "v1"), ("apps", "v1beta1"), ("apps", "v1beta2"), ("extensions", "v1beta1")],
)
async def test_deployment_in_every_api_version_is_judged(group: str, version: str) -> None:
    """With ``matchPolicy: Equivalent`` the apiserver converts to the version the webhook
    registered, but an older apiserver or a webhook registered for the old version sends these:
    ``request.kind.kind`` is what decides, the group and version do not matter."""
    obj = _deployment(f"{group}/{version}", [privileged()])
    outcome = await judge(obj, kind="Deployment", cfg=ENFORCE_TEMPLATES)
    assert "pss:privileged" in checks_found(outcome)
    assert outcome.verdict.denials[0].path == "spec.template.spec.containers[0].securityContext.privileged"
    warned = await judge(obj, kind="Deployment")  # by default templates warn, as in PSA
    assert "pss:privileged" in checks_found(warned, "warn")


async def test_cronjob_v1beta1_is_judged() -> None:
    obj = {
        "apiVersion": "batch/v1beta1",
        "kind": "CronJob",
        "metadata": {"name": "c"},
        "spec": {
            "schedule": "* * * * *",
            "jobTemplate": {"spec": {"template": {"spec": {"containers": [privileged()]}}}},
        },
    }
    assert "pss:privileged" in checks_found(await judge(obj, ENFORCE_TEMPLATES))
    assert "pss:privileged" in checks_found(await judge(obj), "warn")


async def test_request_kind_wins_over_the_objects_own_kind() -> None:
    """An object that calls itself a ConfigMap, sent as a Pod, is judged as the Pod it is."""
    obj = pod(containers=[privileged()])
    obj["kind"] = "ConfigMap"
    assert "pss:privileged" in checks_found(await judge(obj, kind="Pod"))


async def test_unknown_kind_is_refused_not_allowed() -> None:
    obj = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "spec": {"template": {"spec": {}}}}
    with pytest.raises(errors.ReviewError, match="Rollout"):
        await judge(obj)


# -- subresources -------------------------------------------------------------------------------


async def test_ephemeral_debug_container_is_judged_on_the_subresource(webhook: Any) -> None:
    old = pod(containers=[{"name": "app", "image": "nginx:1.27"}])
    new = pod(containers=[{"name": "app", "image": "nginx:1.27"}], ephemeralContainers=[privileged("debugger")])
    body = review(new, operation="UPDATE", old=old, subresource="ephemeralcontainers")
    async with webhook() as hook:
        status, answer = await hook.post("/validate", body)
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert "spec.ephemeralContainers[0].securityContext.privileged" in answer["response"]["status"]["message"]


@pytest.mark.parametrize("subresource", ["status", "binding", "eviction", "exec", "attach", "portforward", "proxy"])
async def test_other_pod_subresources_pass_untouched(subresource: str) -> None:
    outcome = await judge(pod(containers=[privileged()]), subresource=subresource, operation="UPDATE")
    assert outcome.verdict.allowed
    assert outcome.verdict.skipped_reason


async def test_scale_subresource_is_not_mistaken_for_a_workload() -> None:
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 1000}}
    outcome = await judge(scale, kind="Scale", subresource="scale", operation="UPDATE")
    assert outcome.verdict.skipped_reason


# -- UPDATE skipping ----------------------------------------------------------------------------


async def test_update_that_only_touches_bookkeeping_metadata_is_not_rejudged() -> None:
    old = pod(containers=[privileged()])
    new = pod(containers=[privileged()])
    new["metadata"].update(resourceVersion="2", managedFields=[{"manager": "kubectl"}], generation=3)
    outcome = await judge(new, operation="UPDATE", old=old)
    assert outcome.verdict.allowed
    assert outcome.verdict.skipped_reason


def _annotate(key: str, value: str) -> Any:
    return lambda o: o["metadata"].setdefault("annotations", {}).update({key: value})


@pytest.mark.parametrize(
    "change",
    [
        lambda o: o["spec"]["containers"][0].update(image="nginx:1.28"),
        lambda o: o["spec"].update(initContainers=[privileged("init")]),
        lambda o: o["spec"]["containers"].append({"name": "extra", "image": "nginx:1.27"}),
        lambda o: o["spec"].update(ephemeralContainers=[{"name": "debug", "image": "busybox"}]),
        _annotate("seccomp.security.alpha.kubernetes.io/pod", "unconfined"),
        _annotate("container.seccomp.security.alpha.kubernetes.io/app", "unconfined"),
    ],
    ids=["image", "init-container", "container-added", "ephemeral-added", "pod-seccomp", "container-seccomp"],
)
async def test_significant_pod_update_is_judged_in_full(change: Any) -> None:
    """PSA's ``isSignificantPodUpdate``: once it holds, every container is judged, including the
    privileged one the old pod already had."""
    old = pod(containers=[privileged()])
    new = copy.deepcopy(old)
    change(new)
    outcome = await judge(new, operation="UPDATE", old=old)
    assert outcome.verdict.skipped_reason is None
    assert "pss:privileged" in checks_found(outcome)


@pytest.mark.parametrize(
    "change",
    [
        lambda o: o["metadata"].setdefault("labels", {}).update(team="x"),
        _annotate("example.com/owner", "alice"),
        _annotate("container.apparmor.security.beta.kubernetes.io/app", "unconfined"),
        _annotate("container.seccomp.security.alpha.kubernetes.io/other", "unconfined"),
        lambda o: o["spec"].update(activeDeadlineSeconds=30),
        lambda o: o["spec"].update(tolerations=[{"key": "k", "operator": "Exists"}]),
        lambda o: o["spec"]["containers"][0].update(resources={"limits": {"cpu": "2"}}),
    ],
    ids=["label", "annotation", "apparmor-annotation", "seccomp-of-no-container", "deadline", "toleration", "resize"],
)
async def test_insignificant_update_of_a_privileged_pod_is_allowed_as_in_psa(change: Any) -> None:
    """``kubectl label`` / ``annotate`` on a pod created before a stricter policy: PSA lets it
    through (nothing it judges changed), and so does Portcullis; the other built-in checks
    read only the spec, which did not change in a way they judge either."""
    old = pod(containers=[privileged()])
    new = copy.deepcopy(old)
    change(new)
    outcome = await judge(new, operation="UPDATE", old=old)
    assert outcome.verdict.allowed
    assert "pss:privileged" not in checks_found(outcome)


async def test_label_only_update_is_rejudged_by_checks_that_read_metadata() -> None:
    """A Rego policy (reads the whole object) still judges a label change on the same pod."""
    from webhook.checks.pipeline import Pipeline, Subject
    from webhook.config import Config
    from webhook.core.deadline import Deadline
    from webhook.core.decision import CheckResult, FailureMode, Mode, Violation

    class LabelPolicy:  # declares nothing: reads everything, as the Rego check does
        id = "rego"
        failure_mode = FailureMode.DENY
        default_mode = Mode.ENFORCE

        async def run(self, pods: Any, ctx: Any) -> CheckResult:
            labels = (ctx.object.get("metadata") or {}).get("labels") or {}
            return CheckResult([Violation("rego", "team label x is retired")] if labels.get("team") == "x" else [])

    from webhook.checks import privilege
    from webhook.checks.services import Services

    config = Config()
    pipeline = Pipeline(config, [privilege.build(config, Services()), LabelPolicy()])
    old = pod(containers=[privileged()])
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"team": "x"}
    outcome = await pipeline.evaluate(Subject("UPDATE", "Pod", "default", "p", new, old), Deadline.after(5))
    assert outcome.checks_run == ("rego",)
    assert [d.check for d in outcome.verdict.denials] == ["rego"]


async def test_update_of_a_deployment_template_compares_templates_only() -> None:
    old = _deployment("apps/v1", [{"name": "a", "image": "nginx:1.27"}])
    new = _deployment("apps/v1", [privileged("a")])
    new["spec"]["replicas"] = 3
    outcome = await judge(new, operation="UPDATE", old=old, cfg=ENFORCE_TEMPLATES)
    assert "pss:privileged" in checks_found(outcome)
    relabelled = copy.deepcopy(new)
    relabelled["metadata"]["labels"] = {"tier": "web"}
    relabelled["spec"]["template"]["metadata"]["labels"] = {"app": "d", "tier": "web"}
    outcome = await judge(relabelled, operation="UPDATE", old=new, cfg=ENFORCE_TEMPLATES)
    assert outcome.verdict.allowed  # a label-only change of an enforced template is not refused
    outcome = await judge(relabelled, operation="UPDATE", old=new)
    assert "pss:privileged" in checks_found(outcome, "warn")  # PSA warns on every controller update


# -- labels and annotations the workload author controls ------------------------------------


@pytest.mark.parametrize(
    "labels",
    [
        {"portcullis.dev/privilege": "off"},
        {"pod-security.kubernetes.io/enforce": "privileged"},
        {"portcullis.dev/untrusted": "false"},
    ],
)
async def test_labels_on_the_workload_do_not_change_the_policy(labels: dict[str, str]) -> None:
    """Modes come from *namespace* labels (cluster admins); the same labels on a pod or its
    template are just labels."""
    obj = pod(labels=labels, containers=[privileged()])
    assert "pss:privileged" in checks_found(await judge(obj))


@pytest.mark.parametrize("value", ["OFF", "Off", " off", "disabled", ""])
async def test_only_exact_mode_values_on_a_namespace_change_the_mode(value: str) -> None:
    cfg = {"namespaces": {"default": {"labels": {"portcullis.dev/privilege": value}}}}
    assert "pss:privileged" in checks_found(await judge(pod(containers=[privileged()]), cfg))


async def test_invalid_pod_security_enforce_label_fails_closed() -> None:
    cfg = {"namespaces": {"default": {"labels": {"pod-security.kubernetes.io/enforce": "Privileged"}}}}
    outcome = await judge(pod(containers=[{"name": "a", "image": "nginx:1.27"}]), cfg)
    assert "pss:runAsNonRoot" in checks_found(outcome)  # unreadable level -> restricted, like PSA


# -- exemptions ---------------------------------------------------------------------------------


def test_service_account_exemption_without_namespaces_is_refused() -> None:
    """Fixed: a service account name is only unique within its namespace; an exemption for
    ``service_accounts: [monitor]`` alone was inherited by anyone who made a ``monitor``
    account in their own namespace."""
    with pytest.raises(errors.ConfigError, match="namespaces"):
        config_mod.parse({"exemptions": [{"service_accounts": ["monitor"], "checks": ["privilege"]}]})


async def test_service_account_exemption_applies_in_its_namespace_only() -> None:
    cfg = {"exemptions": [{"namespaces": ["monitoring"], "service_accounts": ["monitor"]}]}
    obj = pod(serviceAccountName="monitor", containers=[privileged()])
    assert checks_found(await judge(obj, cfg, namespace="monitoring")) == set()
    assert "pss:privileged" in checks_found(await judge(obj, cfg, namespace="tenant-a"))


@pytest.mark.parametrize(
    ("spec_extra", "exempt"),
    [
        ({}, False),  # unset runtime class is not "any runtime class"
        ({"runtimeClassName": None}, False),
        ({"runtimeClassName": ""}, False),
        ({"runtimeClassName": "KATA"}, False),  # names are exact
        ({"runtimeClassName": "kata"}, True),
    ],
)
async def test_runtime_class_exemption_matches_exactly(spec_extra: dict[str, Any], exempt: bool) -> None:
    cfg = {"exemptions": [{"runtime_classes": ["kata"], "checks": ["privilege"]}]}
    obj = pod(containers=[privileged()], **spec_extra)
    assert ("pss:privileged" not in checks_found(await judge(obj, cfg))) is exempt


async def test_default_service_account_exemption_covers_pods_without_one() -> None:
    """``serviceAccountName`` unset means ``default``, as the apiserver fills it in: an
    exemption for ``default`` therefore covers bare pods (scope it with namespaces)."""
    cfg = {"exemptions": [{"namespaces": ["ci"], "service_accounts": ["default"]}]}
    obj = pod(containers=[privileged()])
    assert checks_found(await judge(obj, cfg, namespace="ci")) == set()
    assert "pss:privileged" in checks_found(await judge(obj, cfg, namespace="default"))


async def test_username_exemption_is_exact() -> None:
    cfg = {"exemptions": [{"usernames": ["system:serviceaccount:kube-system:replicaset-controller"]}]}
    obj = pod(containers=[privileged()])
    assert "pss:privileged" in checks_found(await judge(obj, cfg, username="system:serviceaccount:kube-system"))
    assert "pss:privileged" in checks_found(
        await judge(obj, cfg, username="System:serviceaccount:kube-system:replicaset-controller")
    )


_NODEPORT_POLICY = """# METADATA
# custom:
#   id: no-nodeport
#   kinds: [Service]
package portcullis.services

import rego.v1

deny contains "NodePort services are not allowed" if input.request.object.spec.type == "NodePort"
"""

_DEEP = b'{"a":' * 300 + b"{}" + b"}" * 300  # past the encoder's 255 levels, within the decoder's 1024


def _nodeport_review(extra: bytes) -> bytes:
    """AdmissionReview bytes for a NodePort Service with ``extra`` (raw JSON) in its spec."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {"type": "NodePort", "extra": "EXTRA"},
    }
    return orjson.dumps(review(service, kind="Service", resource="services")).replace(b'"EXTRA"', extra)


@pytest.mark.parametrize(
    "exemption",
    [{"runtime_classes": ["kata"]}, {"namespaces": ["default"], "service_accounts": ["monitor"]}],
    ids=["runtime-class", "service-account"],
)
async def test_pod_selector_exemptions_do_not_exempt_objects_without_pods(
    webhook: Any, tmp_path: Path, exemption: dict[str, Any]
) -> None:
    """Fixed: an object with no pod spec (a Service under a Rego policy) has no runtime class and
    no service account, and the empty set of them is a subset of any list: an exemption meant
    for ``kata`` pods (or the ``monitor`` account's) exempted every Service, ConfigMap and Ingress
    from every check. Sent as AdmissionReview bytes to the real server."""
    rego = tmp_path / "rego"
    rego.mkdir()
    (rego / "services.rego").write_text(_NODEPORT_POLICY)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {"type": "NodePort"},
    }
    cfg = {"policy": {"directory": str(rego)}, "exemptions": [exemption]}
    async with webhook(cfg) as hook:
        status, answer = await hook.post("/validate", review(service, kind="Service", resource="services"))
    assert status == 200
    response = answer["response"]
    assert response["allowed"] is False, response
    assert "no-nodeport" in response["status"]["message"]
    assert "exempt" not in response.get("auditAnnotations", {})


async def test_a_policy_input_too_deep_to_encode_is_denied_even_under_failure_mode_allow(
    webhook: Any, tmp_path: Path
) -> None:
    """Fixed: an object nested past orjson's 255 levels (a custom resource can be) made encoding
    the policy input raise, an internal error that ``failure_mode: allow`` turned into "admitted,
    with a warning": the NodePort Service below passed its policy unjudged. Now it is denied,
    like an input over ``policy.max_input_bytes``. Sent as AdmissionReview bytes to the server."""
    rego = tmp_path / "rego"
    rego.mkdir()
    # reads every field of the spec (a fixed path would be all the engine is given)
    policy = _NODEPORT_POLICY.replace(
        'if input.request.object.spec.type == "NodePort"',
        'if {\n  some key\n  input.request.object.spec[key] == "NodePort"\n}',
    )
    assert policy != _NODEPORT_POLICY
    (rego / "services.rego").write_text(policy)
    cfg = {"policy": {"directory": str(rego)}, "checks": {"rego": {"failure_mode": "allow"}}}
    async with webhook(cfg) as hook:
        status, answer = await hook.post("/validate", _nodeport_review(_DEEP))
    assert status == 200
    response = answer["response"]
    assert response["allowed"] is False, response
    assert "cannot be encoded" in response["status"]["message"]
    assert "internal error" not in response["status"]["message"]


# -- a restricted pod stays admitted (no false positives from the attacks above) -------------


async def test_restricted_pod_is_admitted_quietly() -> None:
    obj = pod(containers=[{"name": "a", "image": "nginx:1.27", "securityContext": RESTRICTED_SC}])
    outcome = await judge(obj)
    assert outcome.verdict.allowed
    assert not outcome.verdict.findings


# -- size of what we send back ------------------------------------------------------------------


async def test_denial_of_a_pod_with_thousands_of_violations_stays_small(webhook: Any) -> None:
    """Fixed: every violation was listed, so 10,000 bad containers (a 3 MB pod) produced a
    20 MB AdmissionReview response. Now the count is exact and the first 100 are named."""
    obj = pod(containers=[privileged(f"c{i}") for i in range(2000)])
    async with webhook({"limits": {"max_containers": 2000}}) as hook:  # past the default limit
        status, answer = await hook.post("/validate", review(obj))
    assert status == 200
    message = answer["response"]["status"]["message"]
    # The privilege check lists 100 findings and sums up the rest in one (pss.policy bounds them).
    assert message.startswith("denied by portcullis: 101 violations: ")
    assert "and 1900 more pss:privileged findings" in message
    assert message.count("[pss:privileged]") == 101
    assert len(message) < 40_000
    assert len(answer["response"].get("warnings", [])) <= 50


async def test_audit_annotation_is_bounded_too() -> None:
    cfg = {
        "privilege": {"level": "privileged", "warn_level": "privileged", "audit_level": "baseline"},
        "limits": {"max_containers": 300},
    }
    outcome = await judge(pod(containers=[privileged(f"c{i}") for i in range(300)]), cfg)
    assert outcome.verdict.allowed
    annotation = outcome.verdict.audit_annotations["privilege"]
    assert "and 200 more pss:privileged findings" in annotation
    assert annotation.count("[pss:privileged]") == 101


@pytest.mark.parametrize("shape", ["deep", "big"])
async def test_a_remote_opa_gets_the_same_input_bounds_as_the_embedded_engine(
    webhook: Any, serve: Any, shape: str
) -> None:
    """Fixed: with ``engine: opa`` the input went to OPA unbounded. Nested past the encoder's
    depth it raised while being sent, an internal error that ``failure_mode: allow`` admitted
    unjudged; over ``policy.max_input_bytes`` it was sent whole. Both are now denied before OPA is
    asked, as the embedded engine denies them. No OPA server can be installed here: a local
    aiohttp server answers OPA's Data API (``POST /v1/data/<path>``), allowing everything."""
    from aiohttp import web

    asked: list[int] = []

    async def allow_all(request: web.Request) -> web.Response:
        asked.append(len(await request.read()))
        return web.json_response({"result": {"services": {"deny": []}}})

    app = web.Application()
    app.router.add_post("/v1/data/{path:.*}", allow_all)
    opa = await serve(app)
    cfg = {
        "policy": {"engine": "opa", "opa_url": f"http://{opa}", "max_input_bytes": 65536},
        "checks": {"rego": {"failure_mode": "allow"}},
    }
    extra = _DEEP if shape == "deep" else orjson.dumps("x" * 70_000)
    async with webhook(cfg) as hook:
        status, answer = await hook.post("/validate", _nodeport_review(extra))
        ok_status, ok_answer = await hook.post("/validate", _nodeport_review(b'"small"'))
    assert status == 200
    response = answer["response"]
    assert response["allowed"] is False, response
    assert ("cannot be encoded" if shape == "deep" else "65536") in response["status"]["message"]
    assert "internal error" not in response["status"]["message"]
    assert ok_status == 200
    assert ok_answer["response"]["allowed"] is True  # the same service, small: OPA is asked and allows it
    assert len(asked) == 1
