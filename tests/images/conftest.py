"""Fixtures for the images tests: a real docker-registry, and signers that push to it.

The registry is Debian's ``docker-registry`` (distribution 2.8), started once per session on
127.0.0.1 with its own config (filesystem storage, no auth). Images and signatures are pushed
over the distribution HTTP API; signatures are made here with ``cryptography`` keys, keyless
ones with a test Fulcio-style CA and a test Rekor-style log key named by a test trust root.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import json
import os
import socket
import struct
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
SCT_LIST = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """Pushes blobs and manifests to a running registry over the distribution API."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._names = itertools.count()

    def repo(self, prefix: str = "team-a") -> str:
        """A fresh repository name, so tests never see each other's tags."""
        return f"{prefix}/app{next(self._names)}-{os.getpid()}"

    def _open(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        url = path if path.startswith("http") else f"http://{self.host}{path}"
        request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        return urllib.request.urlopen(request, timeout=10)

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = digest_of(data)
        with self._open("POST", f"/v2/{repo}/blobs/uploads/") as resp:
            location = resp.headers["Location"]
        sep = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream"}
        with self._open("PUT", f"{location}{sep}digest={digest}", data, headers):
            pass
        return digest

    def push_manifest(self, repo: str, reference: str, doc: dict[str, Any]) -> str:
        body = json.dumps(doc, separators=(",", ":")).encode()
        headers = {"Content-Type": doc.get("mediaType", OCI_MANIFEST)}
        with self._open("PUT", f"/v2/{repo}/manifests/{reference}", body, headers):
            pass
        return digest_of(body)

    def get_manifest(self, repo: str, reference: str) -> dict[str, Any] | None:
        try:
            with self._open(
                "GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"}
            ) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def push_image(self, repo: str, tag: str, content: bytes | None = None) -> str:
        """A one-layer OCI image; returns its manifest digest."""
        layer = content if content is not None else os.urandom(32)
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config, self.push_blob(repo, config)),
            "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", layer, self.push_blob(repo, layer))],
        }
        return self.push_manifest(repo, tag, doc)

    def push_signature_layers(self, repo: str, digest: str, layers: list[tuple[bytes, str, dict[str, str]]]) -> None:
        """Append layers (blob, media type, annotations) to the image's cosign ``.sig`` manifest."""
        tag = digest.replace(":", "-") + ".sig"
        existing = self.get_manifest(repo, tag)
        descriptors = list(existing["layers"]) if existing else []
        for blob, media_type, notes in layers:
            descriptors.append({**_descriptor(media_type, blob, self.push_blob(repo, blob)), "annotations": notes})
        config = b"{}"
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config, self.push_blob(repo, config)),
            "layers": descriptors,
        }
        self.push_manifest(repo, tag, doc)

    def push_referrer(self, repo: str, subject: str, artifact_type: str, blob: bytes, media_type: str) -> str:
        """An OCI 1.1 artifact with ``subject``, plus the referrers-tag index (registry has no API)."""
        with self._open("GET", f"/v2/{repo}/manifests/{subject}", headers={"Accept": OCI_MANIFEST}) as resp:
            subject_body = resp.read()
        empty = b"{}"
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": _descriptor(EMPTY_CONFIG, empty, self.push_blob(repo, empty)),
            "layers": [_descriptor(media_type, blob, self.push_blob(repo, blob))],
            "subject": _descriptor(OCI_MANIFEST, subject_body, subject),
        }
        body = json.dumps(doc, separators=(",", ":")).encode()
        artifact = self.push_manifest(repo, digest_of(body), doc)
        tag = subject.replace(":", "-")
        index = self.get_manifest(repo, tag) or {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        index["manifests"].append({**_descriptor(OCI_MANIFEST, body, artifact), "artifactType": artifact_type})
        self.push_manifest(repo, tag, index)
        return artifact


def _descriptor(media_type: str, data: bytes, digest: str) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


@pytest.fixture(scope="session")
def registry(docker_registry: str) -> Registry:
    """The session's real docker-registry (``tests/conftest.py``) with a pusher."""
    return Registry(docker_registry)


# -- signers -----------------------------------------------------------------------------------


def simple_signing(repo_name: str, digest: str) -> bytes:
    doc = {
        "critical": {
            "identity": {"docker-reference": repo_name},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def sign_bytes(key: Any, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return bytes(key.sign(data, ec.ECDSA(hashes.SHA256())))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    raise TypeError(type(key))


def public_pem(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _spki(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _key_id(key: Any) -> bytes:
    return hashlib.sha256(_spki(key)).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _der_octet_string(data: bytes) -> bytes:
    n = len(data)
    if n < 128:
        return bytes([0x04, n]) + data
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x04, 0x80 | len(length)]) + length + data


@dataclass
class KeylessSigner:
    """A test Fulcio (CA), CT log and Rekor (log key), and the trusted_root.json naming them.

    Certificates carry an embedded SCT and both Fulcio issuer extensions; bundles carry an
    inclusion proof (a one-entry tree) with a signed checkpoint and an inclusion promise, so
    the ``sigstore`` library verifies them against this trust root, offline.
    """

    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    log_key: ec.EllipticCurvePrivateKey
    ct_key: ec.EllipticCurvePrivateKey
    trust_root: Path

    @property
    def log_id(self) -> bytes:
        return _key_id(self.log_key.public_key())

    def certificate(
        self,
        key: ec.EllipticCurvePrivateKey,
        subject: str,
        issuer: str,
        *,
        not_before: dt.datetime | None = None,
        lifetime: dt.timedelta = dt.timedelta(minutes=10),
        ca_key: ec.EllipticCurvePrivateKey | None = None,
        ca_cert: x509.Certificate | None = None,
        ct_key: ec.EllipticCurvePrivateKey | None = None,
        with_sct: bool = True,
        sct_millis: int | None = None,
        sct_issuer_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> x509.Certificate:
        """A Fulcio-style code-signing certificate with an SCT from the test CT log (or ``ct_key``)."""
        ct_key = ct_key or self.ct_key
        ca_key = ca_key or self.ca_key
        ca_cert = ca_cert or self.ca_cert
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        serial = x509.random_serial_number()
        value = issuer.encode()
        san: x509.GeneralName = (
            x509.RFC822Name(subject)
            if "@" in subject and "://" not in subject
            else x509.UniformResourceIdentifier(subject)
        )

        def builder() -> x509.CertificateBuilder:
            return (
                x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(serial)
                .not_valid_before(start)
                .not_valid_after(start + lifetime)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
                .add_extension(x509.SubjectAlternativeName([san]), critical=True)
                .add_extension(x509.UnrecognizedExtension(ISSUER_V1, value), critical=False)
                .add_extension(x509.UnrecognizedExtension(ISSUER_V2, bytes([0x0C, len(value)]) + value), False)
            )

        if not with_sct:
            return builder().sign(ca_key, hashes.SHA256())
        # RFC 6962 §3.2: the SCT signs the precertificate's TBS (without the SCT extension).
        tbs = builder().sign(ca_key, hashes.SHA256()).tbs_certificate_bytes
        millis = sct_millis if sct_millis is not None else int(time.time() * 1000)
        entry = _key_id((sct_issuer_key or ca_key).public_key()) + struct.pack("!I", len(tbs))[1:] + tbs
        signed = struct.pack("!BBQH", 0, 0, millis, 1) + entry + struct.pack("!H", 0)
        signature = ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (
            bytes([0])
            + _key_id(ct_key.public_key())
            + struct.pack("!QH", millis, 0)
            + bytes([4, 3])
            + struct.pack("!H", len(signature))
            + signature
        )
        sct_list = struct.pack("!HH", len(sct) + 2, len(sct)) + sct
        extension = x509.UnrecognizedExtension(SCT_LIST, _der_octet_string(sct_list))
        return builder().add_extension(extension, critical=False).sign(ca_key, hashes.SHA256())

    def _promise(self, body: bytes, integrated_time: int, log_index: int) -> bytes:
        promise = {
            "body": _b64(body),
            "integratedTime": integrated_time,
            "logID": self.log_id.hex(),
            "logIndex": log_index,
        }
        canonical = json.dumps(promise, sort_keys=True, separators=(",", ":")).encode()
        return bytes(self.log_key.sign(canonical, ec.ECDSA(hashes.SHA256())))

    def rekor_entry(
        self,
        payload: bytes,
        signature: bytes,
        cert: x509.Certificate | Any,
        integrated_time: int,
        log_index: int = 7,
    ) -> dict[str, Any]:
        """A hashedrekord body and its signed entry timestamp, as cosign's bundle annotation holds
        them; ``cert`` is a certificate (keyless) or a public key (keyed: the log holds its PEM)."""
        if isinstance(cert, x509.Certificate):
            cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        else:
            cert_pem = cert.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        body = {
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()}},
                "signature": {"content": _b64(signature), "publicKey": {"content": _b64(cert_pem)}},
            },
        }
        raw = json.dumps(body, separators=(",", ":")).encode()
        promise = {
            "body": _b64(raw),
            "integratedTime": integrated_time,
            "logID": self.log_id.hex(),
            "logIndex": log_index,
        }
        return {"SignedEntryTimestamp": _b64(self._promise(raw, integrated_time, log_index)), "Payload": promise}

    def dsse_bundle(self, image: str, digest: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bytes:
        """A sigstore bundle v0.3: DSSE in-toto statement, certificate, dsse log entry with proof."""
        statement = {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": image, "digest": {"sha256": digest.split(":")[1]}}],
            "predicateType": "https://sigstore.dev/cosign/sign/v1",
            "predicate": {},
        }
        payload = json.dumps(statement).encode()
        kind = "application/vnd.in-toto+json"
        pae = b"DSSEv1 %d %s %d %s" % (len(kind), kind.encode(), len(payload), payload)
        signature = key.sign(pae, ec.ECDSA(hashes.SHA256()))
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        body = {
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": {"algorithm": "sha256", "value": hashlib.sha256(b"envelope").hexdigest()},
                "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
                "signatures": [{"signature": _b64(signature), "verifier": _b64(cert_pem)}],
            },
        }
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        now = int(time.time())
        root_hash = hashlib.sha256(b"\x00" + raw).digest()  # RFC 6962 leaf hash = root of a 1-entry tree
        note = f"rekor.test - 1\n1\n{_b64(root_hash)}\n"
        note_signature = self.log_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        checkpoint = f"{note}\n\u2014 rekor.test {_b64(self.log_id[:4] + note_signature)}\n"
        bundle = {
            "mediaType": BUNDLE_TYPE,
            "verificationMaterial": {
                "certificate": {"rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))},
                "tlogEntries": [
                    {
                        "logIndex": "0",
                        "logId": {"keyId": _b64(self.log_id)},
                        "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                        "integratedTime": str(now),
                        "inclusionPromise": {"signedEntryTimestamp": _b64(self._promise(raw, now, 0))},
                        "inclusionProof": {
                            "logIndex": "0",
                            "rootHash": _b64(root_hash),
                            "treeSize": "1",
                            "hashes": [],
                            "checkpoint": {"envelope": checkpoint},
                        },
                        "canonicalizedBody": _b64(raw),
                    }
                ],
            },
            "dsseEnvelope": {
                "payload": _b64(payload),
                "payloadType": kind,
                "signatures": [{"sig": _b64(signature), "keyid": ""}],
            },
        }
        return json.dumps(bundle).encode()


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test"), x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _log(key: ec.EllipticCurvePrivateKey, url: str) -> dict[str, Any]:
    return {
        "baseUrl": url,
        "hashAlgorithm": "SHA2_256",
        "publicKey": {
            "rawBytes": _b64(_spki(key.public_key())),
            "keyDetails": "PKIX_ECDSA_P256_SHA_256",
            "validFor": {"start": "2020-01-01T00:00:00Z"},
        },
        "logId": {"keyId": _b64(_key_id(key.public_key()))},
    }


@pytest.fixture(scope="session")
def keyless(tmp_path_factory: pytest.TempPathFactory) -> KeylessSigner:
    ca_key, ca_cert = _ca("test-fulcio")
    log_key = ec.generate_private_key(ec.SECP256R1())
    ct_key = ec.generate_private_key(ec.SECP256R1())
    root = {
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [_log(log_key, "https://rekor.test")],
        "certificateAuthorities": [
            {
                "subject": {"organization": "test", "commonName": "test-fulcio"},
                "uri": "https://fulcio.test",
                "certChain": {"certificates": [{"rawBytes": _b64(ca_cert.public_bytes(serialization.Encoding.DER))}]},
                "validFor": {"start": "2020-01-01T00:00:00Z"},
            }
        ],
        "ctlogs": [_log(ct_key, "https://ct.test")],
        "timestampAuthorities": [],
    }
    path = tmp_path_factory.mktemp("trust") / "trusted_root.json"
    path.write_text(json.dumps(root))
    return KeylessSigner(ca_key, ca_cert, log_key, ct_key, path)


@pytest.fixture
def rogue_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA that no trust root names."""
    return _ca("rogue-ca")


# -- building and running the check ------------------------------------------------------------


class Env:
    """Builds images checks from config dicts and admits pods through the real pipeline."""

    def __init__(self, base_dir: Path, registry_host: str | None) -> None:
        self.base_dir = base_dir
        self.host = registry_host
        self._checks: list[Any] = []

    def key_file(self, key: Any, name: str | None = None) -> str:
        path = self.base_dir / (name or f"key{len(list(self.base_dir.glob('*.pub')))}.pub")
        path.write_bytes(public_pem(key))
        return path.name

    def config(self, images: dict[str, Any]) -> Any:
        from webhook import config as config_mod

        section = {"insecure_registries": [self.host] if self.host else [], **images}
        return config_mod.parse({"images": section}, base_dir=self.base_dir)

    def check(self, services: Any = None, **images: Any) -> Any:
        from webhook.checks import images as images_check
        from webhook.checks.services import Services

        check = images_check.build(self.config(images), services or Services())
        assert check is not None
        self._checks.append(check)
        return check

    async def admit(
        self,
        check: Any,
        *images: str,
        budget: float = 10.0,
        kind: str = "Pod",
        pull_secrets: tuple[str, ...] = (),
        namespace: str = "default",
    ) -> Any:
        from webhook.checks.pipeline import Pipeline, Subject
        from webhook.core.deadline import Deadline

        containers = [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]
        spec: dict[str, Any] = {"containers": containers}
        if pull_secrets:
            spec["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
        if kind == "Pod":
            obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}
        else:
            obj = {
                "apiVersion": "apps/v1",
                "kind": kind,
                "metadata": {"name": "d"},
                "spec": {"template": {"metadata": {}, "spec": spec}},
            }
        pipeline = Pipeline(check_config(check), [check])
        subject = Subject("CREATE", kind, namespace, obj["metadata"]["name"], obj)
        return await pipeline.evaluate(subject, Deadline.after(budget))

    async def close(self) -> None:
        for check in self._checks:
            await check.close()


def check_config(check: Any) -> Any:
    from webhook import config as config_mod

    return config_mod.parse({})


@pytest.fixture
async def env(tmp_path: Path, registry: Registry) -> Any:
    environment = Env(tmp_path, registry.host)
    yield environment
    await environment.close()


class Tools:
    """Signing helpers handed to tests (test modules cannot import conftest)."""

    simple_signing = staticmethod(simple_signing)
    sign_bytes = staticmethod(sign_bytes)
    public_pem = staticmethod(public_pem)
    digest_of = staticmethod(digest_of)
    free_port = staticmethod(free_port)


@pytest.fixture(scope="session")
def tools() -> Tools:
    return Tools()
