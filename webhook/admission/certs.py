"""A CA and a serving certificate for the webhook's Service DNS name (``portcullis certs``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook import errors
from webhook.files import write_atomic


@dataclass(frozen=True, slots=True)
class CertFiles:
    ca_cert: Path
    cert: Path
    key: Path


def service_names(dns: str) -> list[str]:
    """The names the apiserver may use for a Service ``name.namespace.svc`` (all forms)."""
    names = [dns]
    parts = dns.split(".")
    if len(parts) == 2:  # name.namespace
        names += [f"{dns}.svc", f"{dns}.svc.cluster.local"]
    elif len(parts) == 3 and parts[2] == "svc":
        names += [f"{dns}.cluster.local", ".".join(parts[:2])]
    return list(dict.fromkeys(names))


def generate(
    dns_names: list[str], out: Path, *, days: int = 365, ca_days: int = 3650, now: dt.datetime | None = None
) -> CertFiles:
    """Write ``ca.crt``, ``tls.crt`` and ``tls.key`` (0600) into ``out``; return their paths."""
    if not dns_names or not all(dns_names):
        raise errors.InputError("certs: give at least one non-empty --dns name")
    now = now or dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portcullis-webhook-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in dns_names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    files = CertFiles(out / "ca.crt", out / "tls.crt", out / "tls.key")
    write_atomic(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    write_atomic(files.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(files.key, key_pem, mode=0o600)  # a reloading server never reads half a file
    return files
