"""Cosign signatures: the ``sha256-<hex>.sig`` tag scheme, its layers, and keyed verification.

A cosign signature manifest has one layer per signature: the layer blob is the simple-signing
payload (or a DSSE envelope) and ``dev.cosignproject.cosign/signature`` carries the signature;
keyless signatures add the certificate, chain and Rekor bundle annotations. Keyed signatures
are verified here with ``cryptography`` (ECDSA P-256/P-384, Ed25519, RSA).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from webhook import errors
from webhook.core.deadline import Deadline
from webhook.signatures import evidence as ev
from webhook.signatures import registry as reg

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
SIMPLE_SIGNING_MEDIA = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_MEDIA = "application/vnd.dsse.envelope.v1+json"

PARALLEL_FETCHES = 8  # blobs (and bundle referrers, sigstore.py) fetched at once per image
_SIGNATURE_MANIFESTS = frozenset({reg.OCI_MANIFEST, reg.DOCKER_MANIFEST})
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def signature_tag(digest: str) -> str:
    """Where cosign stores the signatures of ``digest``: ``sha256-<hex>.sig``."""
    return digest.replace(":", "-") + ".sig"


async def fetch(
    client: reg.RegistryClient,
    registry: str,
    repository: str,
    digest: str,
    deadline: Deadline,
    creds: reg.Credentials | None = None,
) -> list[ev.Evidence]:
    """Every signature in the image's ``.sig`` manifest (empty when there is none).

    Junk in the repository (``reg.ContentError``) becomes evidence with a problem, per layer
    where it can be: a bad layer never hides a good one, and never reaches the failure mode.
    Transport trouble (``RegistryError``) propagates.
    """
    tag = signature_tag(digest)
    try:
        layers = await signature_layers(client, registry, repository, digest, deadline, creds)
    except reg.ContentError as exc:
        return [ev.problem(f"{repository}:{tag}", f"signature manifest {repository}:{tag}: {exc}")]
    # Blobs are fetched a few at a time: a hundred layers cost ~13 round trips, not a hundred.
    gate = asyncio.Semaphore(PARALLEL_FETCHES)

    async def one(index: int, layer: dict[str, Any] | str) -> list[ev.Evidence]:
        source = f"{repository}:{tag} layer {index}"
        if isinstance(layer, str):
            return [ev.problem(source, f"{source}: {layer}")]
        try:
            async with gate:
                blob = await _layer_blob(client, registry, repository, layer, deadline, creds)
        except reg.ContentError as exc:
            return [ev.problem(source, f"{source}: {exc}")]
        return decode_layer(layer, blob, source)

    found = await asyncio.gather(*(one(i, layer) for i, layer in enumerate(layers)))
    evidence = [e for part in found for e in part]
    # Each signature costs a check per authority on the event loop (about 65 µs for ECDSA P-256):
    # the bound is on signatures, not layers, or 100 DSSE layers of 16 signers each buy 1,600.
    signatures = sum(1 for e in evidence if e.signature)
    if signatures > client.max_signatures:
        where = f"{repository}:{tag}"
        limit = client.max_signatures
        return [ev.problem(where, f"{where} holds {signatures} signatures; at most {limit} are checked")]
    return evidence


async def fetch_layers(
    client: reg.RegistryClient,
    registry: str,
    repository: str,
    digest: str,
    deadline: Deadline,
    creds: reg.Credentials | None = None,
) -> list[tuple[dict[str, Any], bytes]]:
    """The ``.sig`` manifest's layer descriptors with their blobs (what ``images export`` saves).

    Raises ``reg.ContentError`` for junk: export refuses to copy what verification would deny.
    """
    found: list[tuple[dict[str, Any], bytes]] = []
    for index, layer in enumerate(await signature_layers(client, registry, repository, digest, deadline, creds)):
        if isinstance(layer, str):
            raise reg.ContentError(registry, f"{repository}:{signature_tag(digest)} layer {index}: {layer}")
        found.append((layer, await _layer_blob(client, registry, repository, layer, deadline, creds)))
    return found


async def signature_layers(
    client: reg.RegistryClient,
    registry: str,
    repository: str,
    digest: str,
    deadline: Deadline,
    creds: reg.Credentials | None,
) -> list[dict[str, Any] | str]:
    """The ``.sig`` manifest's layer descriptors; a layer that cannot be a signature is why not.

    The manifest must be an image manifest (cosign writes OCI or Docker v2 ones), and each layer a
    descriptor of a cosign media type whose size fits the blob limit: junk is judged before a byte
    of its blob is fetched.
    """
    tag = signature_tag(digest)
    manifest = await client.manifest(registry, repository, tag, deadline, creds)
    if manifest is None:
        return []
    if manifest.media_type not in _SIGNATURE_MANIFESTS:
        raise reg.ContentError(registry, f"{repository}:{tag} is a {manifest.media_type}, not an image manifest")
    layers = manifest.document().get("layers")
    if not isinstance(layers, list):
        raise reg.ContentError(registry, f"{repository}:{tag}: `layers` is not a list")
    if len(layers) > client.max_signatures:
        raise reg.ContentError(
            registry, f"{repository}:{tag} has {len(layers)} layers; at most {client.max_signatures} are read"
        )
    return [_check_descriptor(layer, client.max_blob_bytes) for layer in layers]


def _check_descriptor(layer: object, limit: int) -> dict[str, Any] | str:
    if not isinstance(layer, dict):
        return "not a descriptor object"
    media_type, digest, size = layer.get("mediaType"), layer.get("digest"), layer.get("size")
    if media_type not in (SIMPLE_SIGNING_MEDIA, DSSE_MEDIA):
        return (
            f"media type {str(media_type)[:100]!r} is not a cosign signature ({SIMPLE_SIGNING_MEDIA} or {DSSE_MEDIA})"
        )
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        return f"digest {str(digest)[:80]!r} is not sha256:<64 hex>"
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return f"size {str(size)[:40]!r} is not a byte count"
    if size > limit:
        return f"blob of {size} bytes exceeds the {limit}-byte limit"
    return layer


async def _layer_blob(
    client: reg.RegistryClient,
    registry: str,
    repository: str,
    layer: dict[str, Any],
    deadline: Deadline,
    creds: reg.Credentials | None,
) -> bytes:
    blob = await client.blob(registry, repository, layer["digest"], deadline, creds)
    if len(blob) != layer["size"]:  # OCI image-spec: a descriptor's size is the content's exact length
        raise reg.ContentError(
            registry, f"blob {layer['digest']}: {len(blob)} bytes, its descriptor says {layer['size']}"
        )
    return blob


def decode_layer(layer: dict[str, Any], blob: bytes, source: str) -> list[ev.Evidence]:
    """One ``.sig`` layer (descriptor + blob) as evidence; unreadable content becomes a problem."""
    try:
        return _layer_evidence(layer, blob, source)
    except ev.EvidenceError as exc:
        return [ev.problem(source, str(exc))]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        # A decoding slip on an odd shape is still a verdict on this layer (as for bundles):
        # raised, it would make the whole images check "could not finish" (its failure mode).
        return [ev.problem(source, f"{source}: unreadable signature layer: {type(exc).__name__}: {exc}")]


def _layer_evidence(layer: dict[str, object], blob: bytes, source: str) -> list[ev.Evidence]:
    annotations = layer.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    keyless = _keyless_material(annotations, source)
    if layer.get("mediaType") == DSSE_MEDIA:
        try:
            envelope = orjson.loads(blob)
        except orjson.JSONDecodeError as exc:
            raise ev.EvidenceError(f"{source}: DSSE envelope is not JSON") from exc
        return ev.dsse_evidence(envelope, source, **keyless)
    signature = ev.b64(annotations.get(SIGNATURE_ANNOTATION), f"{source}: {SIGNATURE_ANNOTATION}")
    return [
        ev.Evidence(
            source=source,
            signed=blob,
            signature=signature,
            digests=ev.simple_signing_digests(blob),
            payload=blob,
            **keyless,
        )
    ]


def _keyless_material(annotations: dict[object, object], source: str) -> dict[str, Any]:
    """Certificate and chain (keyless) and the Rekor bundle (keyless, and keyed when logged)."""
    material: dict[str, Any] = {}
    bundle = annotations.get(BUNDLE_ANNOTATION)
    if isinstance(bundle, str) and bundle:
        material["tlog"] = _rekor_bundle(bundle, source)
    cert_pem = annotations.get(CERTIFICATE_ANNOTATION)
    if not isinstance(cert_pem, str) or not cert_pem:
        return material
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem.encode())
        chain_pem = annotations.get(CHAIN_ANNOTATION)
        chain = x509.load_pem_x509_certificates(chain_pem.encode()) if isinstance(chain_pem, str) and chain_pem else []
    except ValueError as exc:
        raise ev.EvidenceError(f"{source}: certificate annotation is not PEM: {exc}") from exc
    material["certificate"] = leaf.public_bytes(serialization.Encoding.DER)
    material["chain"] = tuple(c.public_bytes(serialization.Encoding.DER) for c in chain)
    return material


def _rekor_bundle(text: str, source: str) -> ev.TlogEntry:
    """cosign's ``{"SignedEntryTimestamp": b64, "Payload": {body, integratedTime, logIndex, logID}}``."""
    try:
        doc = orjson.loads(text)
        payload = doc["Payload"]
        return ev.TlogEntry(
            body=ev.b64(payload["body"], f"{source}: rekor body"),
            integrated_time=ev.tlog_number(
                payload["integratedTime"], f"{source}: rekor integratedTime", ev.MAX_TLOG_TIME
            ),
            log_index=ev.tlog_number(payload["logIndex"], f"{source}: rekor logIndex"),
            log_id=bytes.fromhex(payload["logID"]),
            signed_entry_timestamp=ev.b64(doc["SignedEntryTimestamp"], f"{source}: SET"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ev.EvidenceError):
            raise
        raise ev.EvidenceError(f"{source}: {BUNDLE_ANNOTATION} is not a Rekor bundle: {exc}") from exc


# -- keyed verification ------------------------------------------------------------------------


def load_public_key(pem: bytes, where: str) -> PublicKey:
    """Parse a PEM public key; raise ``ConfigError`` naming the file when it is not one we accept."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise errors.ConfigError(f"{where}: not a PEM public key ({exc}); export it with `cosign public-key`") from exc
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1 | ec.SECP521R1):
            raise errors.ConfigError(f"{where}: ECDSA curve {key.curve.name} is not supported (use P-256 or P-384)")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        return key
    raise errors.ConfigError(f"{where}: unsupported key type {type(key).__name__} (use ECDSA, Ed25519 or RSA)")


_CURVE_HASH: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}


def verify_signature(key: PublicKey, signature: bytes, signed: bytes, *, prehashed: bool = False) -> bool:
    """True when ``signature`` by ``key`` covers ``signed``.

    Cosign hashes with SHA-256 whatever the curve; other signers use the curve's own hash,
    so ECDSA tries both. RSA accepts PKCS#1 v1.5 and PSS.
    """
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            if prehashed:
                return False
            key.verify(signature, signed)
            return True
        if isinstance(key, ec.EllipticCurvePublicKey):
            if prehashed:
                return _ok(lambda: key.verify(signature, signed, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
            algorithms = {hashes.SHA256, _CURVE_HASH.get(key.curve.name, hashes.SHA256)}
            return any(_ok(lambda a=a: key.verify(signature, signed, ec.ECDSA(a()))) for a in algorithms)
        if isinstance(key, rsa.RSAPublicKey):
            algorithm: hashes.HashAlgorithm | utils.Prehashed = (
                utils.Prehashed(hashes.SHA256()) if prehashed else hashes.SHA256()
            )
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
            return _ok(lambda: key.verify(signature, signed, padding.PKCS1v15(), algorithm)) or _ok(
                lambda: key.verify(signature, signed, pss, algorithm)
            )
    except (ValueError, TypeError):
        return False
    return False


def _ok(call: object) -> bool:
    try:
        call()  # type: ignore[operator]
    except (InvalidSignature, ValueError):
        return False
    return True


def key_id(key: PublicKey) -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo (DER): one id per key, however its PEM is spelled."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyAuthority:
    """A trusted public key (one authority of a policy)."""

    name: str  # the key's file as configured
    key: PublicKey
    spki: str = ""  # key_id(key); computed when not given
    spki_der: bytes = b""  # the key's SubjectPublicKeyInfo (DER)

    def __post_init__(self) -> None:
        der = self.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        object.__setattr__(self, "spki_der", der)
        if not self.spki:
            object.__setattr__(self, "spki", hashlib.sha256(der).hexdigest())

    def signer(self, evidence: ev.Evidence) -> Hashable:
        return ("key", self.spki)

    def accepts(self, evidence: ev.Evidence, digest: str) -> str | None:
        """``None`` when the evidence is a valid signature by this key naming ``digest``; else why not."""
        if evidence.problems:
            return evidence.problems[0]
        if not verify_signature(self.key, evidence.signature, evidence.signed, prehashed=evidence.prehashed):
            return f"signature is not by key {self.name}"
        if digest not in evidence.digests:
            named = ", ".join(sorted(evidence.digests)) or "no digest"
            return f"signed payload names {named}, not {digest} (digest mismatch)"
        return None
