"""Keyless checks of cosign's annotations with ``cryptography``: Fulcio chain, identity, Rekor promise.

Cosign's ``.sig`` layers carry the certificate and Rekor's signed entry timestamp (SET) but no
inclusion proof, so the ``sigstore`` library cannot take them; ``sigstore.py`` calls this for
them (bundles go to the library). Checks, in order: the certificate chains to a CA of the trust
root and was valid when the log integrated the entry; it is a code-signing certificate of the
expected issuer and subject; the signature verifies with its key; the SET is signed by a log
key of the trust root; and the logged body is about this very signature, certificate, payload.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from webhook import errors
from webhook.signatures import cosign
from webhook.signatures import evidence as ev

_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    chain: tuple[x509.Certificate, ...]  # issuing CA first, root last
    start: datetime | None
    end: datetime | None


@dataclass(frozen=True, slots=True)
class LogKey:
    """A transparency log's (Rekor's or a CT log's) key and the window it was valid for."""

    key: cosign.PublicKey
    start: datetime | None
    end: datetime | None

    def valid_at(self, at: datetime) -> bool:
        return not ((self.start and at < self.start) or (self.end and at > self.end))


@dataclass(frozen=True, slots=True)
class TrustRoot:
    """Fulcio CAs, Rekor keys and CT log keys (by log id = SHA-256 of the key's DER) from a
    trusted_root.json, each with its validity window."""

    authorities: tuple[CertificateAuthority, ...]
    logs: dict[bytes, LogKey]
    source: str
    ct_logs: dict[bytes, LogKey] = field(default_factory=dict)


def parse_trust_root(data: bytes, source: str) -> TrustRoot:
    """Decode a Sigstore trusted root; raise ``ConfigError`` naming the file and field."""
    try:
        doc = orjson.loads(data)
        authorities = tuple(_authority(ca) for ca in doc.get("certificateAuthorities") or ())
        logs = _log_keys(doc.get("tlogs") or ())
        ct_logs = _log_keys(doc.get("ctlogs") or ())
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise errors.ConfigError(f"{source}: not a valid Sigstore trusted root: {exc}") from exc
    if not authorities or not logs:
        raise errors.ConfigError(f"{source}: the trusted root must name a certificate authority and a log key")
    return TrustRoot(authorities, logs, source, ct_logs)


def _log_keys(entries: Any) -> dict[bytes, LogKey]:
    keys: dict[bytes, LogKey] = {}
    for entry in entries:
        public = entry["publicKey"]
        der = base64.b64decode(public["rawBytes"])
        key = serialization.load_der_public_key(der)
        if isinstance(key, cosign.PublicKey):
            valid = public.get("validFor") or {}
            keys[hashlib.sha256(der).digest()] = LogKey(key, _time(valid.get("start")), _time(valid.get("end")))
    return keys


def _authority(ca: dict[str, Any]) -> CertificateAuthority:
    certs = tuple(
        x509.load_der_x509_certificate(base64.b64decode(c["rawBytes"])) for c in ca["certChain"]["certificates"]
    )
    valid = ca.get("validFor") or {}
    return CertificateAuthority(certs, _time(valid.get("start")), _time(valid.get("end")))


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


@dataclass(frozen=True, slots=True)
class Identity:
    """Issuer and subject to match: exact strings, or compiled regexes (full match)."""

    issuer: str | re.Pattern[str]
    subject: str | re.Pattern[str]

    def describe(self) -> str:
        def text(v: str | re.Pattern[str]) -> str:
            return v if isinstance(v, str) else f"/{v.pattern}/"

        return f"{text(self.subject)} from {text(self.issuer)}"


def _matches(expected: str | re.Pattern[str], value: str) -> bool:
    return value == expected if isinstance(expected, str) else expected.fullmatch(value) is not None


def verify(evidence: ev.Evidence, identity: Identity, trust: TrustRoot, digest: str) -> str | None:
    """``None`` when annotation evidence is a valid keyless signature by ``identity`` naming ``digest``."""
    if evidence.tlog is None:
        return "no transparency log entry (Rekor bundle) with the certificate"
    assert evidence.certificate is not None
    try:
        leaf = x509.load_der_x509_certificate(evidence.certificate)
    except ValueError as exc:
        return f"unreadable certificate: {exc}"
    signed_at = datetime.fromtimestamp(evidence.tlog.integrated_time, UTC)
    problem = (
        _check_chain(leaf, trust, signed_at)
        or check_identity(leaf, identity)
        or _check_signature(leaf, evidence)
        or check_tlog(evidence, trust, leaf)
        or check_scts(leaf, evidence.chain, trust)
    )
    if problem:
        return problem
    if digest not in evidence.digests:
        named = ", ".join(sorted(evidence.digests)) or "no digest"
        return f"signed payload names {named}, not {digest} (digest mismatch)"
    return None


