"""Registry credentials from a pod's ``imagePullSecrets`` (dockerconfigjson via the API server).

Secrets are read with the official ``kubernetes`` client in a worker thread (it is blocking),
within the request's deadline, and kept briefly so a burst of pods reads each secret once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from webhook import errors
from webhook.core.deadline import Deadline
from webhook.signatures.reference import canonical_registry
from webhook.signatures.registry import Credentials

log = logging.getLogger("portcullis.images")


def normalize_registry(key: str) -> str:
    """``https://index.docker.io/v1/`` → ``docker.io``; ``host:port/path`` → ``host:port``."""
    return canonical_registry(key.split("://", 1)[-1].split("/", 1)[0])


def parse_docker_config(data: bytes) -> dict[str, Credentials]:
    """Credentials by registry from a ``.dockerconfigjson`` (or legacy ``.dockercfg``) document."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    auths = doc.get("auths", doc) if isinstance(doc, dict) else {}
    found: dict[str, Credentials] = {}
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if not isinstance(entry, dict):
            continue
        username, password = entry.get("username"), entry.get("password")
        if not (isinstance(username, str) and isinstance(password, str)) and isinstance(entry.get("auth"), str):
            try:
                username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, binascii.Error) as exc:  # ValueError also covers non-ASCII text, bad UTF-8
                # Only this entry is unusable: the other registries in the secret still apply.
                log.warning(
                    "imagePullSecret entry %r skipped: its auth field is not base64 of user:password (%s)", key, exc
                )
                continue
        if isinstance(username, str) and isinstance(password, str) and username:
            found[normalize_registry(key)] = Credentials(username, password)
    return found


class PullSecretsUnknown:
    """``PullSecrets.peek``: some secret is not in the cache (look it up, with an await)."""


UNKNOWN = PullSecretsUnknown()


class PullSecrets:
    """Reads and briefly keeps the dockerconfigjson secrets pods name."""

    def __init__(self, kube_api: Any, *, ttl: float = 30.0, timeout: float = 2.0) -> None:
        self._api = kube_api
        self._ttl = ttl
        self._timeout = timeout
        self._cache: dict[tuple[str, str], tuple[float, dict[str, Credentials]]] = {}

    async def lookup(
        self, namespace: str, names: Sequence[str], registry: str, deadline: Deadline
    ) -> Credentials | None:
        """The first named secret's credentials for ``registry`` (``None``: pull anonymously)."""
        for name in names:
            creds = (await self._secret(namespace, name, deadline)).get(registry)
            if creds is not None:
                return creds
        return None

    def peek(self, namespace: str, names: Sequence[str], registry: str) -> Credentials | PullSecretsUnknown | None:
        """What ``lookup`` would answer from the cache alone, or ``UNKNOWN`` (the warm path)."""
        now = time.monotonic()
        for name in names:
            cached = self._cache.get((namespace, name))
            if cached is None or cached[0] <= now:
                return UNKNOWN
            creds = cached[1].get(registry)
            if creds is not None:
                return creds
        return None

    async def _secret(self, namespace: str, name: str, deadline: Deadline) -> Mapping[str, Credentials]:
        key = (namespace, name)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        timeout = deadline.cap(self._timeout)
        try:
            data = await asyncio.wait_for(asyncio.to_thread(self._read, namespace, name, timeout), timeout)
        except TimeoutError as exc:
            raise errors.ApiServerError(f"reading imagePullSecret {namespace}/{name}: timed out") from exc
        if len(self._cache) >= 1024:
            self._cache.clear()
        self._cache[key] = (now + self._ttl, data)
        return data

    def _read(self, namespace: str, name: str, timeout: float) -> dict[str, Credentials]:
        from kubernetes import client  # imported lazily: only clusters with pull secrets need it

        try:
            secret = client.CoreV1Api(self._api).read_namespaced_secret(name, namespace, _request_timeout=timeout)
        except client.ApiException as exc:
            if exc.status in (403, 404):
                # kubelet also pulls without a missing secret; the registry will then say no.
                log.warning("imagePullSecret %s/%s unreadable (HTTP %s)", namespace, name, exc.status)
                return {}
            raise errors.ApiServerError(f"reading imagePullSecret {namespace}/{name}: HTTP {exc.status}") from exc
        except Exception as exc:
            raise errors.ApiServerError(f"reading imagePullSecret {namespace}/{name}: {exc}") from exc
        data = secret.data or {}
        raw = data.get(".dockerconfigjson") or data.get(".dockercfg")
        if not raw:
            return {}
        try:
            return parse_docker_config(base64.b64decode(raw))
        except (binascii.Error, ValueError):
            return {}
