"""Secrets never leak: registry passwords (inline and from a file), bearer tokens, imagePullSecret
credentials, the TLS private key and the audit signing key appear in no log line (DEBUG captured),
no error message, no AdmissionReview response and no audit record — including on error paths.

Real parts: the webhook server (``service.serve``, HTTPS), the images check with its registry
client, the audit log, the ``kubernetes`` client. Stubs (no real thing can run here with auth):
small aiohttp servers on 127.0.0.1 speaking the distribution API's auth challenges (Basic and
Bearer with a token endpoint) and the API server's secret GET.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webhook import cli
from webhook import config as config_mod
from webhook.admission import certs, service
from webhook.checks.services import Services

from .conftest import pod_review


def _secret(label: str) -> str:
    return f"{label}-{secrets.token_hex(12)}"


PASSWORD = _secret("inline-pw")  # images.credentials[].password (wrong for the registry)
FILE_PASSWORD = _secret("file-pw")  # images.credentials[].password_file (wrong too)
TOKEN = _secret("bearer-token")  # issued by the token endpoint, then refused by the registry
PULL_PASSWORD = _secret("pull-pw")  # inside the pod's imagePullSecret (wrong)
RIGHT_PASSWORD = _secret("right-pw")  # what the stubs accept (never configured)


def encodings(value: str, user: str) -> list[str]:
    """The forms a secret can leak in: as is, in a Basic header, and base64 on its own."""
    return [
        value,
        base64.b64encode(f"{user}:{value}".encode()).decode(),
        base64.b64encode(value.encode()).decode(),
    ]


def registry_stub(mode: str, seen: list[str], *, issue_token: bool = False) -> web.Application:
    """A registry that accepts nothing we send: Basic challenges, or Bearer with a token endpoint
    that refuses our password (or issues ``TOKEN``, which the registry then refuses)."""
    app = web.Application()
    right = "Basic " + base64.b64encode(f"ci:{RIGHT_PASSWORD}".encode()).decode()

    async def token(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if issue_token:
            return web.json_response({"token": TOKEN, "expires_in": 300})
        if request.headers.get("Authorization") != right:
            return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}, status=401)
        return web.json_response({"token": "never-issued"})

    async def v2(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if mode == "basic":
            challenge = 'Basic realm="stub"'
        else:
            repo = request.path.split("/v2/", 1)[-1].rsplit("/manifests/", 1)[0]
            challenge = f'Bearer realm="http://{request.host}/token",service="stub",scope="repository:{repo}:pull"'
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        return web.json_response(body, status=401, headers={"WWW-Authenticate": challenge})

    app.router.add_get("/token", token)
    app.router.add_route("*", "/v2/{tail:.*}", v2)
    return app


def secret_api(docker_config: dict[str, Any]) -> web.Application:
    """The API server's ``GET /api/v1/namespaces/{ns}/secrets/{name}``."""

    async def secret(request: web.Request) -> web.Response:
        payload = base64.b64encode(json.dumps(docker_config).encode()).decode()
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": request.match_info["name"], "namespace": request.match_info["ns"]},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": payload},
            }
        )

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", secret)
    return app


def _public_key_file(path: Path) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path.write_bytes(pem)
    return path.name


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def _pem_body(pem: bytes) -> list[str]:
    """Distinctive lines of a PEM private key (any one of them leaking is a leak)."""
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]


