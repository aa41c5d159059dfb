"""OCI distribution client (aiohttp): manifests, blobs, referrers, with the registry auth flows.

Used by the signature fetchers. Every answer is checked against the digest it claims, every
read is capped in size, every call is timed out within the caller's deadline, and HTTP (not
HTTPS) is used only for registries configured as insecure. One session: connections are reused.

Two kinds of failure, kept apart: ``RegistryCallError`` (an ``UpstreamError``) is transport
trouble (connect, timeout, HTTP 5xx, 429) and the policy's failure mode decides; ``ContentError``
is what the repository served (junk, oversized, digest mismatch, wrong media type, 404, 401/403),
which whoever can push to the repository controls, so it is a verdict (deny, with the reason).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
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
_MAX_REFERRER_PAGES = 16
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# A manifest reference as the distribution spec allows it: a tag, or a digest (sha256 here). A
# referrer's descriptor is repository content: "../../other/manifests/x" must not become a path.
_REFERENCE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|sha256:[0-9a-f]{64}")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryCallError(errors.RegistryError):
    """A registry call failed in transport; the message names the registry, the call and the error."""

    def __init__(self, registry: str, message: str) -> None:
        super().__init__(f"registry {registry}: {message}")
        self.registry = registry


class ContentError(Exception):
    """The registry answered, but with content that cannot be accepted: a verdict, not an outage.

    Deliberately not an ``UpstreamError``: a failure mode of ``allow`` must never let junk pushed
    next to an image (a 5 MiB ``.sig`` layer, a missing blob) turn a denial into an admission.
    """

    def __init__(self, registry: str, message: str) -> None:
        super().__init__(f"registry {registry}: {message}")
        self.registry = registry


def is_transport_status(status: int) -> bool:
    """HTTP statuses that say the registry is unwell rather than what it holds: 5xx and 429."""
    return status >= 500 or status == 429


def status_error(registry: str, status: int, what: str) -> RegistryCallError | ContentError:
    """The error for a non-200 answer: transport for 5xx/429, a verdict for anything else."""
    text = what if f"HTTP {status}" in what else f"{what} answered HTTP {status}"
    return RegistryCallError(registry, text) if is_transport_status(status) else ContentError(registry, text)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Basic credentials for one registry (from config or a pod's imagePullSecrets)."""

    username: str
    password: str

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    # A digest of the whole credential (user *and* secret): what caches are keyed by. Pull
    # secrets of different namespaces often share a username (``AWS``, ``_json_key``,
    # ``oauth2accesstoken``); a token or a verdict learnt with one must not serve the other.
    identity: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw = b"portcullis registry credential\0" + self.username.encode() + b"\0" + self.password.encode()
        object.__setattr__(self, "identity", hashlib.sha256(raw).hexdigest())

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<redacted>)"


