"""Hostile signature material pushed next to an image, judged against the real docker-registry.

Whoever can push to the image's repository controls its ``.sig`` layers and its referrers. What
they push must be a verdict about that layer (a problem named in the denial), never an exception
that makes the whole images check "could not finish": that hides the good signatures beside it,
and under the images check's ``failure_mode: allow`` admits an unsigned image.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import time
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from registry_front import front

from webhook.core.decision import FailureMode
from webhook.signatures import cosign

pytestmark = pytest.mark.registry

ISSUER = "https://token.actions.example"
SUBJECT = "https://github.example/org/repo/.github/workflows/release.yml@refs/heads/main"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def keyless_policy(env: Any, keyless: Any) -> dict[str, Any]:
    return {
        "policies": [{"pattern": f"{env.host}/team-a/*", "keyless": [{"issuer": ISSUER, "subject": SUBJECT}]}],
        "trust_root": str(keyless.trust_root),
    }


def keyless_layer(tools: Any, keyless: Any, host: str, repo: str, digest: str) -> tuple[bytes, str, dict[str, str]]:
    """A genuine keyless ``.sig`` layer (certificate, chain, Rekor bundle) for ``digest``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = keyless.certificate(key, SUBJECT, ISSUER)
    payload = tools.simple_signing(f"{host}/{repo}", digest)
    signature = tools.sign_bytes(key, payload)
    entry = keyless.rekor_entry(payload, signature, cert, int(time.time()))
    annotations = {
        cosign.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode(),
        cosign.CERTIFICATE_ANNOTATION: cert.public_bytes(serialization.Encoding.PEM).decode(),
        cosign.CHAIN_ANNOTATION: keyless.ca_cert.public_bytes(serialization.Encoding.PEM).decode(),
        cosign.BUNDLE_ANNOTATION: json.dumps(entry),
    }
    return payload, cosign.SIMPLE_SIGNING_MEDIA, annotations


def self_signed(*extensions: tuple[x509.ExtensionType, bool]) -> x509.Certificate:
    """A day-long self-signed certificate anyone can make, with ``(extension, critical)`` pairs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


def self_signed_pem() -> str:
    return self_signed().public_bytes(serialization.Encoding.PEM).decode()


def junk_time_layer(tools: Any, host: str, repo: str, digest: str, when: object) -> tuple[bytes, str, dict[str, str]]:
    """A layer anyone can push: a self-signed certificate and a Rekor bundle whose integratedTime
    no clock can represent (year 33658, or past time_t)."""
    payload = tools.simple_signing(f"{host}/{repo}", digest)
    entry = {
        "SignedEntryTimestamp": base64.b64encode(b"x" * 64).decode(),
        "Payload": {"body": base64.b64encode(b"{}").decode(), "integratedTime": when, "logIndex": 1, "logID": "00"},
    }
    annotations = {
        cosign.SIGNATURE_ANNOTATION: base64.b64encode(b"x" * 64).decode(),
        cosign.CERTIFICATE_ANNOTATION: self_signed_pem(),
        cosign.BUNDLE_ANNOTATION: json.dumps(entry),
    }
    return payload, cosign.SIMPLE_SIGNING_MEDIA, annotations


TIMES = [10**12, -(10**12), str(10**19), str(10**30)]


@pytest.mark.parametrize("when", TIMES)
async def test_an_unrepresentable_log_time_does_not_hide_a_good_keyless_signature(
    env, registry, tools, keyless, when
) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    registry.push_signature_layers(
        repo,
        digest,
        [
            junk_time_layer(tools, registry.host, repo, digest, when),
            keyless_layer(tools, keyless, registry.host, repo, digest),
        ],
    )
    outcome = await env.admit(env.check(**keyless_policy(env, keyless)), f"{registry.host}/{repo}:v1")
    assert outcome.verdict.allowed, outcome.verdict.deny_message()


@pytest.mark.parametrize("when", TIMES)
async def test_an_unrepresentable_log_time_on_an_unsigned_image_is_a_verdict_not_the_failure_mode(
    env, registry, tools, keyless, when
) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    registry.push_signature_layers(repo, digest, [junk_time_layer(tools, registry.host, repo, digest, when)])
    check = env.check(**keyless_policy(env, keyless))
    check.failure_mode = FailureMode.ALLOW  # checks.images.failure_mode: allow (registry outages admit)
    outcome = await env.admit(check, f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed, f"unsigned image admitted: {outcome.verdict.warnings}"
    message = outcome.verdict.deny_message()
    assert "could not finish" not in message
    assert "internal error" not in message
    assert "integratedTime" in message


@pytest.mark.parametrize("promise", [True, False], ids=["with-promise", "proof-only"])
@pytest.mark.parametrize("when", ["1000000000000", "99999999999999999999999999"])
async def test_a_bundle_with_an_unrepresentable_log_time_is_a_verdict(env, registry, keyless, when, promise) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = keyless.certificate(key, SUBJECT, ISSUER)
    bundle = json.loads(keyless.dsse_bundle(f"{registry.host}/{repo}", digest, key, cert))
    entry = bundle["verificationMaterial"]["tlogEntries"][0]
    entry["integratedTime"] = when
    if not promise:
        del entry["inclusionPromise"]
    registry.push_referrer(repo, digest, BUNDLE, json.dumps(bundle).encode(), BUNDLE)
    check = env.check(**keyless_policy(env, keyless))
    check.failure_mode = FailureMode.ALLOW
    outcome = await env.admit(check, f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed, f"admitted: {outcome.verdict.warnings}"
    message = outcome.verdict.deny_message()
    assert "could not finish" not in message
    assert "internal error" not in message


def duplicate_extension_bundle(digest: str) -> bytes:
    """A v0.1 bundle whose certificate lists BasicConstraints twice: the ``sigstore`` library's
    ``Bundle.from_json`` raises cryptography's ``DuplicateExtension`` (not a ``ValueError``)."""
    constraints = x509.BasicConstraints(ca=False, path_length=None)
    placeholder = x509.ObjectIdentifier("2.5.29.99")
    twin = x509.UnrecognizedExtension(placeholder, constraints.public_bytes())
    cert = self_signed((constraints, True), (twin, False))
    # 2.5.29.99 -> 2.5.29.19 (BasicConstraints): the same extension twice.
    der = cert.public_bytes(serialization.Encoding.DER).replace(
        bytes.fromhex("0603551d63"), bytes.fromhex("0603551d13")
    )
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    entry = {
        "logIndex": "1",
        "logId": {"keyId": b64(b"x" * 32)},
        "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
        "integratedTime": str(int(time.time())),
        "inclusionPromise": {"signedEntryTimestamp": b64(b"x" * 64)},
        "inclusionProof": {
            "logIndex": "1",
            "rootHash": b64(b"r" * 32),
            "treeSize": "2",
            "hashes": [],
            "checkpoint": {"envelope": "x"},
        },
        "canonicalizedBody": b64(b"{}"),
    }
    bundle = {
        "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "verificationMaterial": {
            "x509CertificateChain": {"certificates": [{"rawBytes": b64(der)}]},
            "tlogEntries": [entry],
        },
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": b64(bytes.fromhex(digest.split(":")[1]))},
            "signature": b64(b"x" * 64),
        },
    }
    return json.dumps(bundle).encode()


