"""Trust policy: image patterns → authorities with an n-of-m threshold and a mode (pure, no I/O).

Built once from ``images:`` by the check's builder; ``match`` is on the admission hot path
(precompiled regexes), ``judge`` turns fetched evidence into a verdict.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

from webhook.config import images as images_config
from webhook.core.decision import FailureMode, Mode
from webhook.signatures import evidence as ev
from webhook.signatures.reference import ImageRef


class Authority(Protocol):
    """Something that vouches for images: a public key or a keyless identity."""

    @property
    def name(self) -> str: ...

    def accepts(self, evidence: ev.Evidence, digest: str) -> str | None: ...

    def signer(self, evidence: ev.Evidence) -> Hashable:
        """Who made ``evidence`` (which this authority accepts): the SPKI digest of a key, or the
        (issuer, subjects) of a keyless certificate. The threshold counts distinct signers."""
        ...


def compile_glob(glob: str) -> re.Pattern[str]:
    """``**`` crosses ``/``, ``*`` and ``?`` stay inside one path segment; the rest is literal."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out))


@dataclass(frozen=True, slots=True)
class Judgement:
    """The verdict for one digest under one policy."""

    verified: bool
    reason: str  # why not (empty when verified)
    satisfied: tuple[str, ...]  # authorities whose signature verified


class TrustPolicy:
    """One configured pattern and what it requires."""

    __slots__ = (
        "_digest",
        "_name",
        "_tag",
        "authorities",
        "cache_key",
        "failure_mode",
        "mode",
        "needs_trust_root",
        "pattern",
        "threshold",
    )

    def __init__(
        self,
        pattern: str,
        authorities: Sequence[Authority],
        *,
        threshold: int = 1,
        mode: Mode = Mode.ENFORCE,
        failure_mode: FailureMode = FailureMode.DENY,
        fingerprint: str = "",
        needs_trust_root: bool = False,
    ) -> None:
        # Config load canonicalises already; doing it here too keeps direct callers honest.
        pattern = images_config.canonical_pattern(pattern)
        self.pattern = pattern
        self.authorities = tuple(authorities)
        self.threshold = threshold
        self.mode = mode
        self.failure_mode = failure_mode
        self.needs_trust_root = needs_trust_root  # keyless, or keys with tlog: required
        name, tag, digest = images_config.split_pattern(pattern)
        self._name = compile_glob(name)
        self._tag = compile_glob(tag) if tag is not None else None
        self._digest = compile_glob(digest) if digest is not None else None
        # Verdicts are cached per (repository, digest, cache_key): a changed policy never reuses them.
        material = "\0".join([pattern, str(threshold), fingerprint, *(a.name for a in self.authorities)])
        self.cache_key = hashlib.sha256(material.encode()).hexdigest()[:16]

    def matches(self, ref: ImageRef) -> bool:
        if self._name.fullmatch(ref.name) is None:
            return False
        # With a digest the runtime ignores the tag: it is free text then and must not pick the policy.
        if self._tag is not None and (
            ref.tag is None or ref.digest is not None or self._tag.fullmatch(ref.tag) is None
        ):
            return False
        return not (self._digest is not None and (ref.digest is None or self._digest.fullmatch(ref.digest) is None))

    def judge(self, evidence: Sequence[ev.Evidence], digest: str) -> Judgement:
        """Met when ``threshold`` authorities each have a valid signature naming ``digest`` by a
        signer no other counted authority used.

        n-of-m means n independent signers: a key listed twice (``a.pub``, ``a-copy.pub``: the
        same SPKI), or two keyless identities whose regexes both match one signer, must not let
        one signer count twice. Authorities are matched to distinct signers (a maximum bipartite
        matching, so the order of the configuration never loses a possible match).
        """
        usable = [e for e in evidence if not e.problems]
        if not evidence:
            return Judgement(False, "no signature found", ())
        signers: list[set[Hashable]] = []
        failures: list[str] = []
        for authority in self.authorities:
            reasons = [authority.accepts(e, digest) for e in evidence]
            found = {authority.signer(e) for e, r in zip(evidence, reasons, strict=True) if r is None}
            signers.append(found)
            if not found:
                failures.append(f"{authority.name}: {_best(reasons, bool(usable))}")
        matched = _match(signers)
        satisfied = tuple(a.name for i, a in enumerate(self.authorities) if i in matched)
        if len(satisfied) >= self.threshold:
            return Judgement(True, "", satisfied)
        shared = [a.name for i, a in enumerate(self.authorities) if signers[i] and i not in matched]
        if shared:
            failures.append(f"{', '.join(shared)}: only signatures by a signer already counted for another authority")
        needed = f"{len(satisfied)} of the required {self.threshold} authorities verified"
        return Judgement(False, f"{needed} ({'; '.join(failures)})", satisfied)


def _match(signers: Sequence[set[Hashable]]) -> dict[int, Hashable]:
    """Authority index → its own signer, as many authorities as possible (Kuhn's augmenting paths)."""
    owner: dict[Hashable, int] = {}

    def assign(index: int, seen: set[Hashable]) -> bool:
        for signer in signers[index]:
            if signer in seen:
                continue
            seen.add(signer)
            if signer not in owner or assign(owner[signer], seen):
                owner[signer] = index
                return True
        return False

    for index in range(len(signers)):
        assign(index, set())
    return {index: signer for signer, index in owner.items()}


def _best(reasons: Sequence[str | None], any_usable: bool) -> str:
    """The most telling reason: a digest mismatch or bad signature over a generic 'not our key'."""
    texts = [r for r in reasons if r]
    for marker in ("digest mismatch", "tampered", "wrong identity", "not valid when", "does not chain", "log"):
        for text in texts:
            if marker in text:
                return text
    return texts[0] if texts else "no usable signature" if not any_usable else "rejected"


class TrustPolicySet:
    """Patterns in configured order (first match wins) and what to do with the unmatched."""

    __slots__ = ("policies", "unmatched")

    def __init__(self, policies: Sequence[TrustPolicy], unmatched: str = "deny") -> None:
        self.policies = tuple(policies)
        self.unmatched = unmatched

    def match(self, ref: ImageRef) -> TrustPolicy | None:
        for policy in self.policies:
            if policy.matches(ref):
                return policy
        return None
