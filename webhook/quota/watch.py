"""The pod watch that feeds the GPU ledger (list + watch of every pod through the official client).

``kube.reflector`` does the resourceVersion bookkeeping, paging, 410 re-lists, bookmarks and
reconnect backoff; this module turns pods into ledger records: pods that ask no GPU are
ignored, terminal pods (Succeeded / Failed) release theirs, and a namespace whose team label
changes has its pods re-charged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import kubernetes.client

from webhook.config.kubernetes import KubernetesConfig
from webhook.kube import reflector
from webhook.quota import quantity
from webhook.quota.ledger import Ledger, PodRecord
from webhook.quota.model import QuotaModel

log = logging.getLogger("portcullis.quota")

_TERMINAL = frozenset({"Succeeded", "Failed"})


class Namespaces(Protocol):
    def labels(self, namespace: str) -> Mapping[str, str] | None: ...


class PodWatch:
    """Keeps ``ledger`` equal to the GPU pods the API server knows."""

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        config: KubernetesConfig,
        model: QuotaModel,
        ledger: Ledger,
        namespaces: Namespaces | None = None,
    ) -> None:
        self._model = model
        self._ledger = ledger
        self._namespaces = namespaces
        core = kubernetes.client.CoreV1Api(api)
        self.reflector = reflector.Reflector(
            "pods", core.list_pod_for_all_namespaces, config, self._replace, self._event
        )

    async def start(self) -> None:
        await self.reflector.start()

    async def close(self) -> None:
        await self.reflector.close()

    def ready(self) -> bool:
        return self.reflector.ready()

    async def wait_ready(self, timeout: float | None = None) -> bool:
        return await self.reflector.wait_ready(timeout)

    def namespace_changed(self, namespace: str, labels: Mapping[str, str]) -> None:
        """A namespace's labels changed: its pods may now charge other team quotas."""
        model = self._model
        self._ledger.recharge(
            namespace, lambda r: model.charges(namespace, labels, r.demand), labels, model.config.team_label
        )

    def _labels(self, namespace: str) -> Mapping[str, str]:
        if self._namespaces is None:
            return {}
        return self._namespaces.labels(namespace) or {}

    def record(self, pod: Mapping[str, Any]) -> tuple[str, PodRecord | None]:
        """The pod's uid and what it charges (None: it holds no GPU now)."""
        metadata = pod.get("metadata") or {}
        namespace = str(metadata.get("namespace") or "")
        name = str(metadata.get("name") or "")
        uid = str(metadata.get("uid") or f"{namespace}/{name}")
        if (pod.get("status") or {}).get("phase") in _TERMINAL:
            return uid, None
        try:
            demand = self._model.demand(pod.get("spec") or {}, stored=True)
        except quantity.QuantityError as exc:  # the API server validated it; never trust, though
            log.warning("pod %s/%s: %s; not counted", namespace, name, exc)
            return uid, None
        if demand.empty:
            return uid, None
        labels = self._labels(namespace)
        charges = self._model.charges(namespace, labels, demand)
        team = labels.get(self._model.config.team_label)
        return uid, PodRecord(namespace, name, demand, charges, team)

    def _replace(self, items: list[Mapping[str, Any]]) -> None:
        records = []
        for item in items:
            uid, record = self.record(item)
            if record is not None:
                records.append((uid, record))
        self._ledger.replace(records)

    def _event(self, kind: str, pod: Mapping[str, Any]) -> None:
        uid, record = self.record(pod)
        if kind == "DELETED" or record is None:
            self._ledger.remove(uid)
        else:
            self._ledger.upsert(uid, record)
