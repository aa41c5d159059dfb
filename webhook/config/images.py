"""Config of image signature verification (``images:``): trust policy, registries, cache.

Read by ``checks/images.py`` (webhook and ``portcullis check`` alike). Paths (keys, trust root,
password files) are relative to the config file and resolved by the check's builder.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from webhook.config.base import Section
from webhook.core.decision import FailureMode, Mode

_MiB = 1024 * 1024

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_PORT = re.compile(r"[0-9]+")
# Pattern grammar: the reference grammar of distribution/reference, with `*` and `?` (and `**`)
# allowed where a character may stand. ASCII classes, matched whole, as Go's regexp is used.
_HOST_GLOB = re.compile(r"(?:[A-Za-z0-9*?](?:[A-Za-z0-9.*?-]*[A-Za-z0-9*?])?|\[[0-9A-Fa-f:.*?]+\])(?::[0-9*?]+)?")
_PATH_GLOB = re.compile(r"[a-z0-9*?](?:[a-z0-9._*?-]*[a-z0-9*?])?")
_TAG_GLOB = re.compile(r"[A-Za-z0-9_.*?-]{1,128}")
_DIGEST_GLOB = re.compile(r"(?:sha256:[0-9a-f*?]{1,64}|[*?]+)")


def canonical_host(host: str) -> str:
    """One spelling per registry host, so a pattern cannot be dodged by respelling the host.

    Host names are case-insensitive, and a port is a number: ``GHCR.IO``, ``ghcr.io:443`` and
    ``ghcr.io:0443`` all reach the registry ``ghcr.io`` (HTTPS's port is the default, and the
    runtime dials ``0443`` as 443). Other ports are other servers and stay.
    """
    host = host.lower()
    name, sep, port = host.rpartition(":")
    if sep and _PORT.fullmatch(port) and (not name.startswith("[") or name.endswith("]")):
        number = int(port)
        return name if number == 443 else f"{name}:{number}"
    return host


def canonical_registry(host: str) -> str:
    """``canonical_host``, with Docker Hub's other names folded into ``docker.io``."""
    host = canonical_host(host)
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def canonical_pattern(pattern: str) -> str:
    """The pattern as references are normalised (what it is matched against); ``ValueError`` if bad.

    ``nginx`` and ``docker.io/nginx`` → ``docker.io/library/nginx``; ``team/*`` →
    ``docker.io/team/*``; ``LOCALHOST:5000/**`` → ``localhost:5000/**``; ``ghcr.io:0443/x`` →
    ``ghcr.io/x``. A first segment is a registry when it holds ``.`` or ``:`` or is ``localhost``
    (the runtime's rule for references); ``**`` alone there spans registries, and ``**`` inside
    a host name is ``*`` (``**.corp.example`` → ``*.corp.example``: any subdomains, never a ``/``).
    """
    if not pattern or pattern != pattern.strip():
        raise ValueError(f"`pattern` {pattern!r} is empty or has surrounding spaces")
    name, tag, digest = split_pattern(pattern)
    where = f"`pattern` {pattern!r}"
    if tag is not None and not _TAG_GLOB.fullmatch(tag):
        raise ValueError(f"{where}: tag {tag!r} is not a tag glob ([A-Za-z0-9_.-], `*`, `?`)")
    if digest is not None and not _DIGEST_GLOB.fullmatch(digest):
        raise ValueError(f"{where}: digest {digest!r} is not sha256:<hex glob>")
    first, slash, rest = name.partition("/")
    if name == "**":
        host, components = name, []  # every registry, every repository
    elif slash and ("**" in first or "." in first or ":" in first or first.lower() == "localhost"):
        if not _HOST_GLOB.fullmatch(first):
            raise ValueError(f"{where}: registry {first!r} is not a host[:port] glob")
        # `**` alone spans registries and path segments. Inside a host name (`**.corp.example`)
        # it stands for any subdomains and is `*`: a `**` there would cross `/`, and the pattern
        # would take `ghcr.io/anyone/x.corp.example/app`, whose path an attacker chooses.
        host = "**" if first == "**" else canonical_registry(first.replace("**", "*"))
        components = rest.split("/")
    else:
        host, components = DOCKER_HUB, name.split("/")
    if host == DOCKER_HUB and len(components) == 1 and "**" not in components[0]:
        components = ["library", *components]  # `docker.io/nginx` is `docker.io/library/nginx`
    for component in components:
        if not component:
            raise ValueError(f"{where}: empty path segment")
        if component != "**" and not _PATH_GLOB.fullmatch(component.replace("**", "*")):
            hint = " (repositories are lower case)" if component.lower() != component else ""
            raise ValueError(f"{where}: path segment {component!r} is not a repository glob{hint}")
    text = "/".join([host, *components])
    if tag is not None:
        text += f":{tag}"
    if digest is not None:
        text += f"@{digest}"
    return text


