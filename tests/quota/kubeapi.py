"""A small local Kubernetes API server for tests, speaking the real wire format over HTTP.

No Kubernetes API server can be installed here, so the quota tests run the official
``kubernetes`` client against this aiohttp server on 127.0.0.1. It implements what the quota
code relies on, the way kube-apiserver does it:

- ``GET /api/v1/pods`` and ``GET /api/v1/namespaces``: lists with ``metadata.resourceVersion``,
  paging with ``limit`` + ``continue`` (an expired token answers ``410 Expired``);
- the same paths with ``watch=true``: a chunked stream of one JSON event per line (ADDED,
  MODIFIED, DELETED, and BOOKMARK when ``allowWatchBookmarks``), resumed from
  ``resourceVersion``; a version older than the compaction point gets an ``ERROR`` event with
  a 410 ``Status``, as etcd compaction causes; ``timeoutSeconds`` ends the stream;
- ConfigMaps: get (404 ``NotFound``), create (409 ``AlreadyExists``), replace with a stale
  ``metadata.resourceVersion`` (409 ``Conflict``), all with ``Status`` bodies.

Tests drive the cluster through methods (``put``, ``delete``, ``compact``, ``bookmark``,
``drop_watches``) and take the server down and up again (``stop``/``start`` on the same port).
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
from collections.abc import Mapping
from typing import Any

from aiohttp import web

_KINDS = {"pods": "Pod", "namespaces": "Namespace", "configmaps": "ConfigMap"}
Key = tuple[str, str, str]  # (resource, namespace, name)


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeKubeApi:
    """In-memory objects, one global resourceVersion counter, an event history for watches."""

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.rv = 100
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, resource, type, object)
        self.compacted = 0  # watches from a version below this get 410 Gone
        self.watchers: set[tuple[str, asyncio.Queue[dict[str, Any] | None], bool]] = set()
        self.snapshots: dict[str, list[dict[str, Any]]] = {}  # continue token prefix -> list snapshot
        self.requests: list[str] = []  # "GET /api/v1/pods?watch=true" ... for assertions
        self.conflicts = 0
        self.expire_next_continue = False  # answer the next continue token with 410 Expired
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/pods", self._collection("pods"))
        app.router.add_get("/api/v1/namespaces", self._collection("namespaces"))
        app.router.add_get("/api/v1/namespaces/{ns}/configmaps/{name}", self._get_configmap)
        app.router.add_post("/api/v1/namespaces/{ns}/configmaps", self._create_configmap)
        app.router.add_put("/api/v1/namespaces/{ns}/configmaps/{name}", self._replace_configmap)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        if not self.port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        return self.url

    async def stop(self) -> None:
        """Take the server down: open watches end, new connections are refused."""
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- cluster state, driven by tests ----------------------------------------------------
    def put(self, resource: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or update an object (ADDED / MODIFIED event); returns it with its new version."""
        obj = copy.deepcopy(dict(obj))
        metadata = obj.setdefault("metadata", {})
        key = (resource, metadata.get("namespace", ""), metadata["name"])
        kind = "MODIFIED" if key in self.objects else "ADDED"
        if kind == "ADDED":
            metadata.setdefault("uid", f"uid-{resource}-{key[1]}-{key[2]}-{self.rv}")
        else:  # an update keeps the object's identity
            metadata["uid"] = self.objects[key]["metadata"]["uid"]
        self._commit(resource, key, obj, kind)
        return obj

    def delete(self, resource: str, namespace: str, name: str) -> None:
        obj = self.objects.get((resource, namespace, name))
        if obj is not None:
            self._commit(resource, (resource, namespace, name), copy.deepcopy(obj), "DELETED")

    def compact(self) -> None:
        """Forget history (etcd compaction): watches resuming from an older version get 410."""
        self.compacted = self.rv + 1
        self.history.clear()
        self.snapshots.clear()

    def bookmark(self) -> None:
        """Send a BOOKMARK with the current version to every watch that asked for them."""
        for resource, queue, bookmarks in list(self.watchers):
            if bookmarks:
                event = {"kind": _KINDS[resource], "apiVersion": "v1", "metadata": {"resourceVersion": str(self.rv)}}
                queue.put_nowait({"type": "BOOKMARK", "object": event})

    def bump(self, resource: str = "configmaps") -> None:
        """Advance the version with a change nobody watches (to test bookmarks moving the watch on)."""
        self.put(resource, {"metadata": {"name": f"noise-{self.rv}", "namespace": "kube-system"}, "data": {}})

    def drop_watches(self) -> None:
        """End every open watch stream (a load balancer timeout, an apiserver restart)."""
        for _, queue, _ in list(self.watchers):
            queue.put_nowait(None)

    def _commit(self, resource: str, key: Key, obj: dict[str, Any], kind: str) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        if kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        event_obj = {"kind": _KINDS[resource], "apiVersion": "v1", **copy.deepcopy(obj)}
        self.history.append((self.rv, resource, kind, event_obj))
        for watched, queue, _ in list(self.watchers):
            if watched == resource:
                queue.put_nowait({"type": kind, "object": event_obj})

    # -- HTTP ------------------------------------------------------------------------------
    def _collection(self, resource: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            self.requests.append(f"GET {request.path_qs}")
            if request.query.get("watch") in ("true", "1", "True"):
                return await self._watch(request, resource)
            return self._list(request, resource)

        return handler

    def _items(self, resource: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (r, _, _), o in sorted(self.objects.items()) if r == resource]

    def _list(self, request: web.Request, resource: str) -> web.Response:
        limit = int(request.query.get("limit") or 0)
        token = request.query.get("continue")
        if token:
            snapshot_id, _, offset_text = token.partition(":")
            snapshot = self.snapshots.get(snapshot_id)
            if self.expire_next_continue:
                self.expire_next_continue = False
                snapshot = None
            if snapshot is None:
                message = "The provided continue parameter is too old to display a consistent list result."
                return web.json_response(status(410, "Expired", message), status=410)
            version, offset = snapshot_id.split("-")[0], int(offset_text)
            items = snapshot
        else:
            version, offset, items = str(self.rv), 0, self._items(resource)
            snapshot_id = f"{self.rv}-{resource}"
            self.snapshots[snapshot_id] = items
        page = items[offset : offset + limit] if limit else items[offset:]
        metadata: dict[str, Any] = {"resourceVersion": version}
        if limit and offset + limit < len(items):
            metadata["continue"] = f"{snapshot_id}:{offset + limit}"
        body = {"kind": _KINDS[resource] + "List", "apiVersion": "v1", "metadata": metadata, "items": page}
        return web.json_response(body)

    async def _watch(self, request: web.Request, resource: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        since_text = request.query.get("resourceVersion") or ""
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1", "True")
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        since = int(since_text) if since_text not in ("", "0") else None
        if since is not None and since < self.compacted - 1:
            gone = status(410, "Expired", f"too old resource version: {since} ({self.compacted - 1})")
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        if since is None:  # "start at most recent": synthetic ADDED for the current state first
            for item in self._items(resource):
                queue.put_nowait({"type": "ADDED", "object": {"kind": _KINDS[resource], "apiVersion": "v1", **item}})
        else:
            for rv, watched, kind, obj in self.history:
                if watched == resource and rv > since:
                    queue.put_nowait({"type": kind, "object": obj})
        watcher = (resource, queue, bookmarks)
        self.watchers.add(watcher)
        loop = asyncio.get_running_loop()
        ends = loop.time() + timeout
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), max(0.0, ends - loop.time()))
                except TimeoutError:
                    break
                if event is None:
                    break
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.discard(watcher)
        return response

    async def _get_configmap(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        self.requests.append(f"GET {request.path}")
        obj = self.objects.get(("configmaps", ns, name))
        if obj is None:
            return web.json_response(status(404, "NotFound", f'configmaps "{name}" not found'), status=404)
        return web.json_response({"kind": "ConfigMap", "apiVersion": "v1", **obj})

    async def _create_configmap(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        body = await request.json()
        name = body["metadata"]["name"]
        self.requests.append(f"POST {request.path}")
        if ("configmaps", ns, name) in self.objects:
            self.conflicts += 1
            return web.json_response(status(409, "AlreadyExists", f'configmaps "{name}" already exists'), status=409)
        body["metadata"]["namespace"] = ns
        body["metadata"].pop("resourceVersion", None)
        return web.json_response(self.put("configmaps", body), status=201)

    async def _replace_configmap(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        body = await request.json()
        self.requests.append(f"PUT {request.path}")
        current = self.objects.get(("configmaps", ns, name))
        if current is None:
            return web.json_response(status(404, "NotFound", f'configmaps "{name}" not found'), status=404)
        wanted = body.get("metadata", {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            self.conflicts += 1
            message = (
                f'Operation cannot be fulfilled on configmaps "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again"
            )
            return web.json_response(status(409, "Conflict", message), status=409)
        body["metadata"]["uid"] = current["metadata"].get("uid")
        body["metadata"]["namespace"] = ns
        return web.json_response(self.put("configmaps", body))
