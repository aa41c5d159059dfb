"""A small local Kubernetes API server for the scan tests, speaking the real wire format over HTTP.

No Kubernetes API server can run here, so the scan and lease code talks through the official
client's ``ApiClient`` to this aiohttp server on 127.0.0.1. It serves any resource the test
registers, core (``/api/v1``) and grouped (``/apis/<group>/<version>``), the way kube-apiserver does:

- lists with ``metadata.resourceVersion``, ``limit`` + ``continue`` paging and ``labelSelector``
  (equality terms); items carry no ``kind``/``apiVersion``, as in a real list;
- ``watch=true``: one JSON event per line (ADDED, MODIFIED, DELETED, BOOKMARK), resumed after
  ``resourceVersion``;
- GET (404 ``NotFound``), POST (409 ``AlreadyExists``; 404 when the namespace does not exist),
  PUT with a stale ``metadata.resourceVersion`` (409 ``Conflict``), DELETE with
  ``preconditions.resourceVersion`` (409 when stale), all with ``Status`` bodies;
- custom resources are validated against their CRD's ``openAPIV3Schema`` (422 ``Invalid``), and
  their collections answer 404 until the CRD is registered, as with an uninstalled CRD.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
from collections.abc import Mapping
from typing import Any

import jsonschema
from aiohttp import web

Key = tuple[str, str, str, str]  # (group, plural, namespace, name)


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
    def __init__(self) -> None:
        # (group, plural) -> (version, kind, namespaced, schema or None)
        self.resources: dict[tuple[str, str], tuple[str, str, bool, dict[str, Any] | None]] = {}
        self.objects: dict[Key, dict[str, Any]] = {}
        self.rv = 100
        self.history: list[tuple[int, tuple[str, str], str, dict[str, Any]]] = []
        self.watchers: set[tuple[tuple[str, str], asyncio.Queue[dict[str, Any] | None], bool]] = set()
        self.snapshots: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[str] = []
        self.conflicts = 0
        self.fail_next: dict[str, int] = {}  # "PUT policyreports" -> answer that many with 409 first
        self.port = 0
        self._runner: web.AppRunner | None = None
        for plural, kind, namespaced in (
            ("pods", "Pod", True),
            ("namespaces", "Namespace", False),
            ("configmaps", "ConfigMap", True),
        ):
            self.register("", "v1", plural, kind, namespaced)
        for plural, kind in (
            ("deployments", "Deployment"),
            ("replicasets", "ReplicaSet"),
            ("statefulsets", "StatefulSet"),
            ("daemonsets", "DaemonSet"),
        ):
            self.register("apps", "v1", plural, kind, True)
        for plural, kind in (("jobs", "Job"), ("cronjobs", "CronJob")):
            self.register("batch", "v1", plural, kind, True)
        for plural, kind in (("replicationcontrollers", "ReplicationController"), ("podtemplates", "PodTemplate")):
            self.register("", "v1", plural, kind, True)
        self.register("coordination.k8s.io", "v1", "leases", "Lease", True)

    def register(
        self, group: str, version: str, plural: str, kind: str, namespaced: bool, schema: dict[str, Any] | None = None
    ) -> None:
        self.resources[(group, plural)] = (version, kind, namespaced, schema)

    def install_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd["spec"]
        version = spec["versions"][0]
        self.register(
            spec["group"],
            version["name"],
            spec["names"]["plural"],
            spec["names"]["kind"],
            spec["scope"] == "Namespaced",
            version["schema"]["openAPIV3Schema"],
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/{version}/{rest:.*}", self._handle)
        app.router.add_route("*", "/apis/{group}/{version}/{rest:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        if not self.port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self.url

    async def stop(self) -> None:
        for _, queue, _ in list(self.watchers):
            queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- cluster state, driven by tests ----------------------------------------------------
    def put(self, group: str, plural: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(dict(obj))
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        meta = obj.setdefault("metadata", {})
        key = (group, plural, meta.get("namespace", ""), meta["name"])
        event = "MODIFIED" if key in self.objects else "ADDED"
        if event == "ADDED":
            meta.setdefault("uid", f"uid-{plural}-{key[2]}-{key[3]}")
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        else:
            meta["uid"] = self.objects[key]["metadata"]["uid"]
            meta["creationTimestamp"] = self.objects[key]["metadata"].get("creationTimestamp")
        self._commit(key, obj, event)
        return self.get(group, plural, key[2], key[3]) or {}

    def delete(self, group: str, plural: str, namespace: str, name: str) -> None:
        obj = self.objects.get((group, plural, namespace, name))
        if obj is not None:
            self._commit((group, plural, namespace, name), copy.deepcopy(obj), "DELETED")

    def get(self, group: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((group, plural, namespace, name))
        return self._typed(group, plural, obj) if obj is not None else None

    def _typed(self, group: str, plural: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        version, kind, _, _ = self.resources[(group, plural)]
        return {"apiVersion": f"{group}/{version}" if group else version, "kind": kind, **copy.deepcopy(dict(obj))}

    def _commit(self, key: Key, obj: dict[str, Any], event: str) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        if event == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        typed = self._typed(key[0], key[1], obj)
        self.history.append((self.rv, key[:2], event, typed))
        for watched, queue, _ in list(self.watchers):
            if watched == key[:2]:
                queue.put_nowait({"type": event, "object": typed})

    # -- HTTP ------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        group = request.match_info.get("group", "")
        parts = [p for p in request.match_info["rest"].split("/") if p]
        namespace = ""
        if len(parts) >= 3 and parts[0] == "namespaces":
            namespace, parts = parts[1], parts[2:]
        plural, name = parts[0], (parts[1] if len(parts) > 1 else "")
        self.requests.append(f"{request.method} {request.path_qs}")
        if (group, plural) not in self.resources:
            return _json(status(404, "NotFound", f"the server could not find the requested resource ({plural})"), 404)
        method = request.method
        if method == "GET" and not name:
            if request.query.get("watch") in ("true", "1"):
                return await self._watch(request, group, plural, namespace)
            return self._list(request, group, plural, namespace)
        if method == "GET":
            obj = self.get(group, plural, namespace, name)
            return _json(obj, 200) if obj else _json(status(404, "NotFound", f'{plural} "{name}" not found'), 404)
        body = await request.json() if request.can_read_body else {}
        if method == "POST":
            return self._create(group, plural, namespace, body)
        if method == "PUT":
            return self._replace(group, plural, namespace, name, body)
        if method == "DELETE":
            return self._delete(group, plural, namespace, name, body)
        return _json(status(405, "MethodNotAllowed", method), 405)

    def _invalid(self, group: str, plural: str, body: Mapping[str, Any]) -> web.Response | None:
        schema = self.resources[(group, plural)][3]
        if schema is None:
            return None
        try:
            jsonschema.validate(body, schema)
        except jsonschema.ValidationError as exc:
            return _json(status(422, "Invalid", f"{plural} is invalid: {exc.message}"), 422)
        return None

    def _conflict(self, what: str) -> web.Response | None:
        if self.fail_next.get(what):
            self.fail_next[what] -= 1
            self.conflicts += 1
            return _json(
                status(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version and try again",
                ),
                409,
            )
        return None

    def _create(self, group: str, plural: str, namespace: str, body: dict[str, Any]) -> web.Response:
        name = body.get("metadata", {}).get("name")
        if namespace and ("", "namespaces", "", namespace) not in self.objects:
            return _json(status(404, "NotFound", f'namespaces "{namespace}" not found'), 404)
        if (group, plural, namespace, name) in self.objects:
            self.conflicts += 1
            return _json(status(409, "AlreadyExists", f'{plural} "{name}" already exists'), 409)
        invalid = self._invalid(group, plural, body)
        if invalid is not None:
            return invalid
        body["metadata"].pop("resourceVersion", None)
        if namespace:
            body["metadata"]["namespace"] = namespace
        return _json(self.put(group, plural, body), 201)

    def _replace(self, group: str, plural: str, namespace: str, name: str, body: dict[str, Any]) -> web.Response:
        current = self.objects.get((group, plural, namespace, name))
        if current is None:
            return _json(status(404, "NotFound", f'{plural} "{name}" not found'), 404)
        conflict = self._conflict(f"PUT {plural}")
        if conflict is not None:
            return conflict
        wanted = body.get("metadata", {}).get("resourceVersion")
        if wanted != current["metadata"]["resourceVersion"]:  # PUT without a version is refused too
            self.conflicts += 1
            return _json(
                status(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {plural} "{name}": '
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again",
                ),
                409,
            )
        invalid = self._invalid(group, plural, body)
        if invalid is not None:
            return invalid
        if namespace:
            body["metadata"]["namespace"] = namespace
        return _json(self.put(group, plural, body), 200)

    def _delete(self, group: str, plural: str, namespace: str, name: str, body: Mapping[str, Any]) -> web.Response:
        current = self.objects.get((group, plural, namespace, name))
        if current is None:
            return _json(status(404, "NotFound", f'{plural} "{name}" not found'), 404)
        wanted = (body.get("preconditions") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            self.conflicts += 1
            return _json(status(409, "Conflict", "precondition failed: resourceVersion"), 409)
        self.delete(group, plural, namespace, name)
        return _json(status(200, "", "deleted") | {"status": "Success"}, 200)

    def _items(self, group: str, plural: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        terms = [t.split("=", 1) for t in selector.split(",") if "=" in t]
        out = []
        for (g, p, ns, _), obj in sorted(self.objects.items()):
            if (g, p) != (group, plural) or (namespace and ns != namespace):
                continue
            labels = obj["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in terms):
                out.append(copy.deepcopy(obj))
        return out

    def _list(self, request: web.Request, group: str, plural: str, namespace: str) -> web.Response:
        limit = int(request.query.get("limit") or 0)
        token = request.query.get("continue")
        if token:
            snapshot_id, _, offset_text = token.rpartition(":")
            items = self.snapshots.get(snapshot_id)
            if items is None:
                return _json(status(410, "Expired", "The provided continue parameter is too old"), 410)
            version, offset = snapshot_id.split("-")[0], int(offset_text)
        else:
            items = self._items(group, plural, namespace, request.query.get("labelSelector", ""))
            version, offset = str(self.rv), 0
            snapshot_id = f"{self.rv}-{group}-{plural}-{namespace}-{len(self.snapshots)}"
            self.snapshots[snapshot_id] = items
        page = items[offset : offset + limit] if limit else items[offset:]
        metadata: dict[str, Any] = {"resourceVersion": version}
        if limit and offset + limit < len(items):
            metadata["continue"] = f"{snapshot_id}:{offset + limit}"
        version_, kind, _, _ = self.resources[(group, plural)]
        return _json(
            {
                "kind": kind + "List",
                "apiVersion": f"{group}/{version_}" if group else version_,
                "metadata": metadata,
                "items": page,
            },
            200,
        )

    async def _watch(self, request: web.Request, group: str, plural: str, namespace: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        since_text = request.query.get("resourceVersion") or ""
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        if since_text in ("", "0"):
            for item in self._items(group, plural, namespace, ""):
                queue.put_nowait({"type": "ADDED", "object": self._typed(group, plural, item)})
        else:
            for rv, watched, event, obj in self.history:
                if watched == (group, plural) and rv > int(since_text):
                    queue.put_nowait({"type": event, "object": obj})
        watcher = ((group, plural), queue, bookmarks)
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


def _json(body: Any, code: int) -> web.Response:
    return web.json_response(body, status=code)
