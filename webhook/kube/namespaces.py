"""Namespace labels from a list + watch of namespaces, for every admission request.

The admission pipeline asks ``labels(namespace)`` on each request: a dict lookup, never a
call. Only on a miss (a namespace created together with its pods, before the watch delivers
it) does it ``await lookup(...)``: one live GET, as Pod Security Admission does, cached here.
Quota by team reads the team label from here too; listeners hear of label changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes.client

from webhook import errors
from webhook.config.kubernetes import KubernetesConfig
from webhook.core.deadline import Deadline
from webhook.kube import client, reflector

Listener = Callable[[str, Mapping[str, str]], None]


class NamespaceDirectory:
    """Labels of every namespace, kept current by the API server's watch."""

    def __init__(self, api: kubernetes.client.ApiClient, config: KubernetesConfig) -> None:
        self._labels: dict[str, Mapping[str, str]] = {}
        self._listeners: list[Listener] = []
        # One GET per missing namespace at a time: a Deployment's pods in a brand-new namespace
        # all miss together, and share the one answer.
        self._pending: dict[str, asyncio.Task[Mapping[str, str] | None]] = {}
        self._request_timeout = config.request_timeout
        self._core = core = kubernetes.client.CoreV1Api(api)
        self.reflector = reflector.Reflector("namespaces", core.list_namespace, config, self._replace, self._event)
        self.lookups = 0  # GETs sent (for tests and metrics)

    def labels(self, namespace: str) -> Mapping[str, str] | None:
        """The namespace's labels, or None when unknown (not listed yet, or no such namespace)."""
        return self._labels.get(namespace)

    async def lookup(self, namespace: str, deadline: Deadline) -> Mapping[str, str] | None:
        """The labels of a namespace the watch has not delivered, read live and cached.

        Returns None when the namespace does not exist (404; not cached). Raises
        ``ApiServerError`` when the API server fails or refuses, ``DeadlineExceeded`` when
        ``deadline`` passes first (the GET itself is bounded by the same budget).
        """
        known = self._labels.get(namespace)
        if known is not None:
            return known
        what = f"reading namespace {namespace!r}"
        task = self._pending.get(namespace)
        if task is None:
            timeout = deadline.cap(self._request_timeout)
            if timeout <= 0:
                raise errors.DeadlineExceeded(f"{what}: no time left in the request's budget")
            task = asyncio.ensure_future(self._get(namespace, what, timeout))
            self._pending[namespace] = task
            task.add_done_callback(lambda done: self._settled(namespace, done))
        # shield: one caller running out of time must not cancel the GET the others share.
        return await deadline.run(asyncio.shield(task), what)

    async def _get(self, namespace: str, what: str, timeout: float) -> Mapping[str, str] | None:
        self.lookups += 1
        try:
            body = await asyncio.to_thread(self._read, namespace, what, timeout)
        except client.ApiStatusError as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise errors.ApiServerError(f"{exc} (grant the webhook's service account get on namespaces)") from exc
            raise
        except ValueError as exc:
            raise errors.ApiServerError(f"{what}: the answer is not JSON ({exc})") from exc
        name, labels = _name_labels(body if isinstance(body, dict) else {})
        if name != namespace:
            raise errors.ApiServerError(f"{what}: the answer names namespace {name!r}")
        # The watch may have delivered this namespace while the GET was out: its copy is newer.
        current = self._labels.get(namespace)
        if current is not None:
            return current
        self._labels[namespace] = labels
        self._notify(namespace, labels)
        return labels

    def _read(self, namespace: str, what: str, timeout: float) -> Any:
        """GET the namespace and decode it (in a worker thread: the body is read there too)."""
        response = client.guarded(
            what, self._core.read_namespace, namespace, _preload_content=False, _request_timeout=timeout
        )
        return client.guarded(what, client.read_json, response)

    def _settled(self, namespace: str, task: asyncio.Task[Mapping[str, str] | None]) -> None:
        if self._pending.get(namespace) is task:
            del self._pending[namespace]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have given up before the answer came

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
        for task in list(self._pending.values()):
            task.cancel()
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
