"""Offline signature verification: export from a real registry, stop it, verify from the files.

A private docker-registry is started for this module, filled with signed images, exported with
``portcullis images export`` and then killed: every ``portcullis check --signatures DIR`` below
runs with the registry gone (its port refuses connections), so any network call would show up
as a registry error instead of the verdicts asserted here.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from webhook import cli, errors
from webhook.signatures import bundles, cosign
from webhook.signatures import commands as images_commands

pytestmark = pytest.mark.registry

ISSUER = "https://token.actions.example"
SUBJECT = "https://github.example/org/repo/.github/workflows/release.yml@refs/heads/main"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def run(*argv: str) -> tuple[int, str, str]:
    """Run ``portcullis`` in-process (as tests/ci/conftest.py ``run_check`` does)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def run_export(*argv: str) -> tuple[int, str, str]:
    """``portcullis images export`` through its own ``register`` (independent of cli.py's module list)."""
    parser = argparse.ArgumentParser(prog="portcullis")
    images_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["images", "export", *argv])
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = args.func(args)
        except errors.PortcullisError as exc:
            print(f"portcullis: error: {exc}", file=err)
            code = 2
    return code, out.getvalue(), err.getvalue()


def pod(image: str, name: str = "p") -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": image}]},
        }
    )


@dataclass
class World:
    """What the module fixture built: images by case, the exported directory, a config writer."""

    host: str
    out: Path
    base: Path
    key: Any
    images: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    online: dict[str, tuple[int, str]] = field(default_factory=dict)
    not_exported: str = ""  # signed in the registry, never exported
    trust_root: str = ""

    def config(self, name: str = "config.yaml", **images: Any) -> Path:
        section = {
            "insecure_registries": [self.host],
            "policies": [
                {"pattern": f"{self.host}/team-a/**", "keys": ["signer.pub"], "tlog": "optional"},
                {"pattern": f"{self.host}/keyless/**", "keyless": [{"issuer": ISSUER, "subject": SUBJECT}]},
            ],
            "trust_root": self.trust_root,
            **images,
        }
        path = self.base / name
        # Only the images check: the other checks' findings are not what these tests look at.
        doc = {"checks": {c: {"enabled": False} for c in ("privilege", "runtimeclass", "gpu", "rego")}}
        path.write_text(json.dumps({**doc, "images": section}))
        return path

    def manifest(self, case: str, image: str | None = None) -> Path:
        path = self.base / "manifests" / f"{case}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(pod(image or self.images[case], case))
        return path


def _sign(reg: Any, tools: Any, repo: str, digest: str, key: Any, payload: bytes | None = None) -> None:
    payload = payload if payload is not None else tools.simple_signing(f"{reg.host}/{repo}", digest)
    signature = base64.b64encode(tools.sign_bytes(key, payload)).decode()
    reg.push_signature_layers(
        repo, digest, [(payload, cosign.SIMPLE_SIGNING_MEDIA, {cosign.SIGNATURE_ANNOTATION: signature})]
    )


@pytest.fixture(scope="module")
def world(
    registry: Any, tools: Any, keyless: Any, tmp_path_factory: pytest.TempPathFactory, docker_registry_factory: Any
) -> World:
    """Push every case to a private registry, check online, export, then kill the registry."""
    base = tmp_path_factory.mktemp("offline")
    with docker_registry_factory(base) as host:
        reg = type(registry)(host)  # the conftest pusher, aimed at our own registry
        key = ec.generate_private_key(ec.SECP256R1())
        w = World(reg.host, base / "signatures", base, key, trust_root=str(keyless.trust_root))
        (base / "signer.pub").write_bytes(tools.public_pem(key))
        _fill(w, reg, tools, keyless)
        for case in ("valid", "digest", "wrong-key", "tampered", "other-digest", "keyless", "unsigned"):
            w.online[case] = run("check", "--config", str(w.config()), "--format", "json", str(w.manifest(case)))[:2]
        code, _, err = run_export(
            "--config", str(w.config()), "--out", str(w.out), *(f"--image={w.images[c]}" for c in sorted(w.images))
        )
        assert code == 0, err
    return w


