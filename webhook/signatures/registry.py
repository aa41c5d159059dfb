"""OCI distribution client (aiohttp): manifests, blobs, referrers, with the registry auth flows.

Used by the signature fetchers. Every answer is checked against the digest it claims, every
read is capped in size, every call is timed out within the caller's deadline, and HTTP (not
HTTPS) is used only for registries configured as insecure. One session: connections are reused.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from webhook import errors
from webhook.core.deadline import Deadline
from webhook.signatures.reference import api_host

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})

_MAX_TOKENS = 4096
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryCallError(errors.RegistryError):
    """A registry call failed; the message names the registry, the call and the error."""

    def __init__(self, registry: str, message: str) -> None:
        super().__init__(f"registry {registry}: {message}")
        self.registry = registry


@dataclass(frozen=True, slots=True)
class Credentials:
    """Basic credentials for one registry (from config or a pod's imagePullSecrets)."""

    username: str
    password: str

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest or index exactly as served, with the digest of those bytes."""

    digest: str
    media_type: str
    body: bytes

    def document(self) -> dict[str, Any]:
        data = orjson.loads(self.body)
        if not isinstance(data, dict):
            raise ValueError("manifest is not a JSON object")
        return data

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryClient:
    """Talks the distribution API to any number of registries over one aiohttp session."""

    def __init__(
        self,
        *,
        insecure_registries: frozenset[str] = frozenset(),
        credentials: Mapping[str, Credentials] | None = None,
        timeout: float = 2.0,
        max_manifest_bytes: int = 4 * 1024 * 1024,
        max_blob_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._insecure = insecure_registries
        self._credentials = dict(credentials or {})
        self._timeout = timeout
        self._max_manifest = max_manifest_bytes
        self._max_blob = max_blob_bytes
        self._session: aiohttp.ClientSession | None = None
        # (registry, repository, username) -> (Authorization header, expiry on the monotonic clock)
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=64, ttl_dns_cache=300, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    # -- public calls ---------------------------------------------------------------------------

    async def resolve(
        self, registry: str, repository: str, tag: str, deadline: Deadline, creds: Credentials | None = None
    ) -> str:
        """The digest a tag points to now (HEAD; GET and hash when the header is missing)."""
        path = f"/v2/{repository}/manifests/{tag}"
        async with self._call("HEAD", registry, repository, path, deadline, creds, MANIFEST_ACCEPT) as resp:
            if resp.status == 404:
                raise RegistryCallError(registry, f"{repository}:{tag} not found")
            self._expect_ok(registry, resp, f"HEAD {path}")
            digest = resp.headers.get("Docker-Content-Digest", "")
        if digest.startswith("sha256:") and len(digest) == 71:
            return digest
        manifest = await self.manifest(registry, repository, tag, deadline, creds)
        if manifest is None:
            raise RegistryCallError(registry, f"{repository}:{tag} not found")
        return manifest.digest

    async def manifest(
        self,
        registry: str,
        repository: str,
        reference: str,
        deadline: Deadline,
        creds: Credentials | None = None,
    ) -> Manifest | None:
        """GET a manifest by tag or digest; ``None`` when absent. Its bytes must match its digest."""
        path = f"/v2/{repository}/manifests/{reference}"
        async with self._call("GET", registry, repository, path, deadline, creds, MANIFEST_ACCEPT) as resp:
            if resp.status == 404:
                return None
            self._expect_ok(registry, resp, f"GET {path}")
            body = await self._read(registry, resp, self._max_manifest, f"manifest {repository}@{reference}")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            claimed = resp.headers.get("Docker-Content-Digest")
        digest = sha256_digest(body)
        expected = reference if reference.startswith("sha256:") else claimed
        if expected and expected != digest:
            raise RegistryCallError(
                registry, f"manifest {repository}@{reference}: content digest {digest} != expected {expected}"
            )
        if not media_type or media_type in ("application/json", "application/octet-stream"):
            media_type = _media_type_from_body(body)
        return Manifest(digest, media_type, body)

    async def blob(
        self, registry: str, repository: str, digest: str, deadline: Deadline, creds: Credentials | None = None
    ) -> bytes:
        """GET a blob, capped in size and checked against its digest."""
        path = f"/v2/{repository}/blobs/{digest}"
        async with self._call("GET", registry, repository, path, deadline, creds, "*/*") as resp:
            if resp.status == 404:
                raise RegistryCallError(registry, f"blob {repository}@{digest} not found")
            self._expect_ok(registry, resp, f"GET {path}")
            body = await self._read(registry, resp, self._max_blob, f"blob {repository}@{digest}")
        if sha256_digest(body) != digest:
            raise RegistryCallError(registry, f"blob {repository}@{digest}: content does not match its digest")
        return body

    async def referrers(
        self, registry: str, repository: str, digest: str, deadline: Deadline, creds: Credentials | None = None
    ) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose ``subject`` is ``digest`` (OCI 1.1).

        Uses the referrers API, and the referrers tag schema (``sha256-<hex>``, an index kept
        by pushers) where the registry answers the API with 404.
        """
        path = f"/v2/{repository}/referrers/{digest}"
        async with self._call("GET", registry, repository, path, deadline, creds, OCI_INDEX) as resp:
            if resp.status == 200 and resp.headers.get("Content-Type", "").startswith(OCI_INDEX):
                body = await self._read(registry, resp, self._max_manifest, f"referrers of {digest}")
                return _descriptors(body)
            if resp.status not in (404, 400, 405, 200):
                self._expect_ok(registry, resp, f"GET {path}")
        index = await self.manifest(registry, repository, digest.replace(":", "-"), deadline, creds)
        return _descriptors(index.body) if index is not None else []

    # -- plumbing -------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        registry: str,
        repository: str,
        path: str,
        deadline: Deadline,
        creds: Credentials | None,
        accept: str,
    ) -> _Call:
        return _Call(self, method, registry, repository, path, deadline, creds, accept)

    def _url(self, registry: str, path: str) -> str:
        scheme = "http" if registry in self._insecure else "https"
        return f"{scheme}://{api_host(registry)}{path}"

    def _creds(self, registry: str, creds: Credentials | None) -> Credentials | None:
        return creds if creds is not None else self._credentials.get(registry)

    def _call_timeout(self, registry: str, what: str, deadline: Deadline) -> aiohttp.ClientTimeout:
        left = deadline.cap(self._timeout)
        if left <= 0.001:
            raise RegistryCallError(registry, f"{what}: no time left in the request's budget")
        return aiohttp.ClientTimeout(total=left)

    async def _send(
        self,
        method: str,
        registry: str,
        repository: str,
        path: str,
        deadline: Deadline,
        creds: Credentials | None,
        accept: str,
    ) -> aiohttp.ClientResponse:
        creds = self._creds(registry, creds)
        key = (registry, repository, creds.username if creds else "")
        headers = {"Accept": accept}
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > time.monotonic():
            headers["Authorization"] = cached[0]
        resp = await self._request(method, registry, path, headers, deadline)
        if resp.status != 401:
            return resp
        challenge = resp.headers.get("WWW-Authenticate", "")
        resp.release()
        authorization, ttl = await self._authorize(registry, repository, challenge, creds, deadline)
        if len(self._tokens) >= _MAX_TOKENS:
            self._tokens.clear()  # a crude bound; tokens are cheap to fetch again
        self._tokens[key] = (authorization, time.monotonic() + ttl)
        headers["Authorization"] = authorization
        resp = await self._request(method, registry, path, headers, deadline)
        if resp.status == 401:
            resp.release()
            raise RegistryCallError(registry, f"{method} {path}: unauthorized (check the pull credentials)")
        return resp

    async def _request(
        self, method: str, registry: str, path: str, headers: dict[str, str], deadline: Deadline
    ) -> aiohttp.ClientResponse:
        what = f"{method} {path}"
        timeout = self._call_timeout(registry, what, deadline)
        try:
            return await self._http().request(
                method, self._url(registry, path), headers=headers, timeout=timeout, allow_redirects=True
            )
        except TimeoutError as exc:
            waited = (timeout.total or 0.0) * 1000
            raise RegistryCallError(registry, f"{what}: no answer within {waited:.0f} ms") from exc
        except aiohttp.ClientError as exc:
            raise RegistryCallError(registry, f"{what}: {type(exc).__name__}: {exc}") from exc

    async def _authorize(
        self,
        registry: str,
        repository: str,
        challenge: str,
        creds: Credentials | None,
        deadline: Deadline,
    ) -> tuple[str, float]:
        """Answer a ``WWW-Authenticate`` challenge: Basic with credentials, or a Bearer token."""
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if creds is None:
                raise RegistryCallError(registry, "requires credentials (configure them or use imagePullSecrets)")
            return creds.basic(), 3600.0
        if scheme != "bearer":
            raise RegistryCallError(registry, f"unsupported authentication challenge {challenge!r}")
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        realm = params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise RegistryCallError(registry, f"bearer challenge without a usable realm: {challenge!r}")
        if realm.startswith("http://") and registry not in self._insecure:
            raise RegistryCallError(registry, f"refusing a token realm over plain HTTP: {realm}")
        query = {"scope": params.get("scope") or f"repository:{repository}:pull"}
        if "service" in params:
            query["service"] = params["service"]
        headers = {"Authorization": creds.basic()} if creds else {}
        timeout = self._call_timeout(registry, "token request", deadline)
        try:
            async with self._http().get(realm, params=query, headers=headers, timeout=timeout) as resp:
                if resp.status != 200:
                    raise RegistryCallError(registry, f"token endpoint {realm} answered HTTP {resp.status}")
                body = await self._read(registry, resp, 1024 * 1024, "token")
        except TimeoutError as exc:
            raise RegistryCallError(registry, f"token endpoint {realm}: no answer in time") from exc
        except aiohttp.ClientError as exc:
            raise RegistryCallError(registry, f"token endpoint {realm}: {exc}") from exc
        try:
            data = orjson.loads(body)
            token = data.get("token") or data.get("access_token")
            ttl = float(data.get("expires_in") or 60)
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            raise RegistryCallError(registry, f"token endpoint {realm} answered invalid JSON") from exc
        if not isinstance(token, str) or not token:
            raise RegistryCallError(registry, f"token endpoint {realm} returned no token")
        return f"Bearer {token}", max(1.0, ttl - 5)

    @staticmethod
    def _expect_ok(registry: str, resp: aiohttp.ClientResponse, what: str) -> None:
        if resp.status != 200:
            raise RegistryCallError(registry, f"{what}: HTTP {resp.status} {resp.reason or ''}".rstrip())

    @staticmethod
    async def _read(registry: str, resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        """Read at most ``limit`` bytes: a huge (or lying) answer is refused, never buffered."""
        if resp.content_length is not None and resp.content_length > limit:
            raise RegistryCallError(registry, f"{what}: {resp.content_length} bytes exceeds the {limit}-byte limit")
        chunks: list[bytes] = []
        total = 0
        try:
            async for chunk in resp.content.iter_any():
                total += len(chunk)
                if total > limit:
                    raise RegistryCallError(registry, f"{what}: larger than the {limit}-byte limit")
                chunks.append(chunk)
        except TimeoutError as exc:
            raise RegistryCallError(registry, f"{what}: body not received in time") from exc
        except aiohttp.ClientError as exc:
            raise RegistryCallError(registry, f"{what}: {exc}") from exc
        return b"".join(chunks)


class _Call:
    """``async with`` wrapper so every response is released, whatever the caller does."""

    __slots__ = ("_args", "_client", "_resp")

    def __init__(self, client: RegistryClient, *args: Any) -> None:
        self._client = client
        self._args = args
        self._resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        self._resp = await self._client._send(*self._args)
        return self._resp

    async def __aexit__(self, *exc: object) -> None:
        if self._resp is not None:
            self._resp.release()


def _media_type_from_body(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(data, dict):
        media = data.get("mediaType")
        if isinstance(media, str):
            return media
        if "manifests" in data:
            return OCI_INDEX
    return OCI_MANIFEST


def _descriptors(body: bytes) -> list[dict[str, Any]]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    manifests = data.get("manifests") if isinstance(data, dict) else None
    if not isinstance(manifests, list):  # absent, or not the list an index holds: no descriptors
        return []
    return [m for m in manifests if isinstance(m, dict) and isinstance(m.get("digest"), str)]