async def test_a_bundle_the_library_cannot_load_is_a_verdict_not_the_failure_mode(env, registry, keyless) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    registry.push_referrer(repo, digest, BUNDLE, duplicate_extension_bundle(digest), BUNDLE)
    check = env.check(**keyless_policy(env, keyless))
    check.failure_mode = FailureMode.ALLOW
    outcome = await env.admit(check, f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed, f"unsigned image admitted: {outcome.verdict.warnings}"
    message = outcome.verdict.deny_message()
    assert "could not finish" not in message
    assert "sigstore bundle" in message


async def test_a_bundle_the_library_cannot_load_does_not_hide_a_good_one(env, registry, keyless) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    registry.push_referrer(repo, digest, BUNDLE, duplicate_extension_bundle(digest), BUNDLE)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = keyless.certificate(key, SUBJECT, ISSUER)
    good = keyless.dsse_bundle(f"{registry.host}/{repo}", digest, key, cert)
    registry.push_referrer(repo, digest, BUNDLE, good, BUNDLE)
    outcome = await env.admit(env.check(**keyless_policy(env, keyless)), f"{registry.host}/{repo}:v1")
    assert outcome.verdict.allowed, outcome.verdict.deny_message()


async def test_bundle_referrers_within_the_bound_are_fetched_in_parallel_not_run_into_the_deadline(
    env, registry, serve, keyless
) -> None:
    """40 junk bundle referrers (within max_signatures) behind a registry 50 ms away: fetched one
    after another (a manifest and a blob each, 4 s) they ran the request into its deadline, and a
    pattern with ``failure_mode: allow`` admitted the unsigned image as "registry too slow"."""

    async def slow(request: web.Request) -> web.StreamResponse | None:
        await asyncio.sleep(0.05)
        return None

    host = await serve(front(registry.host, slow))
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    for i in range(40):
        registry.push_referrer(repo, digest, BUNDLE, b'{"junk": %d}' % i, BUNDLE)
    config = keyless_policy(env, keyless)
    config["insecure_registries"] = [host]
    config["policies"][0]["pattern"] = f"{host}/team-a/*"
    config["policies"][0]["failure_mode"] = "allow"
    outcome = await env.admit(env.check(**config), f"{host}/{repo}@{digest}", budget=2.5)
    assert not outcome.verdict.allowed, f"unsigned image admitted: {outcome.verdict.warnings}"
    message = outcome.verdict.deny_message()
    assert "failure mode" not in message
    assert "unreadable bundle" in message


@pytest.mark.parametrize(
    "subjects",
    [[{"digest": "sha256"}], [{"digest": ["x"]}], ["name"], {"not": "a list"}],
    ids=["digest-a-string", "digest-a-list", "subject-a-string", "subjects-an-object"],
)
async def test_an_in_toto_statement_of_odd_shape_in_a_sig_layer_is_a_verdict(env, registry, tools, subjects) -> None:
    """No signature needed: a DSSE layer whose statement's subject digest is not an object."""
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    statement = {"subject": subjects, "predicateType": "https://sigstore.dev/cosign/sign/v1"}
    envelope = {
        "payloadType": "application/vnd.in-toto+json",
        "payload": base64.b64encode(json.dumps(statement).encode()).decode(),
        "signatures": [{"sig": base64.b64encode(b"x" * 64).decode()}],
    }
    registry.push_signature_layers(repo, digest, [(json.dumps(envelope).encode(), cosign.DSSE_MEDIA, {})])
    key = ec.generate_private_key(ec.SECP256R1())
    config = {"policies": [{"pattern": f"{env.host}/team-a/*", "keys": [env.key_file(key)], "tlog": "optional"}]}
    check = env.check(**config)
    check.failure_mode = FailureMode.ALLOW
    outcome = await env.admit(check, f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed, f"unsigned image admitted: {outcome.verdict.warnings}"
    assert "could not finish" not in outcome.verdict.deny_message()


async def test_a_referrer_descriptor_naming_a_path_is_a_verdict_never_a_request(env, registry, serve, keyless) -> None:
    """A referrer's descriptor is repository content (a real registry refuses such an index on
    push; a hostile one serves it, as the front below does). A "digest" of
    ``../../<other repo>/manifests/v1`` was put in the manifest URL as it stood, and the HTTP
    client folded the dots into a request for another repository, with this image's credentials.
    Now a manifest reference must be a tag or ``sha256:<hex>``; anything else is a problem of that
    referrer, and no such request is made."""
    repo, other = registry.repo(), registry.repo()
    registry.push_image(other, "v1")
    digest = registry.push_image(repo, "v1")
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"../../{other}/manifests/v1",
                "size": 100,
                "artifactType": BUNDLE,
            }
        ],
    }
    seen: list[str] = []

    async def hostile(request: web.Request) -> web.StreamResponse | None:
        seen.append(request.raw_path)
        if request.path in (f"/v2/{repo}/manifests/{digest.replace(':', '-')}", f"/v2/{repo}/referrers/{digest}"):
            return web.Response(body=json.dumps(index).encode(), content_type="application/vnd.oci.image.index.v1+json")
        return None

    host = await serve(front(registry.host, hostile))
    config = keyless_policy(env, keyless)
    config["insecure_registries"] = [host]
    config["policies"][0]["pattern"] = f"{host}/team-a/*"
    config["policies"][0]["failure_mode"] = "allow"
    outcome = await env.admit(env.check(**config), f"{host}/{repo}@{digest}")
    assert not outcome.verdict.allowed, f"unsigned image admitted: {outcome.verdict.warnings}"
    assert "neither a tag nor sha256" in outcome.verdict.deny_message()
    assert any("referrers" in p or digest.replace(":", "-") in p for p in seen), seen
    assert not [p for p in seen if other in p or ".." in p], seen


