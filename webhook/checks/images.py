"""The images check: every image a pod runs must satisfy the trust policy (uses ``signatures/``).

Findings name the image, the matching pattern and the reason. Verified tag references are
pinned (``name@sha256:…`` JSON Patch ops, returned by /mutate), so what runs is what was
verified; a digest reference is admitted only if that digest verifies. Transport trouble
(connect, timeout, 5xx, 429) becomes each pattern's failure mode, decided inside the request's
deadline; junk the image's repository serves is a verdict. In ``portcullis check`` transport
trouble makes the image "not judged" (``images.ci_registry_errors``), and with
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
from webhook.signatures import bundles, cosign, credentials, fulcio, reference, sigstore, trustroot
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
        trust_root: trustroot.TrustRootSource | None = None,
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
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._trust_root is not None:
            # Loaded in a daemon thread, not awaited: serving starts now, and requests that need
            # the root before it arrives wait for it within their deadline (else: failure mode).
            if not self._trust_root.loaded:
                self._trust_root.refresh()
            self._refresher = asyncio.create_task(self._trust_root.refresh_forever())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await self.verifier.cache.close()
        await self.verifier.source.close()

    def ready(self) -> bool:
        return True

    def metrics(self) -> dict[str, float]:
        """Cache hits, misses, verifications and their total latency; trust root loads (for /metrics)."""
        figures = {**self.verifier.cache.stats.as_dict(), "entries": len(self.verifier.cache)}
        if self._trust_root is not None:
            figures["trust_root_loaded"] = 1.0 if self._trust_root.loaded else 0.0
            figures["trust_root_loads"] = self._trust_root.loads
        return figures

    async def run(self, pods: Sequence[PodSpecRef], ctx: RequestContext) -> CheckResult:
        items = [(pod, c, c.container.get("image")) for pod in pods for c in workloads.containers(pod)]
        if not items:
            return CheckResult()
        outcomes: dict[str, _Outcome] = {}
        pending: dict[str, tuple[ImageRef, TrustPolicy, PodSpecRef]] = {}
        for pod, _, image in items:
            if not isinstance(image, str) or image in outcomes or image in pending:
                continue
            outcome, todo = self._fast(image, pod, ctx)
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

    def _fast(
        self, image: str, pod: PodSpecRef, ctx: RequestContext
    ) -> tuple[_Outcome | None, tuple[ImageRef, TrustPolicy] | None]:
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
        creds = self._known_credentials(ref, pod, ctx) if self._pull_secrets is not None else None
        if isinstance(creds, credentials.PullSecretsUnknown):
            return None, (ref, policy)  # the pod's pull secret is not cached: look it up first
        hit = self.verifier.cached(ref, policy, creds)
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
            if policy.needs_trust_root and self._trust_root is not None and not self._trust_root.loaded:
                # The first load runs off the loop; say so, or a hanging TUF fetch looks like the registry.
                why = f": {self._trust_root.last_error}" if self._trust_root.last_error else ""
                reason = (
                    f"no verdict within {budget * 1000:.0f} ms (timeout): the Sigstore trust root "
                    f"({self._trust_root.setting}) is still loading{why}"
                )
            return _Outcome(image, ref, policy, reason=reason, failed=True)
        except errors.UpstreamError as exc:
            return _Outcome(image, ref, policy, reason=str(exc), failed=True)
        except (src.Unresolvable, reg.ContentError) as exc:  # a finding (no tag, junk), no failure mode
            return _Outcome(image, ref, policy, reason=str(exc))
        return _from_verified(image, ref, policy, verified)

    async def _credentials(
        self, ref: ImageRef, pod: PodSpecRef, ctx: RequestContext, deadline: Deadline
    ) -> reg.Credentials | None:
        names = _pull_secret_names(pod) if self._pull_secrets is not None else []
        if not names or self._pull_secrets is None:
            return None
        return await self._pull_secrets.lookup(ctx.namespace, names, ref.registry, deadline)

    def _known_credentials(
        self, ref: ImageRef, pod: PodSpecRef, ctx: RequestContext
    ) -> reg.Credentials | credentials.PullSecretsUnknown | None:
        """The pod's credentials for ``ref`` if known without an await (verdicts are keyed by them)."""
        names = _pull_secret_names(pod) if self._pull_secrets is not None else []
        if not names or self._pull_secrets is None:
            return None
        return self._pull_secrets.peek(ctx.namespace, names, ref.registry)

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
            # What `portcullis check` reports as not judged (image, why, first container path), per object.
            not_judged: dict[str, dict[str, str]] = {}
            for entry in seen:
                outcome = outcomes[entry["image"]]
                if outcome.failed and outcome.policy is not None and entry["image"] not in not_judged:
                    not_judged[entry["image"]] = {
                        "image": entry["image"],
                        "reason": outcome.reason,
                        "path": entry["path"],
                    }
            if not_judged:
                result.context["not_judged"] = [not_judged[i] for i in sorted(not_judged)]
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


def _pull_secret_names(pod: PodSpecRef) -> list[str]:
    entries = pod.spec.get("imagePullSecrets") or ()
    return [str(s["name"]) for s in entries if isinstance(s, dict) and isinstance(s.get("name"), str)]


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
    trust_root = trustroot.TrustRootSource(
        settings.trust_root,
        config.resolve_path,
        refresh_seconds=settings.trust_root_refresh_seconds,
        fetch_timeout=settings.trust_root_fetch_timeout_seconds,
    )
    uses_root = any(p.keyless or (p.keys and p.tlog == "required") for p in settings.policies)
    if uses_root and settings.trust_root != trustroot.PUBLIC_GOOD:
        trust_root.load_now()  # a bad file is a config error now, not a denial later
    keys: dict[str, cosign.KeyAuthority] = {}
    policies = []
    for index, item in enumerate(settings.policies):
        authorities: list[Authority] = []
        for path in item.keys:
            key = _key(config, path, index, keys)
            authorities.append(sigstore.LoggedKeyAuthority(key, trust_root) if item.tlog == "required" else key)
        authorities += [sigstore.KeylessAuthority(_identity(i), trust_root) for i in item.keyless]
        needs_root = bool(item.keyless) or (bool(item.keys) and item.tlog == "required")
        fingerprint = f"{settings.trust_root}\0tlog={item.tlog}" if needs_root else f"tlog={item.tlog}"
        policies.append(
            TrustPolicy(
                item.pattern,
                authorities,
                threshold=item.threshold,
                mode=item.mode,
                failure_mode=item.failure_mode,
                fingerprint=fingerprint,
                needs_trust_root=needs_root,
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
    verifier = ImageVerifier(
        source,
        cache,
        job_timeout=settings.request_timeout_seconds * 5,
        trust_root=trust_root if uses_root else None,
    )
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
        trust_root=trust_root if uses_root else None,
        ci=services.ci,
        offline=offline,
    )


def registry_client(config: Config) -> reg.RegistryClient:
    """A registry client per ``images:`` (insecure hosts, credentials, timeouts, size limits)."""
    settings = config.images
    return reg.RegistryClient(
        # Hosts spelled the way image references are parsed (lower case, numeric port, no :443,
        # Docker Hub's aliases folded into docker.io).
        insecure_registries=frozenset(reference.canonical_registry(r) for r in settings.insecure_registries),
        credentials={
            reference.canonical_registry(c.registry): reg.Credentials(c.username, _password(config, c))
            for c in settings.credentials
        },
        timeout=settings.request_timeout_seconds,
        max_manifest_bytes=settings.max_manifest_bytes,
        max_blob_bytes=settings.max_blob_bytes,
        max_signatures=settings.max_signatures,
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
