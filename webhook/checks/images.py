"""The images check: every image a pod runs must satisfy the trust policy (uses ``signatures/``).

Findings name the image, the matching pattern and the reason. Verified tag references are
pinned (``name@sha256:…`` JSON Patch ops, returned by /mutate), so what runs is what was
verified; a digest reference is admitted only if that digest verifies. Registry trouble
becomes each pattern's failure mode, decided inside the request's deadline; in ``portcullis
check`` it becomes a warning instead (``images.ci_registry_errors``), and with
``images.offline_bundles`` the evidence comes from exported files, judged by the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook import errors
from webhook.checks import changes
from webhook.checks.base import Check
from webhook.checks.services import Services
from webhook.config import Config
from webhook.config.images import ImagesConfig, KeylessIdentity
from webhook.core import workloads
from webhook.core.deadline import Deadline
from webhook.core.decision import CheckResult, FailureMode, Mode, Violation
from webhook.core.request import RequestContext
from webhook.core.workloads import ContainerRef, PodSpecRef
from webhook.signatures import bundles, cosign, credentials, fulcio, reference, sigstore
from webhook.signatures import registry as reg
from webhook.signatures import source as src
from webhook.signatures.cache import VerdictCache
from webhook.signatures.reference import ImageRef
from webhook.signatures.trust import Authority, Judgement, TrustPolicy, TrustPolicySet
from webhook.signatures.verifier import ImageVerifier, Verified

CHECK_ID = "images"
_MARGIN = 0.05  # seconds kept back so our own verdict (naming the registry) beats the pipeline's
_PARSED_MAX = 4096


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One image's result before it becomes findings."""

    image: str
    ref: ImageRef | None
    policy: TrustPolicy | None
    digest: str | None = None
    verified: bool = False
    reason: str = ""
    authorities: tuple[str, ...] = ()
    failed: bool = False  # outside failure: the pattern's failure mode decides