def split_pattern(pattern: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` → its three parts (a ``:`` before the last ``/`` is a port)."""
    digest = None
    if "@" in pattern:
        pattern, digest = pattern.split("@", 1)
    tag = None
    colon, slash = pattern.rfind(":"), pattern.rfind("/")
    if colon > slash:
        pattern, tag = pattern[:colon], pattern[colon + 1 :]
    return pattern, tag, digest


class KeylessIdentity(Section, frozen=True):
    """A keyless signer: certificate issuer and subject (SAN), each exact or a regex (full match)."""

    issuer: str = ""
    issuer_regex: str = ""
    subject: str = ""
    subject_regex: str = ""

    def __post_init__(self) -> None:
        if bool(self.issuer) == bool(self.issuer_regex):
            raise ValueError("a keyless identity needs exactly one of `issuer` or `issuer_regex`")
        if bool(self.subject) == bool(self.subject_regex):
            raise ValueError("a keyless identity needs exactly one of `subject` or `subject_regex`")
        for name in ("issuer_regex", "subject_regex"):
            value = getattr(self, name)
            if value:
                try:
                    re.compile(value)
                except re.error as exc:
                    raise ValueError(f"`{name}` {value!r} is not a valid regular expression: {exc}") from None


class ImagePolicy(Section, frozen=True):
    """Images matching ``pattern`` must carry signatures from ``threshold`` of its authorities.

    Authorities are each PEM key in ``keys`` and each identity in ``keyless`` (m = their count).
    ``pattern`` is a glob over ``registry/repository`` (``*`` stays inside one path segment,
    ``**`` crosses them), optionally followed by ``:tag`` or ``@sha256:...`` globs.
    """

    pattern: str
    keys: list[str] = []
    keyless: list[KeylessIdentity] = []
    threshold: Annotated[int, msgspec.Meta(ge=1)] = 1
    mode: Mode = Mode.ENFORCE
    failure_mode: FailureMode = FailureMode.DENY
    # Keyed signatures must come with a Rekor entry (checked against images.trust_root), as
    # `cosign verify --key` demands by default; "optional" is cosign's --insecure-ignore-tlog.
    # Keyless signatures always need one.
    tlog: Literal["required", "optional"] = "required"

    def __post_init__(self) -> None:
        if not self.pattern:
            raise ValueError("an image policy needs a non-empty `pattern`")
        # Canonical from here on: matching, messages and the verdict cache all see one spelling.
        msgspec.structs.force_setattr(self, "pattern", canonical_pattern(self.pattern))
        authorities = len(self.keys) + len(self.keyless)
        if authorities == 0:
            raise ValueError(f"policy {self.pattern!r} names no authority: add `keys` or `keyless`")
        if self.threshold > authorities:
            raise ValueError(
                f"policy {self.pattern!r}: threshold {self.threshold} exceeds its {authorities} authorities"
            )


class RegistryCredential(Section, frozen=True):
    """Basic credentials for one registry host (``password_file`` relative to the config file)."""

    registry: str
    username: str
    password: str = ""
    password_file: str = ""


class CacheSettings(Section, frozen=True):
    """Verdict cache: positive TTL, short negative TTL, and a bound on entries."""

    ttl_seconds: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    negative_ttl_seconds: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    max_entries: Annotated[int, msgspec.Meta(ge=1)] = 10_000


class ImagesConfig(Section, frozen=True):
    """The trust policy. With no ``policies`` the images check is off."""

    insecure_registries: list[str] = []
    policies: list[ImagePolicy] = []
    unmatched: Literal["deny", "allow", "warn"] = "deny"
    # "public-good" (Sigstore's production root via TUF) or a path to a trusted_root.json
    # (offline: air-gapped clusters name their own Fulcio CA and Rekor key there).
    trust_root: str = "public-good"
    # The root is reloaded (TUF, or the file) this often, in a background thread; a request that
    # needs a root before the first load succeeded waits at most fetch_timeout (and its deadline).
    trust_root_refresh_seconds: Annotated[float, msgspec.Meta(ge=60)] = 6 * 3600.0
    trust_root_fetch_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 30.0
    credentials: list[RegistryCredential] = []
    use_pull_secrets: bool = True
    # One registry call (connect + answer); each is also capped by the request's deadline.
    request_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0
    max_manifest_bytes: Annotated[int, msgspec.Meta(gt=0, le=64 * _MiB)] = 4 * _MiB
    max_blob_bytes: Annotated[int, msgspec.Meta(gt=0, le=64 * _MiB)] = 4 * _MiB
    # Signature layers of the .sig manifest, and sigstore bundle referrers, read per image
    # (cosign's bound is 100). More is a denial: a flood of attachments is content, not an outage.
    max_signatures: Annotated[int, msgspec.Meta(gt=0, le=1000)] = 100
    # Rewrite verified references to name@sha256:... in /mutate.
    pin_digests: bool = True
    cache: CacheSettings = CacheSettings()
    # A directory written by `portcullis images export` (relative to the config file; the
    # `portcullis check --signatures DIR` flag sets it). When set, no registry is contacted:
    # tags resolve through its tag files and signatures come from its files (docs/images.md).
    offline_bundles: str = ""
    # What `portcullis check` does with an image it cannot judge because the registry failed
    # and no offline bundles are given: "warn" (a warning per image; the images check is
    # reported as not judged) or "failure-mode" (each pattern's failure_mode, as the webhook).
    ci_registry_errors: Literal["warn", "failure-mode"] = "warn"