def _fill(w: World, reg: Any, tools: Any, keyless: Any) -> None:
    def image(case: str, repo: str, tag: str = "v1") -> str:
        digest = reg.push_image(repo, tag)
        w.images[case], w.digests[case] = f"{reg.host}/{repo}:{tag}", digest
        return digest

    repo = reg.repo("team-a")
    _sign(reg, tools, repo, image("valid", repo), w.key)
    repo = reg.repo("team-a")
    digest = image("digest", repo)
    _sign(reg, tools, repo, digest, w.key)
    w.images["digest"] = f"{reg.host}/{repo}@{digest}"  # checked and exported by digest: no tag file
    repo = reg.repo("team-a")
    _sign(reg, tools, repo, image("wrong-key", repo), ec.generate_private_key(ec.SECP256R1()))
    repo = reg.repo("team-a")
    digest = image("tampered", repo)
    payload = tools.simple_signing(f"{reg.host}/{repo}", digest)
    signature = base64.b64encode(tools.sign_bytes(w.key, payload)).decode()
    edited = payload.replace(b'"optional":null', b'"optional":{"evil":true}')
    reg.push_signature_layers(
        repo, digest, [(edited, cosign.SIMPLE_SIGNING_MEDIA, {cosign.SIGNATURE_ANNOTATION: signature})]
    )
    repo = reg.repo("team-a")
    digest = image("other-digest", repo)
    other = reg.push_image(repo, "v2")
    _sign(reg, tools, repo, digest, w.key, payload=tools.simple_signing(f"{reg.host}/{repo}", other))
    image("unsigned", reg.repo("team-a"))
    repo = reg.repo("keyless")
    digest = image("keyless", repo)
    signer = ec.generate_private_key(ec.SECP256R1())
    bundle = keyless.dsse_bundle(f"{reg.host}/{repo}", digest, signer, keyless.certificate(signer, SUBJECT, ISSUER))
    reg.push_referrer(repo, digest, BUNDLE, bundle, BUNDLE)
    repo = reg.repo("team-a")  # pushed and signed, but never exported: its tag file is missing
    digest = reg.push_image(repo, "v1")
    _sign(reg, tools, repo, digest, w.key)
    w.digests["not-exported"] = digest
    w.not_exported = f"{reg.host}/{repo}:v1"


def assert_verified(code: int, out: str, err: str) -> None:
    """Exit 0 *and* judged: an unreachable registry in CI also exits 0, but with a warning."""
    assert code == 0, out + err
    assert "warning" not in out
    assert "0 denied" in out


def offline(w: World, case: str, *extra: str, image: str | None = None) -> tuple[int, str, str]:
    return run("check", "--config", str(w.config()), "--signatures", str(w.out), *extra, str(w.manifest(case, image)))


# -- the exported layout ---------------------------------------------------------------------


def test_export_writes_tag_files_and_signature_files_in_the_documented_layout(world: World) -> None:
    host_dir = world.out / world.host
    repo = world.images["valid"].split("/", 1)[1].split(":")[0]
    hexdigest = world.digests["valid"].split(":")[1]
    assert (host_dir / repo / "_tags" / "v1").read_text() == world.digests["valid"] + "\n"
    doc = json.loads((host_dir / repo / f"sha256-{hexdigest}.sig.json").read_text())
    assert doc["mediaType"] == bundles.SIG_MEDIA_TYPE
    assert doc["digest"] == world.digests["valid"]
    assert cosign.SIGNATURE_ANNOTATION in doc["layers"][0]["annotations"]
    keyless_repo = world.images["keyless"].split("/", 1)[1].split(":")[0]
    bundle = json.loads(
        (host_dir / keyless_repo / f"sha256-{world.digests['keyless'].split(':')[1]}.sigstore.json").read_text()
    )
    assert bundle["mediaType"] == BUNDLE
    digest_repo = world.images["digest"].split("/", 1)[1].split("@")[0]
    assert not (host_dir / digest_repo / "_tags").exists()  # a digest reference needs no tag file


def test_export_from_an_unreachable_registry_fails_naming_it(world: World, tmp_path: Path) -> None:
    code, _, err = run_export(
        "--insecure-registry", world.host, "--out", str(tmp_path), "--image", world.images["valid"]
    )
    assert code == 2
    assert f"registry {world.host}" in err


# -- offline verdicts (registry stopped) -----------------------------------------------------