class ImagesCheck:
    """Signature verification of every container image against the trust policy."""

    id = CHECK_ID
    does_io = True
    reads: frozenset[changes.Part] = frozenset({"spec"})  # images and pull secrets

    def __init__(
        self,
        settings: ImagesConfig,
        policies: TrustPolicySet,
        verifier: ImageVerifier,
        *,
        pull_secrets: credentials.PullSecrets | None = None,
        failure_mode: FailureMode = FailureMode.DENY,
        trust_root: sigstore.TrustRootSource | None = None,
        ci: bool = False,
        offline: Path | None = None,
    ) -> None:
        self.failure_mode = failure_mode
        self.default_mode = Mode.ENFORCE
        self.policies = policies
        self.verifier = verifier
        self._settings = settings
        self._pull_secrets = pull_secrets
        self._trust_root = trust_root
        self._parsed: dict[str, tuple[ImageRef, TrustPolicy | None] | str] = {}
        self._offline = offline
        # In CI a registry that failed once is not asked again for the same image (an
        # unreachable registry would otherwise cost a timeout per manifest).
        self._ci = ci
        self._ci_warn = ci and offline is None and settings.ci_registry_errors == "warn"
        self._ci_failed: dict[str, _Outcome] = {}

    async def start(self) -> None:
        if self._trust_root is not None and not self._trust_root.loaded:
            # On failure it is retried on first use; keyless images meanwhile get their failure mode.
            with contextlib.suppress(errors.UpstreamError):
                await asyncio.to_thread(self._trust_root.get)

    async def close(self) -> None:
        await self.verifier.cache.close()
        await self.verifier.source.close()

    def ready(self) -> bool:
        return True

    def metrics(self) -> dict[str, float]:
        """Cache hits, misses, verifications and their total latency (for /metrics)."""
        return {**self.verifier.cache.stats.as_dict(), "entries": len(self.verifier.cache)}

    async def run(self, pods: Sequence[PodSpecRef], ctx: RequestContext) -> CheckResult:
        items = [(pod, c, c.container.get("image")) for pod in pods for c in workloads.containers(pod)]
        if not items:
            return CheckResult()
        outcomes: dict[str, _Outcome] = {}
        pending: dict[str, tuple[ImageRef, TrustPolicy, PodSpecRef]] = {}
        for pod, _, image in items:
            if not isinstance(image, str) or image in outcomes or image in pending:
                continue
            outcome, todo = self._fast(image)
            if outcome is not None:
                outcomes[image] = outcome
            elif todo is not None:
                pending[image] = (*todo, pod)
        if pending:
            done = await asyncio.gather(*(self._slow(i, r, p, pod, ctx) for i, (r, p, pod) in pending.items()))
            outcomes.update(zip(pending, done, strict=True))
            if self._ci:
                self._remember_failures(done)
        return self._result(items, outcomes)

    def _remember_failures(self, done: Sequence[_Outcome]) -> None:
        for outcome in done:
            if outcome.failed:
                if len(self._ci_failed) >= _PARSED_MAX:
                    self._ci_failed.clear()
                self._ci_failed[outcome.image] = outcome

    # -- per image ------------------------------------------------------------------------------

    def _fast(self, image: str) -> tuple[_Outcome | None, tuple[ImageRef, TrustPolicy] | None]:
        """Parse, match and look up the cache without awaiting (the warm path)."""
        parsed = self._parsed.get(image)
        if parsed is None:
            parsed = self._parse(image)
        if isinstance(parsed, str):
            return _Outcome(image, None, None, reason=parsed), None
        ref, policy = parsed
        if policy is None:
            return _Outcome(image, ref, None), None
        failed = self._ci_failed.get(image) if self._ci else None
        if failed is not None:
            return failed, None
        hit = self.verifier.cached(ref, policy)
        if hit is not None:
            return _from_verified(image, ref, policy, hit), None
        return None, (ref, policy)

    def _parse(self, image: str) -> tuple[ImageRef, TrustPolicy | None] | str:
        try:
            ref = reference.parse(image)
            parsed: tuple[ImageRef, TrustPolicy | None] | str = (ref, self.policies.match(ref))
        except reference.ReferenceError_ as exc:
            parsed = str(exc)
        if len(self._parsed) >= _PARSED_MAX:
            self._parsed.clear()
        self._parsed[image] = parsed
        return parsed

    async def _slow(
        self, image: str, ref: ImageRef, policy: TrustPolicy, pod: PodSpecRef, ctx: RequestContext
    ) -> _Outcome:
        """Verify within the request's deadline; outside trouble becomes a failed outcome."""
        budget = ctx.deadline.remaining()
        budget = (
            budget - min(_MARGIN, budget * 0.1)
            if budget != float("inf")
            else self._settings.request_timeout_seconds * 5
        )
        deadline = Deadline.after(budget)
        try:
            creds = await self._credentials(ref, pod, ctx, deadline)
            verify = self.verifier.verify(ref, policy, deadline, creds)
            verified = await asyncio.wait_for(verify, deadline.remaining())
        except TimeoutError:
            reason = f"registry {ref.registry}: no verdict within {budget * 1000:.0f} ms (timeout)"
            return _Outcome(image, ref, policy, reason=reason, failed=True)
        except errors.UpstreamError as exc:
            return _Outcome(image, ref, policy, reason=str(exc), failed=True)
        except src.Unresolvable as exc:  # offline, no tag file: a finding, no failure mode
            return _Outcome(image, ref, policy, reason=str(exc))
        return _from_verified(image, ref, policy, verified)

    async def _credentials(
        self, ref: ImageRef, pod: PodSpecRef, ctx: RequestContext, deadline: Deadline
    ) -> reg.Credentials | None:
        if self._pull_secrets is None:
            return None
        entries = pod.spec.get("imagePullSecrets") or ()
        names = [str(s["name"]) for s in entries if isinstance(s, dict) and isinstance(s.get("name"), str)]
        if not names:
            return None
        return await self._pull_secrets.lookup(ctx.namespace, names, ref.registry, deadline)

    # -- findings -------------------------------------------------------------------------------

    def _result(self, items: list[tuple[PodSpecRef, ContainerRef, Any]], outcomes: dict[str, _Outcome]) -> CheckResult:
        result = CheckResult()
        seen: list[dict[str, Any]] = []
        for _, container, image in items:
            field = f"{container.path}.image"
            if not isinstance(image, str):
                result.violations.append(Violation(CHECK_ID, "container has no image", container.name, field))
                continue
            outcome = outcomes[image]
            self._judge(outcome, container, field, result)
            seen.append(_context_entry(outcome, container, field))
        result.context = {"images": seen, "digests": {e["image"]: e["digest"] for e in seen if e["digest"]}}
        if self._ci_warn:
            # What `portcullis check` lists as not judged (the image and why), per object.
            not_judged = {o.image: o.reason for o in outcomes.values() if o.failed and o.policy is not None}
            if not_judged:
                result.context["not_judged"] = [{"image": i, "reason": r} for i, r in sorted(not_judged.items())]
        return result

    def _judge(self, o: _Outcome, container: ContainerRef, field: str, result: CheckResult) -> None:
        name = container.name
        if o.ref is None:
            result.violations.append(Violation(CHECK_ID, f"image {o.image!r}: {o.reason}", name, field))
            return
        if o.policy is None:
            unmatched = self.policies.unmatched
            if unmatched != "allow":
                message = f"image {o.image}: matches no trust policy pattern (images.unmatched: {unmatched})"
                mode = Mode.WARN if unmatched == "warn" else None
                result.violations.append(Violation(CHECK_ID, message, name, field, mode=mode))
            return
        where = f"image {o.image}: pattern {o.policy.pattern!r}"
        if o.failed:
            if self._ci_warn:
                result.warnings.append(
                    f"[{CHECK_ID}] {where}: not judged: {o.reason} (verify offline with "
                    "`portcullis check --signatures DIR`, or skip with `--skip images`)"
                )
            elif o.policy.failure_mode is FailureMode.ALLOW:
                result.warnings.append(f"[{CHECK_ID}] {where}: not verified, allowed by failure mode: {o.reason}")
            else:
                message = f"{where}: registry error: {o.reason}; denied by failure mode 'deny'"
                result.violations.append(Violation(CHECK_ID, message, name, field, mode=o.policy.mode))
            return
        if not o.verified:
            message = f"{where}: {o.reason}"
            if self._offline is not None:
                message += f" (offline signatures in {self._offline})"
            result.violations.append(Violation(CHECK_ID, message, name, field, mode=o.policy.mode))
            return
        if self._settings.pin_digests and o.ref.digest is None and o.digest is not None:
            result.patches.append({"op": "replace", "path": _pointer(field), "value": o.ref.pinned(o.digest)})


