"""Attacks on signature verification against a real registry (Debian's ``docker-registry`` on
loopback, started here with its own config; images and signatures pushed over the HTTP API,
signed with ``cryptography`` keys).

The main one: an in-toto attestation (SBOM, SLSA provenance, scan report) signed by a trusted
identity is not an approval to run the image. CI commonly attests *every* build (including
unreviewed branches) while only releases are signed; accepting any signed statement that names
the digest let those builds in (fixed in ``signatures/evidence.py``: only cosign's signing
predicate counts).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webhook import config as config_mod
from webhook.checks import images as images_check
from webhook.checks.pipeline import Pipeline, Subject
from webhook.checks.services import Services
from webhook.core.deadline import Deadline
from webhook.signatures import cosign

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"


class Registry:
    def __init__(self, host: str) -> None:
        self.host = host
        self.count = 0

    def _call(self, method: str, path: str, body: bytes | None = None, ctype: str = "") -> Any:
        headers = {"Content-Type": ctype} if ctype else {}
        request = urllib.request.Request(f"http://{self.host}{path}", data=body, method=method, headers=headers)
        return urllib.request.urlopen(request, timeout=10)

    def blob(self, repo: str, data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self._call("POST", f"/v2/{repo}/blobs/uploads/") as resp:
            location = resp.headers["Location"]
        sep = "&" if "?" in location else "?"
        path = location.split(self.host, 1)[-1]
        with self._call("PUT", f"{path}{sep}digest={digest}", data, "application/octet-stream"):
            pass
        return {"digest": digest, "size": len(data)}

    def manifest(self, repo: str, ref: str, layers: list[dict[str, Any]]) -> str:
        config = b"{}"
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **self.blob(repo, config)},
            "layers": layers,
        }
        body = json.dumps(doc, separators=(",", ":")).encode()
        with self._call("PUT", f"/v2/{repo}/manifests/{ref}", body, OCI_MANIFEST):
            pass
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def image(self) -> tuple[str, str]:
        self.count += 1
        repo = f"team/app{self.count}-{os.getpid()}"
        layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **self.blob(repo, os.urandom(32))}
        return repo, self.manifest(repo, "v1", [layer])

    def attach(self, repo: str, digest: str, payload: bytes, media: str, annotations: dict[str, str]) -> None:
        layer = {"mediaType": media, **self.blob(repo, payload), "annotations": annotations}
        self.manifest(repo, digest.replace(":", "-") + ".sig", [layer])


@pytest.fixture(scope="module")
def registry(docker_registry: str) -> Registry:
    return Registry(docker_registry)


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _dsse(key: ec.EllipticCurvePrivateKey, statement: dict[str, Any]) -> bytes:
    body = json.dumps(statement).encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(IN_TOTO), IN_TOTO.encode(), len(body), body)
    sig = key.sign(pae, ec.ECDSA(hashes.SHA256()))
    envelope = {
        "payloadType": IN_TOTO,
        "payload": base64.b64encode(body).decode(),
        "signatures": [{"sig": base64.b64encode(sig).decode()}],
    }
    return json.dumps(envelope).encode()


def _simple_signing(key: ec.EllipticCurvePrivateKey, repo: str, digest: str) -> tuple[bytes, str]:
    """A cosign simple-signing payload for ``repo@digest`` and its base64 signature by ``key``."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": repo},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    return payload, base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def _statement(registry: Registry, repo: str, digest: str, predicate_type: str) -> dict[str, Any]:
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": f"{registry.host}/{repo}", "digest": {"sha256": digest.split(":")[1]}}],
        "predicateType": predicate_type,
        "predicate": {"buildDefinition": {"buildType": "https://example.com/ci"}},
    }


async def _admit(tmp_path: Path, registry: Registry, key: ec.EllipticCurvePrivateKey, image: str) -> Any:
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "ci.pub").write_bytes(pem)
    images = {
        "insecure_registries": [registry.host],
        "policies": [{"pattern": f"{registry.host}/team/**", "keys": ["ci.pub"], "tlog": "optional"}],
    }
    config = config_mod.parse({"images": images}, base_dir=tmp_path)
    check = images_check.build(config, Services())
    assert check is not None
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": image}]},
    }
    try:
        return await Pipeline(config_mod.parse({}), [check]).evaluate(
            Subject("CREATE", "Pod", "default", "p", obj), Deadline.after(10)
        )
    finally:
        await check.close()


