"""Keyless (Fulcio/Rekor) signatures: referrer bundles, trust roots, identity checks.

Sources: sigstore bundles attached as OCI 1.1 referrers (the referrers API, or the
``sha256-<hex>`` referrers tag where the registry has none) and cosign's keyless annotations
(``cosign.py``). Verification, with ``cryptography``, against a Sigstore ``trusted_root.json``
(public-good via TUF, or a configured file for air-gapped clusters): the certificate chains to
a trusted Fulcio CA and was valid when Rekor logged the entry; the Rekor promise (SET) is signed
by a trusted log key and its body matches the signature, the certificate and the payload; the
certificate's issuer and subject match the identity (exact or full-match regex).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from webhook import errors
from webhook.admission.deadline import Deadline
from webhook.signatures import cosign
from webhook.signatures import evidence as ev
from webhook.signatures import registry as reg

BUNDLE_ARTIFACT_PREFIX = "application/vnd.dev.sigstore.bundle"
_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


# -- trust root --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    chain: tuple[x509.Certificate, ...]  # issuing CA first, root last
    start: datetime | None
    end: datetime | None


@dataclass(frozen=True, slots=True)
class TrustRoot:
    """Fulcio CAs and Rekor keys (by log id = SHA-256 of the key's DER) from a trusted_root.json."""

    authorities: tuple[CertificateAuthority, ...]
    logs: dict[bytes, ec.EllipticCurvePublicKey]
    source: str


def parse_trust_root(data: bytes, source: str) -> TrustRoot:
    """Decode a Sigstore trusted root; raise ``ConfigError`` naming the file and field."""
    try:
        doc = orjson.loads(data)
        authorities = tuple(_authority(ca) for ca in doc.get("certificateAuthorities") or ())
        logs: dict[bytes, ec.EllipticCurvePublicKey] = {}
        for tlog in doc.get("tlogs") or ():
            der = base64.b64decode(tlog["publicKey"]["rawBytes"])
            key = serialization.load_der_public_key(der)
            if isinstance(key, ec.EllipticCurvePublicKey):
                logs[hashlib.sha256(der).digest()] = key
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise errors.ConfigError(f"{source}: not a valid Sigstore trusted root: {exc}") from exc
    if not authorities or not logs:
        raise errors.ConfigError(f"{source}: the trusted root must name a certificate authority and a log key")
    return TrustRoot(authorities, logs, source)


def _authority(ca: dict[str, Any]) -> CertificateAuthority:
    certs = tuple(
        x509.load_der_x509_certificate(base64.b64decode(c["rawBytes"])) for c in ca["certChain"]["certificates"]
    )
    valid = ca.get("validFor") or {}
    return CertificateAuthority(certs, _time(valid.get("start")), _time(valid.get("end")))


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def load_trust_root(setting: str, resolve: Any) -> TrustRoot:
    """``public-good`` (Sigstore's root, fetched and verified over TUF) or a trusted_root.json path."""
    if setting == "public-good":
        try:
            from sigstore.models import ClientTrustConfig

            inner = ClientTrustConfig.production().trusted_root._inner
            return parse_trust_root(inner.to_json().encode(), "sigstore public-good trust root")
        except errors.ConfigError:
            raise
        except Exception as exc:  # network/TUF trouble: an outside failure, not bad config
            raise errors.UpstreamError(f"cannot load the Sigstore public-good trust root: {exc}") from exc
    path = Path(resolve(setting))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"images.trust_root: cannot read {path}: {exc.strerror or exc}") from exc
    return parse_trust_root(data, str(path))


class TrustRootSource:
    """Loads the trust root once, on first use (public-good needs the network; files fail early)."""

    def __init__(self, setting: str, resolve: Any) -> None:
        self.setting = setting
        self._resolve = resolve
        self._root: TrustRoot | None = None

    @property
    def loaded(self) -> bool:
        return self._root is not None

    def get(self) -> TrustRoot:
        """The trust root; raises ``ConfigError`` (bad file) or ``UpstreamError`` (TUF unreachable)."""
        if self._root is None:
            self._root = load_trust_root(self.setting, self._resolve)
        return self._root


# -- referrer bundles --------------------------------------------------------------------------


async def fetch(
    client: reg.RegistryClient,
    registry: str,
    repository: str,
    digest: str,
    deadline: Deadline,
    creds: reg.Credentials | None = None,
) -> list[ev.Evidence]:
    """Sigstore bundles whose subject is ``digest``, as evidence."""
    found: list[ev.Evidence] = []
    for descriptor in await client.referrers(registry, repository, digest, deadline, creds):
        artifact = str(descriptor.get("artifactType") or "")
        if not artifact.startswith(BUNDLE_ARTIFACT_PREFIX):
            continue
        source = f"{repository} referrer {descriptor['digest'][:19]}"
        manifest = await client.manifest(registry, repository, descriptor["digest"], deadline, creds)
        if manifest is None:
            continue
        try:
            layers = manifest.document().get("layers") or []
            layer = layers[0]
            blob = await client.blob(registry, repository, layer["digest"], deadline, creds)
            found.extend(bundle_evidence(orjson.loads(blob), source))
        except (ev.EvidenceError, ValueError, KeyError, IndexError, TypeError) as exc:
            found.append(ev.Evidence(source, b"", b"", frozenset(), problems=(f"{source}: unreadable bundle: {exc}",)))
    return found


