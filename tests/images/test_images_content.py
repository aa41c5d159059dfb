"""Hostile content in the image's own repository is a verdict; only transport trouble is an outage.

Everything an attacker who can push to the repository controls (the ``.sig`` manifest, its layers,
their blobs, the referrers index) must deny with the reason when it is junk, even under
``failure_mode: allow``: otherwise pushing junk turns an unsigned image into an allowed one. Only
connect errors, timeouts, 5xx and 429 reach the failure mode.

The real docker-registry serves the images and most hostile material (it stores a 5 MiB junk layer,
an index at the ``.sig`` tag, a manifest whose blob was deleted). What it refuses to store (a
manifest that is not JSON, bytes that do not match their digest, a 5xx or 429) comes from a small
local aiohttp front that forwards everything else to the real registry.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from registry_front import front

from webhook.signatures import cosign

pytestmark = pytest.mark.registry

Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def allow_policy(env: Any, host: str, key: Any) -> dict[str, Any]:
    """``failure_mode: allow``: the setting the junk-signature attack relied on."""
    return {
        "insecure_registries": [host],
        "policies": [
            {"pattern": f"{host}/**", "keys": [env.key_file(key)], "failure_mode": "allow", "tlog": "optional"}
        ],
    }


def sign(registry: Any, tools: Any, repo: str, digest: str, key: Any, host: str) -> None:
    payload = tools.simple_signing(f"{host}/{repo}", digest)
    annotations = {cosign.SIGNATURE_ANNOTATION: base64.b64encode(tools.sign_bytes(key, payload)).decode()}
    registry.push_signature_layers(repo, digest, [(payload, cosign.SIMPLE_SIGNING_MEDIA, annotations)])


def denied(outcome: Any) -> str:
    assert not outcome.verdict.allowed, f"expected a denial, got warnings {outcome.verdict.warnings}"
    message = str(outcome.verdict.deny_message())
    assert "failure mode" not in message  # a verdict, not an outage
    return message


# -- the image's own repository serves junk: denied, whatever the failure mode ----------------


async def test_unsigned_image_with_a_5_mib_junk_signature_layer_stays_denied_under_failure_mode_allow(
    env, registry, key
) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    junk = os.urandom(5 * 1024 * 1024)
    registry.push_signature_layers(repo, digest, [(junk, cosign.SIMPLE_SIGNING_MEDIA, {})])
    outcome = await env.admit(env.check(**allow_policy(env, registry.host, key)), f"{registry.host}/{repo}:v1")
    message = denied(outcome)
    assert "4194304" in message  # the size limit is named
    assert outcome.verdict.warnings == () or not any("failure mode" in w for w in outcome.verdict.warnings)


async def test_a_junk_layer_next_to_a_valid_signature_does_not_hide_it(env, registry, tools, key) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    registry.push_signature_layers(repo, digest, [(os.urandom(5 * 1024 * 1024), cosign.SIMPLE_SIGNING_MEDIA, {})])
    sign(registry, tools, repo, digest, key, registry.host)
    outcome = await env.admit(env.check(**allow_policy(env, registry.host, key)), f"{registry.host}/{repo}:v1")
    assert outcome.verdict.allowed, outcome.verdict.deny_message()
    assert outcome.verdict.patches  # verified, so pinned


async def test_a_signature_layer_whose_blob_is_missing_is_denied(env, registry, key) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    blob = b'{"critical":{}}'
    registry.push_signature_layers(repo, digest, [(blob, cosign.SIMPLE_SIGNING_MEDIA, {})])
    blob_digest = registry.push_blob(repo, blob)
    request = urllib.request.Request(f"http://{registry.host}/v2/{repo}/blobs/{blob_digest}", method="DELETE")
    with urllib.request.urlopen(request, timeout=10):
        pass
    outcome = await env.admit(env.check(**allow_policy(env, registry.host, key)), f"{registry.host}/{repo}:v1")
    assert "not found" in denied(outcome)


async def test_an_index_at_the_signature_tag_is_denied_naming_its_media_type(env, registry, key) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
    registry.push_manifest(repo, cosign.signature_tag(digest), index)
    outcome = await env.admit(env.check(**allow_policy(env, registry.host, key)), f"{registry.host}/{repo}:v1")
    assert "application/vnd.oci.image.index.v1+json" in denied(outcome)


async def test_a_layer_of_an_unknown_media_type_is_not_fetched_and_is_denied(env, registry, key) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    registry.push_signature_layers(repo, digest, [(b"junk", "application/x-junk", {})])
    outcome = await env.admit(env.check(**allow_policy(env, registry.host, key)), f"{registry.host}/{repo}:v1")
    assert "application/x-junk" in denied(outcome)


async def test_a_missing_image_tag_is_denied_not_allowed_by_failure_mode(env, registry, key) -> None:
    repo = registry.repo()
    outcome = await env.admit(env.check(**allow_policy(env, registry.host, key)), f"{registry.host}/{repo}:nope")
    assert "not found" in denied(outcome)


async def test_a_signature_manifest_that_is_not_json_is_denied(env, registry, serve, key) -> None:
    async def override(request: web.Request) -> web.StreamResponse | None:
        if request.path.endswith(".sig"):
            return web.Response(body=b"\x00not json", content_type="application/vnd.oci.image.manifest.v1+json")
        return None

    host = await serve(front(registry.host, override))
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    outcome = await env.admit(env.check(**allow_policy(env, host, key)), f"{host}/{repo}@{digest}")
    assert "not JSON" in denied(outcome)


async def test_a_signature_manifest_not_matching_its_claimed_digest_is_denied(env, registry, serve, key) -> None:
    async def override(request: web.Request) -> web.StreamResponse | None:
        if request.path.endswith(".sig"):
            body = json.dumps({"schemaVersion": 2, "mediaType": cosign_manifest, "layers": []}).encode()
            headers = {"Docker-Content-Digest": "sha256:" + "0" * 64}
            return web.Response(body=body, content_type=cosign_manifest, headers=headers)
        return None

    cosign_manifest = "application/vnd.oci.image.manifest.v1+json"
    host = await serve(front(registry.host, override))
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    outcome = await env.admit(env.check(**allow_policy(env, host, key)), f"{host}/{repo}@{digest}")
    assert "content digest" in denied(outcome)


async def test_a_blob_not_matching_its_digest_is_denied(env, registry, serve, tools, key) -> None:
    async def override(request: web.Request) -> web.StreamResponse | None:
        if "/blobs/" in request.path:
            return web.Response(body=b"something else entirely", content_type="application/octet-stream")
        return None

    host = await serve(front(registry.host, override))
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    sign(registry, tools, repo, digest, key, host)
    outcome = await env.admit(env.check(**allow_policy(env, host, key)), f"{host}/{repo}@{digest}")
    assert "does not match its digest" in denied(outcome)


async def test_a_manifest_whose_body_media_type_contradicts_its_content_type_is_denied(
    env, registry, serve, key
) -> None:
    async def override(request: web.Request) -> web.StreamResponse | None:
        if request.path.endswith(".sig"):
            body = json.dumps(
                {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
            ).encode()
            return web.Response(body=body, content_type="application/vnd.oci.image.manifest.v1+json")
        return None

    host = await serve(front(registry.host, override))
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    outcome = await env.admit(env.check(**allow_policy(env, host, key)), f"{host}/{repo}@{digest}")
    assert "media type" in denied(outcome)


async def test_a_registry_refusing_the_pull_is_denied_not_allowed_by_failure_mode(env, registry, serve, key) -> None:
    async def override(request: web.Request) -> web.StreamResponse | None:
        return web.Response(status=403, text="denied")

    host = await serve(front(registry.host, override))
    outcome = await env.admit(env.check(**allow_policy(env, host, key)), f"{host}/team-a/app:v1")
    assert "HTTP 403" in denied(outcome)


# -- transport trouble: the failure mode decides ----------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_5xx_and_429_on_the_signature_tag_follow_the_failure_mode(env, registry, serve, key, status) -> None:
    async def override(request: web.Request) -> web.StreamResponse | None:
        if request.path.endswith(".sig"):
            return web.Response(status=status, headers={"Retry-After": "1"})
        return None

    host = await serve(front(registry.host, override))
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    outcome = await env.admit(env.check(**allow_policy(env, host, key)), f"{host}/{repo}@{digest}")
    assert outcome.verdict.allowed
    assert any(f"HTTP {status}" in w and "allowed by failure mode" in w for w in outcome.verdict.warnings)


# -- a flood of attachments is a verdict, not a timeout ------------------------------------------


async def test_more_signature_layers_than_the_bound_are_denied_not_run_into_the_deadline(
    env, registry, tools, key
) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    flood = [(b'{"n":%d}' % i, cosign.SIMPLE_SIGNING_MEDIA, {}) for i in range(4)]
    registry.push_signature_layers(repo, digest, flood)
    sign(registry, tools, repo, digest, key, registry.host)  # a valid fifth one changes nothing
    check = env.check(**allow_policy(env, registry.host, key), max_signatures=4)
    message = denied(await env.admit(check, f"{registry.host}/{repo}:v1"))
    assert "has 5 layers; at most 4 are read" in message


def test_the_signature_bound_defaults_to_cosigns() -> None:
    from webhook import config as config_mod

    assert config_mod.parse({}).images.max_signatures == 100


async def test_more_bundle_referrers_than_the_bound_are_denied(env, registry, key) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    kind = "application/vnd.dev.sigstore.bundle.v0.3+json"
    for i in range(3):
        registry.push_referrer(repo, digest, kind, b'{"n":%d}' % i, kind)
    check = env.check(**allow_policy(env, registry.host, key), max_signatures=2)
    message = denied(await env.admit(check, f"{registry.host}/{repo}:v1"))
    assert "3 sigstore bundles; at most 2 are read" in message


async def test_a_dsse_envelope_with_thousands_of_signatures_is_denied_without_checking_them(env, registry, key) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    envelope = {
        "payloadType": "application/vnd.in-toto+json",
        "payload": base64.b64encode(b"{}").decode(),
        "signatures": [{"sig": base64.b64encode(os.urandom(64)).decode()} for _ in range(5000)],
    }
    registry.push_signature_layers(repo, digest, [(json.dumps(envelope).encode(), cosign.DSSE_MEDIA, {})])
    message = denied(await env.admit(env.check(**allow_policy(env, registry.host, key)), f"{registry.host}/{repo}:v1"))
    assert "5000 signatures (at most 16)" in message
