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

    def __post_init__(self) -> None:
        if not self.pattern:
            raise ValueError("an image policy needs a non-empty `pattern`")
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
    credentials: list[RegistryCredential] = []
    use_pull_secrets: bool = True
    # One registry call (connect + answer); each is also capped by the request's deadline.
    request_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0
    max_manifest_bytes: Annotated[int, msgspec.Meta(gt=0, le=64 * _MiB)] = 4 * _MiB
    max_blob_bytes: Annotated[int, msgspec.Meta(gt=0, le=64 * _MiB)] = 4 * _MiB
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
