"""The Helm chart ``charts/portcullis``, rendered by real Helm.

Helm's Go SDK runs in-process (helm-python-sdk); there is no cluster, so ``lookup`` finds
nothing, as with ``helm template``. Every rendered object is validated offline against the
Kubernetes OpenAPI schemas (kubernetes-validate) of the oldest supported and the newest known
Kubernetes version; cert-manager objects against a schema of the fields the chart uses.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import ssl
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook import config as portcullis_config
from webhook.admission import certs as admission_certs
from webhook.admission import tls as admission_tls
from webhook.checks import pipeline as admission_pipeline
from webhook.core import workloads
from webhook.core.deadline import Deadline
from webhook.core.decision import CheckResult, FailureMode, Mode, Violation

pytestmark = pytest.mark.helm

CHART = Path(__file__).resolve().parents[2] / "charts" / "portcullis"
RELEASE = "pc"
NAMESPACE = "portcullis"
FULLNAME = "pc-portcullis"
# The chart's kubeVersion floor (matchConditions are GA in 1.30) and the newest schemas offline.
KUBE_VERSIONS = ("1.30", kubernetes_validate.latest_version())

# libyaml's loader when present: the tests parse a few hundred rendered documents.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SIGNING = {"existingSecret": "audit-key", "key": "signing.key"}
DIGEST = "sha256:" + "ab" * 32

# One entry per option the values offer; each must render, lint and validate.
OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "cert-manager-own-ca": {"tls": {"mode": "certManager"}},
    "cert-manager-cluster-issuer": {
        "tls": {"mode": "certManager", "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}
    },
    "hook-without-renewal": {"tls": {"mode": "hook", "hook": {"renewSchedule": ""}}},
    "audit-pvc": {"audit": {"enabled": True, "signingKey": SIGNING, "witnesses": ["https://w.example/"]}},
    "audit-existing-claim": {"audit": {"enabled": True, "signingKey": SIGNING, "pvc": {"existingClaim": "audit-data"}}},
    "audit-hostpath": {"audit": {"enabled": True, "storage": "hostPath", "signingKey": SIGNING}},
    "monitor-audit": {"audit": {"signingKey": SIGNING}, "monitor": {"audit": {"enabled": True}}},
    "monitor-off": {"monitor": {"enabled": False}},
    "monitor-legacy-kernel": {
        "monitor": {
            "capabilities": ["SYS_ADMIN", "SYS_RESOURCE", "SYS_PTRACE", "DAC_READ_SEARCH"],
            "seccompProfile": "Unconfined",
        }
    },
    "mutating-off": {"webhook": {"mutating": {"enabled": False}}},
    "validating-off": {"webhook": {"validating": {"enabled": False}}},
    "failure-ignore": {"webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 3, "marginSeconds": 0.25}},
    "pull-secrets-in-namespaces": {"rbac": {"pullSecretNamespaces": ["team-a", "team-b"]}},
    "no-pull-secrets": {"rbac": {"readPullSecrets": False}},
    "configmap-coordination": {"rbac": {"quotaCoordination": "configmaps"}},
    "image-digest": {"image": {"digest": DIGEST}, "imagePullSecrets": ["regcred"]},
    "hard-anti-affinity": {"webhook": {"antiAffinity": "hard", "replicas": 3, "priorityClassName": "high"}},
    "user-config": {
        "config": {
            "server": {"max_in_flight": 64},
            "checks": {"gpu": {"mode": "warn", "failure_mode": "allow"}},
            "exemptions": [{"namespaces": ["ml-infra"], "checks": ["gpu"], "reason": "capacity team"}],
            "namespaces": {"default": {"labels": {"team": "core"}}},
        }
    },
    "user-files": {
        "policies": {"files": {"deny_latest.rego": "package portcullis\n"}},
        "rules": {"files": {"extra_rules.yaml": "- list: extra\n  items: [a]\n"}, "useChartFiles": False},
    },
    "existing-configmaps": {"policies": {"existingConfigMap": "my-policies"}, "rules": {"existingConfigMap": "r"}},
    "selectors-and-conditions": {
        "webhook": {
            "excludeNamespaces": ["monitoring"],
            "namespaceSelectorExpressions": [{"key": "portcullis.dev/ignore", "operator": "DoesNotExist"}],
            "extraMatchConditions": [
                {"name": "not-node-users", "expression": "!request.userInfo.username.startsWith('system:node:')"}
            ],
        }
    },
    "include-release-namespace": {"webhook": {"includeReleaseNamespace": True}},
    "scan": {
        "scan": {
            "enabled": True,
            "excludeNamespaces": ["scratch"],
            "extraResources": [{"apiGroups": [""], "resources": ["configmaps"]}],
        }
    },
    "scan-existing-crds": {"scan": {"enabled": True, "installCRDs": False}},
    "client-auth-secret": {"webhook": {"clientAuth": {"enabled": True, "caSecret": "apiserver-client-ca"}}},
    "client-auth-configmap": {
        "webhook": {
            "healthPort": 9081,
            "service": {"port": 8443},
            "clientAuth": {"enabled": True, "caConfigMap": "apiserver-client-ca", "key": "bundle.pem"},
        }
    },
}


# --- rendering helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render_files(chart: helm.Chart, values: dict[str, Any] | None = None) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders (NOTES.txt left out)."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_files(chart, values).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.load_all(text, Loader=_YAML_LOADER) if doc)
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def rendered_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    cm = one(objects, "ConfigMap", f"{FULLNAME}-config")
    data: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    return data


def webhook_configs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kinds = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")
    return [w for o in objects if o["kind"] in kinds for w in o["webhooks"]]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    template = obj["spec"]["jobTemplate"]["spec"]["template"] if obj["kind"] == "CronJob" else obj["spec"]["template"]
    spec: dict[str, Any] = template["spec"]
    return spec


def render_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as info:
        render_files(chart, values)
    return str(info.value)


# --- schema validation ------------------------------------------------------------------------

_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"}
_OBJECT_META = {"type": "object", "required": ["name", "namespace"]}
_ISSUER_REF = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "kind": {"enum": ["Issuer", "ClusterIssuer"]},
        "group": {"type": "string"},
    },
}
# The cert-manager.io/v1 fields the chart uses (from the CRD's documented spec), strict.
CERT_MANAGER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Issuer": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _OBJECT_META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "selfSigned": {"type": "object", "additionalProperties": False},
                    "ca": {
                        "type": "object",
                        "required": ["secretName"],
                        "additionalProperties": False,
                        "properties": {"secretName": {"type": "string"}},
                    },
                },
            },
        },
    },
    "Certificate": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _OBJECT_META,
            "spec": {
                "type": "object",
                "required": ["secretName", "issuerRef"],
                "additionalProperties": False,
                "properties": {
                    "secretName": {"type": "string"},
                    "commonName": {"type": "string", "maxLength": 64},
                    "isCA": {"type": "boolean"},
                    "duration": _DURATION,
                    "renewBefore": _DURATION,
                    "dnsNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "usages": {
                        "type": "array",
                        "items": {"enum": ["server auth", "client auth", "digital signature", "key encipherment"]},
                    },
                    "privateKey": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "size": {"type": "integer"},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                        },
                    },
                    "issuerRef": _ISSUER_REF,
                },
            },
        },
    },
}


@pytest.fixture(scope="module")
def validated() -> set[tuple[str, str]]:
    """Objects already validated (many options render identical objects): keeps the run short."""
    return set()


def validate_object(obj: dict[str, Any], seen: set[tuple[str, str]]) -> None:
    if obj["apiVersion"] == "cert-manager.io/v1":
        jsonschema.validate(obj, CERT_MANAGER_SCHEMAS[obj["kind"]])
        return
    canonical = json.dumps(obj, sort_keys=True)
    for version in KUBE_VERSIONS:
        if (version, canonical) in seen:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version} at {where}: {exc.message}"
            )
        seen.add((version, canonical))


# --- every option: renders, validates, lints, yields a valid Portcullis config -----------------


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_option_renders_objects_valid_for_kubernetes(
    chart: helm.Chart, validated: set[tuple[str, str]], option: str
) -> None:
    objects = render(chart, OPTIONS[option])
    assert objects
    for obj in objects:
        validate_object(obj, validated)
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        names = obj["metadata"]["name"]
        assert len(names) <= 253


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_option_renders_a_config_portcullis_accepts(chart: helm.Chart, option: str) -> None:
    config = portcullis_config.parse(rendered_config(render(chart, OPTIONS[option])), source="config.yaml")
    assert config.server.listen == "0.0.0.0:8443"
    assert config.server.tls_cert == "/etc/portcullis/tls/tls.crt"


@pytest.mark.parametrize(
    "option", ["default", "cert-manager-own-ca", "audit-pvc", "monitor-off", "user-config", "client-auth-secret"]
)
def test_lint_finds_nothing_wrong(option: str) -> None:
    report = helm.lint(CHART, OPTIONS[option], strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_lint_as_users_run_it_without_a_namespace_is_clean() -> None:
    report = helm.lint(CHART, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_packaged_chart_renders_like_the_directory(chart: helm.Chart, tmp_path: Path) -> None:
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load(archive) as packaged:
        assert packaged.render(None, name=RELEASE, namespace=NAMESPACE) == chart.render(
            None, name=RELEASE, namespace=NAMESPACE
        )
        names = {f["name"] for f in packaged.files}
    assert "files/rules/portcullis_rules.yaml" in names
    assert "README.md" in names


def test_rendering_is_deterministic(chart: helm.Chart) -> None:
    assert render_files(chart, OPTIONS["audit-pvc"]) == render_files(chart, OPTIONS["audit-pvc"])


# --- values.schema.json ----------------------------------------------------------------------

BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"webhook": {"failurePolicy": "Sometimes"}}, "/webhook/failurePolicy"),
    ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
    ({"webhook": {"timeoutSeconds": "5"}}, "/webhook/timeoutSeconds"),
    ({"webhook": {"replicas": 0}}, "/webhook/replicas"),
    ({"webhook": {"marginSeconds": 0}}, "/webhook/marginSeconds"),
    ({"webhook": {"port": 443}}, "/webhook/port"),
    ({"webhook": {"runAsUser": 0}}, "/webhook/runAsUser"),
    ({"webhook": {"replica": 2}}, "additional properties 'replica' not allowed"),
    ({"webhook": {"mutating": {"reinvocationPolicy": "Always"}}}, "/webhook/mutating/reinvocationPolicy"),
    ({"webhook": {"validating": {"sideEffects": "Some"}}}, "/webhook/validating/sideEffects"),
    ({"webhook": {"excludeNamespaces": ["Kube_System"]}}, "/webhook/excludeNamespaces/0"),
    ({"tls": {"mode": "selfsigned"}}, "/tls/mode"),
    ({"tls": {"certManager": {"renewBefore": "30 days"}}}, "/tls/certManager/renewBefore"),
    ({"tls": {"certManager": {"issuerRef": {"kind": "ClusterIssuer"}}}}, "missing property 'name'"),
    ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
    ({"audit": {"enabled": True}}, "/audit/signingKey/existingSecret"),
    ({"monitor": {"audit": {"enabled": True}}}, "/audit/signingKey/existingSecret"),
    ({"audit": {"storage": "s3"}}, "/audit/storage"),
    ({"monitor": {"capabilities": ["ALL"]}}, "/monitor/capabilities/0"),
    ({"monitor": {"seccompProfile": "Localhost"}}, "/monitor/seccompProfile"),
    ({"rbac": {"quotaCoordination": "etcd"}}, "/rbac/quotaCoordination"),
    ({"config": {"chekcs": {}}}, "additional properties 'chekcs' not allowed"),
    ({"config": {"checks": {"gpu": {"mode": "deny"}}}}, "/config/checks/gpu/mode"),
    ({"config": {"checks": {"signatures": {}}}}, "/config/checks"),
    ({"rules": {"files": {"../escape.yaml": "x"}}}, "/rules/files"),
    ({"webhook": {"healthPort": 80}}, "/webhook/healthPort"),
    ({"webhook": {"clientAuth": {"enabled": "yes"}}}, "/webhook/clientAuth/enabled"),
    ({"webhook": {"clientAuth": {"caSecret": "Client_CA"}}}, "/webhook/clientAuth/caSecret"),
    ({"webhook": {"clientAuth": {"key": "../ca.crt"}}}, "/webhook/clientAuth/key"),
    ({"webhook": {"clientAuth": {"ca": "x"}}}, "additional properties 'ca' not allowed"),
    (
        {"config": {"exemptions": [{"service_accounts": ["ci"], "checks": ["gpu"], "reason": "r"}]}},
        "'namespaces' required, if 'service_accounts' exists",
    ),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_schema_rejects_bad_values_naming_the_key(chart: helm.Chart, values: dict[str, Any], where: str) -> None:
    message = render_error(chart, values)
    assert "values don't meet the specifications of the schema" in message
    assert where in message


CROSS_FIELD: list[tuple[dict[str, Any], str]] = [
    ({"webhook": {"timeoutSeconds": 2, "marginSeconds": 2}}, "webhook.marginSeconds (2) must be less than"),
    ({"tls": {"hook": {"validityDays": 30, "renewBeforeDays": 30}}}, "tls.hook.renewBeforeDays (30) must be less"),
    ({"config": {"server": {"listen": "0.0.0.0:9"}}}, "config.server.listen is set by the chart; use webhook.port"),
    ({"config": {"server": {"timeout_seconds": 9}}}, "use webhook.timeoutSeconds"),
    (
        {"audit": {"enabled": True, "signingKey": SIGNING}, "config": {"audit": {"directory": "/x"}}},
        "config.audit.directory is set by the chart",
    ),
    (
        {"webhook": {"validating": {"enabled": False}, "mutating": {"enabled": False}}, "monitor": {"enabled": False}},
        "nothing to install",
    ),
    ({"rules": {"useChartFiles": False}}, "monitor.enabled is true but it has no rules"),
    ({"webhook": {"clientAuth": {"enabled": True}}}, "set exactly one of webhook.clientAuth.caSecret or"),
    (
        {"webhook": {"clientAuth": {"enabled": True, "caSecret": "a", "caConfigMap": "b"}}},
        "webhook.clientAuth.enabled is true: set exactly one of",
    ),
    (
        {"webhook": {"healthPort": 8443, "clientAuth": {"enabled": True, "caSecret": "a"}}},
        "webhook.healthPort (8443) must differ from webhook.port",
    ),
    ({"config": {"server": {"client_ca": "/ca.pem"}}}, "config.server.client_ca is set by the chart"),
    ({"config": {"server": {"health_listen": "0.0.0.0:8081"}}}, "config.server.health_listen is set by the chart"),
    (
        {"config": {"quota": {"coordination": "local"}}},
        "config.quota.coordination is local but webhook.replicas is 2",
    ),
]


@pytest.mark.parametrize(("values", "message"), CROSS_FIELD, ids=[m[:40] for _, m in CROSS_FIELD])
def test_values_that_contradict_each_other_fail_with_a_clear_message(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    error = render_error(chart, values)
    assert message in error
    assert "Traceback" not in error


def test_lint_reports_a_schema_violation_as_an_error() -> None:
    report = helm.lint(CHART, {"webhook": {"failurePolicy": "Sometimes"}}, namespace=NAMESPACE)
    assert any("/webhook/failurePolicy" in e for e in report["errors"])


# --- webhook configurations -------------------------------------------------------------------


def test_webhooks_never_see_kube_system_or_their_own_namespace(chart: helm.Chart) -> None:
    hooks = webhook_configs(render(chart))
    assert len(hooks) == 2
    for hook in hooks:
        (expr,) = hook["namespaceSelector"]["matchExpressions"]
        assert expr == {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", NAMESPACE]}
        (condition,) = hook["matchConditions"]
        assert condition["expression"] == f'!(request.namespace in ["kube-system","{NAMESPACE}"])'


def test_excluded_namespaces_extend_the_defaults_and_extra_conditions_follow(chart: helm.Chart) -> None:
    for hook in webhook_configs(render(chart, OPTIONS["selectors-and-conditions"])):
        expressions = hook["namespaceSelector"]["matchExpressions"]
        assert expressions[0]["values"] == ["kube-system", NAMESPACE, "monitoring"]
        assert expressions[1] == {"key": "portcullis.dev/ignore", "operator": "DoesNotExist"}
        names = [c["name"] for c in hook["matchConditions"]]
        assert names == ["exclude-system-namespaces", "not-node-users"]
        assert '"monitoring"' in hook["matchConditions"][0]["expression"]


def test_including_the_release_namespace_is_explicit_and_warned_about(chart: helm.Chart) -> None:
    values = OPTIONS["include-release-namespace"]
    for hook in webhook_configs(render(chart, values)):
        assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["kube-system"]
    assert (
        "WARNING: webhook.includeReleaseNamespace=true" in render_files(chart, values)["portcullis/templates/NOTES.txt"]
    )


def test_webhook_rules_cover_pods_ephemeral_containers_and_every_workload_kind(chart: helm.Chart) -> None:
    kinds = {
        "pods": "Pod",
        "pods/ephemeralcontainers": "Pod",
        "replicationcontrollers": "ReplicationController",
        "podtemplates": "PodTemplate",  # Pod Security Admission judges them too (warn and audit)
        "deployments": "Deployment",
        "replicasets": "ReplicaSet",
        "statefulsets": "StatefulSet",
        "daemonsets": "DaemonSet",
        "jobs": "Job",
        "cronjobs": "CronJob",
    }
    for hook in webhook_configs(render(chart)):
        resources = {r for rule in hook["rules"] for r in rule["resources"]}
        assert resources == set(kinds)
        for rule in hook["rules"]:
            assert rule["operations"] == ["CREATE", "UPDATE"]
            assert rule["scope"] == "Namespaced"
    # Every kind sent to the webhook is one the pipeline can find pod specs in.
    assert all(workloads.carries_pod_spec(kind) for kind in kinds.values())


def test_webhook_settings_are_safe_by_default(chart: helm.Chart) -> None:
    objects = render(chart)
    validating = one(objects, "ValidatingWebhookConfiguration")["webhooks"][0]
    mutating = one(objects, "MutatingWebhookConfiguration")["webhooks"][0]
    for hook in (validating, mutating):
        assert hook["failurePolicy"] == "Fail"
        assert hook["matchPolicy"] == "Equivalent"
        assert hook["timeoutSeconds"] <= 5
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["clientConfig"]["service"] == {
            "name": FULLNAME,
            "namespace": NAMESPACE,
            "path": "/validate" if hook is validating else "/mutate",
            "port": 443,
        }
    # The validating webhook appends to the audit log and reserves GPUs, but never on dry runs.
    assert validating["sideEffects"] == "NoneOnDryRun"
    assert mutating["sideEffects"] == "None"
    assert mutating["reinvocationPolicy"] == "IfNeeded"
    assert "reinvocationPolicy" not in validating


def test_failure_policy_comes_from_values_and_can_differ_per_webhook(chart: helm.Chart) -> None:
    hooks = webhook_configs(render(chart, OPTIONS["failure-ignore"]))
    assert [h["failurePolicy"] for h in hooks] == ["Ignore", "Ignore"]
    values = {"webhook": {"mutating": {"failurePolicy": "Ignore"}}}
    objects = render(chart, values)
    assert one(objects, "ValidatingWebhookConfiguration")["webhooks"][0]["failurePolicy"] == "Fail"
    assert one(objects, "MutatingWebhookConfiguration")["webhooks"][0]["failurePolicy"] == "Ignore"


@pytest.mark.parametrize(("timeout", "margin"), [(5, 0.5), (3, 0.25), (10, 1), (1, 0.2)])
def test_server_deadline_is_derived_from_the_webhook_timeout(chart: helm.Chart, timeout: int, margin: float) -> None:
    objects = render(chart, {"webhook": {"timeoutSeconds": timeout, "marginSeconds": margin}})
    assert {h["timeoutSeconds"] for h in webhook_configs(objects)} == {timeout}
    server = portcullis_config.parse(rendered_config(objects)).server
    assert server.timeout_seconds == timeout
    assert server.budget_seconds == pytest.approx(max(0.05, timeout - margin))
    assert server.budget_seconds < timeout


def test_disabled_webhooks_are_not_rendered(chart: helm.Chart) -> None:
    assert not find(render(chart, OPTIONS["mutating-off"]), "MutatingWebhookConfiguration")
    objects = render(chart, OPTIONS["validating-off"])
    assert not find(objects, "ValidatingWebhookConfiguration")
    (patch,) = [o for o in find(objects, "Job") if o["metadata"]["name"].endswith("-patch")]
    args = pod_spec(patch)["containers"][0]["args"]
    assert args[args.index("--k8s-webhooks") + 1] == f"{FULLNAME}.{NAMESPACE}.mutate.portcullis.dev"


# --- TLS ----------------------------------------------------------------------------------------


def _go_duration_hours(text: str) -> float:
    units = {"h": 1.0, "m": 1 / 60, "s": 1 / 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(h|m|s)", text))


def test_cert_manager_issues_for_the_service_name_and_injects_the_ca(chart: helm.Chart) -> None:
    objects = render(chart, OPTIONS["cert-manager-own-ca"])
    assert not find(objects, "Job")
    assert not find(objects, "CronJob")
    serving = one(objects, "Certificate", FULLNAME)["spec"]
    assert f"{FULLNAME}.{NAMESPACE}.svc" in serving["dnsNames"]
    assert serving["secretName"] == f"{FULLNAME}-tls"
    assert serving["issuerRef"] == {"name": f"{FULLNAME}-ca", "kind": "Issuer", "group": "cert-manager.io"}
    # Renewal well before expiry: a third of the lifetime ahead.
    assert _go_duration_hours(serving["renewBefore"]) >= _go_duration_hours(serving["duration"]) / 3
    ca = one(objects, "Certificate", f"{FULLNAME}-ca")["spec"]
    assert ca["isCA"] is True
    assert one(objects, "Issuer", f"{FULLNAME}-ca")["spec"] == {"ca": {"secretName": ca["secretName"]}}
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        meta = one(objects, kind)["metadata"]
        assert meta["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{FULLNAME}"


def test_cert_manager_uses_the_given_issuer_instead_of_its_own(chart: helm.Chart) -> None:
    objects = render(chart, OPTIONS["cert-manager-cluster-issuer"])
    assert not find(objects, "Issuer")
    serving = one(objects, "Certificate")["spec"]
    assert serving["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}


def test_hook_mode_creates_the_secret_first_then_patches_ca_bundles_and_renews(chart: helm.Chart) -> None:
    objects = render(chart)
    assert not find(objects, "Certificate")
    jobs = {o["metadata"]["name"]: o for o in find(objects, "Job")}
    pre, post = jobs[f"{FULLNAME}-certgen"], jobs[f"{FULLNAME}-certgen-patch"]
    assert pre["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert post["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    # The pre-install Job's RBAC exists before it runs (lower hook weight) and covers the Secret only.
    pre_sa = pod_spec(pre)["serviceAccountName"]
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        hooked = one(objects, kind, pre_sa)["metadata"]["annotations"]
        assert int(hooked["helm.sh/hook-weight"]) < int(pre["metadata"]["annotations"]["helm.sh/hook-weight"])
    cron = one(objects, "CronJob", f"{FULLNAME}-certgen-renew")
    assert cron["spec"]["schedule"] == "17 3 * * 1"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    secret = f"{NAMESPACE}/{FULLNAME}-tls"
    webhooks = f"{FULLNAME}.{NAMESPACE}.validate.portcullis.dev,{FULLNAME}.{NAMESPACE}.mutate.portcullis.dev"
    for obj, patches in ((pre, False), (post, True), (cron, True)):
        args = pod_spec(obj)["containers"][0]["args"]
        assert args[0] == "certs"
        assert args[args.index("--dns") + 1] == f"{FULLNAME}.{NAMESPACE}.svc"
        assert args[args.index("--k8s-secret") + 1] == secret
        assert ("--k8s-webhooks" in args) is patches
        if patches:
            assert args[args.index("--k8s-webhooks") + 1] == webhooks
        assert int(args[args.index("--renew-before-days") + 1]) < int(args[args.index("--validity-days") + 1])
    assert not find(render(chart, OPTIONS["hook-without-renewal"]), "CronJob")


def test_the_service_dns_name_is_the_one_the_apiserver_calls(chart: helm.Chart) -> None:
    objects = render(chart)
    service = one(objects, "Service", FULLNAME)
    hook = webhook_configs(objects)[0]["clientConfig"]["service"]
    assert (hook["name"], hook["namespace"]) == (service["metadata"]["name"], service["metadata"]["namespace"])
    assert hook["port"] == service["spec"]["ports"][0]["port"]
    container = pod_spec(one(objects, "Deployment"))["containers"][0]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    assert (
        service["spec"]["selector"].items()
        <= one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )


def test_certificates_are_mounted_so_renewals_reach_the_running_server(chart: helm.Chart) -> None:
    for option in ("default", "cert-manager-own-ca"):
        deployment = one(render(chart, OPTIONS[option]), "Deployment")
        container = pod_spec(deployment)["containers"][0]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
        # A subPath mount would pin the first certificate forever; the directory mount is updated.
        assert "subPath" not in mount
        args = container["args"]
        assert args[: args.index("--tls-key") + 2] == [
            "serve",
            "--config",
            "/etc/portcullis/config.yaml",
            "--listen",
            "0.0.0.0:8443",
            "--tls-cert",
            f"{mount['mountPath']}/tls.crt",
            "--tls-key",
            f"{mount['mountPath']}/tls.key",
        ]
        (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == f"{FULLNAME}-tls"


# --- webhook Deployment: availability and the restricted profile ------------------------------


def test_deployment_stays_available_through_drains_and_rollouts(chart: helm.Chart) -> None:
    objects = render(chart)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = pod_spec(deployment)
    term = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1
    container = spec["containers"][0]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}
    hard = pod_spec(one(render(chart, OPTIONS["hard-anti-affinity"]), "Deployment"))["affinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in hard["podAntiAffinity"]


def test_config_changes_roll_the_pods(chart: helm.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        template = one(render(chart, values), "Deployment")["spec"]["template"]
        return str(template["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum(OPTIONS["user-config"])


_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """The Pod Security Standards `restricted` controls (latest), as an independent test oracle."""
    problems: list[str] = []
    pod_sc = spec.get("securityContext", {})
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            problems.append(host)
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {kinds}")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    if pod_sc.get("seccompProfile", {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        problems.append("pod seccomp")
    containers = [c for f in workloads.CONTAINER_FIELDS for c in spec.get(f, [])]
    for c in containers:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


@pytest.mark.parametrize(
    "option",
    ["default", "cert-manager-own-ca", "audit-pvc", "image-digest", "client-auth-secret", "client-auth-configmap"],
)
def test_webhook_and_certificate_jobs_meet_the_restricted_profile(chart: helm.Chart, option: str) -> None:
    objects = render(chart, OPTIONS[option])
    workloads_ = [o for o in objects if o["kind"] in ("Deployment", "Job", "CronJob")]
    assert workloads_
    for obj in workloads_:
        spec = pod_spec(obj)
        assert restricted_violations(spec) == [], obj["metadata"]["name"]
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_oracle_sees_the_monitor_break_the_restricted_profile(chart: helm.Chart) -> None:
    problems = restricted_violations(pod_spec(one(render(chart), "DaemonSet")))
    assert "hostPID" in problems
    assert any("adds capabilities" in p for p in problems)
    hostpath = pod_spec(one(render(chart, OPTIONS["audit-hostpath"]), "Deployment"))
    assert any(p.startswith("volume audit") for p in restricted_violations(hostpath))


def _privilege() -> Any:
    from webhook.checks import privilege

    if not hasattr(privilege, "evaluate"):
        pytest.skip("webhook.checks.privilege has no evaluate() yet (its issue has not landed)")
    return privilege


@pytest.mark.parametrize("option", ["default", "cert-manager-own-ca", "audit-pvc", "client-auth-secret"])
def test_webhook_and_jobs_pass_portcullis_own_restricted_check(chart: helm.Chart, option: str) -> None:
    privilege = _privilege()
    objects = render(chart, OPTIONS[option])
    for obj in (o for o in objects if o["kind"] in ("Deployment", "Job", "CronJob")):
        violations = privilege.evaluate(workloads.pod_specs(obj), "restricted", "latest")
        assert violations == [], [v.describe() for v in violations]
    # Beyond restricted: read-only root, a named service account, a pinned image tag.
    deployment = one(objects, "Deployment")
    hardened = ["readOnlyRootFilesystem", "defaultServiceAccount", "imageTag"]
    assert privilege.evaluate(workloads.pod_specs(deployment), "hardened", hardened_checks=hardened) == []


def test_portcullis_own_check_sees_what_the_monitor_needs(chart: helm.Chart) -> None:
    privilege = _privilege()
    daemonset = one(render(chart), "DaemonSet")
    found = {v.message.split(":")[0] for v in privilege.evaluate(workloads.pod_specs(daemonset), "baseline")}
    assert found, "the monitor's host PID and capabilities must show up at baseline"


def _portcullis_check(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from webhook import cli

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "check" not in commands.choices:
        pytest.skip("`portcullis check` is not registered yet")
    code = cli.main(["check", *args])
    return code, capsys.readouterr().out


def _write(path: Path, objects: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(objects), encoding="utf-8")
    return path


@pytest.mark.parametrize("option", ["default", "client-auth-secret", "client-auth-configmap"])
def test_portcullis_check_restricted_passes_the_rendered_webhook_deployment(
    chart: helm.Chart, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str
) -> None:
    deployment = _write(tmp_path / "deployment.yaml", [one(render(chart, OPTIONS[option]), "Deployment")])
    code, out = _portcullis_check(
        ["--level", "restricted", "--skip", "images", "--format", "json", str(deployment)], capsys
    )
    assert code == 0, out


def test_portcullis_check_restricted_passes_the_whole_chart_only_through_the_monitor_exemption(
    chart: helm.Chart, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rendered config's scoped exemption is what admits the monitor; without it, it is denied."""
    objects = render(chart)
    manifests = _write(tmp_path / "chart.yaml", objects)
    config = tmp_path / "config.yaml"
    config.write_text(one(objects, "ConfigMap", f"{FULLNAME}-config")["data"]["config.yaml"], encoding="utf-8")
    code, out = _portcullis_check(
        ["--level", "restricted", "--skip", "images", "--config", str(config), str(manifests)], capsys
    )
    assert code == 0, out
    code, out = _portcullis_check(["--level", "restricted", "--skip", "images", str(manifests)], capsys)
    assert code == 1
    assert f"{FULLNAME}-monitor" in out


