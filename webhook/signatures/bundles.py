"""Offline signature bundles: the directory layout ``images export`` writes and ``BundleSource`` reads.

Layout under the bundles directory (see docs/images.md)::

    <registry>/<repository>/_tags/<tag>                   "sha256:<hex>\\n": what the tag named at export
    <registry>/<repository>/sha256-<hex>.sig.json         cosign ``.sig`` layers, content embedded
    <registry>/<repository>/sha256-<hex>.sigstore.json    a sigstore bundle, or a JSON array of them

``_tags`` cannot clash with a nested repository: a repository path component never starts with
``_``. Files are decoded by the very functions that decode registry content (``cosign.decode_layer``,
``sigstore.decode_bundle``), and judged by the same policy; a malformed file becomes evidence with
a problem (a violation), never an exception.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from pathlib import Path
from typing import Any

import orjson

from webhook import errors
from webhook.core.deadline import Deadline
from webhook.signatures import cosign, sigstore
from webhook.signatures import evidence as ev
from webhook.signatures import registry as reg
from webhook.signatures.reference import ImageRef
from webhook.signatures.source import Unresolvable

SIG_MEDIA_TYPE = "application/vnd.portcullis.cosign-signatures.v1+json"
TAGS_DIR = "_tags"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# A registry host as a single safe path component: name or IP, optional port, or [IPv6]:port.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_MAX_FILE = 16 * 1024 * 1024


class BundleReadError(errors.RegistryError):
    """An exported file exists but cannot be read (permissions, I/O): outside trouble, not a verdict."""


def repository_dir(root: Path, ref: ImageRef) -> Path:
    """Where ``ref``'s repository lives under ``root``; raises ``Unresolvable`` for an unsafe host."""
    if not _HOST.fullmatch(ref.registry):
        raise Unresolvable(f"registry {ref.registry!r} cannot name a directory of offline signatures")
    return root.joinpath(ref.registry, *ref.repository.split("/"))


def tag_file(root: Path, ref: ImageRef, tag: str) -> Path:
    return repository_dir(root, ref) / TAGS_DIR / tag


def cosign_file(root: Path, ref: ImageRef, digest: str) -> Path:
    return repository_dir(root, ref) / (digest.replace(":", "-") + ".sig.json")


def sigstore_file(root: Path, ref: ImageRef, digest: str) -> Path:
    return repository_dir(root, ref) / (digest.replace(":", "-") + ".sigstore.json")


# -- writing (``images export``) ---------------------------------------------------------------


def encode_tag(digest: str) -> bytes:
    return f"{digest}\n".encode()


def encode_cosign(digest: str, layers: list[tuple[dict[str, Any], bytes]]) -> bytes:
    """The ``.sig`` manifest's layer descriptors, each with its content embedded as ``data`` (OCI 1.1)."""
    out = []
    for layer, blob in layers:
        descriptor = {k: v for k, v in layer.items() if k in ("mediaType", "digest", "size", "annotations")}
        out.append({**descriptor, "data": base64.b64encode(blob).decode()})
    doc = {"mediaType": SIG_MEDIA_TYPE, "digest": digest, "layers": out}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def encode_sigstore(bundles: list[bytes]) -> bytes:
    """One bundle as is (usable by ``cosign verify --bundle``), several as a JSON array."""
    if len(bundles) == 1:
        return bundles[0]
    return b"[" + b",\n".join(bundles) + b"]\n"


# -- reading (offline verification) ------------------------------------------------------------


