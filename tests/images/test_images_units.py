"""Pure parts of image verification: references, patterns, config, the verdict cache, pull secrets."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from webhook import config as config_mod
from webhook import errors
from webhook.signatures import credentials, reference
from webhook.signatures.cache import VerdictCache
from webhook.signatures.trust import TrustPolicy, TrustPolicySet

HEX = "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", "latest", None),
        ("nginx:1.27", "docker.io", "library/nginx", "1.27", None),
        ("team/app", "docker.io", "team/app", "latest", None),
        ("index.docker.io/library/nginx:1", "docker.io", "library/nginx", "1", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("127.0.0.1:5000/team-a/app:v1", "127.0.0.1:5000", "team-a/app", "v1", None),
        (f"ghcr.io/org/app@sha256:{HEX}", "ghcr.io", "org/app", None, f"sha256:{HEX}"),
        (f"ghcr.io/org/app:v2@sha256:{HEX}", "ghcr.io", "org/app", "v2", f"sha256:{HEX}"),
    ],
)
def test_references_parse_like_the_container_runtime(text, registry, repository, tag, digest) -> None:
    ref = reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


def test_pinning_keeps_the_name_as_written() -> None:
    assert reference.parse("nginx:1.27").pinned(f"sha256:{HEX}") == f"nginx@sha256:{HEX}"
    assert reference.parse("127.0.0.1:5000/a/b:v1").pinned(f"sha256:{HEX}") == f"127.0.0.1:5000/a/b@sha256:{HEX}"


@pytest.mark.parametrize("text", ["", " nginx", "Nginx", "nginx@sha256:abc", "nginx:bad tag", "a//b"])
def test_malformed_references_are_rejected(text) -> None:
    with pytest.raises(reference.ReferenceError_):
        reference.parse(text)


class _Nobody:
    name = "nobody"

    def accepts(self, evidence, digest):  # pragma: no cover - never judged here
        return "no"


@pytest.mark.parametrize(
    ("pattern", "image", "matches"),
    [
        ("127.0.0.1:5000/team-a/*", "127.0.0.1:5000/team-a/app:v1", True),
        ("127.0.0.1:5000/team-a/*", "127.0.0.1:5000/team-a/sub/app:v1", False),
        ("127.0.0.1:5000/team-a/**", "127.0.0.1:5000/team-a/sub/app:v1", True),
        ("docker.io/library/*:1.*", "nginx:1.27", True),
        ("docker.io/library/*:1.*", "nginx:2.0", False),
        ("ghcr.io/org/*@sha256:*", f"ghcr.io/org/app@sha256:{HEX}", True),
        ("ghcr.io/org/*@sha256:*", "ghcr.io/org/app:v1", False),
        ("ghcr.io/org/app?", "ghcr.io/org/app1", True),
        ("**/app", "ghcr.io/org/team/app", True),
    ],
)
def test_patterns_glob_over_registry_repository_tag_and_digest(pattern, image, matches) -> None:
    assert TrustPolicy(pattern, [_Nobody()]).matches(reference.parse(image)) is matches


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ({"policies": [{"pattern": "x/*"}]}, "names no authority"),
        ({"policies": [{"pattern": "x/*", "keys": ["a.pub"], "threshold": 2}]}, "threshold 2 exceeds"),
        ({"policies": [{"pattern": "x/*", "keyless": [{"issuer": "i"}]}]}, "subject"),
        ({"policies": [{"pattern": "x/*", "keyless": [{"issuer": "i", "subject_regex": "("}]}]}, "regular expression"),
        ({"unmatched": "maybe"}, "images.unmatched"),
        ({"policy": []}, "unknown key `images.policy`"),
    ],
)
def test_bad_config_names_the_key(images, message) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        config_mod.parse({"images": images})


def test_unreadable_or_invalid_key_file_is_a_config_error(tmp_path) -> None:
    from webhook.checks import images
    from webhook.checks.services import Services

    config = config_mod.parse({"images": {"policies": [{"pattern": "x/*", "keys": ["k.pub"]}]}}, base_dir=tmp_path)
    with pytest.raises(errors.ConfigError, match=r"policies\[0\].keys: .*k.pub: cannot read"):
        images.build(config, Services())
    (tmp_path / "k.pub").write_text("not a key")
    with pytest.raises(errors.ConfigError, match="not a PEM public key"):
        images.build(config, Services())


def test_no_policies_means_no_check() -> None:
    from webhook.checks import images
    from webhook.checks.services import Services

    assert images.build(config_mod.parse({}), Services()) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_cache_honours_positive_and_negative_ttls_and_its_bound() -> None:
    clock = _Clock()
    cache: VerdictCache[str] = VerdictCache(ttl=300, negative_ttl=10, max_entries=2, clock=clock)
    cache.put("good", "ok", positive=True)
    cache.put("bad", "no", positive=False)
    clock.now = 11
    assert cache.get("bad") is None
    assert cache.get("good") == "ok"
    cache.put("x", "1", positive=True)
    cache.put("y", "2", positive=True)
    assert len(cache) == 2
    assert cache.stats.evictions == 1
    assert cache.get("good") is None  # least recently used went first


async def test_cache_runs_one_computation_per_key_and_does_not_cache_failures() -> None:
    cache: VerdictCache[str] = VerdictCache(ttl=300, negative_ttl=10, max_entries=10)
    calls = 0
    release = asyncio.Event()

    async def compute() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        if calls == 1:
            raise errors.RegistryError("registry r: down")
        return "ok"

    waiters = [asyncio.ensure_future(cache.get_or_compute("k", compute, lambda v: True)) for _ in range(10)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, errors.RegistryError) for r in results)
    assert await cache.get_or_compute("k", compute, lambda v: True) == "ok"
    assert calls == 2


async def test_a_waiter_giving_up_does_not_cancel_the_shared_verification() -> None:
    cache: VerdictCache[str] = VerdictCache(ttl=300, negative_ttl=10, max_entries=10)
    release = asyncio.Event()

    async def compute() -> str:
        await release.wait()
        return "ok"

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(cache.get_or_compute("k", compute, lambda v: True), 0.01)
    release.set()
    assert await cache.get_or_compute("k", compute, lambda v: True) == "ok"
    assert cache.stats.computations == 1


def test_docker_config_json_gives_credentials_by_registry() -> None:
    doc = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
            "registry.example:5000": {"username": "u", "password": "p"},
            "broken": {"auth": "@@@"},
        }
    }
    found = credentials.parse_docker_config(json.dumps(doc).encode())
    assert found["docker.io"].username == "hub"
    assert found["docker.io"].password == "pw"
    assert found["registry.example:5000"].password == "p"
    assert "broken" not in found


class _FakeAuthority:
    """An authority accepting evidence whose source names one of its signers (pure judging)."""

    def __init__(self, name: str, signers: set[str]) -> None:
        self.name = name
        self._signers = signers

    def accepts(self, evidence: object, digest: str) -> str | None:
        return None if getattr(evidence, "source", "") in self._signers else "not ours"

    def signer(self, evidence: object) -> str:
        return str(getattr(evidence, "source", ""))


def _evidence(signer: str) -> object:
    from webhook.signatures import evidence as ev

    return ev.Evidence(signer, b"", b"", frozenset({f"sha256:{HEX}"}))


def test_threshold_matches_authorities_to_distinct_signers_whatever_the_order() -> None:
    """A accepts x or y, B only x: greedy (A→x) would leave B out; the matching gives A→y, B→x."""
    policy = TrustPolicy("ghcr.io/**", [_FakeAuthority("A", {"x", "y"}), _FakeAuthority("B", {"x"})], threshold=2)
    judgement = policy.judge([_evidence("x"), _evidence("y")], f"sha256:{HEX}")  # type: ignore[list-item]
    assert judgement.verified
    assert judgement.satisfied == ("A", "B")
    one = policy.judge([_evidence("x")], f"sha256:{HEX}")  # type: ignore[list-item]
    assert not one.verified
    assert "already counted for another authority" in one.reason


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("nginx", "docker.io/library/nginx"),
        ("docker.io/nginx", "docker.io/library/nginx"),
        ("index.docker.io/library/nginx:1.*", "docker.io/library/nginx:1.*"),
        ("nginx:1.*", "docker.io/library/nginx:1.*"),
        ("team/*", "docker.io/team/*"),
        ("*", "docker.io/library/*"),
        ("LOCALHOST:5000/**", "localhost:5000/**"),
        ("GHCR.IO/org/**", "ghcr.io/org/**"),
        ("ghcr.io:0443/org/app", "ghcr.io/org/app"),
        ("ghcr.io:443/org/app", "ghcr.io/org/app"),
        ("registry.example:05000/a/*", "registry.example:5000/a/*"),
        ("**", "**"),
        ("docker.io/**", "docker.io/**"),
        ("**.Dev.Corp.example:0443/**", "*.dev.corp.example/**"),
        ("**/app", "**/app"),
    ],
)
def test_patterns_are_canonical_after_config_load(written, canonical) -> None:
    cfg = config_mod.parse({"images": {"policies": [{"pattern": written, "keys": ["k.pub"]}]}})
    assert cfg.images.policies[0].pattern == canonical


@pytest.mark.parametrize(
    ("pattern", "image"),
    [
        ("nginx", "nginx:1.27"),
        ("nginx", "docker.io/library/nginx"),
        ("docker.io/nginx", "nginx"),
        ("LOCALHOST:5000/**", "localhost:5000/team/app:v1"),
        ("ghcr.io:0443/org/*", "ghcr.io/org/app:v1"),
        ("ghcr.io/org/*", "ghcr.io:0443/org/app:v1"),
        ("ghcr.io/org/*", "GHCR.IO:443/org/app:v1"),
    ],
)
def test_respelt_patterns_match_what_the_runtime_pulls(pattern, image) -> None:
    """Before, these patterns never matched: with ``unmatched: allow`` the images went through."""
    cfg = config_mod.parse({"images": {"policies": [{"pattern": pattern, "keys": ["k.pub"]}], "unmatched": "allow"}})
    assert TrustPolicy(cfg.images.policies[0].pattern, [_Nobody()]).matches(reference.parse(image))


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("ghcr.io/Org/app", "lower case"),
        ("ghcr.io/org/app[0-9]", "not a repository glob"),
        ("ghcr.io//app", "empty path segment"),
        ("ghcr.io/org/app:bad tag", "not a tag glob"),
        ("ghcr.io/org/app@md5:00", "sha256"),
        ("bad host.io/app", "host"),
        ("ghcr.io/(a|b)", "not a repository glob"),
    ],
)
def test_bad_patterns_are_config_errors_naming_the_key(pattern, message) -> None:
    policies = [{"pattern": "ghcr.io/ok/*", "keys": ["k.pub"]}, {"pattern": pattern, "keys": ["k.pub"]}]
    with pytest.raises(errors.ConfigError, match=r"images\.policies\[1\]") as caught:
        config_mod.parse({"images": {"policies": policies}})
    assert message in str(caught.value)
    assert repr(pattern) in str(caught.value)


@pytest.mark.parametrize("image", ["ghcr.io./org/app", "ghcr..io/org/app", "-ghcr.io/org/app", "gh_cr.io/org/app"])
def test_references_with_a_malformed_host_are_refused(image) -> None:
    with pytest.raises(reference.ReferenceError_, match="registry host"):
        reference.parse(image)


@pytest.mark.parametrize(
    ("image", "chosen"),
    [
        ("ghcr.io/evil/x.dev.corp.example/miner:v1", "**"),  # the attacker's path, not a dev registry
        ("docker.io/evil/x.dev.corp.example", "**"),
        ("registry.dev.corp.example/team/app:v1", "*.dev.corp.example/**"),
        ("a.b.dev.corp.example:5000/team/app:v1", "**"),  # another port is another server
        ("a.b.dev.corp.example/app:v1", "*.dev.corp.example/**"),
    ],
)
def test_a_host_glob_never_matches_across_a_slash(image, chosen) -> None:
    """A `**` in a host name once crossed `/`: an audit-only policy for dev registries took any
    image whose path the attacker named `….dev.corp.example/…`, ahead of the enforced catch-all."""
    policies = [
        {"pattern": "**.dev.corp.example/**", "keys": ["k.pub"], "mode": "audit"},
        {"pattern": "**", "keys": ["k.pub"]},
    ]
    cfg = config_mod.parse({"images": {"policies": policies}})
    trust = TrustPolicySet([TrustPolicy(p.pattern, [_Nobody()]) for p in cfg.images.policies])
    matched = trust.match(reference.parse(image))
    assert matched is not None
    assert matched.pattern == chosen
