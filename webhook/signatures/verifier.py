"""One image under one policy → a judgement: resolve the digest, fetch signatures, judge, cache.

Called by the images check. Signatures are looked up in cosign's ``.sig`` tag first (two round
trips for a keyed signature) and in OCI referrers only when those do not reach the threshold.
The same judging runs whatever the ``SignatureSource``: the registry, or exported files offline.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from webhook.core.deadline import Deadline
from webhook.signatures import evidence as ev
from webhook.signatures import registry as reg
from webhook.signatures.cache import VerdictCache
from webhook.signatures.reference import ImageRef
from webhook.signatures.source import SignatureSource
from webhook.signatures.trust import Judgement, TrustPolicy
from webhook.signatures.trustroot import TrustRootSource


@dataclass(frozen=True, slots=True)
class Verified:
    """What was judged: the exact digest and the judgement for it."""

    digest: str
    judgement: Judgement


class ImageVerifier:
    """Owns the signature source and the verdict cache of one images check."""

    def __init__(
        self,
        source: SignatureSource,
        cache: VerdictCache[Judgement],
        *,
        job_timeout: float,
        trust_root: TrustRootSource | None = None,
    ) -> None:
        self.source = source
        self.cache = cache
        self.trust_root = trust_root
        self._job_timeout = job_timeout

    @staticmethod
    def cache_key(ref: ImageRef, digest: str, policy: TrustPolicy, identity: str) -> Hashable:
        """Per repository, digest, policy and credential identity: a verdict learnt with one
        namespace's pull secret (a private image's signatures) is never served to another."""
        return (ref.registry, ref.repository, digest, policy.cache_key, identity)

    def cached(self, ref: ImageRef, policy: TrustPolicy, creds: reg.Credentials | None) -> Verified | None:
        """The warm path for digest references: a dict lookup, no await."""
        if ref.digest is None:
            return None
        judgement = self.cache.get(self.cache_key(ref, ref.digest, policy, self.source.identity(ref, creds)))
        return Verified(ref.digest, judgement) if judgement is not None else None

    async def verify(
        self, ref: ImageRef, policy: TrustPolicy, deadline: Deadline, creds: reg.Credentials | None = None
    ) -> Verified:
        """Judge ``ref`` (its digest, or what its tag points to now).

        Raises ``RegistryError`` (outside trouble) or ``Unresolvable`` (offline, no tag file).
        """
        digest = ref.digest
        if digest is None:
            assert ref.tag is not None
            digest = await self.source.resolve(ref, ref.tag, deadline, creds)
        key = self.cache_key(ref, digest, policy, self.source.identity(ref, creds))
        judgement = await self.cache.get_or_compute(
            key, lambda: self._judge(ref, digest, policy, creds), positive=lambda j: j.verified
        )
        return Verified(digest, judgement)

    async def _judge(self, ref: ImageRef, digest: str, policy: TrustPolicy, creds: reg.Credentials | None) -> Judgement:
        # The shared job has its own budget: one requester's nearly spent deadline must not
        # fail it for the others waiting on it (each waiter still stops at its own deadline).
        deadline = Deadline.after(self._job_timeout)
        evidence = await self.source.cosign(ref, digest, deadline, creds)
        await self._root_for(policy, evidence, deadline)
        judgement = policy.judge(evidence, digest)
        if judgement.verified:
            return judgement
        evidence += await self.source.sigstore(ref, digest, deadline, creds)
        await self._root_for(policy, evidence, deadline)
        return policy.judge(evidence, digest)

    async def _root_for(self, policy: TrustPolicy, evidence: list[ev.Evidence], deadline: Deadline) -> None:
        """Have a trust root in hand before judging evidence that needs one (loaded off the loop;
        ``UpstreamError`` when it cannot be had in time: the failure mode decides)."""
        if self.trust_root is not None and policy.needs_trust_root and any(not e.problems for e in evidence):
            await self.trust_root.ensure(deadline)