def test_valid_signature_verifies_offline(world: World) -> None:
    code, out, err = offline(world, "valid")
    assert_verified(code, out, err)
    assert "0 denied" in out


def test_digest_reference_verifies_offline_without_a_tag_file(world: World) -> None:
    code, out, err = offline(world, "digest")
    assert_verified(code, out, err)


def test_keyless_sigstore_bundle_verifies_offline(world: World) -> None:
    code, out, err = offline(world, "keyless")
    assert_verified(code, out, err)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        pytest.param("wrong-key", "signature is not by key signer.pub", id="wrong-key"),
        pytest.param("tampered", "signature is not by key signer.pub", id="tampered-in-registry"),
        pytest.param("other-digest", "digest mismatch", id="signature-for-another-digest"),
        pytest.param("unsigned", "no signature found", id="unsigned"),
    ],
)
def test_bad_signatures_are_denied_offline(world: World, case: str, reason: str) -> None:
    code, out, _ = offline(world, case)
    assert code == 1
    assert "DENIED" in out
    assert reason in out
    assert world.images[case] in out
    assert f"offline signatures in {world.out}" in out


def test_offline_verdicts_are_the_online_verdicts(world: World) -> None:
    """Same trust policy, same authorities, same digest binding: only the fetching differs."""
    assert {c for c, (code, _) in world.online.items() if code == 1} == {
        "wrong-key",
        "tampered",
        "other-digest",
        "unsigned",
    }
    for case, (online_code, online_json) in world.online.items():
        code, out, err = offline(world, case, "--format", "json")
        assert code == online_code, case
        assert err == "", err
        online, got = json.loads(online_json)[0], json.loads(out)[0]
        assert got["allowed"] == online["allowed"], case
        strip = f" (offline signatures in {world.out})"
        assert [v["message"].replace(strip, "") for v in got["violations"]] == [
            v["message"] for v in online["violations"]
        ], case


def test_payload_edited_after_export_is_denied_as_tampered(world: World, tmp_path: Path) -> None:
    copy = tmp_path / "sigs"
    shutil.copytree(world.out, copy)
    repo = world.images["valid"].split("/", 1)[1].split(":")[0]
    path = copy / world.host / repo / f"sha256-{world.digests['valid'].split(':')[1]}.sig.json"
    doc = json.loads(path.read_text())
    payload = json.loads(base64.b64decode(doc["layers"][0]["data"]))
    payload["optional"] = {"evil": True}
    doc["layers"][0]["data"] = base64.b64encode(json.dumps(payload).encode()).decode()
    path.write_text(json.dumps(doc))
    code, out, _ = run(
        "check", "--config", str(world.config()), "--signatures", str(copy), str(world.manifest("valid"))
    )
    assert code == 1
    assert "tampered after export" in out
    del doc["layers"][0]["digest"]  # without the recorded digest the signature itself still catches it
    path.write_text(json.dumps(doc))
    code, out, _ = run(
        "check", "--config", str(world.config()), "--signatures", str(copy), str(world.manifest("valid"))
    )
    assert code == 1
    assert "signature is not by key signer.pub" in out


def test_tag_without_a_tag_file_is_a_violation_saying_it_cannot_be_resolved_offline(world: World) -> None:
    code, out, _ = offline(world, "not-exported", image=world.not_exported)
    assert code == 1
    assert "cannot be resolved offline" in out
    assert "portcullis images export" in out


def test_malformed_bundle_files_are_violations_not_crashes(world: World, tmp_path: Path) -> None:
    copy = tmp_path / "sigs"
    shutil.copytree(world.out, copy)
    for path in copy.rglob("*.sig.json"):
        path.write_text("{not json")
    for path in copy.rglob("*.sigstore.json"):
        path.write_text("[1, 2]")
    for case in ("valid", "keyless"):
        code, out, err = run(
            "check", "--config", str(world.config()), "--signatures", str(copy), str(world.manifest(case))
        )
        assert code == 1, err
        assert "unreadable" in out


def test_registry_name_cannot_escape_the_bundles_directory(world: World, tmp_path: Path) -> None:
    config = world.config("escape.yaml", policies=[{"pattern": "**", "keys": ["signer.pub"], "tlog": "optional"}])
    manifest = world.manifest("escape", "../etc/app:v1")
    code, out, _ = run("check", "--config", str(config), "--signatures", str(world.out), str(manifest))
    assert code == 1
    # Refused as a reference now (`..` is no host), before any path is built from it.
    assert "invalid registry host '..'" in out or "cannot name a directory of offline signatures" in out


