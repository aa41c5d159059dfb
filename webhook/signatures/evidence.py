"""Signature evidence, whatever its source: what was signed, by what, and which digests it names.

The fetchers (``cosign.py`` for the ``.sig`` tag, ``sigstore.py`` for referrer bundles) decode
untrusted registry content into ``Evidence``; the authorities (keys, keyless identities) judge it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import orjson

SIMPLE_SIGNING_TYPE = "cosign container image signature"
IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
MAX_DSSE_SIGNATURES = 16  # signers of one envelope; cosign writes one  # what `cosign sign` (v3 bundles) signs
# Rekor's integratedTime (Unix seconds) and logIndex are int64s, and a time must be one ``datetime``
# can hold (it stops at the end of year 9999): anything else is junk to report, not a number to
# compute with (``datetime.fromtimestamp`` raises on year 33658, and that exception would make the
# whole images check "could not finish", hiding every good signature beside it).
MAX_TLOG_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_INT64 = 2**63 - 1


@dataclass(frozen=True, slots=True)
class TlogEntry:
    """A Rekor entry as cosign and bundle v0.1+ carry it: body, time, index, log id, promise (SET)."""

    body: bytes  # canonicalized entry body (JSON)
    integrated_time: int
    log_index: int
    log_id: bytes  # SHA-256 of the log's public key (DER)
    signed_entry_timestamp: bytes


@dataclass(frozen=True, slots=True)
class Evidence:
    """One signature over one payload, naming the digests it vouches for."""

    source: str  # where it came from, for messages ("sha256-….sig layer 0")
    signed: bytes  # the exact bytes the signature covers (payload, DSSE PAE, or a sha256 digest)
    signature: bytes
    digests: frozenset[str]  # image digests the payload names
    prehashed: bool = False  # ``signed`` is already a SHA-256 digest (bundle messageSignature)
    payload: bytes = b""  # the payload itself (for the tlog body check)
    certificate: bytes | None = None  # DER leaf (keyless)
    chain: tuple[bytes, ...] = ()  # DER intermediates/root shipped alongside
    tlog: TlogEntry | None = None
    bundle: bytes | None = None  # the whole sigstore bundle, for the library's verifier
    problems: tuple[str, ...] = field(default=())  # decode issues worth reporting if nothing verifies


class EvidenceError(ValueError):
    """Registry content that cannot be read as a signature (reported, never raised past the fetcher)."""


def problem(source: str, message: str) -> Evidence:
    """Content that cannot be a signature, kept as evidence so the verdict can say why."""
    return Evidence(source, b"", b"", frozenset(), problems=(message,))


def b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise EvidenceError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceError(f"{what} is not valid base64") from exc


def tlog_number(value: Any, what: str, high: int = MAX_INT64) -> int:
    """An integer from 0 to ``high``, as a JSON number or a decimal string (protobuf JSON's int64)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise EvidenceError(f"{what} {str(value)[:40]!r} is not an integer from 0 to {high}")
    return value


def simple_signing_digests(payload: bytes) -> frozenset[str]:
    """The manifest digest a cosign simple-signing payload names (empty when it names none)."""
    try:
        doc = orjson.loads(payload)
        critical = doc["critical"]
        if critical.get("type") != SIMPLE_SIGNING_TYPE:
            return frozenset()
        digest = critical["image"]["docker-manifest-digest"]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return frozenset()
    return frozenset({digest}) if isinstance(digest, str) else frozenset()


def in_toto_digests(payload: bytes) -> frozenset[str]:
    """The sha256 subject digests of an in-toto statement that is an image *signature*.

    Only cosign's signing predicate counts: an SBOM, a provenance or a scan report signed by
    the same identity is an attestation about the image, not an approval to run it (cosign
    and policy-controller keep the two apart the same way).
    """
    try:
        doc = orjson.loads(payload)
        subjects = doc["subject"]
        if doc.get("predicateType") != COSIGN_SIGN_PREDICATE:
            return frozenset()
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return frozenset()
    found = set()
    for subject in subjects if isinstance(subjects, list) else ():
        # Every level checked: a subject whose ``digest`` is a string or a list, pushed unsigned
        # into a .sig layer, would otherwise raise out of the fetcher ("could not finish").
        named = subject.get("digest") if isinstance(subject, dict) else None
        value = named.get("sha256") if isinstance(named, dict) else None
        if isinstance(value, str):
            found.add(f"sha256:{value}")
    return frozenset(found)


def payload_digests(payload_type: str, payload: bytes) -> frozenset[str]:
    if payload_type == IN_TOTO_PAYLOAD:
        return in_toto_digests(payload)
    return simple_signing_digests(payload)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what a DSSE signature actually covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def dsse_evidence(envelope: Any, source: str, **extra: Any) -> list[Evidence]:
    """One ``Evidence`` per signature of a DSSE envelope (JSON object)."""
    if not isinstance(envelope, dict):
        raise EvidenceError(f"{source}: DSSE envelope is not an object")
    payload_type = envelope.get("payloadType")
    if not isinstance(payload_type, str):
        raise EvidenceError(f"{source}: DSSE envelope has no payloadType")
    payload = b64(envelope.get("payload"), f"{source}: DSSE payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise EvidenceError(f"{source}: DSSE envelope has no signatures")
    if len(signatures) > MAX_DSSE_SIGNATURES:
        # Each one is a signature check per authority, on the event loop: junk must not buy CPU.
        raise EvidenceError(f"{source}: DSSE envelope has {len(signatures)} signatures (at most {MAX_DSSE_SIGNATURES})")
    signed = pae(payload_type, payload)
    digests = payload_digests(payload_type, payload)
    return [
        Evidence(
            source=f"{source} (DSSE)",
            signed=signed,
            signature=b64(sig.get("sig") if isinstance(sig, dict) else None, f"{source}: DSSE signature"),
            digests=digests,
            payload=payload,
            **extra,
        )
        for sig in signatures
    ]