async def test_registry_credentials_tokens_and_pull_secrets_never_leak(
    tmp_path: Path,
    serve: Callable[[web.Application], Awaitable[str]],  # tests/conftest.py
    webhook_server: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: dict[str, list[str]] = {"basic": [], "bearer": [], "token": [], "pull": []}
    basic = await serve(registry_stub("basic", seen["basic"]))
    bearer = await serve(registry_stub("bearer", seen["bearer"]))
    tokened = await serve(registry_stub("bearer", seen["token"], issue_token=True))
    pulled = await serve(registry_stub("basic", seen["pull"]))
    docker_config = {"auths": {pulled: {"auth": base64.b64encode(f"puller:{PULL_PASSWORD}".encode()).decode()}}}
    api_host = await serve(secret_api(docker_config))

    keys = tmp_path / "keys"
    assert cli.main(["audit", "keygen", "--out", str(keys), "--name", "test.local/secrets"]) == 0
    audit_key = (keys / "audit.key").read_text()
    (tmp_path / "pw").write_text(FILE_PASSWORD + "\n")
    pub = _public_key_file(tmp_path / "cosign.pub")
    hosts = [basic, bearer, tokened, pulled]
    cfg = {
        "images": {
            "insecure_registries": hosts,
            "policies": [{"pattern": f"{h}/**", "keys": [pub]} for h in hosts],
            "credentials": [
                {"registry": basic, "username": "ci", "password": PASSWORD},
                {"registry": bearer, "username": "ci", "password_file": str(tmp_path / "pw")},
                {"registry": tokened, "username": "ci", "password": PASSWORD},
            ],
        },
        "audit": {"directory": str(tmp_path / "audit"), "signing_key": str(keys / "audit.key"), "durable": False},
    }
    config = config_mod.parse(cfg, base_dir=tmp_path)

    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = f"http://{api_host}"
    configuration.debug = False
    api_client = client.ApiClient(configuration)
    responses: list[str] = []
    try:
        pipeline = service.build_pipeline(config, Services(kube_api=api_client))
        async with webhook_server(cfg, pipeline=pipeline) as hook:
            for host in hosts:
                review = pod_review(
                    containers=[{"name": "app", "image": f"{host}/team/app:1.0"}],
                    imagePullSecrets=[{"name": "regcred"}],
                )
                status, _, body = await hook.post("/validate", review)
                assert status == 200
                responses.append(json.dumps(body))
                assert body["response"]["allowed"] is False  # every registry refused us: failure mode deny
    finally:
        api_client.close()

    # The secrets were really used (so their absence below means something).
    assert any(h.startswith("Basic ") for h in seen["basic"])
    assert any(h.startswith("Basic ") for h in seen["bearer"])
    assert f"Bearer {TOKEN}" in seen["token"]
    assert any(h.startswith("Basic ") for h in seen["pull"])
    assert any("401" in r or "unauthorized" in r.lower() or "credentials" in r for r in responses), responses

    logs = caplog.text + "".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    out, err = capfd.readouterr()
    audit_bytes = _all_bytes(tmp_path / "audit")
    assert audit_bytes, "the decisions were recorded"
    leaks = encodings(PASSWORD, "ci") + encodings(FILE_PASSWORD, "ci") + encodings(PULL_PASSWORD, "puller") + [TOKEN]
    leaks.append(audit_key.strip().split("+", 4)[4])  # the signing key itself (its base64 may hold "+")
    for value in leaks:
        assert value not in logs, f"secret in logs: {value[:12]}..."
        assert value not in out + err, f"secret on stdout/stderr: {value[:12]}..."
        assert all(value not in r for r in responses), f"secret in a response: {value[:12]}..."
        assert value.encode() not in audit_bytes, f"secret in the audit log: {value[:12]}..."
    tls_key = (hook.tls_dir / "tls.key").read_bytes()
    for line in _pem_body(tls_key):
        assert line not in logs
        assert line not in out + err
        assert line.encode() not in audit_bytes


def _serve_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``portcullis -vv serve ...`` that must fail at start-up (DEBUG logging on)."""
    return subprocess.run(
        [sys.executable, "-m", "webhook", "-vv", "serve", "--listen", "127.0.0.1:0", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_tls_key_that_does_not_match_is_refused_without_showing_it(tmp_path: Path) -> None:
    files = certs.generate(["localhost"], tmp_path / "a")
    other = certs.generate(["localhost"], tmp_path / "b")
    proc = _serve_cli(["--tls-cert", str(files.cert), "--tls-key", str(other.key)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "tls" in proc.stderr.lower() or "key" in proc.stderr.lower()
    for line in _pem_body(other.key.read_bytes()) + _pem_body(files.key.read_bytes()):
        assert line not in proc.stderr + proc.stdout


def test_a_corrupt_tls_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    files = certs.generate(["localhost"], tmp_path / "a")
    pem = files.key.read_bytes()
    lines = pem.splitlines()
    lines[2] = lines[2][::-1]  # one line of base64 scrambled: not a key any more
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"\n".join(lines) + b"\n")
    proc = _serve_cli(["--tls-cert", str(files.cert), "--tls-key", str(bad)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    for line in _pem_body(bad.read_bytes()):
        assert line not in proc.stderr + proc.stdout


@pytest.mark.parametrize("damage", ["wrong-id", "truncated", "not-a-key"])
def test_a_bad_audit_signing_key_is_refused_without_showing_it(tmp_path: Path, damage: str) -> None:
    keys = tmp_path / "keys"
    assert cli.main(["audit", "keygen", "--out", str(keys), "--name", "test.local/secrets"]) == 0
    text = (keys / "audit.key").read_text().strip()
    _, _, name, key_id, blob = text.split("+", 4)  # the base64 key itself may contain "+"
    assert key_id
    assert len(blob) > 40
    if damage == "wrong-id":
        bad = f"PRIVATE+KEY+{name}+00000000+{blob}"
    elif damage == "truncated":
        bad = f"PRIVATE+KEY+{name}+{key_id}+{blob[:-8]}"
    else:
        bad = blob  # the secret alone, without its framing
    (keys / "audit.key").write_text(bad + "\n")
    files = certs.generate(["localhost"], tmp_path / "tls")
    cfg = tmp_path / "portcullis.yaml"
    cfg.write_text(f"audit:\n  directory: {tmp_path / 'audit'}\n  signing_key: {keys / 'audit.key'}\n")
    proc = _serve_cli(["--config", str(cfg), "--tls-cert", str(files.cert), "--tls-key", str(files.key)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    secret_part = blob[:-8] if damage == "truncated" else blob
    assert secret_part not in proc.stderr + proc.stdout
    assert secret_part[:24] not in proc.stderr + proc.stdout
