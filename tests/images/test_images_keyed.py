"""Keyed cosign signatures against a real registry: verdicts, reasons, digest pinning, thresholds."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from webhook.signatures import cosign

pytestmark = pytest.mark.registry


def sign_image(registry: Any, tools: Any, repo: str, digest: str, key: Any, payload: bytes | None = None) -> bytes:
    """Push a cosign simple-signing signature of ``digest`` by ``key``; return the payload."""
    payload = payload if payload is not None else tools.simple_signing(f"{registry.host}/{repo}", digest)
    signature = tools.sign_bytes(key, payload)
    annotations = {cosign.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()}
    registry.push_signature_layers(repo, digest, [(payload, cosign.SIMPLE_SIGNING_MEDIA, annotations)])
    return payload


def policy(env: Any, key: Any, **extra: Any) -> dict[str, Any]:
    # These signatures carry no Rekor bundle (test_images_tlog.py covers the default, required).
    return {"pattern": f"{env.host}/team-a/**", "keys": [env.key_file(key)], "tlog": "optional", **extra}


def denial(outcome: Any) -> str:
    assert not outcome.verdict.allowed, "expected a denial"
    return outcome.verdict.deny_message()


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def test_signed_tag_is_admitted_and_pinned_to_its_digest(env, registry, tools, p256) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    sign_image(registry, tools, repo, digest, p256)
    check = env.check(policies=[policy(env, p256)])
    outcome = await env.admit(check, f"{registry.host}/{repo}:v1")
    assert outcome.verdict.allowed
    assert outcome.verdict.patches == (
        {"op": "replace", "path": "/spec/containers/0/image", "value": f"{registry.host}/{repo}@{digest}"},
    )
    entry = outcome.context["images"]["images"][0]
    assert entry["digest"] == digest
    assert entry["verified"] is True


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="ecdsa-p384"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="ed25519"),
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa-2048"),
    ],
)
async def test_every_supported_key_type_verifies(env, registry, tools, make_key) -> None:
    key = make_key()
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    sign_image(registry, tools, repo, digest, key)
    outcome = await env.admit(env.check(policies=[policy(env, key)]), f"{registry.host}/{repo}@{digest}")
    assert outcome.verdict.allowed
    assert outcome.verdict.patches == ()  # already pinned


async def test_signature_by_another_key_is_denied(env, registry, tools, p256) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    sign_image(registry, tools, repo, digest, ec.generate_private_key(ec.SECP256R1()))
    message = denial(await env.admit(env.check(policies=[policy(env, p256)]), f"{registry.host}/{repo}:v1"))
    assert f"{registry.host}/{repo}:v1" in message
    assert "team-a/**" in message
    assert "is not by key" in message


async def test_signature_for_another_digest_is_denied(env, registry, tools, p256) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    other = registry.push_image(repo, "v2")
    # A genuine signature, but its payload names v2's digest; it is copied under v1's .sig tag.
    payload = tools.simple_signing(f"{registry.host}/{repo}", other)
    sign_image(registry, tools, repo, digest, p256, payload=payload)
    message = denial(await env.admit(env.check(policies=[policy(env, p256)]), f"{registry.host}/{repo}:v1"))
    assert "digest mismatch" in message
    assert other in message


async def test_tampered_payload_is_denied(env, registry, tools, p256) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    payload = tools.simple_signing(f"{registry.host}/{repo}", digest)
    signature = tools.sign_bytes(p256, payload)
    tampered = json.dumps({**json.loads(payload), "optional": {"by": "attacker"}}).encode()
    annotations = {cosign.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()}
    registry.push_signature_layers(repo, digest, [(tampered, cosign.SIMPLE_SIGNING_MEDIA, annotations)])
    message = denial(await env.admit(env.check(policies=[policy(env, p256)]), f"{registry.host}/{repo}:v1"))
    assert "is not by key" in message


async def test_missing_signature_is_denied(env, registry, p256) -> None:
    repo = registry.repo()
    registry.push_image(repo, "v1")
    message = denial(await env.admit(env.check(policies=[policy(env, p256)]), f"{registry.host}/{repo}:v1"))
    assert "no signature found" in message


async def test_digest_reference_is_admitted_only_if_that_digest_verifies(env, registry, tools, p256) -> None:
    repo = registry.repo()
    signed = registry.push_image(repo, "v1")
    unsigned = registry.push_image(repo, "v2")
    sign_image(registry, tools, repo, signed, p256)
    check = env.check(policies=[policy(env, p256)])
    assert (await env.admit(check, f"{registry.host}/{repo}@{signed}")).verdict.allowed
    # A tag that names the signed image does not rescue a digest that does not verify.
    message = denial(await env.admit(check, f"{registry.host}/{repo}:v1@{unsigned}"))
    assert "no signature found" in message


async def test_tag_moved_after_admission_is_caught(env, registry, tools, p256) -> None:
    repo = registry.repo()
    first = registry.push_image(repo, "stable")
    sign_image(registry, tools, repo, first, p256)
    check = env.check(policies=[policy(env, p256)])
    admitted = await env.admit(check, f"{registry.host}/{repo}:stable", kind="Deployment")
    pinned = admitted.verdict.patches[0]["value"]
    assert pinned == f"{registry.host}/{repo}@{first}"
    assert admitted.verdict.patches[0]["path"] == "/spec/template/spec/containers/0/image"

    moved = registry.push_image(repo, "stable")  # someone re-points the tag at an unsigned image
    # The pinned reference still runs (and verifies as) exactly what was admitted ...
    assert (await env.admit(check, pinned)).verdict.allowed
    # ... while the tag itself now resolves to the new digest, which is caught.
    message = denial(await env.admit(check, f"{registry.host}/{repo}:stable"))
    assert "no signature found" in message
    assert (await env.admit(check, f"{registry.host}/{repo}:stable")).context["images"]["digests"] == {
        f"{registry.host}/{repo}:stable": moved
    }


async def test_threshold_needs_n_distinct_keys(env, registry, tools, p256) -> None:
    second = ec.generate_private_key(ec.SECP256R1())
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    sign_image(registry, tools, repo, digest, p256)
    keys = [env.key_file(p256), env.key_file(second)]
    rule = {"pattern": f"{env.host}/team-a/*", "keys": keys, "threshold": 2, "tlog": "optional"}
    check = env.check(policies=[rule], cache={"negative_ttl_seconds": 0})
    message = denial(await env.admit(check, f"{registry.host}/{repo}@{digest}"))
    assert "1 of the required 2 authorities" in message
    sign_image(registry, tools, repo, digest, second)
    outcome = await env.admit(check, f"{registry.host}/{repo}@{digest}")
    assert outcome.verdict.allowed
    assert len(outcome.context["images"]["images"][0]["authorities"]) == 2


async def test_pattern_mode_warn_admits_with_a_warning(env, registry, p256) -> None:
    repo = registry.repo()
    registry.push_image(repo, "v1")
    outcome = await env.admit(env.check(policies=[policy(env, p256, mode="warn")]), f"{registry.host}/{repo}:v1")
    assert outcome.verdict.allowed
    assert any("no signature found" in w for w in outcome.verdict.warnings)


@pytest.mark.parametrize(
    ("unmatched", "allowed", "warned"), [("deny", False, False), ("warn", True, True), ("allow", True, False)]
)
async def test_unmatched_images_follow_the_configured_choice(env, p256, unmatched, allowed, warned) -> None:
    check = env.check(policies=[policy(env, p256)], unmatched=unmatched)
    outcome = await env.admit(check, "docker.io/library/nginx:1.27")
    assert outcome.verdict.allowed is allowed
    assert any("matches no trust policy" in w for w in outcome.verdict.warnings) is warned


async def test_hundred_concurrent_pods_of_one_image_cause_one_verification(env, registry, tools, p256) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    sign_image(registry, tools, repo, digest, p256)
    check = env.check(policies=[policy(env, p256)])
    outcomes = await asyncio.gather(*(env.admit(check, f"{registry.host}/{repo}:v1") for _ in range(100)))
    assert all(o.verdict.allowed for o in outcomes)
    assert check.metrics()["computations"] == 1
    metrics = check.metrics()
    assert metrics["shared"] + metrics["hits"] == 99  # the rest joined the flight or found its verdict
    again = await env.admit(check, f"{registry.host}/{repo}@{digest}")
    assert again.verdict.allowed
    assert check.metrics()["hits"] >= 1


async def test_dsse_envelope_signature_verifies(env, registry, tools, p256) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": f"{registry.host}/{repo}", "digest": {"sha256": digest.split(":")[1]}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }
    body = json.dumps(statement).encode()
    kind = "application/vnd.in-toto+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(kind), kind.encode(), len(body), body)
    envelope = {
        "payloadType": kind,
        "payload": base64.b64encode(body).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(tools.sign_bytes(p256, pae)).decode()}],
    }
    registry.push_signature_layers(repo, digest, [(json.dumps(envelope).encode(), cosign.DSSE_MEDIA, {})])
    outcome = await env.admit(env.check(policies=[policy(env, p256)]), f"{registry.host}/{repo}:v1")
    assert outcome.verdict.allowed


async def test_multi_arch_index_is_verified_by_its_own_digest(env, registry, tools, p256) -> None:
    repo = registry.repo()
    amd64 = registry.push_image(repo, "amd64")
    arm64 = registry.push_image(repo, "arm64")
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": 1, "platform": p}
            for d, p in (
                (amd64, {"os": "linux", "architecture": "amd64"}),
                (arm64, {"os": "linux", "architecture": "arm64"}),
            )
        ],
    }
    digest = registry.push_manifest(repo, "v1", index)
    sign_image(registry, tools, repo, digest, p256)
    outcome = await env.admit(env.check(policies=[policy(env, p256)]), f"{registry.host}/{repo}:v1")
    assert outcome.verdict.allowed, outcome.verdict.deny_message()
    assert outcome.verdict.patches[0]["value"] == f"{registry.host}/{repo}@{digest}"


async def test_the_same_key_listed_twice_counts_once_towards_the_threshold(env, registry, tools, p256) -> None:
    """``keys: [a.pub, a-copy.pub]`` with threshold 2: one signature must not meet it (distinct SPKI)."""
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    sign_image(registry, tools, repo, digest, p256)
    sign_image(registry, tools, repo, digest, p256)  # a second signature by the same key changes nothing
    keys = [env.key_file(p256, "a.pub"), env.key_file(p256, "a-copy.pub")]
    check = env.check(policies=[{"pattern": f"{env.host}/team-a/*", "keys": keys, "threshold": 2, "tlog": "optional"}])
    message = denial(await env.admit(check, f"{registry.host}/{repo}@{digest}"))
    assert "1 of the required 2 authorities" in message


async def test_the_same_key_in_another_encoding_counts_once(env, registry, tools, p256) -> None:
    """A PEM with different line wrapping or a trailing comment is still the same SPKI."""
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    sign_image(registry, tools, repo, digest, p256)
    env.key_file(p256, "a.pub")
    (env.base_dir / "a-again.pub").write_bytes(b"# the same key, pasted again\n" + tools.public_pem(p256) + b"\n\n")
    rule = {"pattern": f"{env.host}/team-a/*", "keys": ["a.pub", "a-again.pub"], "threshold": 2, "tlog": "optional"}
    message = denial(await env.admit(env.check(policies=[rule]), f"{registry.host}/{repo}@{digest}"))
    assert "1 of the required 2 authorities" in message
