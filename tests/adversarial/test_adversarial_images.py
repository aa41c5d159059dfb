"""Attacks on the images check: references the runtime reads one way and we another, patterns
an attacker can steer, and JSON Patch paths for digest pinning.

A trust policy is only as strong as its matching: if an image can be respelled so that the
runtime still pulls the same bytes but no enforcing pattern matches it, the attacker chooses
the weaker rule (``unmatched: allow``/``warn``, or a catch-all pattern in ``audit`` mode).
The registry in these tests does not exist (loopback port 1, connection refused): an image
that *is* matched then fails verification and is denied by the failure mode, one that is not
matched never reaches the registry at all, which is exactly what tells the two apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webhook.checks.images import _pointer
from webhook.signatures import reference
from webhook.signatures.trust import TrustPolicy

from .conftest import checks_found, judge, pod

HEX = "c" * 64
ENFORCED = "localhost:1/team/**"  # nothing listens on port 1: matched images fail closed


def _key(tmp_path: Path) -> str:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "team.pub").write_bytes(pem)
    return "team.pub"


def _images(tmp_path: Path, *extra: dict[str, Any], unmatched: str = "allow") -> dict[str, Any]:
    policies = [{"pattern": ENFORCED, "keys": [_key(tmp_path)], "mode": "enforce"}, *extra]
    return {"images": {"policies": policies, "unmatched": unmatched, "request_timeout_seconds": 1.0}}


async def _admit(tmp_path: Path, image: str, cfg: dict[str, Any], field: str = "containers") -> Any:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "localhost:1/team/base:v1"}]}
    if field == "containers":
        spec["containers"] = [{"name": "app", "image": image}]
    else:
        spec[field] = [{"name": "x", "image": image}]
    obj = pod(**spec)
    return await judge(
        obj, {**cfg, "privilege": {"level": "privileged", "warn_level": "privileged"}}, base_dir=tmp_path
    )


# -- respelled registry hosts (fixed: reference.parse canonicalises the host) ------------------


@pytest.mark.parametrize(
    "image",
    [
        "LOCALHOST:1/team/app:v1",  # host names are case-insensitive
        "Localhost:1/team/app@sha256:" + HEX,
    ],
)
async def test_respelled_registry_host_does_not_escape_the_enforcing_pattern(tmp_path: Path, image: str) -> None:
    outcome = await _admit(tmp_path, image, _images(tmp_path))
    assert not outcome.verdict.allowed
    (finding,) = outcome.verdict.denials
    assert ENFORCED in finding.message
    assert "registry" in finding.message


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("GHCR.IO/org/app:v1", "ghcr.io/org/app"),
        ("ghcr.io:443/org/app:v1", "ghcr.io/org/app"),
        ("Ghcr.Io:443/org/app@sha256:" + HEX, "ghcr.io/org/app"),
        ("INDEX.DOCKER.IO/library/nginx", "docker.io/library/nginx"),
        ("registry.example:5000/a/b", "registry.example:5000/a/b"),  # other ports are other servers
        ("[::1]:443/a/b", "[::1]/a/b"),
    ],
)
def test_registry_host_has_one_spelling(written: str, canonical: str) -> None:
    ref = reference.parse(written)
    assert ref.name == canonical
    policy = TrustPolicy("ghcr.io/org/*", [])
    assert policy.matches(ref) is canonical.startswith("ghcr.io/org/")


def test_pinning_keeps_the_host_as_written() -> None:
    ref = reference.parse("GHCR.IO:443/org/app:v1")
    assert ref.pinned(f"sha256:{HEX}") == f"GHCR.IO:443/org/app@sha256:{HEX}"


# -- the tag of a digest reference is attacker text (fixed in TrustPolicy.matches) -------------


async def test_tag_next_to_a_digest_cannot_select_a_lenient_pattern(tmp_path: Path) -> None:
    """``name:tag@digest`` runs the digest; the tag is never resolved, so anyone can write
    ``dev-anything`` there to land in a pattern meant for dev tags (here: audit only)."""
    lenient = {"pattern": "localhost:1/team/app:dev-*", "keys": [_key(tmp_path)], "mode": "audit"}
    cfg = _images(tmp_path, unmatched="deny")
    cfg["images"]["policies"].insert(0, lenient)
    outcome = await _admit(tmp_path, f"localhost:1/team/app:dev-x@sha256:{HEX}", cfg)
    assert not outcome.verdict.allowed
    assert ENFORCED in outcome.verdict.denials[0].message


def test_tag_patterns_still_match_plain_tag_references() -> None:
    policy = TrustPolicy("ghcr.io/org/app:dev-*", [])
    assert policy.matches(reference.parse("ghcr.io/org/app:dev-1"))
    assert not policy.matches(reference.parse(f"ghcr.io/org/app:dev-1@sha256:{HEX}"))
    assert TrustPolicy("ghcr.io/org/app@sha256:*", []).matches(reference.parse(f"ghcr.io/org/app:x@sha256:{HEX}"))


# -- references the runtime refuses must not parse (fixed: fullmatch, ASCII) ------------------


@pytest.mark.parametrize(
    "image",
    [
        "nginx:1.0\n@sha256:" + HEX,  # Python's `$` matched before the newline
        "evil.example/app\n:v1",
        "nginx:l\u00e4test",  # `\w` matched any Unicode letter; Go's is ASCII only
        "nginx:\uff11",  # full-width digit
        "nginx@sha512:" + "a" * 128,  # another digest algorithm: refused, not ignored
        "nginx@sha256:" + "A" * 64,
        "nginx@sha256:" + "a" * 63,
        "Team/app:v1",  # upper-case repository
        "nginx:v1 ",
        "",
    ],
)
def test_references_the_runtime_refuses_are_refused(image: str) -> None:
    with pytest.raises(reference.ReferenceError_):
        reference.parse(image)


async def test_unparseable_image_is_a_violation_even_when_unmatched_is_allow(tmp_path: Path) -> None:
    outcome = await _admit(tmp_path, "nginx:l\u00e4test", _images(tmp_path))
    assert checks_found(outcome) == {"images"}


# -- what already held (regression pins) ------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    ["nginx", "nginx:latest", "docker.io/nginx", "docker.io/library/nginx", "index.docker.io/library/nginx:latest"],
)
def test_docker_hub_spellings_are_one_name(image: str) -> None:
    assert reference.parse(image).name == "docker.io/library/nginx"
    assert TrustPolicy("docker.io/library/nginx", []).matches(reference.parse(image))


@pytest.mark.parametrize("field", ["initContainers", "ephemeralContainers"])
async def test_init_and_ephemeral_container_images_are_judged(tmp_path: Path, field: str) -> None:
    outcome = await _admit(tmp_path, "localhost:1/team/debug:v1", _images(tmp_path), field=field)
    assert not outcome.verdict.allowed
    paths = {v.path for v in outcome.verdict.denials}
    assert f"spec.{field}[0].image" in paths


@pytest.mark.parametrize("image", [None, 42, {"name": "x"}, ["x"]])
async def test_container_without_a_string_image_is_a_violation(tmp_path: Path, image: Any) -> None:
    obj = pod(containers=[{"name": "app", "image": image}])
    cfg = {**_images(tmp_path), "privilege": {"level": "privileged", "warn_level": "privileged"}}
    outcome = await judge(obj, cfg, base_dir=tmp_path)
    assert not outcome.verdict.allowed
    assert outcome.verdict.denials[0].path == "spec.containers[0].image"


@pytest.mark.parametrize(
    ("pattern", "image"),
    [
        ("ghcr.io/org/*", "ghcr.io/org/team/app"),  # `*` stays in one segment
        ("ghcr.io/org/app", "ghcr.io/org/app-evil"),  # literal means literal
        ("ghcr.io/org/app", "ghcr.io/org/app/sub"),
        ("ghcr.io/org/app", "evil.io/ghcr.io/org/app"),  # anchored at the start
        ("ghcr.io/org.app", "ghcr.io/orgxapp"),  # `.` is not a regex wildcard
        ("ghcr.io/org/ap?", "ghcr.io/org/ap/"),
    ],
)
def test_globs_do_not_over_match(pattern: str, image: str) -> None:
    try:
        ref = reference.parse(image)
    except reference.ReferenceError_:
        return  # refused outright is fine too
    assert not TrustPolicy(pattern, []).matches(ref)


# -- JSON Patch paths for digest pinning --------------------------------------------------------


def _resolve(doc: Any, pointer: str) -> Any:
    """RFC 6901 evaluation, written out so the test does not trust the code under test."""
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        doc = doc[int(token)] if isinstance(doc, list) else doc[token]
    return doc


@pytest.mark.parametrize(
    ("field", "kind_path"),
    [
        ("containers", ""),
        ("initContainers", ""),
        ("ephemeralContainers", ""),
        ("containers", "spec.jobTemplate.spec.template."),
    ],
)
def test_pinning_pointer_names_exactly_the_container_image(field: str, kind_path: str) -> None:
    """The same image in init, regular and ephemeral lists: each pointer hits its own entry."""
    spec = {
        "initContainers": [{"name": "a/b~c", "image": "same:v1"}, {"name": "i2", "image": "same:v1"}],
        "containers": [{"name": "x", "image": "other:v1"}, {"name": "y", "image": "same:v1"}],
        "ephemeralContainers": [{"name": "d", "image": "same:v1"}, {"name": "e", "image": "same:v1"}],
    }
    obj: dict[str, Any] = {"spec": spec}
    if kind_path:
        obj = {"spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}}
    pointer = _pointer(f"{kind_path}spec.{field}[1].image")
    assert _resolve(obj, pointer) == spec[field][1]["image"]
    assert pointer.endswith(f"/{field}/1/image")