# -- CI without bundles and without a registry -----------------------------------------------


def test_unreachable_registry_in_ci_is_reported_as_not_judged_not_denied(world: World) -> None:
    code, out, err = run("check", "--config", str(world.config()), str(world.manifest("valid")))
    assert code == 2  # not judged is not passed (tests/ci/test_not_judged.py covers every format)
    assert "--allow-unverified" in err
    assert "DENIED" not in out
    assert "not judged" in out
    assert "checks not judged: images" in out
    assert f"registry {world.host}" in out
    assert "--signatures DIR" in out
    code, _, _ = run("check", "--config", str(world.config()), "--allow-unverified", str(world.manifest("valid")))
    assert code == 0


def test_unreachable_registry_in_ci_follows_the_failure_mode_when_configured(world: World) -> None:
    config = world.config("strict.yaml", ci_registry_errors="failure-mode")
    code, out, _ = run("check", "--config", str(config), str(world.manifest("valid")))
    assert code == 1
    assert "registry error" in out


def test_not_judged_images_are_listed_in_the_check_context(world: World) -> None:
    import asyncio

    from webhook import config as config_mod
    from webhook.checks import images
    from webhook.checks.pipeline import Pipeline, Subject
    from webhook.checks.services import Services
    from webhook.core.deadline import Deadline

    cfg = config_mod.load(world.config())
    check = images.build(cfg, Services(ci=True))
    assert check is not None
    obj = json.loads(pod(world.images["valid"]))

    async def evaluate() -> Any:
        pipeline = Pipeline(cfg, [check])
        try:
            return await pipeline.evaluate(Subject("CREATE", "Pod", "default", "p", obj), Deadline.after(10))
        finally:
            await pipeline.close()

    outcome = asyncio.run(evaluate())
    assert outcome.verdict.allowed
    [entry] = outcome.context["images"]["not_judged"]
    assert entry["image"] == world.images["valid"]
    assert world.host in entry["reason"]


# -- bad input ---------------------------------------------------------------------------------


def test_missing_signatures_directory_is_a_usage_error(world: World, tmp_path: Path) -> None:
    code, _, err = run(
        "check", "--config", str(world.config()), "--signatures", str(tmp_path / "nope"), str(world.manifest("valid"))
    )
    assert code == 2
    assert "is not a directory" in err


def test_signatures_without_a_trust_policy_is_a_usage_error(world: World, tmp_path: Path) -> None:
    code, _, err = run("check", "--signatures", str(world.out), str(world.manifest("valid")))
    assert code == 2
    assert "images.policies is empty" in err


def test_export_rejects_a_malformed_reference(tmp_path: Path) -> None:
    code, _, err = run_export("--out", str(tmp_path), "--image", "Not A Ref")
    assert code == 2
    assert "--image" in err


def test_export_takes_the_images_a_policy_matches_from_manifests(registry: Any, tools: Any, tmp_path: Path) -> None:
    """The CI flow: export what the manifests run (with registry access), then check offline."""
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "signer.pub").write_bytes(tools.public_pem(key))
    repo = registry.repo("team-a")
    _sign(registry, tools, repo, registry.push_image(repo, "v1"), key)
    image = f"{registry.host}/{repo}:v1"
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "app.yaml").write_text(pod(image, "app") + "\n---\n" + pod("nginx:1.27", "web"))
    section = {
        "insecure_registries": [registry.host],
        "policies": [{"pattern": f"{registry.host}/team-a/**", "keys": ["signer.pub"], "tlog": "optional"}],
        "unmatched": "allow",
    }
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"checks": {"privilege": {"enabled": False}}, "images": section}))
    out = tmp_path / "sigs"
    code, stdout, err = run_export("--config", str(config), "--out", str(out), "--format", "json", str(manifests))
    assert code == 0, err  # nginx matches no pattern: Docker Hub is never asked
    assert [i["image"] for i in json.loads(stdout)["images"]] == [image]
    code, stdout, err = run("check", "--config", str(config), "--signatures", str(out), str(manifests))
    assert_verified(code, stdout, err)