def _from_verified(image: str, ref: ImageRef, policy: TrustPolicy, verified: Verified) -> _Outcome:
    j: Judgement = verified.judgement
    return _Outcome(image, ref, policy, verified.digest, j.verified, j.reason, j.satisfied)


def _context_entry(o: _Outcome, container: ContainerRef, field: str) -> dict[str, Any]:
    return {
        "image": o.image,
        "container": container.name,
        "path": field,
        "digest": o.digest,
        "pattern": o.policy.pattern if o.policy else None,
        "verified": o.verified,
        "error": o.failed,
        "reason": o.reason,
        "authorities": list(o.authorities),
    }


_INDEX = re.compile(r"\[(\d+)\]")


def _pointer(field: str) -> str:
    """``spec.containers[0].image`` → ``/spec/containers/0/image`` (RFC 6901)."""
    return "/" + _INDEX.sub(r".\1", field).replace("~", "~0").replace("/", "~1").replace(".", "/")


# -- building ----------------------------------------------------------------------------------


def build(config: Config, services: Services) -> Check | None:
    """The images check for ``config.images``; ``None`` when no trust policy is configured.

    Raises ``ConfigError`` naming the key file or trust root that cannot be read.
    """
    settings = config.images
    if not settings.policies:
        if settings.offline_bundles:
            raise errors.ConfigError(
                "images.offline_bundles (or --signatures) is set but images.policies is empty: "
                "nothing would be verified (add a trust policy, or drop the bundles)"
            )
        return None
    trust_root = sigstore.TrustRootSource(settings.trust_root, config.resolve_path)
    uses_keyless = any(p.keyless for p in settings.policies)
    if uses_keyless and settings.trust_root != "public-good":
        trust_root.get()  # a bad file is a config error now, not a denial later
    keys: dict[str, cosign.KeyAuthority] = {}
    policies = []
    for index, item in enumerate(settings.policies):
        authorities: list[Authority] = [_key(config, path, index, keys) for path in item.keys]
        authorities += [sigstore.KeylessAuthority(_identity(i), trust_root) for i in item.keyless]
        fingerprint = settings.trust_root if item.keyless else ""
        policies.append(
            TrustPolicy(
                item.pattern,
                authorities,
                threshold=item.threshold,
                mode=item.mode,
                failure_mode=item.failure_mode,
                fingerprint=fingerprint,
            )
        )
    offline = _offline_dir(config) if settings.offline_bundles else None
    source: src.SignatureSource = (
        bundles.BundleSource(offline) if offline is not None else src.RegistrySource(registry_client(config))
    )
    cache: VerdictCache[Judgement] = VerdictCache(
        ttl=settings.cache.ttl_seconds,
        negative_ttl=settings.cache.negative_ttl_seconds,
        max_entries=settings.cache.max_entries,
    )
    verifier = ImageVerifier(source, cache, job_timeout=settings.request_timeout_seconds * 5)
    pull_secrets = (
        credentials.PullSecrets(services.kube_api, timeout=settings.request_timeout_seconds)
        if settings.use_pull_secrets and services.kube_api is not None and offline is None
        else None
    )
    return ImagesCheck(
        settings,
        TrustPolicySet(policies, settings.unmatched),
        verifier,
        pull_secrets=pull_secrets,
        failure_mode=config.check_settings(CHECK_ID).failure_mode,
        trust_root=trust_root if uses_keyless else None,
        ci=services.ci,
        offline=offline,
    )


