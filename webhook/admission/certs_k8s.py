"""Publish generated certificates to the cluster (the Helm hook Job's ``certs --k8s-*`` flags)."""

from __future__ import annotations

import base64

from webhook import errors
from webhook.admission.certs import CertFiles


def publish(files: CertFiles, *, secret: str | None, webhooks: str | None) -> None:
    """Create/replace the TLS Secret and set ``caBundle`` on every webhook of the named configurations."""
    try:
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException
    except ImportError as exc:  # pragma: no cover - kubernetes is a dependency
        raise errors.ConfigError("the kubernetes client is not installed") from exc
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    ca = files.ca_cert.read_bytes()
    try:
        if secret:
            namespace, _, name = secret.partition("/")
            if not namespace or not name:
                raise errors.ConfigError(f"--k8s-secret {secret!r} must be NAMESPACE/NAME")
            _apply_secret(client.CoreV1Api(), namespace, name, files, ApiException)
        for name in filter(None, (webhooks or "").split(",")):
            _patch_ca_bundle(client.AdmissionregistrationV1Api(), name.strip(), ca, ApiException)
    except ApiException as exc:
        raise errors.ApiServerError(f"publishing certificates failed: {exc.status} {exc.reason}") from exc


def _apply_secret(api: object, namespace: str, name: str, files: CertFiles, api_exc: type[Exception]) -> None:
    from kubernetes import client

    data = {
        "ca.crt": base64.b64encode(files.ca_cert.read_bytes()).decode(),
        "tls.crt": base64.b64encode(files.cert.read_bytes()).decode(),
        "tls.key": base64.b64encode(files.key.read_bytes()).decode(),
    }
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace), type="kubernetes.io/tls", data=data
    )
    core: client.CoreV1Api = api  # type: ignore[assignment]
    try:
        core.replace_namespaced_secret(name, namespace, body)
    except api_exc as exc:
        if getattr(exc, "status", None) != 404:
            raise
        core.create_namespaced_secret(namespace, body)


def _patch_ca_bundle(api: object, name: str, ca: bytes, api_exc: type[Exception]) -> None:
    adm = api  # AdmissionregistrationV1Api
    bundle = base64.b64encode(ca).decode()
    for read, patch in (
        ("read_validating_webhook_configuration", "patch_validating_webhook_configuration"),
        ("read_mutating_webhook_configuration", "patch_mutating_webhook_configuration"),
    ):
        try:
            current = getattr(adm, read)(name)
        except api_exc as exc:
            if getattr(exc, "status", None) == 404:
                continue
            raise
        hooks = [{"name": w.name, "clientConfig": {"caBundle": bundle}} for w in current.webhooks or []]
        getattr(adm, patch)(name, {"webhooks": hooks})
