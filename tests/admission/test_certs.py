"""``portcullis certs``: a CA and a serving certificate the apiserver would accept."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from webhook import cli
from webhook.admission import certs


def test_service_name_expands_to_every_form_the_apiserver_may_use() -> None:
    assert certs.service_names("hook.ns") == ["hook.ns", "hook.ns.svc", "hook.ns.svc.cluster.local"]
    assert certs.service_names("hook.ns.svc") == ["hook.ns.svc", "hook.ns.svc.cluster.local", "hook.ns"]


def test_certs_command_writes_a_chain_that_verifies(tmp_path: Path) -> None:
    assert cli.main(["certs", "--dns", "portcullis.portcullis-system", "--out", str(tmp_path)]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "portcullis.portcullis-system.svc" in sans.get_values_for_type(x509.DNSName)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert stat.S_IMODE((tmp_path / "tls.key").stat().st_mode) == 0o600
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")  # key matches the certificate


def test_bad_validity_is_a_usage_error(tmp_path: Path) -> None:
    assert cli.main(["certs", "--dns", "a.b", "--out", str(tmp_path), "--validity-days", "10",
                     "--renew-before-days", "30"]) == 2  # fmt: skip
