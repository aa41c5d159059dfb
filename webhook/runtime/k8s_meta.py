"""Pod metadata for container ids, from the node's kubelet (``GET /pods``): k8s.* fields.

The monitor runs as a DaemonSet, so the kubelet on its own node already lists every pod there,
with the container ids the process table finds in cgroup paths. The list is refreshed every
``interval`` seconds, and at most every ``min_interval`` when an unknown container shows up.

Why the kubelet and not the CRI socket or the API server: the CRI socket (containerd, CRI-O) would
need a hostPath to a socket that can also start, exec into and delete every container on the node;
an API server watch of the node's pods needs cluster-wide list/watch on pods and puts one watch
per node on the API server. The kubelet's ``/pods`` is read-only, local and authorized as
``get nodes/pods`` (fine-grained kubelet authorization, Kubernetes 1.33+; older kubelets want
``nodes/proxy``): see SECURITY.md "Monitor privileges". The bearer token file is re-read on every
refresh, so a projected (rotating) service account token keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from webhook import errors
from webhook.core import imagename

__all__ = ["KubeletPods", "PodInfo", "index_pods", "kubelet_url"]

_log = logging.getLogger("portcullis.monitor")


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What Falco's k8s.* and container.* fields say about one container."""

    namespace: str
    name: str
    uid: str
    labels: dict[str, str] = field(hash=False)
    container_name: str = ""
    image: str = ""
    digest: str = ""  # sha256:… of the image the runtime runs (status imageID)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "k8s.ns.name": self.namespace,
            "k8s.pod.name": self.name,
            "k8s.pod.uid": self.uid,
            "k8s.pod.labels": ", ".join(f"{k}:{v}" for k, v in sorted(self.labels.items())),
        }
        for key, value in self.labels.items():
            out[f"k8s.pod.label[{key}]"] = value
            out[f"k8s.pod.label.{key}"] = value
        if self.container_name:
            out["container.name"] = self.container_name
        if self.image:
            repo, tag = imagename.split_tag(self.image)
            out.update({"container.image": self.image, "container.image.repository": repo})
            if tag:
                out["container.image.tag"] = tag
        if self.digest:
            out["container.image.digest"] = self.digest
        return out


def kubelet_url(url: str) -> str:
    """The base URL, with a bare IPv6 host put in brackets: the chart builds it from the pod's
    ``status.hostIP``, which on an IPv6 node is ``fd00::1``, not ``[fd00::1]``."""
    scheme, sep, rest = url.rstrip("/").partition("://")
    if not sep:
        raise errors.ConfigError(f"kubelet URL {url!r}: expected https://HOST:PORT")
    host, colon, port = rest.rpartition(":")
    if colon and port.isdigit() and ":" in host and not host.startswith("["):
        rest = f"[{host}]:{port}"
    return f"{scheme}://{rest}"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(d: dict[str, Any], key: str) -> str:
    value = d.get(key)
    return value if isinstance(value, str) else ""


def index_pods(pod_list: dict[str, Any]) -> dict[str, PodInfo]:
    """A PodList → full container id → PodInfo (every container, init and ephemeral ones too).

    The kubelet's answer is external input: an entry of the wrong type is skipped, never trusted.
    A status image the runtime reports only as an image id (``sha256:…``) is replaced by the
    image the pod spec names, so ``container.image.repository`` stays a repository.
    """
    out: dict[str, PodInfo] = {}
    for pod in _list(pod_list.get("items")):
        pod = _dict(pod)
        meta, spec, status = _dict(pod.get("metadata")), _dict(pod.get("spec")), _dict(pod.get("status"))
        labels = {k: v for k, v in _dict(meta.get("labels")).items() if isinstance(v, str)}
        spec_images = {
            _text(c, "name"): _text(c, "image")
            for key in ("containers", "initContainers", "ephemeralContainers")
            for c in map(_dict, _list(spec.get(key)))
        }
        for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
            for cs in map(_dict, _list(status.get(key))):
                cid = _text(cs, "containerID").rpartition("://")[2]
                if not cid:
                    continue
                name, image = _text(cs, "name"), _text(cs, "image")
                if not image or image.startswith("sha256:"):
                    image = spec_images.get(name, "") or image
                out[cid] = PodInfo(
                    namespace=_text(meta, "namespace"), name=_text(meta, "name"), uid=_text(meta, "uid"),
                    labels=labels, container_name=name, image=image,
                    digest=_text(cs, "imageID").rpartition("@")[2] if "@" in _text(cs, "imageID") else "",
                )  # fmt: skip
    return out


class KubeletPods:
    """Container id → PodInfo, kept fresh from the kubelet's ``/pods`` endpoint."""

    def __init__(
        self,
        url: str,
        *,
        token_path: str | Path | None = None,
        ca_path: str | Path | None = None,
        insecure: bool = False,
        interval: float = 30.0,
        min_interval: float = 2.0,
    ) -> None:
        self.url = kubelet_url(url) + "/pods"
        self.token_path = Path(token_path) if token_path else None
        self.interval = interval
        self.min_interval = min_interval
        self.pods: dict[str, PodInfo] = {}
        self.generation = 0  # bumped on every change: cached process fields are then rebuilt
        self.errors = 0
        self.fetches = 0  # pod lists read successfully
        try:
            self._ssl: ssl.SSLContext | bool = False if insecure else ssl.create_default_context(cafile=ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise errors.ConfigError(f"kubelet CA bundle {ca_path}: {exc}") from exc
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._last = 0.0
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="kubelet-pods")

    async def refresh(self) -> None:
        """Fetch the pod list once; on failure keep the old one (and count the error)."""
        assert self._session is not None
        self._last = time.monotonic()
        headers = {}
        try:
            if self.token_path is not None:  # never logged: only its file name appears in errors
                headers["Authorization"] = "Bearer " + self.token_path.read_text().strip()
            async with self._session.get(self.url, headers=headers, ssl=self._ssl) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status} (RBAC: the service account needs get on nodes/pods)")
                doc = await resp.json(content_type=None)
                if not isinstance(doc, dict) or doc.get("kind", "PodList") != "PodList":
                    raise ValueError("the answer is not a PodList")
                pods = index_pods(doc)
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            self.errors += 1
            _log.warning("kubelet %s: %s (pod metadata may be stale)", self.url, exc)
            return
        self.fetches += 1
        if pods != self.pods:
            self.pods = pods
            self.generation += 1

    def lookup(self, container_id: str) -> PodInfo | None:
        """The pod of a container; an unknown id asks for an early refresh (rate-limited)."""
        info = self.pods.get(container_id)
        if info is None and container_id:
            self._wake.set()
        return info

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # not wait_for: on 3.11 it can drop close()'s cancel
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            wait = self._last + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.refresh()

    def stats(self) -> dict[str, int]:
        return {"pods_containers": len(self.pods), "kubelet_errors": self.errors, "kubelet_fetches": self.fetches}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
