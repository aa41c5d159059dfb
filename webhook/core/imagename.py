"""Lenient image-name splitting for names seen, not verified: the kubelet's `image` of a running
container, the image of an alert matched to an admission record. Strict parsing for signature
checks (registry, normalisation, validation) is ``signatures.reference``."""

from __future__ import annotations


def split_tag(image: str) -> tuple[str, str]:
    """(name without tag or digest, tag or ""): ``reg:5000/app:1.2@sha256:…`` → ``("reg:5000/app", "1.2")``.

    A colon is a tag separator only after the last slash, so a registry port is never a tag.
    """
    name = image.split("@", 1)[0]
    head, sep, tag = name.rpartition(":")
    if sep and "/" not in tag:
        return head, tag
    return name, ""