def registry_client(config: Config) -> reg.RegistryClient:
    """A registry client per ``images:`` (insecure hosts, credentials, timeouts, size limits)."""
    settings = config.images
    return reg.RegistryClient(
        # Hosts spelled the way image references are parsed (lower case, no :443).
        insecure_registries=frozenset(reference.canonical_host(r) for r in settings.insecure_registries),
        credentials={
            reference.canonical_host(c.registry): reg.Credentials(c.username, _password(config, c))
            for c in settings.credentials
        },
        timeout=settings.request_timeout_seconds,
        max_manifest_bytes=settings.max_manifest_bytes,
        max_blob_bytes=settings.max_blob_bytes,
    )


def _offline_dir(config: Config) -> Path:
    path = config.resolve_path(config.images.offline_bundles)
    if not path.is_dir():
        raise errors.ConfigError(
            f"images.offline_bundles: {path} is not a directory (write it with `portcullis images export`)"
        )
    return path


def _key(config: Config, path: str, index: int, keys: dict[str, cosign.KeyAuthority]) -> cosign.KeyAuthority:
    if path not in keys:
        file = config.resolve_path(path)
        where = f"images.policies[{index}].keys: {file}"
        try:
            pem = Path(file).read_bytes()
        except OSError as exc:
            raise errors.ConfigError(f"{where}: cannot read ({exc.strerror or exc})") from exc
        keys[path] = cosign.KeyAuthority(path, cosign.load_public_key(pem, where))
    return keys[path]


def _identity(item: KeylessIdentity) -> fulcio.Identity:
    return fulcio.Identity(
        issuer=item.issuer or re.compile(item.issuer_regex),
        subject=item.subject or re.compile(item.subject_regex),
    )


def _password(config: Config, cred: Any) -> str:
    if not cred.password_file:
        return str(cred.password)
    file = config.resolve_path(cred.password_file)
    try:
        return Path(file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise errors.ConfigError(f"images.credentials[{cred.registry}]: cannot read {file}: {exc}") from exc
