"""Keyless (Fulcio/Rekor) signatures: trust roots, referrer bundles, identity policies.

Sources: sigstore bundles attached as OCI 1.1 referrers (the referrers API, or the
``sha256-<hex>`` referrers tag where the registry has none), verified with the ``sigstore``
library (chain, SCT, inclusion proof and checkpoint, promise, identity); and cosign's keyless
annotations on ``.sig`` layers, which carry no inclusion proof and are checked by ``fulcio.py``.
Both run against the same Sigstore ``trusted_root.json`` (``trustroot.py``: public-good via TUF,
or a configured file for air-gapped clusters). The library matches identities exactly;
``_IdentityPolicy`` adds issuer/subject regexes. ``LoggedKeyAuthority`` is a key that also
requires its signature to be in the transparency log (``tlog: required``, cosign's default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography import x509

from webhook.core.deadline import Deadline
from webhook.signatures import cosign, fulcio, trustroot
from webhook.signatures import evidence as ev
from webhook.signatures import registry as reg

BUNDLE_ARTIFACT_PREFIX = "application/vnd.dev.sigstore.bundle"


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
    for source, raw in await fetch_bundles(client, registry, repository, digest, deadline, creds):
        found.extend(decode_bundle(raw, source))
    return found


async def fetch_bundles(
    client: reg.RegistryClient,
    registry: str,
    repository: str,
    digest: str,
    deadline: Deadline,
    creds: reg.Credentials | None = None,
) -> list[tuple[str, bytes | str]]:
    """(source, raw bundle) for each referrer bundle of ``digest``; why not, when it cannot be read.

    Junk in the repository (``reg.ContentError``: an index that is not one, a missing blob) is
    a "why not" entry, never an exception; transport trouble (``RegistryError``) propagates.
    """
    where = f"{repository} referrers of {digest[:19]}"
    try:
        descriptors = await client.referrers(registry, repository, digest, deadline, creds)
    except reg.ContentError as exc:
        return [(where, f"{where}: {exc}")]
    bundles = [d for d in descriptors if str(d.get("artifactType") or "").startswith(BUNDLE_ARTIFACT_PREFIX)]
    if len(bundles) > client.max_signatures:
        return [(where, f"{where}: {len(bundles)} sigstore bundles; at most {client.max_signatures} are read")]
    # A few at a time, as the .sig layers: a hundred referrers (a manifest and a blob each) one
    # after another cost 200 round trips, enough to run a request into its deadline against a
    # registry tens of milliseconds away, and a pattern's failure mode would then decide.
    gate = asyncio.Semaphore(cosign.PARALLEL_FETCHES)

    async def one(descriptor: dict[str, Any]) -> tuple[str, bytes | str] | None:
        source = f"{repository} referrer {descriptor['digest'][:19]}"
        try:
            async with gate:
                manifest = await client.manifest(registry, repository, descriptor["digest"], deadline, creds)
                if manifest is None:
                    return None
                layers = manifest.document().get("layers") or []
                layer = layers[0]
                size = layer["size"]
                if not isinstance(size, int) or size > client.max_blob_bytes:
                    limit = client.max_blob_bytes
                    raise ValueError(f"layer size {str(size)[:40]} is not within the {limit}-byte limit")
                return source, await client.blob(registry, repository, layer["digest"], deadline, creds)
        except reg.ContentError as exc:
            return source, f"{source}: {exc}"
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return source, f"{source}: unreadable bundle: {exc}"

    found = await asyncio.gather(*(one(d) for d in bundles))
    return [entry for entry in found if entry is not None]


def decode_bundle(raw: bytes | str, source: str) -> list[ev.Evidence]:
    """A raw bundle (or why it could not be read) as evidence; unreadable ones become problems."""
    problem = raw if isinstance(raw, str) else ""
    if isinstance(raw, bytes):
        try:
            return bundle_evidence(raw, source)
        except (ev.EvidenceError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            problem = f"{source}: unreadable bundle: {exc}"
    return [ev.problem(source, problem)]


def bundle_evidence(raw: bytes, source: str) -> list[ev.Evidence]:
    """Decode a sigstore bundle (v0.1–v0.3) into evidence; the raw bytes go along for the library."""
    try:
        bundle = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ev.EvidenceError("bundle is not JSON") from exc
    if not isinstance(bundle, dict):
        raise ev.EvidenceError("bundle is not a JSON object")
    material = bundle.get("verificationMaterial") or {}
    extra: dict[str, Any] = {"bundle": raw}
    if "certificate" in material:
        extra["certificate"] = ev.b64(material["certificate"].get("rawBytes"), f"{source}: certificate")
    elif "x509CertificateChain" in material:
        certs = material["x509CertificateChain"].get("certificates") or []
        ders = [ev.b64(c.get("rawBytes"), f"{source}: certificate") for c in certs]
        if ders:
            extra["certificate"], extra["chain"] = ders[0], tuple(ders[1:])
    entry = _tlog_entry(material, source)
    if entry is not None:
        extra["tlog"] = entry
    if "dsseEnvelope" in bundle:
        return ev.dsse_evidence(bundle["dsseEnvelope"], source, **extra)
    message = bundle.get("messageSignature")
    if not isinstance(message, dict):
        raise ev.EvidenceError("bundle has neither dsseEnvelope nor messageSignature")
    digest = ev.b64((message.get("messageDigest") or {}).get("digest"), f"{source}: messageDigest")
    signature = ev.b64(message.get("signature"), f"{source}: signature")
    # A message signature signs the artifact itself: here, the image manifest with that digest.
    return [ev.Evidence(source, digest, signature, frozenset({"sha256:" + digest.hex()}), prehashed=True, **extra)]


def _tlog_entry(material: Any, source: str) -> ev.TlogEntry | None:
    """The bundle's first Rekor entry with an inclusion promise (what cosign checks offline)."""
    entries = material.get("tlogEntries") if isinstance(material, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        promise = entry.get("inclusionPromise") if isinstance(entry, dict) else None
        if not isinstance(promise, dict):
            continue
        try:
            return ev.TlogEntry(
                body=ev.b64(entry["canonicalizedBody"], f"{source}: tlog body"),
                integrated_time=ev.tlog_number(
                    entry["integratedTime"], f"{source}: tlog integratedTime", ev.MAX_TLOG_TIME
                ),
                log_index=ev.tlog_number(entry["logIndex"], f"{source}: tlog logIndex"),
                log_id=ev.b64(entry["logId"]["keyId"], f"{source}: tlog log id"),
                signed_entry_timestamp=ev.b64(promise["signedEntryTimestamp"], f"{source}: SET"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ev.EvidenceError):
                raise
            raise ev.EvidenceError(f"{source}: malformed tlog entry: {exc}") from exc
    return None


# -- keyed, logged ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoggedKeyAuthority:
    """A key whose signatures count only with a Rekor entry for them (``tlog: required``).

    As ``cosign verify --key`` by default: the entry's promise is by a log key of the trust root
    (valid when the entry was integrated), and the logged body names this signature, this payload
    and this very key. A signature made with a stolen key but kept out of the log is refused.
    """

    key: cosign.KeyAuthority
    trust: trustroot.TrustRootSource

    @property
    def name(self) -> str:
        return self.key.name

    def signer(self, evidence: ev.Evidence) -> Hashable:
        return self.key.signer(evidence)

    def accepts(self, evidence: ev.Evidence, digest: str) -> str | None:
        problem = self.key.accepts(evidence, digest)
        if problem is not None:
            return problem
        if evidence.tlog is None:
            return "no transparency log entry (Rekor bundle) for the signature (tlog: required)"
        problem = fulcio.check_tlog(evidence, self.trust.get().parsed)
        if problem is not None:
            return problem
        if fulcio.logged_key(evidence.tlog.body) != self.key.spki_der:
            return f"transparency log entry is for another key than {self.key.name}"
        return None


# -- keyless verification ----------------------------------------------------------------------


class _IdentityPolicy:
    """A ``sigstore`` verification policy: issuer and subject, exact or full-match regex."""

    def __init__(self, identity: fulcio.Identity) -> None:
        self._identity = identity

    def verify(self, cert: x509.Certificate) -> None:
        from sigstore.errors import VerificationError

        problem = fulcio.check_identity(cert, self._identity)
        if problem:
            raise VerificationError(problem)


@dataclass(frozen=True, slots=True)
class KeylessAuthority:
    """A keyless identity under one trust root (one authority of a policy)."""

    identity: fulcio.Identity
    trust: trustroot.TrustRootSource

    @property
    def name(self) -> str:
        return f"keyless {self.identity.describe()}"

    def signer(self, evidence: ev.Evidence) -> Hashable:
        """The certificate's OIDC issuer and subjects: one signer however many certificates it got."""
        if evidence.certificate is None:
            return ("keyless", "")
        try:
            cert = x509.load_der_x509_certificate(evidence.certificate)
        except ValueError:
            return ("keyless-cert", evidence.certificate)
        return ("keyless", fulcio.certificate_issuer(cert), tuple(sorted(fulcio.certificate_subjects(cert))))

    def accepts(self, evidence: ev.Evidence, digest: str) -> str | None:
        """``None`` when the evidence is a valid keyless signature by this identity naming ``digest``."""
        if evidence.problems:
            return evidence.problems[0]
        if evidence.certificate is None:
            return "no certificate (a keyed signature)"
        roots = self.trust.get()
        if evidence.bundle is not None:
            return _verify_bundle(evidence, self.identity, roots, digest)
        return fulcio.verify(evidence, self.identity, roots.parsed, digest)


def _verify_bundle(
    evidence: ev.Evidence, identity: fulcio.Identity, roots: trustroot.TrustRoots, digest: str
) -> str | None:
    """Verify a sigstore bundle with the library; the payload must name ``digest``."""
    from sigstore.errors import Error as SigstoreError
    from sigstore.hashes import Hashed
    from sigstore.models import Bundle
    from sigstore_models.common.v1 import HashAlgorithm

    policy = _IdentityPolicy(identity)
    try:
        bundle = Bundle.from_json(evidence.bundle or b"")
        # Our own decoding already knows the bundle's kind (no need for the library's private
        # ``_dsse_envelope``): DSSE evidence signs a PAE, a message signature a bare digest.
        if not evidence.prehashed:
            payload_type, payload = roots.verifier.verify_dsse(bundle, policy)
            digests = ev.payload_digests(payload_type, payload)
        else:
            hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(digest.split(":", 1)[1]))
            roots.verifier.verify_artifact(hashed, bundle, policy)
            digests = frozenset({digest})
    except SigstoreError as exc:
        return f"sigstore bundle rejected: {exc}"
    except Exception as exc:
        # Malformed bundle JSON (pydantic), and whatever else the library raises on the content the
        # repository served: cryptography's ``DuplicateExtension`` for a certificate listing an
        # extension twice is a bare ``Exception``. It is a verdict about this bundle; escaping
        # here it would make the images check "could not finish" (its failure mode), hiding the
        # good signatures beside it.
        text = str(exc).splitlines()[0] if str(exc) else ""
        return f"sigstore bundle unreadable: {type(exc).__name__}: {text}"
    if digest not in digests:
        named = ", ".join(sorted(digests)) or "no digest"
        return f"signed payload names {named}, not {digest} (digest mismatch)"
    return None