def _check_chain(leaf: x509.Certificate, trust: TrustRoot, at: datetime) -> str | None:
    if not leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc:
        return (
            f"certificate was not valid when logged at {at:%Y-%m-%dT%H:%M:%SZ} "
            f"(valid {leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
        )
    if _issuing_ca(leaf, trust, at) is not None:
        return None
    return f"certificate issued by {leaf.issuer.rfc4514_string()} does not chain to a trusted CA in {trust.source}"


def _issuing_ca(leaf: x509.Certificate, trust: TrustRoot, at: datetime) -> x509.Certificate | None:
    """The trust root's CA certificate that issued ``leaf`` (valid at ``at``), or ``None``."""
    for ca in trust.authorities:
        if (ca.start and at < ca.start) or (ca.end and at > ca.end):
            continue
        if ca.chain and _chains_to(leaf, ca.chain, at):
            return ca.chain[0]
    return None


def _chains_to(leaf: x509.Certificate, chain: tuple[x509.Certificate, ...], at: datetime) -> bool:
    child = leaf
    for parent in chain:
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            return False
        if not parent.not_valid_before_utc <= at <= parent.not_valid_after_utc:
            return False
        child = parent
    return True


def check_identity(leaf: x509.Certificate, identity: Identity) -> str | None:
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "certificate has no extended key usage (code signing required)"
    if ExtendedKeyUsageOID.CODE_SIGNING not in eku:
        return "certificate is not for code signing"
    issuer = certificate_issuer(leaf)
    if issuer is None:
        return "certificate names no OIDC issuer"
    subjects = certificate_subjects(leaf)
    if not _matches(identity.issuer, issuer) or not any(_matches(identity.subject, s) for s in subjects):
        return f"identity {', '.join(subjects) or '?'} from {issuer} is not {identity.describe()} (wrong identity)"
    return None


def certificate_issuer(cert: x509.Certificate) -> str | None:
    """The OIDC issuer Fulcio wrote into the certificate (v2 DER UTF8String, else v1 raw)."""
    for oid, der in ((_ISSUER_V2, True), (_ISSUER_V1, False)):
        try:
            value = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
        if der:
            if len(raw) < 2 or raw[0] != 0x0C:
                return None
            length, offset = raw[1], 2
            if length & 0x80:
                count = length & 0x7F
                length, offset = int.from_bytes(raw[2 : 2 + count], "big"), 2 + count
            return raw[offset : offset + length].decode("utf-8", "replace")
        return raw.decode("utf-8", "replace")
    return None


def certificate_subjects(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.RFC822Name), *san.get_values_for_type(x509.UniformResourceIdentifier)]


def _check_signature(leaf: x509.Certificate, evidence: ev.Evidence) -> str | None:
    key = leaf.public_key()
    if not isinstance(key, cosign.PublicKey):
        return f"certificate key type {type(key).__name__} is not supported"
    if not cosign.verify_signature(key, evidence.signature, evidence.signed, prehashed=evidence.prehashed):
        return "signature does not verify with the certificate's key (tampered payload?)"
    return None


