"""Where the verifier gets digests and signatures: the registry (online) or exported files (offline).

``ImageVerifier`` judges whatever a ``SignatureSource`` hands it with one trust policy and one set
of authorities, so online and offline verification differ only here, in how evidence is fetched.
``RegistrySource`` is the online one; ``bundles.BundleSource`` reads ``portcullis images export``.
"""

from __future__ import annotations

from typing import Protocol

from webhook.core.deadline import Deadline
from webhook.signatures import cosign, sigstore
from webhook.signatures import evidence as ev
from webhook.signatures import registry as reg
from webhook.signatures.reference import ImageRef


class Unresolvable(Exception):
    """What a source cannot look up for a reason that is a finding (offline: no tag file; online:
    the tag does not exist, or the registry refuses the pull).

    Not an ``UpstreamError``: nothing outside failed, so no failure mode applies.
    """


class SignatureSource(Protocol):
    """The small fetch interface the verifier uses (raises ``RegistryError`` on outside trouble)."""

    async def resolve(self, ref: ImageRef, tag: str, deadline: Deadline, creds: reg.Credentials | None) -> str:
        """The digest ``tag`` of ``ref``'s repository names (raises ``Unresolvable`` or ``RegistryError``)."""
        ...

    async def cosign(
        self, ref: ImageRef, digest: str, deadline: Deadline, creds: reg.Credentials | None
    ) -> list[ev.Evidence]:
        """Signatures from cosign's ``sha256-<hex>.sig`` manifest of ``digest``."""
        ...

    async def sigstore(
        self, ref: ImageRef, digest: str, deadline: Deadline, creds: reg.Credentials | None
    ) -> list[ev.Evidence]:
        """Sigstore bundles attached to ``digest``."""
        ...

    def identity(self, ref: ImageRef, creds: reg.Credentials | None) -> str:
        """Which credentials the fetches for ``ref`` use (a digest; ``""`` anonymous): verdicts are
        cached per identity, so what one pull secret could read is never served to another."""
        ...

    async def close(self) -> None: ...


class RegistrySource:
    """Evidence straight from the image's registry (the webhook's and the default CI path)."""

    def __init__(self, client: reg.RegistryClient) -> None:
        self.client = client

    async def resolve(self, ref: ImageRef, tag: str, deadline: Deadline, creds: reg.Credentials | None) -> str:
        try:
            return await self.client.resolve(ref.registry, ref.repository, tag, deadline, creds)
        except reg.ContentError as exc:  # no such tag, access refused: a finding, not an outage
            raise Unresolvable(str(exc)) from exc

    async def cosign(
        self, ref: ImageRef, digest: str, deadline: Deadline, creds: reg.Credentials | None
    ) -> list[ev.Evidence]:
        return await cosign.fetch(self.client, ref.registry, ref.repository, digest, deadline, creds)

    async def sigstore(
        self, ref: ImageRef, digest: str, deadline: Deadline, creds: reg.Credentials | None
    ) -> list[ev.Evidence]:
        return await sigstore.fetch(self.client, ref.registry, ref.repository, digest, deadline, creds)

    def identity(self, ref: ImageRef, creds: reg.Credentials | None) -> str:
        return self.client.credential_identity(ref.registry, creds)

    async def close(self) -> None:
        await self.client.close()
