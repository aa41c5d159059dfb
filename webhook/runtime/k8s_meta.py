"""Pod metadata for container ids, from the node's kubelet (``GET /pods``): k8s.* fields.

The monitor runs as a DaemonSet, so the kubelet on its own node already lists every pod there,
with the container ids the process table finds in cgroup paths. The list is refreshed every
``interval`` seconds, and at most every ``min_interval`` when an unknown container shows up.
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

__all__ = ["KubeletPods", "PodInfo", "index_pods"]

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
            repo, tag = _split_image(self.image)
            out.update({"container.image": self.image, "container.image.repository": repo})
            if tag:
                out["container.image.tag"] = tag
        return out


def _split_image(image: str) -> tuple[str, str]:
    name = image.split("@", 1)[0]
    head, sep, tag = name.rpartition(":")
    if sep and "/" not in tag:
        return head, tag
    return name, ""


def index_pods(pod_list: dict[str, Any]) -> dict[str, PodInfo]:
    """A PodList → full container id → PodInfo (every container, init and ephemeral ones too)."""
    out: dict[str, PodInfo] = {}
    for pod in pod_list.get("items") or ():
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
            for cs in status.get(key) or ():
                cid = (cs.get("containerID") or "").rpartition("://")[2]
                if cid:
                    out[cid] = PodInfo(
                        namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
                        labels=dict(meta.get("labels") or {}), container_name=cs.get("name", ""),
                        image=cs.get("image", ""),
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
        self.url = url.rstrip("/") + "/pods"
        self.token_path = Path(token_path) if token_path else None
        self.interval = interval
        self.min_interval = min_interval
        self.pods: dict[str, PodInfo] = {}
        self.generation = 0  # bumped on every change: cached process fields are then rebuilt
        self.errors = 0
        self._ssl: ssl.SSLContext | bool = False if insecure else ssl.create_default_context(cafile=ca_path)
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
        if self.token_path is not None:
            headers["Authorization"] = "Bearer " + self.token_path.read_text().strip()
        try:
            async with self._session.get(self.url, headers=headers, ssl=self._ssl) as resp:
                resp.raise_for_status()
                pods = index_pods(await resp.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.errors += 1
            _log.warning("kubelet %s: %s (pod metadata may be stale)", self.url, exc)
            return
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            wait = self._last + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.refresh()

    def stats(self) -> dict[str, int]:
        return {"pods_containers": len(self.pods), "kubelet_errors": self.errors}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
