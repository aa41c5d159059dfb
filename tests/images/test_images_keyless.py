"""Keyless signatures against a real registry, under a test trust root (test CA, test log key).

Signatures carry cosign's keyless annotations (certificate, chain, Rekor bundle) or live in
sigstore bundles attached as OCI referrers (found through the referrers tag: docker-registry
2.8 has no referrers API).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webhook import errors
from webhook.signatures import cosign

pytestmark = pytest.mark.registry

ISSUER = "https://token.actions.example"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SUBJECT = "https://github.example/org/repo/.github/workflows/release.yml@refs/heads/main"


def keyless_sign(
    registry: Any,
    tools: Any,
    keyless: Any,
    repo: str,
    digest: str,
    *,
    subject: str = SUBJECT,
    issuer: str = ISSUER,
    signed_at: int | None = None,
    cert_start: dt.datetime | None = None,
    ca: tuple[Any, Any] | None = None,
    log_key: Any = None,
    **cert_options: Any,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key, ca_cert = ca if ca else (None, None)
    cert = keyless.certificate(
        key, subject, issuer, not_before=cert_start, ca_key=ca_key, ca_cert=ca_cert, **cert_options
    )
    payload = tools.simple_signing(f"{registry.host}/{repo}", digest)
    signature = tools.sign_bytes(key, payload)
    when = signed_at if signed_at is not None else int(time.time())
    entry = keyless.rekor_entry(payload, signature, cert, when)
    if log_key is not None:  # re-sign the promise with a log key the trust root does not name
        signer = type(keyless)(keyless.ca_key, keyless.ca_cert, log_key, keyless.ct_key, keyless.trust_root)
        entry = signer.rekor_entry(payload, signature, cert, when)
    annotations = {
        cosign.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode(),
        cosign.CERTIFICATE_ANNOTATION: cert.public_bytes(serialization.Encoding.PEM).decode(),
        cosign.CHAIN_ANNOTATION: (ca_cert or keyless.ca_cert).public_bytes(serialization.Encoding.PEM).decode(),
        cosign.BUNDLE_ANNOTATION: json.dumps(entry),
    }
    registry.push_signature_layers(repo, digest, [(payload, cosign.SIMPLE_SIGNING_MEDIA, annotations)])


def keyless_policy(env: Any, keyless: Any, **identity: str) -> dict[str, Any]:
    return {
        "policies": [
            {"pattern": f"{env.host}/team-a/*", "keyless": [identity or {"issuer": ISSUER, "subject": SUBJECT}]}
        ],
        "trust_root": str(keyless.trust_root),
    }


async def test_keyless_signature_with_trusted_certificate_and_log_entry_is_admitted(
    env, registry, tools, keyless
) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    keyless_sign(registry, tools, keyless, repo, digest)
    outcome = await env.admit(env.check(**keyless_policy(env, keyless)), f"{registry.host}/{repo}:v1")
    assert outcome.verdict.allowed, outcome.verdict.deny_message()
    assert outcome.context["images"]["images"][0]["authorities"] == [f"keyless {SUBJECT} from {ISSUER}"]


async def test_subject_regex_matches_on_top_of_the_exact_issuer(env, registry, tools, keyless) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    keyless_sign(registry, tools, keyless, repo, digest)
    config = keyless_policy(
        env, keyless, issuer=ISSUER, subject_regex=r"https://github\.example/org/.*@refs/heads/main"
    )
    assert (await env.admit(env.check(**config), f"{registry.host}/{repo}:v1")).verdict.allowed


@pytest.mark.parametrize(
    "identity",
    [
        pytest.param(
            {"issuer": ISSUER, "subject": "https://github.example/org/other.yml@refs/heads/main"}, id="subject"
        ),
        pytest.param({"issuer": "https://accounts.example", "subject": SUBJECT}, id="issuer"),
        pytest.param(
            {"issuer": ISSUER, "subject_regex": r"https://github\.example/org/repo/.*@refs/tags/.*"}, id="regex"
        ),
    ],
)
async def test_wrong_identity_is_denied(env, registry, tools, keyless, identity) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    keyless_sign(registry, tools, keyless, repo, digest)
    outcome = await env.admit(env.check(**keyless_policy(env, keyless, **identity)), f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed
    assert "wrong identity" in outcome.verdict.deny_message()


def _fresh_key() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


# Each way a keyless signature can be forged or stale, as keyless_sign options, and the reason
# the denial must give. ``ca`` names a fixture (the rogue CA).
FORGED: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    # a 10-minute certificate that had expired when the entry was logged (now)
    "certificate-expired-when-logged": (
        lambda: {"cert_start": dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)},
        "was not valid when logged",
    ),
    "certificate-from-an-untrusted-ca": (lambda: {"ca": "rogue_ca"}, "does not chain to a trusted CA"),
    "log-promise-signed-by-an-unknown-log": (lambda: {"log_key": _fresh_key()}, "is not in the trust root"),
    "certificate-without-an-sct": (lambda: {"with_sct": False}, "no signed certificate timestamp"),
    "sct-from-a-ct-log-the-trust-root-does-not-name": (lambda: {"ct_key": _fresh_key()}, "does not name"),
    # a genuine CT log signature, but over a precertificate of another issuer
    "sct-over-another-issuer": (lambda: {"sct_issuer_key": _fresh_key()}, "does not verify"),
    # 1970: before the CT key's validity window
    "sct-issued-before-the-ct-key-was-valid": (lambda: {"sct_millis": 1_000}, "validity window"),
}


@pytest.mark.parametrize("forgery", sorted(FORGED))
async def test_forged_or_stale_keyless_signature_is_denied_with_the_reason(
    env, registry, tools, keyless, request, forgery
) -> None:
    options, reason = FORGED[forgery]
    kwargs = options()
    if isinstance(kwargs.get("ca"), str):
        kwargs["ca"] = request.getfixturevalue(kwargs["ca"])
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    keyless_sign(registry, tools, keyless, repo, digest, **kwargs)
    outcome = await env.admit(env.check(**keyless_policy(env, keyless)), f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed
    assert reason in outcome.verdict.deny_message()


async def test_keyed_signature_does_not_satisfy_a_keyless_identity(env, registry, tools, keyless) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    key = ec.generate_private_key(ec.SECP256R1())
    payload = tools.simple_signing(f"{registry.host}/{repo}", digest)
    annotations = {cosign.SIGNATURE_ANNOTATION: base64.b64encode(tools.sign_bytes(key, payload)).decode()}
    registry.push_signature_layers(repo, digest, [(payload, cosign.SIMPLE_SIGNING_MEDIA, annotations)])
    outcome = await env.admit(env.check(**keyless_policy(env, keyless)), f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed
    assert "no certificate" in outcome.verdict.deny_message()


def push_bundle(registry: Any, repo: str, digest: str, bundle: bytes) -> None:
    registry.push_referrer(repo, digest, BUNDLE, bundle, BUNDLE)


async def test_keyless_bundle_found_through_the_referrers_tag_is_admitted(env, registry, tools, keyless) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = keyless.certificate(key, SUBJECT, ISSUER)
    push_bundle(registry, repo, digest, keyless.dsse_bundle(f"{registry.host}/{repo}", digest, key, cert))
    outcome = await env.admit(env.check(**keyless_policy(env, keyless)), f"{registry.host}/{repo}:v1")
    assert outcome.verdict.allowed, outcome.verdict.deny_message()


async def test_bundle_naming_another_digest_is_denied(env, registry, tools, keyless) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    other = registry.push_image(repo, "v2")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = keyless.certificate(key, SUBJECT, ISSUER)
    push_bundle(registry, repo, digest, keyless.dsse_bundle(f"{registry.host}/{repo}", other, key, cert))
    outcome = await env.admit(env.check(**keyless_policy(env, keyless)), f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed
    assert "digest mismatch" in outcome.verdict.deny_message()


def test_unreadable_trust_root_is_a_config_error(env, tmp_path) -> None:
    (tmp_path / "root.json").write_text("{}")
    config = {"policies": [{"pattern": "x/*", "keyless": [{"issuer": ISSUER, "subject": SUBJECT}]}]}
    with pytest.raises(errors.ConfigError, match=r"root\.json"):
        env.check(**config, trust_root="root.json")


async def test_bundle_with_wrong_identity_is_denied_by_the_library_policy(env, registry, keyless) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = keyless.certificate(key, "mallory@example.com", ISSUER)
    push_bundle(registry, repo, digest, keyless.dsse_bundle(f"{registry.host}/{repo}", digest, key, cert))
    config = keyless_policy(
        env, keyless, issuer_regex=r"https://token\.actions\.example", subject_regex=r".*@org\.example"
    )
    outcome = await env.admit(env.check(**config), f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed
    message = outcome.verdict.deny_message()
    assert "sigstore bundle rejected" in message
    assert "wrong identity" in message


async def test_bundle_from_an_untrusted_ca_is_denied_by_the_library(env, registry, keyless, rogue_ca) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = keyless.certificate(key, SUBJECT, ISSUER, ca_key=rogue_ca[0], ca_cert=rogue_ca[1])
    push_bundle(registry, repo, digest, keyless.dsse_bundle(f"{registry.host}/{repo}", digest, key, cert))
    outcome = await env.admit(env.check(**keyless_policy(env, keyless)), f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed
    assert "sigstore bundle rejected" in outcome.verdict.deny_message()


async def test_bundle_with_tampered_statement_is_denied(env, registry, keyless) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = keyless.certificate(key, SUBJECT, ISSUER)
    bundle = json.loads(keyless.dsse_bundle(f"{registry.host}/{repo}", digest, key, cert))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"] = {"evil": True}
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    push_bundle(registry, repo, digest, json.dumps(bundle).encode())
    outcome = await env.admit(env.check(**keyless_policy(env, keyless)), f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed
    assert "sigstore bundle rejected" in outcome.verdict.deny_message()


async def test_unreadable_bundle_is_reported_not_raised(env, registry, keyless) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    push_bundle(registry, repo, digest, b"{not json")
    outcome = await env.admit(env.check(**keyless_policy(env, keyless)), f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed
    assert "unreadable bundle" in outcome.verdict.deny_message()


async def test_overlapping_identity_regexes_count_one_signer_once(env, registry, tools, keyless) -> None:
    """Two identities that both match one signer: its signatures (even two, with two certificates)
    meet a threshold of 2 only with a second, distinct signer."""
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    keyless_sign(registry, tools, keyless, repo, digest)
    keyless_sign(registry, tools, keyless, repo, digest)
    identities = [
        {"issuer": ISSUER, "subject_regex": r"https://github\.example/org/.*"},
        {"issuer": ISSUER, "subject_regex": r".*@refs/heads/main"},
    ]
    config = {
        "policies": [{"pattern": f"{env.host}/team-a/*", "keyless": identities, "threshold": 2}],
        "trust_root": str(keyless.trust_root),
        "cache": {"negative_ttl_seconds": 0},
    }
    check = env.check(**config)
    outcome = await env.admit(check, f"{registry.host}/{repo}@{digest}")
    assert not outcome.verdict.allowed
    assert "1 of the required 2 authorities" in outcome.verdict.deny_message()
    other = "https://github.example/org/other/.github/workflows/release.yml@refs/heads/main"
    keyless_sign(registry, tools, keyless, repo, digest, subject=other)
    outcome = await env.admit(check, f"{registry.host}/{repo}@{digest}")
    assert outcome.verdict.allowed, outcome.verdict.deny_message()


# -- SCTs and key validity windows (issue 20) ---------------------------------------------------


def _root_variant(keyless: Any, tmp_path: Any, edit: Any) -> str:
    doc = json.loads(keyless.trust_root.read_text())
    edit(doc)
    path = tmp_path / "variant_root.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize(
    ("log_list", "reasons"),
    [
        ("tlogs", ("transparency log key", "was not valid at")),
        ("ctlogs", ("validity window",)),
    ],
)
async def test_a_log_key_outside_its_validity_window_is_denied(
    env, registry, tools, keyless, tmp_path, log_list, reasons
) -> None:
    def expire(doc: dict[str, Any]) -> None:
        doc[log_list][0]["publicKey"]["validFor"] = {"start": "2020-01-01T00:00:00Z", "end": "2021-01-01T00:00:00Z"}

    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    keyless_sign(registry, tools, keyless, repo, digest)
    config = keyless_policy(env, keyless)
    config["trust_root"] = _root_variant(keyless, tmp_path, expire)
    outcome = await env.admit(env.check(**config), f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed
    for reason in reasons:
        assert reason in outcome.verdict.deny_message()
