"""Keep the webhook's certificate in the cluster (the Helm hook Job's ``certs --k8s-*`` flags).

Idempotent: a Secret whose certificate is valid for longer than the renewal margin is kept as it
is; otherwise a new CA and certificate are made. While the CA changes, ``caBundle`` carries the
old and the new CA, so replicas still serving the old certificate keep being trusted.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from pathlib import Path
from typing import Any

from cryptography import x509

from webhook import errors
from webhook.admission import certs
from webhook.files import write_atomic


def sync(
    dns_names: list[str],
    out: Path,
    *,
    secret: str | None,
    webhooks: str | None,
    days: int,
    renew_before_days: int,
) -> tuple[certs.CertFiles, bool]:
    """Make sure the Secret and the webhooks' caBundle hold a certificate valid for long enough.

    Returns the files written to ``out`` and whether a new certificate was issued.
    """
    client, api_exception = _client()
    core = client.CoreV1Api()
    namespace = name = ""
    existing: dict[str, bytes] = {}
    if secret:
        namespace, _, name = secret.partition("/")
        if not namespace or not name:
            raise errors.ConfigError(f"--k8s-secret {secret!r} must be NAMESPACE/NAME")
        existing = _read_secret(core, namespace, name, api_exception)
    now = dt.datetime.now(dt.UTC)
    if existing and _still_good(existing, dns_names, now + dt.timedelta(days=renew_before_days)):
        files = _write_existing(existing, out)
        issued = False
        old_ca = b""
    else:
        files = certs.generate(dns_names, out, days=days)
        issued = True
        old_ca = existing.get("ca.crt", b"") if existing and _valid_ca(existing.get("ca.crt", b""), now) else b""
        if secret:
            _apply_secret(core, namespace, name, files, bool(existing), api_exception)
    bundle = files.ca_cert.read_bytes() + (old_ca if old_ca and old_ca not in files.ca_cert.read_bytes() else b"")
    for webhook_name in filter(None, (w.strip() for w in (webhooks or "").split(","))):
        _patch_ca_bundle(client.AdmissionregistrationV1Api(), webhook_name, bundle, api_exception)
    return files, issued


def _client() -> tuple[Any, type[Exception]]:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        try:
            # $KUBECONFIG as it is now: the client reads it once, when it is first imported.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as exc:
            raise errors.ConfigError(f"no Kubernetes API to publish certificates to: {exc}") from exc
    return client, ApiException


def _read_secret(core: Any, namespace: str, name: str, api_exception: type[Exception]) -> dict[str, bytes]:
    try:
        current = core.read_namespaced_secret(name, namespace)
    except api_exception as exc:
        if getattr(exc, "status", None) == 404:
            return {}
        raise errors.ApiServerError(f"reading Secret {namespace}/{name}: {exc}") from exc
    return {k: base64.b64decode(v) for k, v in (current.data or {}).items()}


def _still_good(data: dict[str, bytes], dns_names: list[str], until: dt.datetime) -> bool:
    if not all(data.get(k) for k in ("ca.crt", "tls.crt", "tls.key")):
        return False
    try:
        cert = x509.load_pem_x509_certificate(data["tls.crt"])
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    names = set(sans.get_values_for_type(x509.DNSName))
    return cert.not_valid_after_utc > until and set(dns_names) <= names


def _valid_ca(pem: bytes, now: dt.datetime) -> bool:
    try:
        return x509.load_pem_x509_certificate(pem).not_valid_after_utc > now
    except ValueError:
        return False


def _write_existing(data: dict[str, bytes], out: Path) -> certs.CertFiles:
    out.mkdir(parents=True, exist_ok=True)
    files = certs.CertFiles(out / "ca.crt", out / "tls.crt", out / "tls.key")
    write_atomic(files.ca_cert, data["ca.crt"], mode=0o644)
    write_atomic(files.cert, data["tls.crt"], mode=0o644)
    write_atomic(files.key, data["tls.key"], mode=0o600)
    return files


def _apply_secret(core: Any, namespace: str, name: str, files: certs.CertFiles, exists: bool,
                  api_exception: type[Exception]) -> None:  # fmt: skip
    from kubernetes import client

    data: dict[str, bytes | str] = {
        "ca.crt": base64.b64encode(files.ca_cert.read_bytes()).decode(),
        "tls.crt": base64.b64encode(files.cert.read_bytes()).decode(),
        "tls.key": base64.b64encode(files.key.read_bytes()).decode(),
    }
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace), type="kubernetes.io/tls", data=data
    )
    try:
        if exists:
            core.replace_namespaced_secret(name, namespace, body)
        else:
            core.create_namespaced_secret(namespace, body)
    except api_exception as exc:
        raise errors.ApiServerError(f"writing Secret {namespace}/{name}: {exc}") from exc


def _patch_ca_bundle(adm: Any, name: str, ca: bytes, api_exception: type[Exception]) -> None:
    """Set caBundle on every webhook of the named configuration(s); a missing one is skipped."""
    bundle = base64.b64encode(ca).decode()
    for read, patch in (
        ("read_validating_webhook_configuration", "patch_validating_webhook_configuration"),
        ("read_mutating_webhook_configuration", "patch_mutating_webhook_configuration"),
    ):
        try:
            current = getattr(adm, read)(name)
        except api_exception as exc:
            if getattr(exc, "status", None) == 404:
                continue
            raise errors.ApiServerError(f"reading webhook configuration {name}: {exc}") from exc
        hooks = [{"name": w.name, "clientConfig": {"caBundle": bundle}} for w in current.webhooks or []]
        try:
            getattr(adm, patch)(name, {"webhooks": hooks})
        except api_exception as exc:
            raise errors.ApiServerError(f"patching caBundle of {name}: {exc}") from exc