@pytest.mark.parametrize(
    "predicate_type",
    ["https://slsa.dev/provenance/v1", "https://cyclonedx.org/bom", "https://cosign.sigstore.dev/attestation/vuln/v1"],
)
async def test_a_signed_attestation_is_not_a_signature(
    tmp_path: Path, registry: Registry, key: ec.EllipticCurvePrivateKey, predicate_type: str
) -> None:
    repo, digest = registry.image()
    envelope = _dsse(key, _statement(registry, repo, digest, predicate_type))
    registry.attach(repo, digest, envelope, cosign.DSSE_MEDIA, {})
    outcome = await _admit(tmp_path, registry, key, f"{registry.host}/{repo}:v1")
    assert not outcome.verdict.allowed
    assert "images" in {v.check for v in outcome.verdict.denials}


async def test_a_cosign_v3_signature_statement_is_a_signature(
    tmp_path: Path, registry: Registry, key: ec.EllipticCurvePrivateKey
) -> None:
    repo, digest = registry.image()
    registry.attach(repo, digest, _dsse(key, _statement(registry, repo, digest, SIGN_PREDICATE)), cosign.DSSE_MEDIA, {})
    outcome = await _admit(tmp_path, registry, key, f"{registry.host}/{repo}:v1")
    assert outcome.verdict.allowed, outcome.verdict.deny_message()
    assert outcome.verdict.patches[0]["value"] == f"{registry.host}/{repo}@{digest}"


async def test_signature_stored_for_one_digest_does_not_cover_another(
    tmp_path: Path, registry: Registry, key: ec.EllipticCurvePrivateKey
) -> None:
    """A valid signature of image A copied under image B's ``.sig`` tag names A's digest."""
    repo, signed = registry.image()
    payload, sig = _simple_signing(key, repo, signed)
    repo_b, digest_b = registry.image()
    registry.attach(repo_b, digest_b, payload, cosign.SIMPLE_SIGNING_MEDIA, {cosign.SIGNATURE_ANNOTATION: sig})
    outcome = await _admit(tmp_path, registry, key, f"{registry.host}/{repo_b}@{digest_b}")
    assert not outcome.verdict.allowed
    assert "digest mismatch" in outcome.verdict.deny_message()


async def test_registry_settings_use_the_same_host_spelling_as_references(
    tmp_path: Path, registry: Registry, key: ec.EllipticCurvePrivateKey
) -> None:
    """References are canonicalised (lower case, no ``:443``), so the registry names in the
    config must be too, or an ``insecure_registries`` entry written in capitals stops applying."""
    repo, digest = registry.image()
    payload, sig = _simple_signing(key, repo, digest)
    registry.attach(repo, digest, payload, cosign.SIMPLE_SIGNING_MEDIA, {cosign.SIGNATURE_ANNOTATION: sig})
    port = registry.host.rsplit(":", 1)[1]
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "ci.pub").write_bytes(pem)
    images = {
        "insecure_registries": [f"LocalHost:{port}"],
        "policies": [{"pattern": f"localhost:{port}/team/**", "keys": ["ci.pub"], "tlog": "optional"}],
    }
    config = config_mod.parse({"images": images}, base_dir=tmp_path)
    check = images_check.build(config, Services())
    assert check is not None
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": f"LOCALHOST:{port}/{repo}:v1"}]},
    }
    try:
        outcome = await Pipeline(config_mod.parse({}), [check]).evaluate(
            Subject("CREATE", "Pod", "default", "p", obj), Deadline.after(10)
        )
    finally:
        await check.close()
    assert outcome.verdict.allowed, outcome.verdict.deny_message()
    assert outcome.verdict.patches[0]["value"] == f"LOCALHOST:{port}/{repo}@{digest}"


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://GHCR.IO:443/v1/", "ghcr.io"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("Registry.Example:5000", "registry.example:5000"),
    ],
)
def test_pull_secret_hosts_are_canonical(key: str, host: str) -> None:
    from webhook.signatures import credentials

    assert credentials.normalize_registry(key) == host
