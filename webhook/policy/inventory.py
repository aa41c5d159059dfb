"""``data.inventory`` for referential Gatekeeper templates: a cached list+watch of the kinds the
sync config names (Gatekeeper's ``Config`` ``spec.sync.syncOnly``), kept in Gatekeeper's layout.

Layout (as Gatekeeper replicates it): ``cluster[groupVersion][kind][name]`` for cluster-scoped
objects, ``namespace[ns][groupVersion][kind][name]`` for namespaced ones. One ``kube.reflector``
per kind keeps it current; ``checks.rego`` passes the document with each evaluation of a
referential template (``gatekeeper.evaluate_template``). Until every kind has been listed once,
the rego check is not ready: a uniqueness rule judged against a half-empty cache would admit
duplicates.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhook.config.kubernetes import KubernetesConfig
from webhook.kube import reflector

# Kinds whose plural resource name is not the API's default (lowercase + "s", "y" -> "ies").
_PLURALS = {
    "Ingress": "ingresses",
    "IngressClass": "ingressclasses",
    "NetworkPolicy": "networkpolicies",
    "Endpoints": "endpoints",
    "StorageClass": "storageclasses",
    "PriorityClass": "priorityclasses",
    "RuntimeClass": "runtimeclasses",
    "PodSecurityPolicy": "podsecuritypolicies",
}
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "Node",
        "PersistentVolume",
        "ClusterRole",
        "ClusterRoleBinding",
        "StorageClass",
        "PriorityClass",
        "RuntimeClass",
        "IngressClass",
        "CustomResourceDefinition",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "PodSecurityPolicy",
    }
)


def plural(kind: str) -> str:
    """The resource (plural) of ``kind``: a known irregular one, else the API's default rule."""
    if kind in _PLURALS:
        return _PLURALS[kind]
    lower = kind.lower()
    if lower.endswith("y") and lower[-2:-1] not in ("a", "e", "i", "o", "u"):
        return lower[:-1] + "ies"
    if lower.endswith(("s", "x", "ch", "sh")):
        return lower + "es"
    return lower + "s"


@dataclass(frozen=True, slots=True)
class SyncedKind:
    """One entry of the sync config: what to list and watch."""

    group: str
    version: str
    kind: str
    resource: str = ""  # the plural; derived from the kind when empty

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        """The cluster-wide collection path (all namespaces)."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{prefix}/{self.resource or plural(self.kind)}"


class Inventory:
    """``data.inventory`` built from the objects of the synced kinds (single writer: the loop)."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"cluster": {}, "namespace": {}}

    def replace(self, synced: SyncedKind, items: Sequence[Mapping[str, Any]]) -> None:
        for namespaced in self.document["namespace"].values():
            namespaced.get(synced.group_version, {}).pop(synced.kind, None)
        self.document["cluster"].get(synced.group_version, {}).pop(synced.kind, None)
        for item in items:
            self.put(synced, item)

    def put(self, synced: SyncedKind, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
        assert isinstance(metadata, Mapping)
        name, namespace = metadata.get("name"), metadata.get("namespace")
        if not isinstance(name, str) or not name:
            return
        stored = {**obj, "apiVersion": synced.group_version, "kind": synced.kind}  # lists omit them
        self._slot(synced, namespace)[name] = stored

    def delete(self, synced: SyncedKind, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
        assert isinstance(metadata, Mapping)
        self._slot(synced, metadata.get("namespace")).pop(str(metadata.get("name")), None)

    def _slot(self, synced: SyncedKind, namespace: Any) -> dict[str, Any]:
        if isinstance(namespace, str) and namespace:
            root = self.document["namespace"].setdefault(namespace, {})
        else:
            root = self.document["cluster"]
        slot: dict[str, Any] = root.setdefault(synced.group_version, {}).setdefault(synced.kind, {})
        return slot

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.document)


class InventorySync:
    """List+watch every synced kind into one ``Inventory``."""

    def __init__(self, api: Any, config: KubernetesConfig, kinds: Sequence[SyncedKind]) -> None:
        self.inventory = Inventory()
        self.kinds = tuple(kinds)
        self.reflectors = [
            reflector.Reflector(
                f"inventory {k.group_version}/{k.kind}",
                _lister(api, k),
                config,
                self._on_replace(k),
                self._on_event(k),
            )
            for k in self.kinds
        ]

    @property
    def document(self) -> dict[str, Any]:
        return self.inventory.document

    async def start(self) -> None:
        for r in self.reflectors:
            await r.start()

    async def close(self) -> None:
        for r in self.reflectors:
            await r.close()

    def ready(self) -> bool:
        return all(r.ready() for r in self.reflectors)

    def _on_replace(self, synced: SyncedKind) -> Callable[[list[Mapping[str, Any]]], None]:
        return lambda items: self.inventory.replace(synced, items)

    def _on_event(self, synced: SyncedKind) -> Callable[[str, Mapping[str, Any]], None]:
        def event(kind: str, obj: Mapping[str, Any]) -> None:
            if kind in ("ADDED", "MODIFIED"):
                self.inventory.put(synced, obj)
            elif kind == "DELETED":
                self.inventory.delete(synced, obj)

        return event


def _lister(api: Any, synced: SyncedKind) -> Callable[..., Any]:
    """A ``list_func`` for ``reflector.Reflector`` over any collection (core or a group)."""
    path = synced.path

    def list_func(**kwargs: Any) -> Any:
        query = reflector.list_query(kwargs)
        request = api.param_serialize(
            "GET", path, query_params=query, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
        )
        # Raw response (the reflector streams it), non-2xx raised as the generated APIs do.
        return api._call_with_legacy_options(
            request, {"200": "object"}, None, False, kwargs.get("_request_timeout"), True
        )

    return list_func
