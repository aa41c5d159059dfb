"""Any kind through the real webhook (HTTPS on loopback): Gatekeeper constraints and Rego policies
judge the kinds their match selects (a ConfigMap, an Ingress, a Service), pod checks only pod
kinds, and a kind nothing selects is allowed and counted instead of denied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .conftest import review

ROOT = Path(__file__).resolve().parents[2]

CONFIGMAP_TEMPLATE = {
    "apiVersion": "templates.gatekeeper.sh/v1",
    "kind": "ConstraintTemplate",
    "metadata": {"name": "k8snosecretsinconfigmaps"},
    "spec": {
        "crd": {"spec": {"names": {"kind": "K8sNoSecretsInConfigMaps"}}},
        "targets": [
            {
                "target": "admission.k8s.gatekeeper.sh",
                "rego": (
                    "package k8snosecretsinconfigmaps\n\n"
                    'violation[{"msg": msg}] {\n'
                    "  value := input.review.object.data[key]\n"
                    "  regex.match(input.parameters.keyPattern, key)\n"
                    '  msg := concat("", ["configmap key <", key, "> looks like a secret; use a Secret"])\n'
                    "}\n"
                ),
            }
        ],
    },
}
CONFIGMAP_CONSTRAINT = {
    "apiVersion": "constraints.gatekeeper.sh/v1beta1",
    "kind": "K8sNoSecretsInConfigMaps",
    "metadata": {"name": "no-passwords"},
    "spec": {
        "match": {"kinds": [{"apiGroups": [""], "kinds": ["ConfigMap"]}], "namespaces": ["team-*"]},
        "parameters": {"keyPattern": "[Pp]assword|[Tt]oken"},
    },
}
SERVICE_POLICY = """# METADATA
# custom:
#   id: no-nodeport
#   kinds: [Service]
package portcullis.services

import rego.v1