def bundle_evidence(bundle: Any, source: str) -> list[ev.Evidence]:
    """Decode a sigstore bundle (v0.1–v0.3) into evidence."""
    if not isinstance(bundle, dict):
        raise ev.EvidenceError("bundle is not a JSON object")
    material = bundle.get("verificationMaterial") or {}
    extra: dict[str, Any] = {}
    if "certificate" in material:
        extra["certificate"] = ev.b64(material["certificate"].get("rawBytes"), f"{source}: certificate")
    elif "x509CertificateChain" in material:
        certs = material["x509CertificateChain"].get("certificates") or []
        raw = [ev.b64(c.get("rawBytes"), f"{source}: certificate") for c in certs]
        if raw:
            extra["certificate"], extra["chain"] = raw[0], tuple(raw[1:])
    entries = material.get("tlogEntries") or []
    if entries:
        extra["tlog"] = _tlog_entry(entries[0], source)
    if "dsseEnvelope" in bundle:
        return ev.dsse_evidence(bundle["dsseEnvelope"], source, **extra)
    message = bundle.get("messageSignature")
    if not isinstance(message, dict):
        raise ev.EvidenceError("bundle has neither dsseEnvelope nor messageSignature")
    digest = ev.b64((message.get("messageDigest") or {}).get("digest"), f"{source}: messageDigest")
    signature = ev.b64(message.get("signature"), f"{source}: signature")
    # A message signature signs the artifact itself: here, the image manifest with that digest.
    return [ev.Evidence(source, digest, signature, frozenset({"sha256:" + digest.hex()}), prehashed=True, **extra)]


def _tlog_entry(entry: dict[str, Any], source: str) -> ev.TlogEntry:
    try:
        return ev.TlogEntry(
            body=ev.b64(entry["canonicalizedBody"], f"{source}: canonicalizedBody"),
            integrated_time=int(entry["integratedTime"]),
            log_index=int(entry["logIndex"]),
            log_id=ev.b64(entry["logId"]["keyId"], f"{source}: logId"),
            signed_entry_timestamp=ev.b64(
                entry["inclusionPromise"]["signedEntryTimestamp"], f"{source}: inclusionPromise"
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ev.EvidenceError):
            raise
        raise ev.EvidenceError(f"{source}: transparency log entry lacks {exc}") from exc


# -- keyless verification ----------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class KeylessAuthority:
    """A keyless identity under one trust root (one authority of a policy)."""

    identity: Identity
    trust: TrustRootSource

    @property
    def name(self) -> str:
        return f"keyless {self.identity.describe()}"

    def accepts(self, evidence: ev.Evidence, digest: str) -> str | None:
        """``None`` when the evidence is a valid keyless signature by this identity naming ``digest``."""
        if evidence.problems:
            return evidence.problems[0]
        if evidence.certificate is None:
            return "no certificate (a keyed signature)"
        trust = self.trust.get()
        if evidence.tlog is None:
            return "no transparency log entry (Rekor bundle) with the certificate"
        try:
            leaf = x509.load_der_x509_certificate(evidence.certificate)
        except ValueError as exc:
            return f"unreadable certificate: {exc}"
        signed_at = datetime.fromtimestamp(evidence.tlog.integrated_time, UTC)
        for check in (
            lambda: _check_chain(leaf, trust, signed_at),
            lambda: _check_profile(leaf, self.identity),
            lambda: _check_signature(leaf, evidence),
            lambda: _check_tlog(leaf, evidence, trust),
        ):
            problem = check()
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
    for ca in trust.authorities:
        if (ca.start and at < ca.start) or (ca.end and at > ca.end):
            continue
        if _chains_to(leaf, ca.chain, at):
            return None
    return f"certificate issued by {leaf.issuer.rfc4514_string()} does not chain to a trusted CA in {trust.source}"


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


def _check_profile(leaf: x509.Certificate, identity: Identity) -> str | None:
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


def _check_tlog(leaf: x509.Certificate, evidence: ev.Evidence, trust: TrustRoot) -> str | None:
    entry = evidence.tlog
    assert entry is not None
    key = trust.logs.get(entry.log_id)
    if key is None:
        return f"transparency log {entry.log_id.hex()[:16]}… is not in the trust root"
    promise = orjson.dumps(
        {
            "body": base64.b64encode(entry.body).decode(),
            "integratedTime": entry.integrated_time,
            "logID": entry.log_id.hex(),
            "logIndex": entry.log_index,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    try:
        key.verify(entry.signed_entry_timestamp, promise, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "transparency log promise (SET) is not signed by the trusted log key"
    return _check_body(leaf, evidence, entry.body)


def _check_body(leaf: x509.Certificate, evidence: ev.Evidence, body: bytes) -> str | None:
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
    try:
        logged = x509.load_pem_x509_certificate(base64.b64decode(logged_cert))
    except ValueError:
        return "transparency log entry holds no readable certificate"
    if logged != leaf:
        return "transparency log entry is for another certificate"
    return None