async def test_signatures_beyond_the_bound_are_not_checked_one_by_one(env, registry, tools, monkeypatch) -> None:
    """The bound was on layers: 100 DSSE layers of 16 signers each (junk, pushed by anyone who can
    push to the repository) bought 1,600 signature checks per key authority on the event loop,
    about 100 ms. Now the bound counts signatures: past ``max_signatures`` the layers are one
    problem, and no signature is checked."""
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    payload = tools.simple_signing(f"{registry.host}/{repo}", digest)
    envelope = {
        "payloadType": "application/vnd.dev.cosign.simplesigning.v1+json",
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"sig": base64.b64encode(b"x" * 64).decode()}] * 16,
    }
    layers = [(json.dumps({**envelope, "n": i}).encode(), cosign.DSSE_MEDIA, {}) for i in range(10)]
    registry.push_signature_layers(repo, digest, layers)  # 160 signatures in 10 layers
    checked: list[int] = []
    real = type(ec.generate_private_key(ec.SECP256R1()).public_key()).verify

    def counting(self: EllipticCurvePublicKey, *args: Any, **kwargs: Any) -> None:
        checked.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(ec.generate_private_key(ec.SECP256R1()).public_key()), "verify", counting)
    key = ec.generate_private_key(ec.SECP256R1())
    config = {"policies": [{"pattern": f"{env.host}/team-a/*", "keys": [env.key_file(key)], "tlog": "optional"}]}
    outcome = await env.admit(env.check(**config), f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed
    assert "160 signatures; at most 100 are checked" in outcome.verdict.deny_message()
    assert not checked
