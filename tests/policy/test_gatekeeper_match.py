"""Gatekeeper's match semantics, case by case (own fixtures; the behaviour is Gatekeeper's
``pkg/mutation/match`` as gator applies it): kinds, scope, namespaces and excludedNamespaces
with Gatekeeper's wildcards, label and namespace selectors, name, the old object, and scoped
enforcement actions."""

from __future__ import annotations

from typing import Any

import pytest

from webhook import errors
from webhook.core.decision import Mode
from webhook.policy import gatekeeper, testing

TEMPLATES: dict[str, Any] = {"K8sX": object()}


def _constraint(match: dict[str, Any], **spec: Any) -> gatekeeper.Constraint:
    doc = {"kind": "K8sX", "metadata": {"name": "c"}, "spec": {"match": match, **spec}}
    return gatekeeper.constraint("c.yaml:1", doc, TEMPLATES)  # type: ignore[arg-type]


def _obj(kind: str = "Pod", namespace: str | None = "prod-a", api: str = "v1", **meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": meta.pop("name", "p"), **meta}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": api, "kind": kind, "metadata": metadata}


def _ns(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def _matches(match: dict[str, Any], obj: dict[str, Any], namespace: dict[str, Any] | None = None) -> bool:
    return _constraint(match).match.matches(testing.review_of(obj), namespace)


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("prod-*", "prod-a", True),
        ("prod-*", "dev-a", False),
        ("*-system", "kube-system", True),
        ("*-system", "kube-systems", False),
        ("*od*", "prod-a", True),
        ("p*d", "pod", False),  # a '*' in the middle is a literal character, not a glob
        ("p*d", "p*d", True),
        ("prod-?", "prod-a", False),  # no shell glob characters either
        ("exact", "exact", True),
    ],
)
def test_gatekeeper_wildcards(pattern: str, name: str, expected: bool) -> None:
    assert gatekeeper.wildcard(pattern, name) is expected


def test_kinds_match_group_and_kind_with_empty_meaning_any() -> None:
    assert _matches({"kinds": [{"apiGroups": ["apps"], "kinds": ["Deployment"]}]}, _obj("Deployment", api="apps/v1"))
    assert not _matches({"kinds": [{"apiGroups": [""], "kinds": ["Deployment"]}]}, _obj("Deployment", api="apps/v1"))
    assert _matches({"kinds": [{"kinds": ["Deployment"]}]}, _obj("Deployment", api="apps/v1"))
    assert _matches({"kinds": [{"apiGroups": ["*"], "kinds": ["*"]}]}, _obj("Anything", api="x.io/v1"))


def test_objects_without_a_namespace_pass_the_namespace_lists() -> None:
    cluster_role = _obj("ClusterRole", None, "rbac.authorization.k8s.io/v1")
    assert _matches({"namespaces": ["prod-*"]}, cluster_role)
    assert _matches({"excludedNamespaces": ["*"]}, cluster_role)


def test_a_namespace_object_is_matched_by_its_own_name() -> None:
    assert _matches({"namespaces": ["prod-*"]}, _obj("Namespace", None, name="prod-b"))
    assert not _matches({"excludedNamespaces": ["prod-*"]}, _obj("Namespace", None, name="prod-b"))


def test_namespaces_and_exclusions_for_namespaced_objects() -> None:
    assert _matches({"namespaces": ["prod-*"]}, _obj(namespace="prod-a"))
    assert not _matches({"namespaces": ["prod-*"]}, _obj(namespace="dev"))
    assert not _matches({"excludedNamespaces": ["kube-*"]}, _obj(namespace="kube-system"))


@pytest.mark.parametrize(
    ("scope", "obj", "expected"),
    [
        ("Cluster", _obj("ClusterRole", None), True),
        ("Cluster", _obj("Namespace", None, name="x"), True),
        ("Cluster", _obj(), False),
        ("Namespaced", _obj(), True),
        ("Namespaced", _obj("Namespace", None, name="x"), False),
        ("Namespaced", _obj("ClusterRole", None), False),
        ("*", _obj("ClusterRole", None), True),
    ],
)
def test_scope(scope: str, obj: dict[str, Any], expected: bool) -> None:
    assert _matches({"scope": scope}, obj) is expected


def test_namespace_selector() -> None:
    selector = {"namespaceSelector": {"matchLabels": {"env": "prod"}}}
    assert _matches(selector, _obj(), _ns("prod-a", env="prod"))
    assert not _matches(selector, _obj(), _ns("prod-a", env="dev"))
    assert _matches(selector, _obj("ClusterRole", None))  # cluster-scoped: passes
    assert _matches(selector, _obj("Namespace", None, name="n", labels={"env": "prod"}))  # its own labels
    with pytest.raises(gatekeeper.MatchError, match="Namespace is unknown"):
        _matches(selector, _obj())  # gator: an error, not a silent skip


def test_label_selector_expressions() -> None:
    selector = {
        "labelSelector": {
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["web", "api"]},
                {"key": "legacy", "operator": "DoesNotExist"},
            ]
        }
    }
    assert _matches(selector, _obj(labels={"tier": "web"}))
    assert not _matches(selector, _obj(labels={"tier": "db"}))
    assert not _matches(selector, _obj(labels={"tier": "web", "legacy": "1"}))


def test_name_matches_name_or_generate_name() -> None:
    assert _matches({"name": "web-*"}, _obj(name="web-1"))
    assert _matches({"name": "web-*"}, _obj(name="", generateName="web-"))
    assert not _matches({"name": "web-*"}, _obj(name="api-1"))


def test_the_old_object_matching_is_enough() -> None:
    """An UPDATE that removes the selected label still matches through the old object."""
    match = _constraint({"labelSelector": {"matchLabels": {"team": "a"}}}).match
    review = {
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "object": _obj(labels={}),
        "oldObject": _obj(labels={"team": "a"}),
    }
    assert match.matches(review, _ns("prod-a"))


def test_scoped_enforcement_actions() -> None:
    scoped = [
        {"action": "warn", "enforcementPoints": [{"name": "validation.gatekeeper.sh"}]},
        {"action": "deny", "enforcementPoints": [{"name": "audit.gatekeeper.sh"}]},
    ]
    c = _constraint({}, enforcementAction="scoped", scopedEnforcementActions=scoped)
    assert c.mode is Mode.WARN
    assert c.enforced_at(gatekeeper.VALIDATION_POINT)
    assert not c.enforced_at(gatekeeper.GATOR_POINT)
    everywhere = _constraint(
        {},
        enforcementAction="scoped",
        scopedEnforcementActions=[{"action": "deny", "enforcementPoints": [{"name": "*"}]}],
    )
    assert everywhere.mode is Mode.ENFORCE
    assert everywhere.enforced_at(gatekeeper.GATOR_POINT)
    with pytest.raises(errors.PolicyLoadError, match="scopedEnforcementActions must list actions"):
        _constraint({}, enforcementAction="scoped")


def test_gator_review_of_a_plain_object() -> None:
    review = testing.review_of(_obj("Deployment", "prod-a", "apps/v1", name="d"))
    assert review["kind"] == {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert review["name"] == "d"
    assert review["namespace"] == "prod-a"
    assert review["operation"] == ""
    assert review["userInfo"] == {}
    cluster = testing.review_of(_obj("ClusterRole", None, "rbac.authorization.k8s.io/v1"))
    assert "namespace" not in cluster
