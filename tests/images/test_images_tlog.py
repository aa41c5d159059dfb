"""Keyed signatures and the transparency log: ``tlog: required`` (the default, as cosign's) and
``optional``, against a real registry and a test trust root (the test Rekor key of the keyless
fixture). Signatures are made with ``cryptography``; the Rekor bundle annotation is what
``cosign sign --key`` attaches (hashedrekord body naming the PEM public key, and the log's SET).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from webhook.signatures import cosign

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def signer() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def push_keyed(
    registry: Any,
    tools: Any,
    keyless: Any,
    repo: str,
    digest: str,
    key: Any,
    *,
    logged: bool = True,
    logged_key: Any = None,
    tamper_set: bool = False,
) -> None:
    payload = tools.simple_signing(f"{registry.host}/{repo}", digest)
    signature = tools.sign_bytes(key, payload)
    annotations = {cosign.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()}
    if logged:
        entry = keyless.rekor_entry(payload, signature, (logged_key or key).public_key(), int(time.time()))
        if tamper_set:
            entry["Payload"]["logIndex"] += 1  # the promise no longer covers what is claimed
        annotations[cosign.BUNDLE_ANNOTATION] = json.dumps(entry)
    registry.push_signature_layers(repo, digest, [(payload, cosign.SIMPLE_SIGNING_MEDIA, annotations)])


def rule(env: Any, keyless: Any, key: Any, **extra: Any) -> dict[str, Any]:
    return {
        "policies": [{"pattern": f"{env.host}/team-a/**", "keys": [env.key_file(key)], **extra}],
        "trust_root": str(keyless.trust_root),
    }


async def test_keyed_signature_with_a_rekor_entry_is_admitted_by_default(env, registry, tools, keyless, signer):
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    push_keyed(registry, tools, keyless, repo, digest, signer)
    outcome = await env.admit(env.check(**rule(env, keyless, signer)), f"{registry.host}/{repo}:v1")
    assert outcome.verdict.allowed, outcome.verdict.deny_message()


# What is wrong with the keyed signature's log entry (push_keyed options), and the reason given.
REFUSED: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "no-entry-while-tlog-is-required-by-default": (lambda: {"logged": False}, "tlog: required"),
    "entry-logging-another-key": (lambda: {"logged_key": ec.generate_private_key(ec.SECP256R1())}, "another key"),
    "entry-whose-promise-does-not-verify": (lambda: {"tamper_set": True}, "promise (SET)"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_a_keyed_signature_with_a_bad_or_missing_log_entry_is_refused(
    env, registry, tools, keyless, signer, case
):
    options, reason = REFUSED[case]
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    push_keyed(registry, tools, keyless, repo, digest, signer, **options())
    outcome = await env.admit(env.check(**rule(env, keyless, signer)), f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed
    assert reason in outcome.verdict.deny_message()


async def test_tlog_optional_accepts_a_keyed_signature_without_an_entry(env, registry, tools, keyless, signer):
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    push_keyed(registry, tools, keyless, repo, digest, signer, logged=False)
    check = env.check(**rule(env, keyless, signer, tlog="optional"))
    outcome = await env.admit(check, f"{registry.host}/{repo}:v1")
    assert outcome.verdict.allowed, outcome.verdict.deny_message()


async def test_an_entry_for_another_payload_is_refused(env, registry, tools, keyless, signer):
    """The log entry of an older signature, reattached to a new payload by the same key."""
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    payload = tools.simple_signing(f"{registry.host}/{repo}", digest)
    signature = tools.sign_bytes(signer, payload)
    older = tools.simple_signing(f"{registry.host}/{repo}", "sha256:" + "1" * 64)
    entry = keyless.rekor_entry(older, tools.sign_bytes(signer, older), signer.public_key(), int(time.time()))
    annotations = {
        cosign.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode(),
        cosign.BUNDLE_ANNOTATION: json.dumps(entry),
    }
    registry.push_signature_layers(repo, digest, [(payload, cosign.SIMPLE_SIGNING_MEDIA, annotations)])
    outcome = await env.admit(env.check(**rule(env, keyless, signer)), f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed
    assert "another payload" in outcome.verdict.deny_message()


def test_tlog_takes_only_required_or_optional() -> None:
    from webhook import config as config_mod
    from webhook import errors

    with pytest.raises(errors.ConfigError, match=r"images\.policies\[0\]"):
        config_mod.parse({"images": {"policies": [{"pattern": "ghcr.io/x/*", "keys": ["k.pub"], "tlog": "maybe"}]}})
    cfg = config_mod.parse({"images": {"policies": [{"pattern": "ghcr.io/x/*", "keys": ["k.pub"]}]}})
    assert cfg.images.policies[0].tlog == "required"