# --- monitor ----------------------------------------------------------------------------------


def test_monitor_holds_only_the_privileges_bpftrace_needs(chart: helm.Chart) -> None:
    daemonset = one(render(chart), "DaemonSet")
    spec = pod_spec(daemonset)
    assert spec["hostPID"] is True
    assert not spec.get("hostNetwork")
    assert not spec.get("hostIPC")
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["capabilities"]["add"] == ["BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE", "DAC_READ_SEARCH"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert host_paths == {"tracefs": "/sys/kernel/tracing", "debugfs": "/sys/kernel/debug"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert all(mounts[name].get("readOnly") for name in host_paths)
    args = container["args"]
    assert args[:9] == ["monitor", "--config", "/etc/portcullis/config.yaml", "--rules", "/etc/portcullis/rules",
                        "--source", "ebpf", "--output", "stdout"]  # fmt: skip
    assert args[args.index("--metrics-listen") + 1] == "0.0.0.0:9376"
    assert "--audit-log" not in args
    assert mounts["rules"]["mountPath"] == "/etc/portcullis/rules"


def test_monitor_runs_on_every_node_with_a_node_critical_priority(chart: helm.Chart) -> None:
    spec = pod_spec(one(render(chart), "DaemonSet"))
    assert spec["tolerations"] == [{"operator": "Exists"}]  # every taint: GPU, control plane, pressure
    assert spec["priorityClassName"] == "system-node-critical"
    gpu_only = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    extra = [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    spec = pod_spec(one(render(chart, {"monitor": {"tolerations": gpu_only, "extraTolerations": extra}}), "DaemonSet"))
    assert spec["tolerations"] == gpu_only + extra
    assert "priorityClassName" not in pod_spec(one(render(chart, {"monitor": {"priorityClassName": ""}}), "DaemonSet"))


def test_monitor_is_ready_only_when_events_flow_and_reads_the_kubelet_with_a_projected_token(
    chart: helm.Chart,
) -> None:
    spec = pod_spec(one(render(chart), "DaemonSet"))
    (container,) = spec["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    args = container["args"]
    assert args[args.index("--kubelet") + 1] == "https://$(NODE_IP):10250"
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert spec["automountServiceAccountToken"] is False  # the token is mounted for the kubelet only
    (token,) = [v for v in spec["volumes"] if v["name"] == "kubelet-token"]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] == 3600
    insecure = render(chart, {"monitor": {"kubelet": {"insecureSkipTLSVerify": True}}})
    args = pod_spec(one(insecure, "DaemonSet"))["containers"][0]["args"]
    assert "--kubelet-insecure" in args
    assert "--kubelet-ca" not in args
    off = pod_spec(one(render(chart, {"monitor": {"kubelet": {"enabled": False}}}), "DaemonSet"))
    assert "--kubelet" not in off["containers"][0]["args"]
    assert "kubelet-token" not in {v["name"] for v in off["volumes"]}


def test_monitor_audit_log_is_on_the_node_with_the_key_from_a_secret(chart: helm.Chart) -> None:
    spec = pod_spec(one(render(chart, OPTIONS["monitor-audit"]), "DaemonSet"))
    args = spec["containers"][0]["args"]
    assert args[args.index("--audit-log") + 1] == "/var/lib/portcullis/monitor-audit"
    assert args[args.index("--audit-key") + 1] == "/etc/portcullis/audit-key/signing.key"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["audit"]["hostPath"]["path"] == "/var/lib/portcullis/monitor-audit"
    assert volumes["audit-key"]["secret"]["secretName"] == "audit-key"


def test_monitor_exemption_is_explicit_and_scoped(chart: helm.Chart) -> None:
    config = rendered_config(render(chart))
    (exemption,) = config["exemptions"]
    assert exemption["namespaces"] == [NAMESPACE]
    assert exemption["checks"] == ["privilege"]
    assert f"service account {FULLNAME}-monitor" in exemption["reason"]
    assert "exemptions" not in rendered_config(render(chart, OPTIONS["monitor-off"]))
    assert "exemptions" not in rendered_config(render(chart, {"monitor": {"exemption": False}}))
    # The user's exemptions follow the chart's, never replace it.
    user = rendered_config(render(chart, OPTIONS["user-config"]))["exemptions"]
    assert [e["namespaces"] for e in user] == [[NAMESPACE], ["ml-infra"]]


class _AlwaysViolates:
    """Stands in for a check the monitor would fail, to drive the real pipeline's exemptions."""

    does_io = False
    failure_mode = FailureMode.DENY
    default_mode = Mode.ENFORCE

    def __init__(self, check_id: str) -> None:
        self.id = check_id

    async def run(self, pods: Any, ctx: Any) -> CheckResult:
        return CheckResult(violations=[Violation(self.id, "host PID namespace")])


async def test_rendered_exemption_spares_the_monitor_from_the_privilege_check_only(chart: helm.Chart) -> None:
    objects = render(chart)
    config = portcullis_config.parse(rendered_config(objects))
    pipe = admission_pipeline.Pipeline(config, [_AlwaysViolates("privilege"), _AlwaysViolates("images")])
    daemonset = one(objects, "DaemonSet")

    async def verdict(namespace: str) -> Any:
        subject = admission_pipeline.Subject("CREATE", "DaemonSet", namespace, "m", daemonset)
        return (await pipe.evaluate(subject, Deadline.after(5))).verdict

    in_release = await verdict(NAMESPACE)
    assert [f.violation.check for f in in_release.findings] == ["images"]
    assert "runtime monitor" in in_release.exempt_reason
    elsewhere = await verdict("default")
    assert sorted(f.violation.check for f in elsewhere.findings) == ["images", "privilege"]


# --- RBAC ---------------------------------------------------------------------------------------


def _grants(objects: list[dict[str, Any]], service_account: str) -> set[tuple[str, str, str, str]]:
    """(namespace or '*', apiGroup, resource, verb) the service account is granted."""
    roles = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in objects
        if o["kind"] in ("Role", "ClusterRole")
    }
    grants: set[tuple[str, str, str, str]] = set()
    for binding in find(objects, "RoleBinding") + find(objects, "ClusterRoleBinding"):
        if not any(s["name"] == service_account for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        role_ns = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_ns, ref["name"])]
        scope = binding["metadata"].get("namespace", "*")
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        grants.add((scope, group, resource, verb))
    return grants


def test_webhook_rbac_is_least_privilege(chart: helm.Chart) -> None:
    objects = render(chart)
    assert _grants(objects, FULLNAME) == {
        ("*", "", "pods", "list"),
        ("*", "", "pods", "watch"),
        ("*", "", "namespaces", "get"),
        ("*", "", "namespaces", "list"),
        ("*", "", "namespaces", "watch"),
        ("*", "node.k8s.io", "runtimeclasses", "list"),
        ("*", "resource.k8s.io", "resourceclaims", "get"),
        ("*", "resource.k8s.io", "resourceclaimtemplates", "get"),
        ("*", "", "secrets", "get"),
        (NAMESPACE, "", "configmaps", "get"),
        (NAMESPACE, "", "configmaps", "create"),
        (NAMESPACE, "", "configmaps", "update"),
    }
    for role in find(objects, "Role") + find(objects, "ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    # The monitor: only its node's kubelet /pods (fine-grained kubelet authorization).
    assert _grants(objects, f"{FULLNAME}-monitor") == {("*", "", "nodes/pods", "get")}
    legacy = render(chart, {"monitor": {"kubelet": {"grantNodesProxy": True}}})
    assert _grants(legacy, f"{FULLNAME}-monitor") == {("*", "", "nodes/pods", "get"), ("*", "", "nodes/proxy", "get")}
    assert _grants(render(chart, {"monitor": {"kubelet": {"enabled": False}}}), f"{FULLNAME}-monitor") == set()


def test_pull_secret_reading_can_be_limited_to_namespaces_or_off(chart: helm.Chart) -> None:
    grants = _grants(render(chart, OPTIONS["pull-secrets-in-namespaces"]), FULLNAME)
    assert {g for g in grants if g[2] == "secrets"} == {
        ("team-a", "", "secrets", "get"),
        ("team-b", "", "secrets", "get"),
    }
    assert not {g for g in _grants(render(chart, OPTIONS["no-pull-secrets"]), FULLNAME) if g[2] == "secrets"}
    coordination = _grants(render(chart, OPTIONS["configmap-coordination"]), FULLNAME)
    assert {g for g in coordination if g[0] == NAMESPACE} == {
        (NAMESPACE, "", "configmaps", v) for v in ("get", "create", "update")
    }


def test_certificate_job_may_touch_only_its_secret_and_the_two_webhooks(chart: helm.Chart) -> None:
    objects = render(chart)
    cluster_role = one(objects, "ClusterRole", f"{FULLNAME}-certgen")
    names = {n for rule in cluster_role["rules"] for n in rule["resourceNames"]}
    assert names == {f"{FULLNAME}.{NAMESPACE}.validate.portcullis.dev", f"{FULLNAME}.{NAMESPACE}.mutate.portcullis.dev"}
    for role in (one(objects, "Role", f"{FULLNAME}-certgen"), one(objects, "Role", f"{FULLNAME}-certgen-hook")):
        named = [r for r in role["rules"] if "resourceNames" in r]
        assert [r["resourceNames"] for r in named] == [[f"{FULLNAME}-tls"]]
        unnamed = [r for r in role["rules"] if "resourceNames" not in r]
        assert [r["verbs"] for r in unnamed] == [["create"]]  # create cannot be limited by name


# --- config, policies, rules, audit ----------------------------------------------------------


def test_user_config_is_passed_through_verbatim(chart: helm.Chart) -> None:
    config = rendered_config(render(chart, OPTIONS["user-config"]))
    assert config["server"]["max_in_flight"] == 64
    assert config["checks"] == {"gpu": {"mode": "warn", "failure_mode": "allow"}}
    assert config["namespaces"] == {"default": {"labels": {"team": "core"}}}
    parsed = portcullis_config.parse(config)
    assert parsed.server.max_in_flight == 64


def test_audit_log_lives_on_a_volume_with_one_directory_per_pod(chart: helm.Chart) -> None:
    objects = render(chart, OPTIONS["audit-pvc"])
    config = rendered_config(objects)
    assert config["audit"] == {
        "directory": "/var/lib/portcullis/audit",
        "signing_key": "/etc/portcullis/audit-key/signing.key",
        "witnesses": ["https://w.example/"],
    }
    spec = pod_spec(one(objects, "Deployment"))
    container = spec["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["audit"]["mountPath"] == config["audit"]["directory"]
    assert mounts["audit"]["subPathExpr"] == "$(POD_NAME)"
    assert any(e["name"] == "POD_NAME" for e in container["env"])
    assert mounts["audit-key"]["mountPath"] + "/signing.key" == config["audit"]["signing_key"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = one(objects, "PersistentVolumeClaim")
    assert volumes["audit"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert volumes["audit-key"]["secret"]["secretName"] == "audit-key"
    existing = render(chart, OPTIONS["audit-existing-claim"])
    assert not find(existing, "PersistentVolumeClaim")
    volume = [v for v in pod_spec(one(existing, "Deployment"))["volumes"] if v["name"] == "audit"]
    assert volume[0]["persistentVolumeClaim"]["claimName"] == "audit-data"
    hostpath = [
        v
        for v in pod_spec(one(render(chart, OPTIONS["audit-hostpath"]), "Deployment"))["volumes"]
        if v["name"] == "audit"
    ]
    assert hostpath[0]["hostPath"]["path"] == "/var/lib/portcullis/audit"


def test_no_audit_volume_or_config_when_audit_is_off(chart: helm.Chart) -> None:
    objects = render(chart)
    assert "audit" not in rendered_config(objects)
    names = {v["name"] for v in pod_spec(one(objects, "Deployment"))["volumes"]}
    assert names == {"config", "tls", "tmp"}


def test_policies_and_rules_come_from_the_chart_or_the_user(chart: helm.Chart) -> None:
    objects = render(chart)
    rules = one(objects, "ConfigMap", f"{FULLNAME}-rules")
    assert set(rules["data"]) == {"portcullis_rules.yaml"}
    assert not find(objects, "ConfigMap", f"{FULLNAME}-policies")  # the chart ships no policy

    objects = render(chart, OPTIONS["user-files"])
    assert set(one(objects, "ConfigMap", f"{FULLNAME}-rules")["data"]) == {"extra_rules.yaml"}
    policies = one(objects, "ConfigMap", f"{FULLNAME}-policies")
    assert policies["data"] == {"deny_latest.rego": "package portcullis\n"}
    mounts = {m["name"]: m["mountPath"] for m in pod_spec(one(objects, "Deployment"))["containers"][0]["volumeMounts"]}
    assert mounts["policies"] == "/etc/portcullis/policies"

    objects = render(chart, OPTIONS["existing-configmaps"])
    assert not find(objects, "ConfigMap", f"{FULLNAME}-rules")
    volumes = {v["name"]: v for v in pod_spec(one(objects, "Deployment"))["volumes"]}
    assert volumes["policies"]["configMap"]["name"] == "my-policies"
    monitor_volumes = {v["name"]: v for v in pod_spec(one(objects, "DaemonSet"))["volumes"]}
    assert monitor_volumes["rules"]["configMap"]["name"] == "r"


def test_chart_rules_load_in_the_rules_engine(chart: helm.Chart, tmp_path: Path) -> None:
    try:
        from webhook.runtime import rules as rules_engine
        from webhook.runtime.rules import loader  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the Falco rules loader is not there yet ({exc})")
    data = one(render(chart), "ConfigMap", f"{FULLNAME}-rules")["data"]
    paths = []
    for name, text in data.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    ruleset = rules_engine.load(paths)
    assert ruleset is not None


def test_image_is_pinned_by_digest_when_given(chart: helm.Chart) -> None:
    objects = render(chart, OPTIONS["image-digest"])
    images = {
        c["image"]
        for o in objects
        if o["kind"] in ("Deployment", "DaemonSet", "Job", "CronJob")
        for c in pod_spec(o)["containers"]
    }
    assert images == {f"ghcr.io/portcullis-dev/portcullis@{DIGEST}"}
    assert pod_spec(one(objects, "Deployment"))["imagePullSecrets"] == [{"name": "regcred"}]
    default = {c["image"] for c in pod_spec(one(render(chart), "Deployment"))["containers"]}
    assert default == {f"ghcr.io/portcullis-dev/portcullis:{chart.metadata['appVersion']}"}


def test_notes_tell_how_to_check_the_install(chart: helm.Chart) -> None:
    notes = render_files(chart)["portcullis/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{FULLNAME}" in notes
    assert "never sent to the webhook: kube-system, portcullis" in notes
    assert "server deadline 4.5s" in notes
    assert f"kubectl -n {NAMESPACE} rollout status daemonset/{FULLNAME}-monitor" in notes
    assert "older clusters need monitor.kubelet.grantNodesProxy" in notes


# --- client authentication: mutual TLS with the API server -------------------------------------

_PROBES = (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"))


@pytest.mark.parametrize(("option", "port"), [("client-auth-secret", 8081), ("client-auth-configmap", 9081)])
def test_client_auth_moves_every_probe_to_the_plain_http_health_port(chart: helm.Chart, option: str, port: int) -> None:
    """The kubelet has no client certificate: probes that stayed on HTTPS would fail and kill the pods."""
    objects = render(chart, OPTIONS[option])
    container = pod_spec(one(objects, "Deployment"))["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"https": 8443, "health": port}
    for probe, path in _PROBES:
        assert container[probe]["httpGet"] == {"path": path, "port": "health", "scheme": "HTTP"}
    config = portcullis_config.parse(rendered_config(objects), source="config.yaml")
    assert config.server.health_listen == f"0.0.0.0:{port}"
    assert config.server.listen == "0.0.0.0:8443"
    # Only the webhook is behind the Service; health is the kubelet's, metrics are scraped per pod.
    assert [p["targetPort"] for p in one(objects, "Service", FULLNAME)["spec"]["ports"]] == ["https"]


@pytest.mark.parametrize(
    ("option", "source", "key"),
    [("client-auth-secret", "secret", "ca.crt"), ("client-auth-configmap", "configMap", "bundle.pem")],
)
def test_client_auth_mounts_the_ca_bundle_read_only_where_the_config_points(
    chart: helm.Chart, option: str, source: str, key: str
) -> None:
    objects = render(chart, OPTIONS[option])
    spec = pod_spec(one(objects, "Deployment"))
    (volume,) = [v for v in spec["volumes"] if v["name"] == "client-ca"]
    assert set(volume) == {"name", source}
    assert volume[source].get("secretName", volume[source].get("name")) == "apiserver-client-ca"
    assert volume[source]["items"] == [{"key": key, "path": key}]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "client-ca"]
    assert mount["readOnly"] is True
    assert "subPath" not in mount  # a rotated bundle must reach the running server
    config = portcullis_config.parse(rendered_config(objects), source="config.yaml")
    assert config.server.client_ca == f"{mount['mountPath']}/{key}"
    assert config.server.tls_cert == "/etc/portcullis/tls/tls.crt"


def test_client_auth_is_off_by_default_and_switching_it_on_rolls_the_pods(chart: helm.Chart) -> None:
    objects = render(chart)
    spec = pod_spec(one(objects, "Deployment"))
    assert [p["name"] for p in spec["containers"][0]["ports"]] == ["https"]
    assert "client-ca" not in {v["name"] for v in spec["volumes"]}
    assert {"client_ca", "health_listen"}.isdisjoint(rendered_config(objects)["server"])

    def checksum(values: dict[str, Any]) -> str:
        template = one(render(chart, values), "Deployment")["spec"]["template"]
        return str(template["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) != checksum(OPTIONS["client-auth-secret"])


def _client_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A CA of the cluster admin's and the API server's client certificate (EKU clientAuth) from it."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apiserver-client-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "client.crt", directory / "client.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> dict[str, Any]:
    """A real TLS handshake over memory BIOs; returns the certificate the server saw."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    pending = [client, server]
    for _ in range(20):
        for side in list(pending):
            try:
                side.do_handshake()
                pending.remove(side)
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if not pending:
            peer = server.getpeercert()
            assert peer is not None
            return dict(peer)
    raise AssertionError("TLS handshake did not finish")


def test_rendered_client_auth_config_admits_only_the_apiserver_certificate(chart: helm.Chart, tmp_path: Path) -> None:
    """Real TLS through the server's own context, built from the rendered config: the file the
    config names (re-rooted under tmp_path, as the kubelet's mount would place it) holds the
    admin's CA; a client with its certificate gets in, one without or with another CA's does not."""
    config = portcullis_config.parse(
        rendered_config(render(chart, OPTIONS["client-auth-configmap"])), source="config.yaml"
    )
    assert config.server.client_ca is not None
    mounted = tmp_path / config.server.client_ca.lstrip("/")
    ca, client_cert, client_key = _client_ca(mounted.parent / "admin")
    mounted.write_bytes(ca.read_bytes())
    serving = admission_certs.generate(["localhost"], tmp_path / "tls")
    server_ctx = admission_tls.server_context(serving.cert, serving.key, mounted)

    def client(cert: Path | None, key: Path | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(serving.ca_cert))
        if cert is not None:
            ctx.load_cert_chain(cert, key)
        return ctx

    peer = _handshake(server_ctx, client(client_cert, client_key))
    assert dict(x[0] for x in peer["subject"])["commonName"] == "kube-apiserver"
    with pytest.raises(ssl.SSLError):
        _handshake(server_ctx, client(None, None))
    _, other_cert, other_key = _client_ca(tmp_path / "other")
    with pytest.raises(ssl.SSLError):
        _handshake(server_ctx, client(other_cert, other_key))


@pytest.mark.parametrize(
    ("option", "user"),
    [
        ("client-auth-secret", f"{FULLNAME}.{NAMESPACE}.svc"),
        ("client-auth-configmap", f"{FULLNAME}.{NAMESPACE}.svc:8443"),
    ],
)
def test_notes_name_the_kubeconfig_user_the_apiserver_matches(chart: helm.Chart, option: str, user: str) -> None:
    notes = render_files(chart, OPTIONS[option])["portcullis/templates/NOTES.txt"]
    assert "Client authentication is ON" in notes
    assert f"\n  {user}\n" in notes
    assert "Client authentication" not in render_files(chart)["portcullis/templates/NOTES.txt"]


def _readme_yaml_blocks() -> list[Any]:
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^( *)```yaml\n(.*?)^\1```", readme, flags=re.MULTILINE | re.DOTALL)
    return [yaml.safe_load(textwrap.dedent(body)) for _, body in blocks]


def test_readme_gives_the_admin_the_apiserver_config_kubernetes_expects(chart: helm.Chart) -> None:
    """The AdmissionConfiguration, kubeconfig and values in the README stay right: field names as
    Kubernetes documents them, the user named as the API server looks it up, values the chart takes."""
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    assert "--admission-control-config-file=" in readme
    blocks = [b for b in _readme_yaml_blocks() if isinstance(b, dict)]
    (admission,) = [b for b in blocks if b.get("kind") == "AdmissionConfiguration"]
    assert admission["apiVersion"] == "apiserver.config.k8s.io/v1"
    plugins = {p["name"]: p["configuration"] for p in admission["plugins"]}
    assert set(plugins) == {"ValidatingAdmissionWebhook", "MutatingAdmissionWebhook"}
    (kubeconfig,) = [b for b in blocks if b.get("kind") == "Config"]
    for configuration in plugins.values():
        assert configuration["apiVersion"] == "apiserver.config.k8s.io/v1"
        assert configuration["kind"] == "WebhookAdmissionConfiguration"
        assert configuration["kubeConfigFile"].startswith("/")
    assert kubeconfig["apiVersion"] == "v1"
    (user,) = kubeconfig["users"]
    assert set(user["user"]) == {"client-certificate", "client-key"}
    # The README installs release "portcullis" into namespace "portcullis".
    notes = chart.render(OPTIONS["client-auth-secret"], name="portcullis", namespace="portcullis")[
        "portcullis/templates/NOTES.txt"
    ]
    assert f"\n  {user['name']}\n" in notes
    (values,) = [b for b in blocks if "clientAuth" in b.get("webhook", {})]
    objects = render(chart, values)
    assert portcullis_config.parse(rendered_config(objects), source="config.yaml").server.client_ca


@pytest.mark.parametrize(("replicas", "expected"), [(1, "local"), (2, "apiserver"), (5, "apiserver")])
def test_gpu_reservations_go_through_the_api_server_whenever_there_is_more_than_one_replica(
    chart: helm.Chart, replicas: int, expected: str
) -> None:
    """Two replicas with local reservations each admit up to the whole quota: 12 concurrent 1-GPU
    pods under a 4-GPU limit got 8 in. The rendered config shares them through the API server."""
    values = {"webhook": {"replicas": replicas}, "config": {"quota": {"quotas": [{"name": "all", "limit": 4}]}}}
    quota = rendered_config(render(chart, values))["quota"]
    assert quota.get("coordination", "local") == expected
    assert quota["coordination_namespace"] == NAMESPACE
    assert portcullis_config.parse(rendered_config(render(chart, values))).quota.coordination == expected


def test_an_explicit_apiserver_coordination_with_one_replica_is_kept(chart: helm.Chart) -> None:
    values = {"webhook": {"replicas": 1}, "config": {"quota": {"coordination": "apiserver"}}}
    assert rendered_config(render(chart, values))["quota"]["coordination"] == "apiserver"


def test_extra_validating_rules_send_the_kinds_policies_select(chart: helm.Chart) -> None:
    """Kinds for Rego/Gatekeeper policies (ConfigMaps, Ingresses, cluster-scoped RBAC) go to the
    validating webhook only: digest pinning (mutating) concerns pods alone."""
    values = {
        "webhook": {
            "validating": {
                "extraRules": [
                    {"apiGroups": [""], "resources": ["configmaps"]},
                    {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "scope": "Namespaced"},
                    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "scope": "Cluster"},
                ]
            }
        }
    }
    objects = render(chart, values)
    validating = one(objects, "ValidatingWebhookConfiguration")["webhooks"][0]
    mutating = one(objects, "MutatingWebhookConfiguration")["webhooks"][0]
    extra = validating["rules"][-3:]
    assert extra[0] == {
        "apiGroups": [""],
        "apiVersions": ["*"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["configmaps"],
        "scope": "*",
    }
    assert extra[1]["resources"] == ["ingresses"]
    assert extra[2]["scope"] == "Cluster"
    assert not {r for rule in mutating["rules"] for r in rule["resources"]} & {"configmaps", "ingresses"}


def test_an_extra_rule_without_resources_is_refused(chart: helm.Chart) -> None:
    message = render_error(chart, {"webhook": {"validating": {"extraRules": [{"apiGroups": [""]}]}}})
    assert "resources" in message


def test_synced_kinds_get_list_and_watch_in_the_webhooks_cluster_role(chart: helm.Chart) -> None:
    """``config.policy.sync`` (data.inventory) needs list+watch on those kinds, and no more."""
    sync = [
        {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress", "resource": "ingresses"},
        {"version": "v1", "kind": "Service"},
    ]
    objects = render(chart, {"config": {"policy": {"sync": sync}}})
    role = next(o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith("portcullis"))
    assert {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["list", "watch"]} in role["rules"]
    assert {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]} in role["rules"]
