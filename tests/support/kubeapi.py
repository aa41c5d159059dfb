"""A small local Kubernetes API server for tests, speaking the real wire format over HTTP.

No Kubernetes API server can run here, so the quota, namespace, inventory, scan and lease tests
talk through the official ``kubernetes`` client to this aiohttp server on 127.0.0.1. It serves
any resource a test registers, core (``/api/v1``) and grouped (``/apis/<group>/<version>``), the
way kube-apiserver does:

- lists with ``metadata.resourceVersion``, ``limit`` + ``continue`` paging (an expired token
  answers ``410 Expired``) and ``labelSelector`` (equality terms); list items carry no
  ``kind``/``apiVersion``, as in a real list;
- ``watch=true``: a chunked stream of one JSON event per line (ADDED, MODIFIED, DELETED, and
  BOOKMARK when ``allowWatchBookmarks``), resumed after ``resourceVersion``; a version older than
  the compaction point gets an ``ERROR`` event with a 410 ``Status``, as etcd compaction causes;
  ``timeoutSeconds`` ends the stream;
- GET (404 ``NotFound``), POST (409 ``AlreadyExists``; 404 when the namespace does not exist, as
  the NamespaceLifecycle admission plugin answers), PUT with a stale ``metadata.resourceVersion``
  (409 ``Conflict``), DELETE with ``preconditions.resourceVersion`` (409 when stale), all with
  ``Status`` bodies;
- custom resources are validated against their CRD's ``openAPIV3Schema`` (422 ``Invalid``), and
  their collections answer 404 until the CRD is registered, as with an uninstalled CRD.

Resources are named as kubectl names them: ``pods``, ``deployments.apps``,
``policyreports.wgpolicyk8s.io``. Tests drive the cluster through methods (``put``, ``delete``,
``compact``, ``bookmark``, ``drop_watches``) and take the server down and up again
(``stop``/``start`` on the same port).
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
from aiohttp import web

Key = tuple[str, str, str]  # (resource, namespace, name)


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    schema: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


BUILT_IN = (
    Resource("", "v1", "pods", "Pod", True),
    Resource("", "v1", "namespaces", "Namespace", False),
    Resource("", "v1", "configmaps", "ConfigMap", True),
    Resource("", "v1", "replicationcontrollers", "ReplicationController", True),
    Resource("", "v1", "podtemplates", "PodTemplate", True),
    Resource("apps", "v1", "deployments", "Deployment", True),
    Resource("apps", "v1", "replicasets", "ReplicaSet", True),
    Resource("apps", "v1", "statefulsets", "StatefulSet", True),
    Resource("apps", "v1", "daemonsets", "DaemonSet", True),
    Resource("batch", "v1", "jobs", "Job", True),
    Resource("batch", "v1", "cronjobs", "CronJob", True),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", True),
)


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


def json_response(body: Any, code: int = 200) -> web.Response:
    return web.json_response(body, status=code)


class FakeKubeApi:
    """In-memory objects, one global resourceVersion counter, an event history for watches."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {r.name: r for r in BUILT_IN}
        self.objects: dict[Key, dict[str, Any]] = {}
        self.rv = 100
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, resource, type, object)
        self.compacted = 0  # watches from a version below this get 410 Gone
        self.watchers: set[tuple[str, asyncio.Queue[dict[str, Any] | None], bool]] = set()
        self.snapshots: dict[str, list[dict[str, Any]]] = {}  # continue token prefix -> list snapshot
        self.requests: list[str] = []  # "GET /api/v1/pods?watch=true" ... for assertions
        self.conflicts = 0
        self.expire_next_continue = False  # answer the next continue token with 410 Expired
        self.fail_next: dict[str, int] = {}  # "PUT policyreports" -> answer that many with 409 first
        # kube-apiserver allows a PUT without metadata.resourceVersion (an unconditional update);
        # the scan tests refuse it, to prove every write they make is a compare-and-swap.
        self.require_version_on_update = False
        self.stalled = False  # accept connections but answer no request (a wedged server or path)
        self._creations: dict[Key, int] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def register(self, resource: Resource) -> None:
        self.resources[resource.name] = resource

    def install_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd["spec"]
        version = spec["versions"][0]
        self.register(
            Resource(
                spec["group"],
                version["name"],
                spec["names"]["plural"],
                spec["names"]["kind"],
                spec["scope"] == "Namespaced",
                version["schema"]["openAPIV3Schema"],
            )
        )

    # -- lifecycle -------------------------------------------------------------------------
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
        """Take the server down: open watches end, new connections are refused."""
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- cluster state, driven by tests ----------------------------------------------------
    def put(self, resource: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or update an object (ADDED / MODIFIED event); returns it as a GET would."""
        obj = copy.deepcopy(dict(obj))
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        meta = obj.setdefault("metadata", {})
        key = (resource, meta.get("namespace", ""), meta["name"])
        event = "MODIFIED" if key in self.objects else "ADDED"
        if event == "ADDED":
            count = self._creations[key] = self._creations.get(key, 0) + 1
            suffix = f"-{count}" if count > 1 else ""  # a re-created object is a new object
            meta.setdefault("uid", f"uid-{self.resources[resource].plural}-{key[1]}-{key[2]}{suffix}")
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        else:  # an update keeps the object's identity
            meta["uid"] = self.objects[key]["metadata"]["uid"]
            meta["creationTimestamp"] = self.objects[key]["metadata"].get("creationTimestamp")
        self._commit(key, obj, event)
        return self.get(resource, key[1], key[2]) or {}

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((resource, namespace, name))
        return self._typed(resource, obj) if obj is not None else None

    def delete(self, resource: str, namespace: str, name: str) -> None:
        obj = self.objects.get((resource, namespace, name))
        if obj is not None:
            self._commit((resource, namespace, name), copy.deepcopy(obj), "DELETED")

    def compact(self) -> None:
        """Forget history (etcd compaction): watches resuming from an older version get 410."""
        self.compacted = self.rv + 1
        self.history.clear()
        self.snapshots.clear()

    def bookmark(self) -> None:
        """Send a BOOKMARK with the current version to every watch that asked for them."""
        for resource, queue, bookmarks in list(self.watchers):
            if bookmarks:
                event = self._typed(resource, {"metadata": {"resourceVersion": str(self.rv)}})
                queue.put_nowait({"type": "BOOKMARK", "object": event})

    def bump(self, resource: str = "configmaps") -> None:
        """Advance the version with a change nobody watches (to test bookmarks moving the watch on)."""
        self.put(resource, {"metadata": {"name": f"noise-{self.rv}", "namespace": "kube-system"}, "data": {}})

    def hang_watches(self) -> None:
        """Open watch streams stay connected but deliver nothing more (a dead peer behind a load
        balancer that keeps the TCP connection open); new watches work."""
        self.watchers.clear()

    def drop_watches(self) -> None:
        """End every open watch stream (a load balancer timeout, an apiserver restart)."""
        for _, queue, _ in list(self.watchers):
            queue.put_nowait(None)

    def _typed(self, resource: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        info = self.resources[resource]
        return {"apiVersion": info.api_version, "kind": info.kind, **copy.deepcopy(dict(obj))}

    def _commit(self, key: Key, obj: dict[str, Any], event: str) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        if event == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        typed = self._typed(key[0], obj)
        self.history.append((self.rv, key[0], event, typed))
        for watched, queue, _ in list(self.watchers):
            if watched == key[0]:
                queue.put_nowait({"type": event, "object": typed})

    # -- HTTP ------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        group = request.match_info.get("group", "")
        parts = [p for p in request.match_info["rest"].split("/") if p]
        namespace = ""
        if len(parts) >= 3 and parts[0] == "namespaces":
            namespace, parts = parts[1], parts[2:]
        plural, name = parts[0], (parts[1] if len(parts) > 1 else "")
        resource = f"{plural}.{group}" if group else plural
        self.requests.append(f"{request.method} {request.path_qs}")
        while self.stalled:
            await asyncio.sleep(0.05)
        if resource not in self.resources:
            message = f"the server could not find the requested resource ({plural})"
            return json_response(status(404, "NotFound", message), 404)
        method = request.method
        if method == "GET" and not name:
            if request.query.get("watch") in ("true", "1", "True"):
                return await self._watch(request, resource, namespace)
            return self._list(request, resource, namespace)
        if method == "GET":
            return await self._get_one(request, resource, namespace, name)
        body = await request.json() if request.can_read_body else {}
        if method == "POST":
            return self._create(resource, namespace, body)
        if method == "PUT":
            return self._replace(resource, namespace, name, body)
        if method == "DELETE":
            return self._delete(resource, namespace, name, body)
        return json_response(status(405, "MethodNotAllowed", method), 405)

    async def _get_one(self, request: web.Request, resource: str, namespace: str, name: str) -> web.Response:
        obj = self.get(resource, namespace, name)
        if obj is None:
            plural = self.resources[resource].plural
            return json_response(status(404, "NotFound", f'{plural} "{name}" not found'), 404)
        return json_response(obj)

    def _invalid(self, resource: str, body: Mapping[str, Any]) -> web.Response | None:
        info = self.resources[resource]
        if info.schema is None:
            return None
        try:
            jsonschema.validate(body, info.schema)
        except jsonschema.ValidationError as exc:
            return json_response(status(422, "Invalid", f"{info.plural} is invalid: {exc.message}"), 422)
        return None

    def _conflict(self, what: str) -> web.Response | None:
        if self.fail_next.get(what):
            self.fail_next[what] -= 1
            self.conflicts += 1
            message = "the object has been modified; please apply your changes to the latest version and try again"
            return json_response(status(409, "Conflict", message), 409)
        return None

    def _create(self, resource: str, namespace: str, body: dict[str, Any]) -> web.Response:
        plural = self.resources[resource].plural
        name = body.get("metadata", {}).get("name")
        if namespace and ("namespaces", "", namespace) not in self.objects:
            return json_response(status(404, "NotFound", f'namespaces "{namespace}" not found'), 404)
        if (resource, namespace, name) in self.objects:
            self.conflicts += 1
            return json_response(status(409, "AlreadyExists", f'{plural} "{name}" already exists'), 409)
        invalid = self._invalid(resource, body)
        if invalid is not None:
            return invalid
        body["metadata"].pop("resourceVersion", None)
        if namespace:
            body["metadata"]["namespace"] = namespace
        return json_response(self.put(resource, body), 201)

    def _replace(self, resource: str, namespace: str, name: str, body: dict[str, Any]) -> web.Response:
        plural = self.resources[resource].plural
        current = self.objects.get((resource, namespace, name))
        if current is None:
            return json_response(status(404, "NotFound", f'{plural} "{name}" not found'), 404)
        conflict = self._conflict(f"PUT {plural}")
        if conflict is not None:
            return conflict
        wanted = body.get("metadata", {}).get("resourceVersion")
        if (wanted or self.require_version_on_update) and wanted != current["metadata"]["resourceVersion"]:
            self.conflicts += 1
            message = (
                f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again"
            )
            return json_response(status(409, "Conflict", message), 409)
        invalid = self._invalid(resource, body)
        if invalid is not None:
            return invalid
        if namespace:
            body["metadata"]["namespace"] = namespace
        return json_response(self.put(resource, body), 200)

    def _delete(self, resource: str, namespace: str, name: str, body: Mapping[str, Any]) -> web.Response:
        plural = self.resources[resource].plural
        current = self.objects.get((resource, namespace, name))
        if current is None:
            return json_response(status(404, "NotFound", f'{plural} "{name}" not found'), 404)
        wanted = (body.get("preconditions") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            self.conflicts += 1
            return json_response(status(409, "Conflict", "precondition failed: resourceVersion"), 409)
        self.delete(resource, namespace, name)
        return json_response(status(200, "", "deleted") | {"status": "Success"}, 200)

    def _items(self, resource: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        terms = [t.split("=", 1) for t in selector.split(",") if "=" in t]
        out = []
        for (r, ns, _), obj in sorted(self.objects.items()):
            if r != resource or (namespace and ns != namespace):
                continue
            labels = obj["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in terms):
                out.append(copy.deepcopy(obj))
        return out

    def _list(self, request: web.Request, resource: str, namespace: str) -> web.Response:
        limit = int(request.query.get("limit") or 0)
        token = request.query.get("continue")
        if token:
            snapshot_id, _, offset_text = token.rpartition(":")
            items = self.snapshots.get(snapshot_id)
            if self.expire_next_continue:
                self.expire_next_continue = False
                items = None
            if items is None:
                message = "The provided continue parameter is too old to display a consistent list result."
                return json_response(status(410, "Expired", message), 410)
            version, offset = snapshot_id.split("-")[0], int(offset_text)
        else:
            items = self._items(resource, namespace, request.query.get("labelSelector", ""))
            version, offset = str(self.rv), 0
            snapshot_id = f"{self.rv}-{resource}-{namespace}-{len(self.snapshots)}"
            self.snapshots[snapshot_id] = items
        page = items[offset : offset + limit] if limit else items[offset:]
        metadata: dict[str, Any] = {"resourceVersion": version}
        if limit and offset + limit < len(items):
            metadata["continue"] = f"{snapshot_id}:{offset + limit}"
        info = self.resources[resource]
        return json_response(
            {"kind": info.kind + "List", "apiVersion": info.api_version, "metadata": metadata, "items": page}
        )

    async def _watch(self, request: web.Request, resource: str, namespace: str) -> web.StreamResponse:
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
            for item in self._items(resource, namespace, ""):
                queue.put_nowait({"type": "ADDED", "object": self._typed(resource, item)})
        else:
            for rv, watched, event, obj in self.history:
                if watched == resource and rv > since:
                    queue.put_nowait({"type": event, "object": obj})
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
