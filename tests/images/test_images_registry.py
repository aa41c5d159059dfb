"""Registry trouble and registry auth: failure modes within the budget, size caps, token flows.

The real docker-registry serves images; where a behaviour cannot be had from it (a registry
that stalls, one that claims a 10 GB manifest, token or basic auth in front of it, the
Kubernetes API serving an imagePullSecret), a small local aiohttp server speaks the real wire
format: the distribution API's ``WWW-Authenticate`` challenges and token endpoint, and the
API server's ``GET /api/v1/namespaces/{ns}/secrets/{name}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from registry_front import forward

from webhook.checks.services import Services
from webhook.signatures import cosign

Serve = Callable[[web.Application], Awaitable[str]]

pytestmark = pytest.mark.registry

DIGEST = "sha256:" + "ab" * 32


def key_policy(env: Any, host: str, key: Any, **extra: Any) -> dict[str, Any]:
    return {
        "insecure_registries": [host],
        "policies": [{"pattern": f"{host}/**", "keys": [env.key_file(key)], "tlog": "optional", **extra}],
    }


def sign(registry: Any, tools: Any, repo: str, digest: str, key: Any, name: str) -> None:
    payload = tools.simple_signing(name, digest)
    annotations = {cosign.SIGNATURE_ANNOTATION: base64.b64encode(tools.sign_bytes(key, payload)).decode()}
    registry.push_signature_layers(repo, digest, [(payload, cosign.SIMPLE_SIGNING_MEDIA, annotations)])


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def test_registry_down_is_denied_naming_registry_and_error(env, tools, key) -> None:
    host = f"127.0.0.1:{tools.free_port()}"  # nothing listens there
    outcome = await env.admit(env.check(**key_policy(env, host, key)), f"{host}/team-a/app:v1")
    message = outcome.verdict.deny_message()
    assert not outcome.verdict.allowed
    assert f"registry {host}" in message
    assert "ClientConnectorError" in message
    assert "denied by failure mode 'deny'" in message


async def test_registry_down_with_failure_mode_allow_admits_with_a_warning(env, tools, key) -> None:
    host = f"127.0.0.1:{tools.free_port()}"
    check = env.check(**key_policy(env, host, key, failure_mode="allow"))
    outcome = await env.admit(check, f"{host}/team-a/app:v1")
    assert outcome.verdict.allowed
    assert any(f"registry {host}" in w and "allowed by failure mode" in w for w in outcome.verdict.warnings)
    assert outcome.verdict.patches == ()  # nothing verified, nothing pinned


async def stall(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


@pytest.mark.parametrize(("failure_mode", "allowed"), [("deny", False), ("allow", True)])
async def test_stalling_registry_gets_a_decision_within_the_budget(env, serve, key, failure_mode, allowed) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stall)
    host = await serve(app)
    check = env.check(**key_policy(env, host, key, failure_mode=failure_mode), request_timeout_seconds=30)
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await env.admit(check, f"{host}/team-a/app@{DIGEST}", budget=0.6)
    assert loop.time() - started < 5  # a guard against hanging, not a timing assertion
    assert outcome.verdict.allowed is allowed
    text = outcome.verdict.deny_message() if not allowed else " ".join(outcome.verdict.warnings)
    assert f"registry {host}" in text
    assert "ms" in text  # the budget that ran out is named


async def test_per_call_timeout_applies_inside_a_long_budget(env, serve, key) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stall)
    host = await serve(app)
    check = env.check(**key_policy(env, host, key), request_timeout_seconds=0.2)
    outcome = await env.admit(check, f"{host}/team-a/app@{DIGEST}", budget=10)
    assert not outcome.verdict.allowed
    assert "no answer within 200 ms" in outcome.verdict.deny_message()


async def test_a_10_gb_manifest_is_refused_without_being_read(env, serve, key) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        resp.content_length = 10 * 1024**3
        await resp.prepare(request)
        await resp.write(b"{" * 1024)
        await asyncio.sleep(3600)
        return resp

    app = web.Application()
    app.router.add_get("/v2/{tail:.*}", huge)
    host = await serve(app)
    outcome = await env.admit(env.check(**key_policy(env, host, key)), f"{host}/team-a/app@{DIGEST}")
    assert "10737418240 bytes exceeds the 4194304-byte limit" in outcome.verdict.deny_message()


async def test_an_endless_chunked_manifest_is_cut_at_the_limit(env, serve, key) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b" " * 65536
        for _ in range(1024):
            await resp.write(chunk)
        return resp

    app = web.Application()
    app.router.add_get("/v2/{tail:.*}", endless)
    host = await serve(app)
    check = env.check(**key_policy(env, host, key), max_manifest_bytes=256 * 1024)
    outcome = await env.admit(check, f"{host}/team-a/app@{DIGEST}")
    assert "larger than the 262144-byte limit" in outcome.verdict.deny_message()


async def test_registry_not_listed_insecure_is_only_spoken_to_over_https(env, registry, key) -> None:
    config = key_policy(env, registry.host, key)
    config["insecure_registries"] = []
    outcome = await env.admit(env.check(**config), f"{registry.host}/team-a/app@{DIGEST}")
    assert not outcome.verdict.allowed
    assert f"registry {registry.host}" in outcome.verdict.deny_message()
    assert "SSL" in outcome.verdict.deny_message() or "ssl" in outcome.verdict.deny_message()


def auth_front(
    upstream: str, mode: str, stats: dict[str, int], user: str = "ci", password: str = "s3cret"
) -> web.Application:
    """A registry front that demands Bearer tokens (or Basic) and forwards to the real registry."""
    basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    app = web.Application()

    async def token(request: web.Request) -> web.Response:
        stats["token"] = stats.get("token", 0) + 1
        if request.headers.get("Authorization") != basic:
            return web.Response(status=401)
        assert request.query["service"] == "test-registry"
        assert request.query["scope"].startswith("repository:")
        return web.json_response({"token": "t0k3n", "expires_in": 300})

    async def proxy(request: web.Request) -> web.StreamResponse:
        stats["calls"] = stats.get("calls", 0) + 1
        expected = "Bearer t0k3n" if mode == "bearer" else basic
        if request.headers.get("Authorization") != expected:
            repo = request.path.split("/v2/", 1)[-1].rsplit("/manifests/", 1)[0].rsplit("/blobs/", 1)[0]
            realm = f"http://{request.host}/token"
            challenge = (
                f'Bearer realm="{realm}",service="test-registry",scope="repository:{repo}:pull"'
                if mode == "bearer"
                else 'Basic realm="test"'
            )
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        return await forward(request, upstream)

    app.router.add_get("/token", token)
    app.router.add_route("*", "/v2/{tail:.*}", proxy)
    return app


async def test_bearer_token_flow_with_configured_credentials(env, registry, tools, serve, key) -> None:
    stats: dict[str, int] = {}
    host = await serve(auth_front(registry.host, "bearer", stats))
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    sign(registry, tools, repo, digest, key, f"{host}/{repo}")
    (env.base_dir / "pw").write_text("s3cret\n")
    config = key_policy(env, host, key)
    check = env.check(**config, credentials=[{"registry": host, "username": "ci", "password_file": "pw"}])
    outcome = await env.admit(check, f"{host}/{repo}:v1")
    assert outcome.verdict.allowed, outcome.verdict.deny_message()
    assert stats["token"] == 1  # one token, reused for the HEAD, the .sig manifest and the blob


async def test_basic_auth_from_the_pods_image_pull_secret(env, registry, tools, serve, key) -> None:
    """The secret comes from a local aiohttp server speaking the API server's secret GET."""
    stats: dict[str, int] = {}
    host = await serve(auth_front(registry.host, "basic", stats, user="puller", password="pw-from-secret"))
    docker_config = {"auths": {host: {"auth": base64.b64encode(b"puller:pw-from-secret").decode()}}}
    secret_reads: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        secret_reads.append(request.path)
        if request.match_info["name"] != "regcred":
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "regcred", "namespace": request.match_info["ns"]},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": base64.b64encode(json.dumps(docker_config).encode()).decode()},
            }
        )

    api = web.Application()
    api.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", secret)
    api_host = await serve(api)
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = f"http://{api_host}"
    api_client = client.ApiClient(configuration)
    try:
        repo = registry.repo()
        digest = registry.push_image(repo, "v1")
        sign(registry, tools, repo, digest, key, f"{host}/{repo}")
        # A generous per-call timeout: the kubernetes client's first secret read (a worker thread)
        # took over the default 2 s on a loaded shared machine; what is tested here is the flow.
        check = env.check(
            services=Services(kube_api=api_client), **key_policy(env, host, key), request_timeout_seconds=15
        )
        denied = await env.admit(check, f"{host}/{repo}:v1")
        assert (
            "unauthorized" in denied.verdict.deny_message() or "requires credentials" in denied.verdict.deny_message()
        )
        outcome = await env.admit(check, f"{host}/{repo}:v1", pull_secrets=("missing", "regcred"))
        assert outcome.verdict.allowed, outcome.verdict.deny_message()
        assert secret_reads == [
            "/api/v1/namespaces/default/secrets/missing",
            "/api/v1/namespaces/default/secrets/regcred",
        ]
    finally:
        api_client.close()