def _read(path: Path) -> bytes | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_FILE + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise BundleReadError(f"offline signatures: cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_FILE:
        raise BundleReadError(f"offline signatures: {path} is larger than {_MAX_FILE} bytes")
    return data


def decode_cosign(data: bytes, digest: str, source: str) -> list[ev.Evidence]:
    """Evidence from a ``.sig.json`` file, through the same layer decoder as the registry path."""
    try:
        doc = orjson.loads(data)
        if not isinstance(doc, dict) or doc.get("mediaType") != SIG_MEDIA_TYPE:
            raise ev.EvidenceError(f"not a {SIG_MEDIA_TYPE} document")
        if doc.get("digest") != digest:
            raise ev.EvidenceError(f"file is about {doc.get('digest')!r}, not {digest}")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise ev.EvidenceError("`layers` is not a list")
    except (orjson.JSONDecodeError, ev.EvidenceError) as exc:
        return [_problem(source, f"{source}: unreadable: {exc}")]
    found: list[ev.Evidence] = []
    for index, layer in enumerate(layers):
        where = f"{source} layer {index}"
        blob = _embedded(layer, where)
        if isinstance(blob, str):
            found.append(_problem(where, blob))
        else:
            found.extend(cosign.decode_layer(layer, blob, where))
    return found


def _embedded(layer: Any, where: str) -> bytes | str:
    """A layer's embedded content, checked against its recorded digest; why not, as text."""
    if not isinstance(layer, dict):
        return f"{where}: not a descriptor object"
    try:
        blob = base64.b64decode(layer.get("data") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        return f"{where}: `data` is not base64"
    recorded = layer.get("digest")
    if recorded is not None and recorded != reg.sha256_digest(blob):
        return f"{where}: content does not match its digest {recorded} (tampered after export)"
    return blob


def decode_sigstore(data: bytes, source: str) -> list[ev.Evidence]:
    """Evidence from a ``.sigstore.json`` file (one bundle or an array), as the registry path decodes it."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return [_problem(source, f"{source}: unreadable bundle: not JSON ({exc})")]
    if not isinstance(doc, list):
        return sigstore.decode_bundle(data, source)
    found: list[ev.Evidence] = []
    for index, bundle in enumerate(doc):
        found.extend(sigstore.decode_bundle(orjson.dumps(bundle), f"{source}[{index}]"))
    return found


def _problem(source: str, message: str) -> ev.Evidence:
    return ev.Evidence(source, b"", b"", frozenset(), problems=(message,))


class BundleSource:
    """A ``SignatureSource`` over an exported directory: no network at all.

    Files are read in a worker thread: the directory may sit on a slow mount, and the webhook's
    event loop must never wait on disk.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    async def resolve(self, ref: ImageRef, tag: str, deadline: Deadline, creds: reg.Credentials | None) -> str:
        path = tag_file(self.root, ref, tag)
        data = await asyncio.to_thread(_read, path)
        if data is None:
            raise Unresolvable(
                f"tag {tag!r} cannot be resolved offline: no {path} (export it with "
                f"`portcullis images export --image {ref.name}:{tag}`, or pin the image by digest)"
            )
        text = data.decode("utf-8", "replace").strip()
        if not _DIGEST.fullmatch(text):
            raise Unresolvable(f"tag {tag!r} cannot be resolved offline: {path} holds no sha256 digest")
        return text

    async def cosign(
        self, ref: ImageRef, digest: str, deadline: Deadline, creds: reg.Credentials | None
    ) -> list[ev.Evidence]:
        path = cosign_file(self.root, ref, digest)
        data = await asyncio.to_thread(_read, path)
        return [] if data is None else decode_cosign(data, digest, self._name(path))

    async def sigstore(
        self, ref: ImageRef, digest: str, deadline: Deadline, creds: reg.Credentials | None
    ) -> list[ev.Evidence]:
        path = sigstore_file(self.root, ref, digest)
        data = await asyncio.to_thread(_read, path)
        return [] if data is None else decode_sigstore(data, self._name(path))

    def identity(self, ref: ImageRef, creds: reg.Credentials | None) -> str:
        return ""  # files: no credentials, everyone reads the same

    async def close(self) -> None:
        return None

    def _name(self, path: Path) -> str:
        """The file as messages name it: relative to the bundles directory."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)
