"""Namespace labels from a list + watch of namespaces, for every admission request.

The admission pipeline asks ``labels(namespace)`` on each request: a dict lookup, never a
call. Quota by team reads the team label from here too; listeners hear of label changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import kubernetes.client

from webhook.config.quota import KubernetesConfig
from webhook.kube import reflector

Listener = Callable[[str, Mapping[str, str]], None]


class NamespaceDirectory:
    """Labels of every namespace, kept current by the API server's watch."""

    def __init__(self, api: kubernetes.client.ApiClient, config: KubernetesConfig) -> None:
        self._labels: dict[str, Mapping[str, str]] = {}
        self._listeners: list[Listener] = []
        core = kubernetes.client.CoreV1Api(api)
        self.reflector = reflector.Reflector("namespaces", core.list_namespace, config, self._replace, self._event)

    def labels(self, namespace: str) -> Mapping[str, str] | None:
        """The namespace's labels, or None when unknown (not listed yet, or no such namespace)."""
        return self._labels.get(namespace)

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(namespace, labels)`` on the loop whenever a namespace's labels change."""
        self._listeners.append(listener)

    def ready(self) -> bool:
        return self.reflector.ready()

    async def wait_ready(self, timeout: float | None = None) -> bool:
        return await self.reflector.wait_ready(timeout)

    async def start(self) -> None:
        await self.reflector.start()

    async def close(self) -> None:
        await self.reflector.close()

    def __len__(self) -> int:
        return len(self._labels)

    def _replace(self, items: list[Mapping[str, Any]]) -> None:
        fresh = {}
        for item in items:
            name, labels = _name_labels(item)
            if name:
                fresh[name] = labels
        old, self._labels = self._labels, fresh
        for name in sorted(set(old) | set(fresh)):
            if old.get(name) != fresh.get(name):
                self._notify(name, fresh.get(name, {}))

    def _event(self, kind: str, item: Mapping[str, Any]) -> None:
        name, labels = _name_labels(item)
        if not name:
            return
        before = self._labels.get(name)
        if kind == "DELETED":
            self._labels.pop(name, None)
            labels = {}
        else:
            self._labels[name] = labels
        if before != labels:
            self._notify(name, labels)

    def _notify(self, name: str, labels: Mapping[str, str]) -> None:
        for listener in self._listeners:
            listener(name, labels)


def _name_labels(item: Mapping[str, Any]) -> tuple[str, Mapping[str, str]]:
    metadata = item.get("metadata") or {}
    labels = metadata.get("labels") or {}
    return str(metadata.get("name") or ""), {str(k): str(v) for k, v in labels.items()}
