"""Image references as Kubernetes and containerd read them: registry, repository, tag, digest.

Pure parsing (no I/O); used by the images check to match trust patterns and to pin digests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from webhook.config import images as images_config

DOCKER_HUB = images_config.DOCKER_HUB
# Matched with ``fullmatch`` and ASCII classes, as Go's regexp does: Python's ``$`` accepts a
# trailing newline and ``\w`` any Unicode letter, neither of which the container runtime accepts.
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
# distribution/reference's domain: dot-separated labels or a bracketed IPv6 address, optional port.
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
)
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")


class ReferenceError_(ValueError):
    """An image reference that cannot be parsed (a value error: the check turns it into a finding)."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed reference. ``written`` is the name as the pod wrote it (kept when pinning)."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None
    written: str

    @property
    def name(self) -> str:
        """The fully qualified name, e.g. ``docker.io/library/nginx``: what patterns match."""
        return f"{self.registry}/{self.repository}"

    def pinned(self, digest: str) -> str:
        """The reference rewritten to run exactly ``digest`` (tag dropped: it no longer decides)."""
        return f"{self.written}@{digest}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse(text: str) -> ImageRef:
    """Parse ``[registry/]repository[:tag][@digest]`` the way the container runtime does.

    A first component holding ``.`` or ``:`` (or ``localhost``) is a registry; otherwise the
    image lives on Docker Hub, under ``library/`` when it has a single component.
    Raises ``ReferenceError_`` naming what is wrong.
    """
    if not text or text != text.strip():
        raise ReferenceError_(f"image reference {text!r} is empty or has surrounding spaces")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise ReferenceError_(f"image reference {text!r}: digest must be sha256:<64 lowercase hex>")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise ReferenceError_(f"image reference {text!r}: invalid tag {tag!r}")
    written = rest
    parts = rest.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, components = parts[0], parts[1:]
    else:
        registry, components = DOCKER_HUB, parts
    if not _HOST.fullmatch(registry):
        raise ReferenceError_(f"image reference {text!r}: invalid registry host {registry!r}")
    registry = images_config.canonical_registry(registry)
    if registry == DOCKER_HUB and len(components) == 1:
        components = ["library", *components]
    for component in components:
        if not _COMPONENT.fullmatch(component):
            raise ReferenceError_(f"image reference {text!r}: invalid repository component {component!r}")
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry, "/".join(components), tag, digest, written)


def canonical_host(registry: str) -> str:
    """One spelling per registry host (``config.images.canonical_host``: patterns use the same)."""
    return images_config.canonical_host(registry)


def canonical_registry(registry: str) -> str:
    """``canonical_host`` with Docker Hub's aliases folded into ``docker.io``."""
    return images_config.canonical_registry(registry)


def api_host(registry: str) -> str:
    """The host serving the distribution API for ``registry`` (Docker Hub's differs from its name)."""
    return "registry-1.docker.io" if registry == DOCKER_HUB else registry
