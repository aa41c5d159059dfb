"""Which kinds a scan lists (select stage): the kinds the loaded checks and constraints judge.

The pod checks judge every kind that carries a pod spec; Gatekeeper constraints name theirs in
``spec.match.kinds``. A kind becomes a REST path through a fixed table of the built-in API (no
discovery call: the scan's RBAC then grants exactly these resources); a constraint naming a kind
outside it, or ``"*"``, is reported as not scanned rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from webhook.core import workloads


@dataclass(frozen=True, slots=True)
class Resource:
    """One listable collection: group/version/plural, and whether its objects live in namespaces."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str = "", name: str = "") -> str:
        """The REST path: the cluster-wide collection, or one object."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        ns = f"/namespaces/{namespace}" if namespace and self.namespaced else ""
        return f"{base}{ns}/{self.plural}" + (f"/{name}" if name else "")


_BUILTIN: tuple[Resource, ...] = (
    Resource("", "v1", "pods", "Pod"),
    Resource("", "v1", "replicationcontrollers", "ReplicationController"),
    Resource("", "v1", "podtemplates", "PodTemplate"),
    Resource("apps", "v1", "deployments", "Deployment"),
    Resource("apps", "v1", "replicasets", "ReplicaSet"),
    Resource("apps", "v1", "statefulsets", "StatefulSet"),
    Resource("apps", "v1", "daemonsets", "DaemonSet"),
    Resource("batch", "v1", "jobs", "Job"),
    Resource("batch", "v1", "cronjobs", "CronJob"),
    Resource("", "v1", "configmaps", "ConfigMap"),
    Resource("", "v1", "services", "Service"),
    Resource("", "v1", "serviceaccounts", "ServiceAccount"),
    Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
    Resource("", "v1", "namespaces", "Namespace", namespaced=False),
    Resource("", "v1", "persistentvolumes", "PersistentVolume", namespaced=False),
    Resource("", "v1", "nodes", "Node", namespaced=False),
    Resource("networking.k8s.io", "v1", "ingresses", "Ingress"),
    Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    Resource("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
)
BY_KIND: dict[tuple[str, str], Resource] = {(r.group, r.kind): r for r in _BUILTIN}
# Secrets are never listed: a scan must not read every secret of the cluster (and they carry
# nothing a pod check judges); a constraint on Secrets stays with admission.
NEVER: frozenset[str] = frozenset({"Secret"})


@dataclass(frozen=True, slots=True)
class Selection:
    resources: tuple[Resource, ...]
    not_scanned: tuple[str, ...]  # "<group>/<kind>: why"


def select(pod_checks: bool, constraint_kinds: Iterable[tuple[Sequence[str], Sequence[str]]]) -> Selection:
    """The resources to list: workload kinds when a pod check runs, plus each constraint's kinds.

    ``constraint_kinds`` holds each ``spec.match.kinds`` entry as (apiGroups, kinds).
    """
    chosen: dict[tuple[str, str], Resource] = {}
    skipped: list[str] = []
    if pod_checks:
        for resource in _BUILTIN:
            if workloads.carries_pod_spec(resource.kind):
                chosen[(resource.group, resource.kind)] = resource
    for groups, kinds in constraint_kinds:
        for group in groups or ("*",):
            for kind in kinds or ("*",):
                _add(group, kind, chosen, skipped)
    order = {r: i for i, r in enumerate(_BUILTIN)}
    return Selection(tuple(sorted(chosen.values(), key=order.__getitem__)), tuple(dict.fromkeys(skipped)))


def _add(group: str, kind: str, chosen: dict[tuple[str, str], Resource], skipped: list[str]) -> None:
    if kind == "*":
        skipped.append(f"{group or 'core'}/*: a constraint matching every kind is judged at admission only")
        return
    if kind in NEVER:
        skipped.append(f"{group or 'core'}/{kind}: never listed by scans (secrets stay unread)")
        return
    found = [r for (g, k), r in BY_KIND.items() if k == kind and (group == "*" or g == group)]
    if not found:
        skipped.append(f"{group or 'core'}/{kind}: not a built-in kind portcullis can list")
    for resource in found:
        chosen[(resource.group, resource.kind)] = resource


def constraint_kinds(checks: Iterable[Any]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """``spec.match.kinds`` of every loaded Gatekeeper constraint (the rego check's templates)."""
    out: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    for check in checks:
        templates = getattr(check, "templates", None)
        current = getattr(templates, "current", None) if templates is not None else None
        for constraint in getattr(current, "constraints", ()) or ():
            kinds = constraint.match.kinds or ((frozenset({"*"}), frozenset({"*"})),)
            out += [(tuple(sorted(groups)), tuple(sorted(names))) for groups, names in kinds]
    return out