def credential_identity(creds: Credentials | None) -> str:
    """``Credentials.identity``, or ``""`` for anonymous pulls."""
    return creds.identity if creds is not None else ""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest or index exactly as served, with the digest of those bytes and its JSON object."""

    digest: str
    media_type: str
    body: bytes
    doc: dict[str, Any]

    def document(self) -> dict[str, Any]:
        return self.doc

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def parse_manifest(registry: str, body: bytes, media_type: str, digest: str, where: str) -> Manifest:
    """Decode a manifest or index as served; ``ContentError`` when it is not a JSON object or its
    body's ``mediaType`` contradicts the ``Content-Type`` it was served with (OCI image-spec)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ContentError(registry, f"{where} is not JSON") from exc
    if not isinstance(doc, dict):
        raise ContentError(registry, f"{where} is not a JSON object")
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ContentError(registry, f"{where}: `mediaType` is not a string")
    if not media_type or media_type in ("application/json", "application/octet-stream"):
        media_type = declared or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST)
    elif declared and declared != media_type:
        raise ContentError(registry, f"{where}: body media type {declared} contradicts Content-Type {media_type}")
    return Manifest(digest, media_type, body, doc)


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
        max_signatures: int = 100,
    ) -> None:
        self._insecure = insecure_registries
        self._credentials = dict(credentials or {})
        self._timeout = timeout
        self._max_manifest = max_manifest_bytes
        self._max_blob = max_blob_bytes
        # At most this many signature layers / bundle referrers are read per image (cosign: 100):
        # more is a verdict, so a flood of attachments cannot run a request into its deadline.
        self.max_signatures = max_signatures
        self._session: aiohttp.ClientSession | None = None
        # (registry, repository, credential identity) -> (Authorization header, expiry, monotonic)
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
                raise ContentError(registry, f"{repository}:{tag} not found")
            self._expect_ok(registry, resp, f"HEAD {path}")
            digest = resp.headers.get("Docker-Content-Digest", "")
        if _DIGEST.fullmatch(digest):
            return digest
        manifest = await self.manifest(registry, repository, tag, deadline, creds)
        if manifest is None:
            raise ContentError(registry, f"{repository}:{tag} not found")
        return manifest.digest

    async def manifest(
        self,
        registry: str,
        repository: str,
        reference: str,
        deadline: Deadline,
        creds: Credentials | None = None,
    ) -> Manifest | None:
        """GET a manifest by tag or digest; ``None`` when absent.

        Its bytes must match its digest, be a JSON object, and carry the media type it is served
        as (OCI image-spec: ``mediaType`` in the body must equal the ``Content-Type``); raises
        ``ContentError`` when not, ``RegistryCallError`` on transport trouble.
        """
        if not _REFERENCE.fullmatch(reference):
            raise ContentError(registry, f"manifest reference {reference[:80]!r} is neither a tag nor sha256:<64 hex>")
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
            raise ContentError(
                registry, f"manifest {repository}@{reference}: content digest {digest} != expected {expected}"
            )
        return parse_manifest(registry, body, media_type, digest, f"manifest {repository}@{reference}")

    async def blob(
        self, registry: str, repository: str, digest: str, deadline: Deadline, creds: Credentials | None = None
    ) -> bytes:
        """GET a blob, capped in size and checked against its digest (``ContentError`` if not)."""
        if not _DIGEST.fullmatch(digest):
            raise ContentError(registry, f"blob digest {digest[:80]!r} is not sha256:<64 hex>")
        path = f"/v2/{repository}/blobs/{digest}"
        async with self._call("GET", registry, repository, path, deadline, creds, "*/*") as resp:
            if resp.status == 404:
                raise ContentError(registry, f"blob {repository}@{digest} not found")
            self._expect_ok(registry, resp, f"GET {path}")
            body = await self._read(registry, resp, self._max_blob, f"blob {repository}@{digest}")
        if sha256_digest(body) != digest:
            raise ContentError(registry, f"blob {repository}@{digest}: content does not match its digest")
        return body

    @property
    def max_blob_bytes(self) -> int:
        return self._max_blob

    async def referrers(
        self, registry: str, repository: str, digest: str, deadline: Deadline, creds: Credentials | None = None
    ) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose ``subject`` is ``digest`` (OCI 1.1).

        Uses the referrers API, following its ``Link: <…>; rel="next"`` pages (distribution spec,
        "Listing Referrers"; same host only, at most ``_MAX_REFERRER_PAGES``), and the referrers
        tag schema (``sha256-<hex>``, an index kept by pushers) where the registry answers the
        API with 404. Raises ``ContentError`` for junk or too many pages.
        """
        found = await self._referrers_api(registry, repository, digest, deadline, creds)
        if found is not None:
            return found
        index = await self.manifest(registry, repository, digest.replace(":", "-"), deadline, creds)
        if index is None:
            return []
        return descriptors(registry, index.body, f"referrers tag of {repository}@{digest}")

    async def _referrers_api(
        self, registry: str, repository: str, digest: str, deadline: Deadline, creds: Credentials | None
    ) -> list[dict[str, Any]] | None:
        """Every page of the referrers API, or ``None`` when the registry has no such API."""
        path: str | None = f"/v2/{repository}/referrers/{digest}"
        found: list[dict[str, Any]] = []
        pages = 0
        while path is not None:
            pages += 1
            if pages > _MAX_REFERRER_PAGES:
                raise ContentError(
                    registry, f"referrers of {repository}@{digest}: more than {_MAX_REFERRER_PAGES} pages"
                )
            async with self._call("GET", registry, repository, path, deadline, creds, OCI_INDEX) as resp:
                if pages == 1 and resp.status in (404, 400, 405):
                    return None  # no referrers API
                self._expect_ok(registry, resp, f"GET {path}")
                if not resp.headers.get("Content-Type", "").startswith(OCI_INDEX):
                    if pages == 1:
                        return None  # a 200 that is not an index: some registry's catch-all, not the API
                    raise ContentError(registry, f"GET {path}: a referrers page that is not an image index")
                body = await self._read(registry, resp, self._max_manifest, f"referrers of {digest}")
                path = _next_page(registry, self._url(registry, path), resp.headers.getall("Link", []))
            found.extend(descriptors(registry, body, f"referrers of {repository}@{digest}"))
        return found

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

    def credential_identity(self, registry: str, creds: Credentials | None) -> str:
        """Identity of the credentials a call to ``registry`` would use (the pod's, else configured)."""
        if creds is None:
            creds = self._credentials.get(registry)
        return creds.identity if creds is not None else ""

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
        key = (registry, repository, credential_identity(creds))
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
            # Not an outage: the registry refuses these credentials, and kubelet may hold others.
            raise ContentError(registry, f"{method} {path}: unauthorized (check the pull credentials)")
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
                raise ContentError(registry, "requires credentials (configure them or use imagePullSecrets)")
            return creds.basic(), 3600.0
        if scheme != "bearer":
            raise ContentError(registry, f"unsupported authentication challenge {challenge[:200]!r}")
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        realm = params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise ContentError(registry, f"bearer challenge without a usable realm: {challenge[:200]!r}")
        if realm.startswith("http://") and registry not in self._insecure:
            raise ContentError(registry, f"refusing a token realm over plain HTTP: {realm}")
        query = {"scope": params.get("scope") or f"repository:{repository}:pull"}
        if "service" in params:
            query["service"] = params["service"]
        headers = {"Authorization": creds.basic()} if creds else {}
        timeout = self._call_timeout(registry, "token request", deadline)
        try:
            async with self._http().get(realm, params=query, headers=headers, timeout=timeout) as resp:
                if resp.status != 200:
                    raise status_error(registry, resp.status, f"token endpoint {realm}")
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
            raise ContentError(registry, f"token endpoint {realm} answered invalid JSON") from exc
        if not isinstance(token, str) or not token:
            raise ContentError(registry, f"token endpoint {realm} returned no token")
        return f"Bearer {token}", max(1.0, ttl - 5)

    @staticmethod
    def _expect_ok(registry: str, resp: aiohttp.ClientResponse, what: str) -> None:
        if resp.status != 200:
            raise status_error(registry, resp.status, f"{what}: HTTP {resp.status} {resp.reason or ''}".rstrip())

    @staticmethod
    async def _read(registry: str, resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        """Read at most ``limit`` bytes: a huge (or lying) answer is refused, never buffered."""
        if resp.content_length is not None and resp.content_length > limit:
            raise ContentError(registry, f"{what}: {resp.content_length} bytes exceeds the {limit}-byte limit")
        chunks: list[bytes] = []
        total = 0
        try:
            async for chunk in resp.content.iter_any():
                total += len(chunk)
                if total > limit:
                    raise ContentError(registry, f"{what}: larger than the {limit}-byte limit")
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


def descriptors(registry: str, body: bytes, where: str) -> list[dict[str, Any]]:
    """The descriptors of an index; ``ContentError`` when it is not one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ContentError(registry, f"{where}: not JSON") from exc
    manifests = data.get("manifests") if isinstance(data, dict) else None
    if manifests is None and isinstance(data, dict):
        return []  # an empty index may leave the list out
    if not isinstance(manifests, list):
        raise ContentError(registry, f"{where}: not an image index")
    return [m for m in manifests if isinstance(m, dict) and isinstance(m.get("digest"), str)]


_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]*)*)")


def _next_page(registry: str, current: str, links: list[str]) -> str | None:
    """The path (with query) of the ``rel="next"`` page, resolved against ``current`` (RFC 8288).

    A next page on another host or scheme is refused: following it would send our credentials,
    or a token meant for this registry, wherever the repository's content points.
    """
    for header in links:
        for target, params in _LINK.findall(header):
            pairs = (p.split("=", 1) for p in params.split(";") if "=" in p)
            rels = [value.strip().strip('"').lower().split() for name, value in pairs if name.strip().lower() == "rel"]
            if not any("next" in rel for rel in rels):
                continue
            url = urllib.parse.urljoin(current, target.strip())
            here, there = urllib.parse.urlsplit(current), urllib.parse.urlsplit(url)
            if (there.scheme, there.netloc) != (here.scheme, here.netloc):
                raise ContentError(registry, f"referrers next page {url[:200]!r} is on another host")
            if not there.path.startswith("/v2/"):
                raise ContentError(registry, f"referrers next page {url[:200]!r} is not a distribution API path")
            return str(there.path) + (f"?{there.query}" if there.query else "")
    return None
