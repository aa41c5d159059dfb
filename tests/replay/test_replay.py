"""What-if replay end to end: real admission decisions through ``serve`` (real HTTPS, a real tile
log on disk), then ``portcullis replay`` under a stricter candidate config; tampering detected."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from webhook import cli
from webhook import config as config_mod
from webhook.admission import certs, recorder, service
from webhook.admission.review import ReviewRequest
from webhook.audit import note, objects
from webhook.audit.log import iter_entries
from webhook.checks.pipeline import Outcome
from webhook.core.decision import Verdict


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SAFE = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def container(**extra: Any) -> dict[str, Any]:
    ctx = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return {"name": "app", "image": "registry.local/app:1", "securityContext": {**ctx, **extra.pop("ctx", {})}, **extra}


def pod(name: str, namespace: str, *, annotations: dict[str, str] | None = None, **c: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"securityContext": SAFE, "containers": [container(**c)]},
    }


def review(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": obj["kind"]},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "userInfo": {"username": "alice", "groups": ["dev", "system:authenticated"]},
            "object": obj,
        },
    }


BASE = {
    "kubernetes": {"mode": "off"},
    "checks": {name: {"enabled": False} for name in ("runtimeclass", "images", "gpu")},
}
CANDIDATE = {
    **BASE,
    "privilege": {"level": "restricted"},
    "exemptions": [{"namespaces": ["team-b"], "checks": ["privilege"], "reason": "legacy team"}],
}
BIG = {"note": "x" * 40_000}
PODS = [
    pod("ok", "team-a"),
    pod("escalate", "team-a", ctx={"allowPrivilegeEscalation": True}),
    pod("priv", "team-b", ctx={"privileged": True}),
    pod("envy", "team-a", env=[{"name": "DB_PASSWORD", "value": "hunter2"}, {"name": "MODE", "value": "fast"}]),
    pod("big", "team-a", annotations=BIG),
]


async def admit(tmp_path: Path) -> Path:
    """Send PODS to the real webhook over HTTPS with a signed audit log; returns the log directory
    (its public key is ``tmp_path / "audit.pub"``)."""
    log_dir = tmp_path / "audit"
    signer = note.generate("test.local/admission")
    key = tmp_path / "audit.key"
    key.write_text(signer.private_text() + "\n")
    (tmp_path / "audit.pub").write_text(signer.verifier.vkey() + "\n")
    audit = {
        "directory": str(log_dir),
        "commit_window": 0.001,
        "durable": False,
        "signing_key": str(key),
        "origin": "test.local/admission",
    }
    cfg = config_mod.parse({**BASE, "audit": audit})
    files = certs.generate(["127.0.0.1"], tmp_path / "tls")
    listen = service.Listen("127.0.0.1", free_port())
    started, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(service.serve(cfg, listen, files.cert, files.key, started=started, stop=stop))
    await asyncio.wait_for(started.wait(), 10)
    ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    answers = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            for obj in PODS:
                async with session.post(
                    f"https://127.0.0.1:{listen.port}/validate", data=orjson.dumps(review(obj))
                ) as r:
                    answers.append((await r.json())["response"]["allowed"])
    finally:
        stop.set()
        await task
    assert answers == [True, True, False, True, True]
    return log_dir


def replay(tmp_path: Path, log_dir: Path, fmt: str = "json", *extra: str) -> tuple[int, str]:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump(CANDIDATE))
    out = tmp_path / f"replay.{fmt}"
    code = cli.main(
        ["replay", "--log", str(log_dir), "--config", str(candidate), "--format", fmt, "--out", str(out), *extra]
    )
    return code, out.read_text()


def change(
    category: str,
    index: int,
    name: str,
    namespace: str,
    before: str,
    after: str,
    checks: list[str],
    messages: list[str],
    log: str,
) -> dict[str, Any]:
    return {
        "category": category,
        "index": index,
        "namespace": namespace,
        "kind": "Pod",
        "name": name,
        "operation": "CREATE",
        "user": "alice",
        "before": before,
        "after": after,
        "checks": checks,
        "messages": messages,
        "prove": f"portcullis audit prove --log {log} --index {index}",
    }


ESCALATE = (
    "[pss:allowPrivilegeEscalation] app: privilege escalation is not disabled; set "
    "securityContext.allowPrivilegeEscalation to false [restricted:latest] "
    "(spec.containers[0].securityContext.allowPrivilegeEscalation)"
)


async def test_replay_under_a_stricter_config_reports_the_exact_diff(tmp_path: Path) -> None:
    log_dir = await admit(tmp_path)
    code, text = await asyncio.to_thread(replay, tmp_path, log_dir)
    report = json.loads(text)
    for entry in report["changes"]:
        assert entry.pop("time").endswith("Z")
    log = str(log_dir)
    assert report == {
        "version": 1,
        "log": log,
        "window": {"from": None, "to": None},
        "records": 5,
        "outside_window": 0,
        "judged": 5,
        "unchanged": 3,
        "summary": {"newly_denied": 1, "newly_allowed": 1, "newly_warned": 0},
        "by_check": {
            "newly_denied": {"pss:allowPrivilegeEscalation": 1},
            "newly_allowed": {"pss:privileged": 1},
            "newly_warned": {},
        },
        "by_namespace": {"newly_denied": {"team-a": 1}, "newly_allowed": {"team-b": 1}, "newly_warned": {}},
        "changes": [
            change(
                "newly_denied",
                1,
                "escalate",
                "team-a",
                "warned",
                "denied",
                ["pss:allowPrivilegeEscalation"],
                [ESCALATE],
                log,
            ),
            change("newly_allowed", 2, "priv", "team-b", "denied", "allowed", ["pss:privileged"], [], log),
        ],
        "integrity": [],
        "not_replayable": {},
        "log_integrity": {"verified": None, "problems": []},
        "errors": [],
    }
    assert code == 1  # something would newly be denied
    # the large object went to the store beside the log, its hash into the signed record
    stored = list((objects.beside(log_dir) / "sha256").rglob("*"))
    assert len([p for p in stored if p.is_file()]) == 1
    # text and HTML carry the same evidence
    _, text_out = await asyncio.to_thread(replay, tmp_path, log_dir, "text")
    assert "#1 " in text_out
    assert f"prove: portcullis audit prove --log {log} --index 2" in text_out
    _, html = await asyncio.to_thread(replay, tmp_path, log_dir, "html")
    assert html.startswith("<!DOCTYPE html>")
    assert 'id="newly_denied"' in html
    assert "pss:allowPrivilegeEscalation" in html


async def test_secrets_never_enter_the_log_and_a_tampered_object_is_not_judged(tmp_path: Path) -> None:
    log_dir = await admit(tmp_path)
    raw = b"".join(entry for _, entry in iter_entries(log_dir))
    assert b"hunter2" not in raw
    assert b"DB_PASSWORD" in raw  # the name stays, the value is redacted
    store = objects.beside(log_dir)
    assert not any(b"hunter2" in p.read_bytes() for p in store.rglob("*") if p.is_file())

    [blob] = [p for p in store.rglob("*") if p.is_file()]
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes().replace(b'"privileged":false', b"").replace(b"xxxx", b"xxxy", 1))
    code, text = await asyncio.to_thread(replay, tmp_path, log_dir)
    report = json.loads(text)
    assert code == 1
    assert report["judged"] == 4
    [problem] = report["integrity"]
    assert problem["index"] == 4
    assert problem["problem"] == "tampered"
    assert f"the signed record says sha256:{blob.name}" in problem["detail"]

    blob.unlink()
    _, text = await asyncio.to_thread(replay, tmp_path, log_dir)
    assert json.loads(text)["integrity"][0]["problem"] == "missing"


async def test_replay_verifies_the_log_with_its_public_key(tmp_path: Path) -> None:
    log_dir = await admit(tmp_path)
    pub = str(tmp_path / "audit.pub")
    _, text = await asyncio.to_thread(replay, tmp_path, log_dir, "json", "--pub", pub)
    assert json.loads(text)["log_integrity"] == {"verified": True, "problems": []}
    bundle = max((p for p in (log_dir / "tile" / "entries").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(bundle.read_bytes())
    data[-3] ^= 1  # a byte of the last record
    bundle.chmod(0o644)
    bundle.write_bytes(bytes(data))
    code, text = await asyncio.to_thread(replay, tmp_path, log_dir, "json", "--pub", pub)
    integrity = json.loads(text)["log_integrity"]
    assert code == 1
    assert integrity["verified"] is False
    assert integrity["problems"]


async def test_the_window_limits_the_records_replayed(tmp_path: Path) -> None:
    log_dir = await admit(tmp_path)
    _, text = await asyncio.to_thread(replay, tmp_path, log_dir, "json", "--from", "2999-01-01")
    report = json.loads(text)
    assert report["records"] == 0
    assert report["outside_window"] == 5


def _request(kind: str, obj: dict[str, Any]) -> ReviewRequest:
    return ReviewRequest("u1", kind, "", kind.lower() + "s", "", "CREATE", "ns", "n", "bob", (), False, obj, None)


def _outcome() -> Outcome:
    return Outcome(Verdict(True, (), (), {}, ()), (), {}, ())


def test_a_secret_is_never_recorded() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "n"}, "data": {"password": "aHVudGVyMg=="}}
    record = recorder.decision_record("validate", _request("Secret", secret), _outcome())
    assert "object" not in record
    assert record["object_redacted"] is True
    assert "aHVudGVyMg" not in json.dumps(record)


@pytest.mark.parametrize(
    "name",
    ["PASSWORD", "db_password", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "apiKey", "OAUTH_CREDENTIALS", "SESSION"],
)
def test_env_values_with_secret_looking_names_are_redacted(name: str) -> None:
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "n", "annotations": {"kubectl.kubernetes.io/last-applied-configuration": '{"s3cret":1}'}},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "c", "env": [{"name": name, "value": "s3cret"}, {"name": "LOG", "value": "debug"}]}
                    ]
                }
            }
        },
    }
    record = recorder.decision_record("validate", _request("Deployment", obj), _outcome())
    assert "s3cret" not in json.dumps(record)
    env = record["object"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": name, "value": "[redacted]"}, {"name": "LOG", "value": "debug"}]
    assert "object: spec.template.spec.containers[0].env[0].value" in record["redacted"]


def test_objects_that_would_overflow_the_entry_go_to_the_store() -> None:
    from webhook.audit import records
    from webhook.core.decision import Finding, Mode, Violation

    big = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "n", "annotations": {"a": "y" * 15_000}}, "spec": {}}
    findings = tuple(Finding(Violation("rego", "m" * 900), Mode.WARN) for _ in range(40))
    outcome = Outcome(Verdict(True, findings, (), {}, ()), (), {}, ())
    request = ReviewRequest("u1", "Pod", "", "pods", "", "UPDATE", "ns", "n", "bob", (), False, big, big)
    content, blobs = recorder.record_with_objects("validate", request, outcome)
    assert "object_sha256" in content or "old_object_sha256" in content
    assert blobs
    assert len(records.encode_record("2026-01-01T00:00:00.000000Z", "admission", "w", content)) <= records.MAX_RECORD


@pytest.mark.parametrize("name", ["MYSQL_ROOT_PW", "PW_FILE", "dbPw"])
def test_short_password_names_are_redacted_too(name: str) -> None:
    from webhook.admission import redact

    kept, paths = redact.redact("Pod", {"spec": {"containers": [{"env": [{"name": name, "value": "v"}]}]}})
    assert kept["spec"]["containers"][0]["env"][0]["value"] == "[redacted]"
    assert paths == ["spec.containers[0].env[0].value"]