deny contains "NodePort services are not allowed" if input.request.object.spec.type == "NodePort"
"""


def _policies(tmp_path: Path) -> dict[str, Any]:
    gk = tmp_path / "gatekeeper"
    gk.mkdir()
    (gk / "configmaps.yaml").write_text(yaml.safe_dump_all([CONFIGMAP_TEMPLATE, CONFIGMAP_CONSTRAINT]))
    ingress = ROOT / "policies" / "gatekeeper" / "ingress-hosts"
    for name in ("template.yaml", "constraint.yaml"):
        (gk / f"ingress-{name}").write_text((ingress / name).read_text())
    rego_dir = tmp_path / "rego"
    rego_dir.mkdir()
    (rego_dir / "services.rego").write_text(SERVICE_POLICY)
    return {"policy": {"gatekeeper": [str(gk)], "directory": str(rego_dir)}}


def _configmap(namespace: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": namespace}, "data": data}


def _ingress(*hosts: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": "web"},
        "spec": {"rules": [{"host": h} for h in hosts]},
    }


async def _judge(hook: Any, obj: dict[str, Any], kind: str, group: str, resource: str, **kw: Any) -> dict[str, Any]:
    body = review(obj, kind=kind, group=group, resource=resource, namespace=obj["metadata"].get("namespace", ""), **kw)
    status, answer = await hook.post("/validate", body)
    assert status == 200, answer
    response: dict[str, Any] = answer["response"]
    return response


def _message(response: dict[str, Any]) -> str:
    return str((response.get("status") or {}).get("message", ""))


async def test_configmap_and_ingress_constraints_are_enforced_through_validate(webhook: Any, tmp_path: Path) -> None:
    async with webhook(_policies(tmp_path)) as hook:
        secret_cm = await _judge(hook, _configmap("team-a", db_password="hunter2"), "ConfigMap", "", "configmaps")
        plain_cm = await _judge(hook, _configmap("team-a", color="blue"), "ConfigMap", "", "configmaps")
        other_ns = await _judge(hook, _configmap("ops", db_password="x"), "ConfigMap", "", "configmaps")
        bad_ing = await _judge(hook, _ingress("shop.attacker.net"), "Ingress", "networking.k8s.io", "ingresses")
        good_ing = await _judge(hook, _ingress("shop.example.com"), "Ingress", "networking.k8s.io", "ingresses")
    assert secret_cm["allowed"] is False
    assert "K8sNoSecretsInConfigMaps/no-passwords: configmap key <db_password> looks like a secret" in _message(
        secret_cm
    )
    assert plain_cm["allowed"] is True
    assert other_ns["allowed"] is True  # `namespaces: [team-*]` does not select ops
    assert bad_ing["allowed"] is False
    assert "ingress host <shop.attacker.net> is not under an allowed domain" in _message(bad_ing)
    assert good_ing["allowed"] is True


async def test_an_update_that_changes_only_a_non_pod_field_is_judged(webhook: Any, tmp_path: Path) -> None:
    """Pod kinds skip updates whose pod specs are unchanged; a kind-generic policy may read any
    field, so an Ingress update that swaps the host must be judged, not skipped."""
    async with webhook(_policies(tmp_path)) as hook:
        answer = await _judge(
            hook,
            _ingress("shop.attacker.net"),
            "Ingress",
            "networking.k8s.io",
            "ingresses",
            operation="UPDATE",
            old=_ingress("shop.example.com"),
        )
    assert answer["allowed"] is False


async def test_rego_policies_judge_the_kinds_their_metadata_names(webhook: Any, tmp_path: Path) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s", "namespace": "web"},
        "spec": {"type": "NodePort"},
    }
    async with webhook(_policies(tmp_path)) as hook:
        answer = await _judge(hook, service, "Service", "", "services")
    assert answer["allowed"] is False
    assert "no-nodeport: NodePort services are not allowed" in _message(answer)


async def test_a_kind_nothing_selects_is_allowed_and_counted(webhook: Any, tmp_path: Path) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "web"}, "data": {}}
    async with webhook(_policies(tmp_path)) as hook:
        answer = await _judge(hook, secret, "Secret", "", "secrets")
        async with hook.session.get(hook.base + "/metrics") as r:
            metrics = await r.text()
    assert answer["allowed"] is True
    assert 'portcullis_unjudged_kind_reviews_total{kind="Secret"} 1' in metrics


REVIEW_TEMPLATE = {
    "apiVersion": "templates.gatekeeper.sh/v1",
    "kind": "ConstraintTemplate",
    "metadata": {"name": "k8sreviewfields"},
    "spec": {
        "crd": {"spec": {"names": {"kind": "K8sReviewFields"}}},
        "targets": [
            {
                "target": "admission.k8s.gatekeeper.sh",
                "rego": (
                    "package k8sreviewfields\n\n"
                    'violation[{"msg": msg}] {\n'
                    "  r := input.review\n"
                    '  msg := concat("|", [r.resource.resource, r.requestKind.kind, r.options.fieldManager,\n'
                    "    r._unstable.namespace.metadata.name, r.userInfo.username, r.operation])\n"
                    "}\n"
                ),
            }
        ],
    },
}


async def test_templates_see_the_admission_request_as_gatekeeper_builds_it(webhook: Any, tmp_path: Path) -> None:
    """``input.review`` is the apiserver's request verbatim (resource, requestKind, options...)
    plus ``_unstable.namespace``, the Namespace of a namespaced request."""
    constraint = {
        "apiVersion": "constraints.gatekeeper.sh/v1beta1",
        "kind": "K8sReviewFields",
        "metadata": {"name": "echo"},
        "spec": {"match": {"kinds": [{"apiGroups": [""], "kinds": ["ConfigMap"]}]}},
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump_all([REVIEW_TEMPLATE, constraint]))
    body = review(_configmap("team-a"), kind="ConfigMap", resource="configmaps", namespace="team-a")
    body["request"]["options"] = {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions", "fieldManager": "kubectl"}
    async with webhook({"policy": {"gatekeeper": [str(tmp_path)]}}) as hook:
        status, answer = await hook.post("/validate", body)
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert "K8sReviewFields/echo: configmaps|ConfigMap|kubectl|team-a|alice|CREATE" in _message(answer["response"])