def check_tlog(evidence: ev.Evidence, trust: TrustRoot, leaf: x509.Certificate | None = None) -> str | None:
    """The Rekor entry's promise (SET) is by a log key of the trust root, valid when the entry
    was integrated, and the logged body is about this signature, payload and certificate (or,
    keyed, this signature and payload; the key is compared by the caller)."""
    entry = evidence.tlog
    if entry is None:
        return "no transparency log entry (Rekor bundle)"
    log = trust.logs.get(entry.log_id)
    if log is None:
        return f"transparency log {entry.log_id.hex()[:16]}… is not in the trust root"
    integrated = datetime.fromtimestamp(entry.integrated_time, UTC)
    if not log.valid_at(integrated):
        return f"transparency log key {entry.log_id.hex()[:16]}… was not valid at {integrated:%Y-%m-%dT%H:%M:%SZ}"
    promise = orjson.dumps(
        {
            "body": base64.b64encode(entry.body).decode(),
            "integratedTime": entry.integrated_time,
            "logID": entry.log_id.hex(),
            "logIndex": entry.log_index,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    if not cosign.verify_signature(log.key, entry.signed_entry_timestamp, promise):
        return "transparency log promise (SET) is not signed by the trusted log key"
    return _check_body(leaf, evidence, entry.body)


# -- signed certificate timestamps (RFC 6962 §3.2) ----------------------------------------------


def check_scts(leaf: x509.Certificate, chain: tuple[bytes, ...], trust: TrustRoot) -> str | None:
    """At least one embedded SCT signed by a CT log of the trust root, valid when it was issued.

    The SCT signs the *pre*certificate: the leaf's TBS without the SCT list, bound to the
    issuer's key hash. Fulcio logs every certificate it issues, so one without a valid SCT was
    not issued by the Fulcio the trust root names (cosign and sigstore-python require one too).
    """
    try:
        scts = leaf.extensions.get_extension_for_class(x509.PrecertificateSignedCertificateTimestamps).value
    except x509.ExtensionNotFound:
        return "certificate carries no signed certificate timestamp (SCT)"
    except ValueError as exc:
        return f"certificate's SCT list is malformed: {exc}"
    issued = leaf.not_valid_before_utc
    issuer = _issuing_ca(leaf, trust, issued) or _issuer_from_chain(leaf, chain)
    if issuer is None:
        return "no issuer certificate to check the SCT against"
    issuer_key_hash = hashlib.sha256(
        issuer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).digest()
    tbs = leaf.tbs_precertificate_bytes
    problems: list[str] = []
    for sct in scts:
        problem = _check_sct(sct, tbs, issuer_key_hash, trust)
        if problem is None:
            return None
        problems.append(problem)
    return "; ".join(problems) or "certificate's SCT list is empty"


def _check_sct(sct: Any, tbs: bytes, issuer_key_hash: bytes, trust: TrustRoot) -> str | None:
    log = trust.ct_logs.get(sct.log_id)
    if log is None:
        return f"SCT from CT log {sct.log_id.hex()[:16]}… which the trust root does not name"
    if not log.valid_at(sct.timestamp.replace(tzinfo=UTC)):
        return f"SCT from CT log {sct.log_id.hex()[:16]}… outside that log key's validity window"
    if sct.entry_type != x509.certificate_transparency.LogEntryType.PRE_CERTIFICATE:
        return "SCT is not for a precertificate"
    millis = int(sct.timestamp.replace(tzinfo=UTC).timestamp() * 1000)
    extensions = sct.extension_bytes
    signed = (
        struct.pack("!BBQH", 0, 0, millis, 1)  # v1, certificate_timestamp, timestamp, precert_entry
        + issuer_key_hash
        + len(tbs).to_bytes(3, "big")
        + tbs
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    if not cosign.verify_signature(log.key, sct.signature, signed):
        return f"SCT from CT log {sct.log_id.hex()[:16]}… does not verify (tampered certificate?)"
    return None


def _issuer_from_chain(leaf: x509.Certificate, chain: tuple[bytes, ...]) -> x509.Certificate | None:
    for der in chain:
        try:
            candidate = x509.load_der_x509_certificate(der)
            leaf.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def _check_body(leaf: x509.Certificate | None, evidence: ev.Evidence, body: bytes) -> str | None:
    """The log entry must be about this very signature, certificate and payload (CVE-2022-36056)."""
    try:
        doc = orjson.loads(body)
        kind, spec = doc["kind"], doc["spec"]
        if kind == "hashedrekord":
            logged_hash = spec["data"]["hash"]["value"]
            logged_sigs = [spec["signature"]["content"]]
            logged_cert = spec["signature"]["publicKey"]["content"]
        elif kind == "dsse":
            logged_hash = spec["payloadHash"]["value"]
            logged_sigs = [s["signature"] for s in spec["signatures"]]
            logged_cert = spec["signatures"][0]["verifier"]
        else:
            return f"transparency log entry kind {kind!r} is not supported"
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
        return f"transparency log entry body is malformed: {exc}"
    if kind == "hashedrekord":
        expected_hash = evidence.signed.hex() if evidence.prehashed else hashlib.sha256(evidence.signed).hexdigest()
    else:
        expected_hash = hashlib.sha256(evidence.payload).hexdigest()
    if logged_hash != expected_hash:
        return "transparency log entry is for another payload"
    if base64.b64encode(evidence.signature).decode() not in logged_sigs:
        return "transparency log entry is for another signature"
    if leaf is None:
        return None  # keyed: the caller compares the logged key (``logged_key``)
    try:
        logged = x509.load_pem_x509_certificate(base64.b64decode(logged_cert))
    except ValueError:
        return "transparency log entry holds no readable certificate"
    if logged != leaf:
        return "transparency log entry is for another certificate"
    return None


def logged_key(body: bytes) -> bytes | None:
    """SubjectPublicKeyInfo (DER) of the verifier a Rekor entry body names: a PEM public key, or
    a certificate's key; ``None`` when unreadable."""
    try:
        doc = orjson.loads(body)
        spec = doc["spec"]
        if doc["kind"] == "hashedrekord":
            pem = spec["signature"]["publicKey"]["content"]
        elif doc["kind"] == "dsse":
            pem = spec["signatures"][0]["verifier"]
        else:
            return None
        raw = base64.b64decode(pem)
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError, ValueError):
        return None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return x509.load_pem_x509_certificate(raw).public_key().public_bytes(serialization.Encoding.DER, spki)
    except ValueError:
        pass
    try:
        return serialization.load_pem_public_key(raw).public_bytes(serialization.Encoding.DER, spki)
    except (ValueError, TypeError):
        return None
