"""Registry → offline bundles: fetch what online verification would read, and write it as files.

Called by ``portcullis images export``. It fetches through the same client and the same fetchers
as online verification (``cosign.fetch_layers``, ``sigstore.fetch_bundles``), so an offline check
sees exactly what an online one would have seen at export time. Nothing is verified here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from webhook import files
from webhook.core.deadline import Deadline
from webhook.signatures import bundles, cosign, sigstore
from webhook.signatures import registry as reg
from webhook.signatures.reference import ImageRef


@dataclass(frozen=True, slots=True)
class Exported:
    """What was written for one image (paths relative to the output directory)."""

    image: str
    digest: str
    files: tuple[str, ...]
    signatures: int  # layers of the cosign ``.sig`` manifest
    bundles: int  # sigstore bundles among the referrers
    skipped: tuple[str, ...] = ()  # referrers that could not be read, and why

    def to_json(self) -> dict[str, object]:
        return {
            "image": self.image,
            "digest": self.digest,
            "files": list(self.files),
            "signatures": self.signatures,
            "bundles": self.bundles,
            "skipped": list(self.skipped),
        }


async def export(client: reg.RegistryClient, ref: ImageRef, out: Path, deadline: Deadline) -> Exported:
    """Write ``ref``'s tag file (for a tag) and signature files under ``out``.

    Stale signature files of the same digest are removed when the registry no longer has any,
    so the directory never vouches for more than the registry did. Raises ``RegistryError``.
    """
    files: list[Path] = []
    digest = ref.digest
    if digest is None:
        assert ref.tag is not None
        digest = await client.resolve(ref.registry, ref.repository, ref.tag, deadline)
    layers = await cosign.fetch_layers(client, ref.registry, ref.repository, digest, deadline)
    found = await sigstore.fetch_bundles(client, ref.registry, ref.repository, digest, deadline)
    raw = [b for _, b in found if isinstance(b, bytes)]
    skipped = tuple(b for _, b in found if isinstance(b, str))
    cosign_path = bundles.cosign_file(out, ref, digest)
    sigstore_path = bundles.sigstore_file(out, ref, digest)
    _write_or_remove(cosign_path, bundles.encode_cosign(digest, layers) if layers else None, files)
    _write_or_remove(sigstore_path, bundles.encode_sigstore(raw) if raw else None, files)
    if ref.digest is None and ref.tag is not None:
        # Written last: a tag file never points at a digest whose signatures are not there yet.
        tag_path = bundles.tag_file(out, ref, ref.tag)
        _write_or_remove(tag_path, bundles.encode_tag(digest), files)
    relative = tuple(str(p.relative_to(out)) for p in files)
    return Exported(str(ref), digest, relative, len(layers), len(raw), skipped)


def _write_or_remove(path: Path, data: bytes | None, written: list[Path]) -> None:
    if data is None:
        path.unlink(missing_ok=True)
        return
    files.write_atomic(path, data)
    written.append(path)