def referrers_front(upstream: str, stats: dict[str, int]) -> web.Application:
    """A registry with the OCI 1.1 referrers API (answered from the real registry's data) and
    no referrers tag, so only the API can find the signatures."""
    app = web.Application()

    async def referrers(request: web.Request) -> web.Response:
        stats["referrers"] = stats.get("referrers", 0) + 1
        repo, digest = request.match_info["repo"], request.match_info["digest"]
        tag = digest.replace(":", "-")
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://{upstream}/v2/{repo}/manifests/{tag}",
                headers={"Accept": "application/vnd.oci.image.index.v1+json"},
            ) as up,
        ):
            body = await up.read() if up.status == 200 else b'{"schemaVersion":2,"manifests":[]}'
        return web.Response(body=body, content_type="application/vnd.oci.image.index.v1+json")

    async def proxy(request: web.Request) -> web.StreamResponse:
        if request.path.endswith(".sig") or "/manifests/sha256-" in request.path:
            return web.Response(status=404)
        return await forward(request, upstream)

    app.router.add_get("/v2/{repo:.+}/referrers/{digest}", referrers)
    app.router.add_route("*", "/v2/{tail:.*}", proxy)
    return app


async def test_signatures_found_through_the_referrers_api(env, registry, tools, serve, key) -> None:
    """A keyed sigstore bundle (message signature over the manifest digest) found via the API."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import utils

    stats: dict[str, int] = {}
    host = await serve(referrers_front(registry.host, stats))
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    raw = bytes.fromhex(digest.split(":")[1])
    signature = key.sign(raw, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    bundle = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "team-a"}, "tlogEntries": []},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": base64.b64encode(raw).decode()},
            "signature": base64.b64encode(signature).decode(),
        },
    }
    kind = "application/vnd.dev.sigstore.bundle.v0.3+json"
    registry.push_referrer(repo, digest, kind, json.dumps(bundle).encode(), kind)
    outcome = await env.admit(env.check(**key_policy(env, host, key)), f"{host}/{repo}:v1")
    assert outcome.verdict.allowed, outcome.verdict.deny_message()
    assert stats["referrers"] == 1


def paged_referrers_front(
    upstream: str, stats: dict[str, int], *, next_link: Callable[[str, int], str]
) -> web.Application:
    """The referrers API in pages of one descriptor, each page naming the next in a ``Link``
    header (distribution spec, "Listing Referrers"); the signature is on the last page."""
    app = web.Application()

    async def referrers(request: web.Request) -> web.Response:
        stats["pages"] = stats.get("pages", 0) + 1
        repo, digest = request.match_info["repo"], request.match_info["digest"]
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://{upstream}/v2/{repo}/manifests/{digest.replace(':', '-')}",
                headers={"Accept": "application/vnd.oci.image.index.v1+json"},
            ) as up,
        ):
            real = (await up.json(content_type=None))["manifests"] if up.status == 200 else []
        filler = {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + "0" * 64,
            "size": 2,
            "artifactType": "application/vnd.example.sbom",
        }
        items = [filler, filler, *real]
        page = int(request.query.get("page", "0"))
        body = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": items[page : page + 1],
        }
        headers = {}
        if page + 1 < len(items):
            headers["Link"] = f'<{next_link(request.path, page + 1)}>; rel="next"'
        return web.Response(
            body=json.dumps(body), headers=headers, content_type="application/vnd.oci.image.index.v1+json"
        )

    async def proxy(request: web.Request) -> web.StreamResponse:
        if request.path.endswith(".sig") or "/manifests/sha256-" in request.path:
            return web.Response(status=404)
        return await forward(request, upstream)

    app.router.add_get("/v2/{repo:.+}/referrers/{digest}", referrers)
    app.router.add_route("*", "/v2/{tail:.*}", proxy)
    return app


def keyed_bundle(key: Any, digest: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import utils

    raw = bytes.fromhex(digest.split(":")[1])
    signature = key.sign(raw, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    bundle = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "team-a"}, "tlogEntries": []},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": base64.b64encode(raw).decode()},
            "signature": base64.b64encode(signature).decode(),
        },
    }
    return json.dumps(bundle).encode()


BUNDLE_V3 = "application/vnd.dev.sigstore.bundle.v0.3+json"


async def test_referrers_api_pages_are_followed_through_link_headers(env, registry, serve, key) -> None:
    stats: dict[str, int] = {}
    host = await serve(paged_referrers_front(registry.host, stats, next_link=lambda path, n: f"{path}?page={n}"))
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    registry.push_referrer(repo, digest, BUNDLE_V3, keyed_bundle(key, digest), BUNDLE_V3)
    outcome = await env.admit(env.check(**key_policy(env, host, key)), f"{host}/{repo}:v1")
    assert outcome.verdict.allowed, outcome.verdict.deny_message()
    assert stats["pages"] == 3


async def test_a_next_page_on_another_host_is_refused_as_content(env, registry, serve, key) -> None:
    stats: dict[str, int] = {}
    host = await serve(
        paged_referrers_front(registry.host, stats, next_link=lambda path, n: f"http://127.0.0.2:1{path}?page={n}")
    )
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    registry.push_referrer(repo, digest, BUNDLE_V3, keyed_bundle(key, digest), BUNDLE_V3)
    check = env.check(**key_policy(env, host, key, failure_mode="allow"))
    outcome = await env.admit(check, f"{host}/{repo}:v1")
    assert not outcome.verdict.allowed
    assert "on another host" in outcome.verdict.deny_message()
    assert stats["pages"] == 1


async def test_endless_referrers_pages_stop_at_the_bound(env, registry, serve, key) -> None:
    stats: dict[str, int] = {}
    host = await serve(paged_referrers_front(registry.host, stats, next_link=lambda path, n: f"{path}?page=0"))
    repo = registry.repo()
    registry.push_image(repo, "v1")
    outcome = await env.admit(env.check(**key_policy(env, host, key)), f"{host}/{repo}:v1")
    assert not outcome.verdict.allowed
    assert "more than 16 pages" in outcome.verdict.deny_message()
    assert stats["pages"] == 16


# -- caches keyed by credential identity (issue 20) --------------------------------------------


def per_credential_front(upstream: str, accounts: dict[str, str], stats: dict[str, int]) -> web.Application:
    """A registry front as ECR/GCR run one: Bearer tokens from ``/token`` bound to the Basic
    credential that asked for them; a wrong password gets 401 at the token endpoint."""
    app = web.Application()
    issued: dict[str, str] = {}

    async def token(request: web.Request) -> web.Response:
        stats["token"] = stats.get("token", 0) + 1
        header = request.headers.get("Authorization", "")
        try:
            user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
        except ValueError:
            return web.Response(status=401)
        if accounts.get(password) != user:
            return web.Response(status=401)
        value = f"t-{len(issued)}"
        issued[value] = password
        return web.json_response({"token": value, "expires_in": 300})

    async def proxy(request: web.Request) -> web.StreamResponse:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if bearer not in issued:
            repo = request.path.split("/v2/", 1)[-1].rsplit("/manifests/", 1)[0].rsplit("/blobs/", 1)[0]
            challenge = f'Bearer realm="http://{request.host}/token",service="r",scope="repository:{repo}:pull"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        return await forward(request, upstream)

    app.router.add_get("/token", token)
    app.router.add_route("*", "/v2/{tail:.*}", proxy)
    return app


async def kube_with_secrets(serve: Serve, secrets: dict[tuple[str, str], dict[str, Any]]) -> Any:
    """A local aiohttp server speaking the API server's secret GET (the Kubernetes API cannot
    run here); returns a ``kubernetes`` ApiClient pointed at it."""

    async def secret(request: web.Request) -> web.Response:
        doc = secrets.get((request.match_info["ns"], request.match_info["name"]))
        if doc is None:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        data = base64.b64encode(json.dumps(doc).encode()).decode()
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": request.match_info["name"], "namespace": request.match_info["ns"]},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": data},
            }
        )

    api = web.Application()
    api.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", secret)
    host = await serve(api)
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = f"http://{host}"
    return client.ApiClient(configuration)


def docker_config(host: str, user: str, password: str) -> dict[str, Any]:
    return {"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}


async def test_pull_secrets_sharing_a_username_do_not_share_registry_tokens(env, registry, tools, serve, key) -> None:
    """Namespace b's secret has ECR's shared username ``AWS`` and a wrong password: it must not
    ride on the token namespace a's secret obtained (and so learn the private tag's digest)."""
    stats: dict[str, int] = {}
    host = await serve(per_credential_front(registry.host, {"pw-a": "AWS"}, stats))
    api = await kube_with_secrets(
        serve,
        {("a", "regcred"): docker_config(host, "AWS", "pw-a"), ("b", "regcred"): docker_config(host, "AWS", "pw-b")},
    )
    try:
        repo = registry.repo()
        digest = registry.push_image(repo, "v1")
        sign(registry, tools, repo, digest, key, f"{host}/{repo}")
        check = env.check(services=Services(kube_api=api), **key_policy(env, host, key), request_timeout_seconds=15)
        first = await env.admit(check, f"{host}/{repo}:v1", pull_secrets=("regcred",), namespace="a")
        assert first.verdict.allowed, first.verdict.deny_message()
        other = await env.admit(check, f"{host}/{repo}:v1", pull_secrets=("regcred",), namespace="b")
        assert not other.verdict.allowed
        assert digest not in other.verdict.deny_message()
        assert other.verdict.patches == ()  # the digest of a's private tag is not handed to b
        assert "HTTP 401" in other.verdict.deny_message()
    finally:
        api.close()


async def test_a_verdict_learnt_with_one_namespaces_secret_is_not_served_to_another(
    env, registry, tools, serve, key
) -> None:
    stats: dict[str, int] = {}
    host = await serve(per_credential_front(registry.host, {"pw-a": "AWS"}, stats))
    api = await kube_with_secrets(serve, {("a", "regcred"): docker_config(host, "AWS", "pw-a")})
    try:
        repo = registry.repo()
        digest = registry.push_image(repo, "v1")
        sign(registry, tools, repo, digest, key, f"{host}/{repo}")
        check = env.check(services=Services(kube_api=api), **key_policy(env, host, key), request_timeout_seconds=15)
        image = f"{host}/{repo}@{digest}"
        first = await env.admit(check, image, pull_secrets=("regcred",), namespace="a")
        assert first.verdict.allowed, first.verdict.deny_message()
        again = await env.admit(check, image, pull_secrets=("regcred",), namespace="a")
        assert again.verdict.allowed  # a's own verdict is cached for a
        assert check.metrics()["hits"] >= 1
        stranger = await env.admit(check, image, namespace="b")  # no pull secret at all
        assert not stranger.verdict.allowed
        assert "requires credentials" in stranger.verdict.deny_message() or "401" in stranger.verdict.deny_message()
    finally:
        api.close()
