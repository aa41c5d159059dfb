"""The trust root is loaded and refreshed off the event loop (issue 20).

A TUF fetch of the public-good root can take seconds or hang; it must never block the loop. No
network here, so a stub stands in for the fetch (``trustroot.load_trust_root``): it blocks on a
``threading.Event`` that only a coroutine on the loop sets. If the fetch ran on the loop, that
coroutine could not run and the stub would report it was never released: a proof without a
timed assertion. The stub returns the real test trust root; signatures come from the real
docker-registry.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from webhook import errors
from webhook.core.deadline import Deadline
from webhook.signatures import trustroot

from .test_images_keyless import ISSUER, SUBJECT, keyless_sign

pytestmark = pytest.mark.registry


def public_good_policy(env: Any, **extra: Any) -> dict[str, Any]:
    return {
        "policies": [{"pattern": f"{env.host}/team-a/*", "keyless": [{"issuer": ISSUER, "subject": SUBJECT}], **extra}],
        "trust_root": "public-good",
    }


class SlowFetch:
    """Stands in for the TUF fetch: blocks until released, then returns the real test root."""

    def __init__(self, root: trustroot.TrustRoots) -> None:
        self.root = root
        self.started = threading.Event()
        self.release = threading.Event()
        self.released: bool | None = None
        self.threads: list[threading.Thread] = []

    def __call__(self, setting: str, resolve: Any) -> trustroot.TrustRoots:
        self.threads.append(threading.current_thread())
        self.started.set()
        self.released = self.release.wait(10)
        if not self.released:
            raise errors.UpstreamError("stub fetch never released")
        return self.root


@pytest.fixture
def slow_fetch(keyless: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    fetch = SlowFetch(trustroot.load_trust_root(str(keyless.trust_root), str))
    monkeypatch.setattr(trustroot, "load_trust_root", fetch)
    yield fetch
    fetch.release.set()  # never leave a thread blocked behind


async def test_the_first_load_runs_off_the_loop_while_the_loop_keeps_serving(
    env, registry, tools, keyless, slow_fetch
) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    keyless_sign(registry, tools, keyless, repo, digest)
    check = env.check(**public_good_policy(env))
    admission = asyncio.create_task(env.admit(check, f"{registry.host}/{repo}:v1", budget=30))
    while not slow_fetch.started.is_set():
        await asyncio.sleep(0.005)  # the loop runs while the fetch is under way...
    slow_fetch.release.set()  # ...and it is the loop that releases the fetch
    outcome = await admission
    assert slow_fetch.released is True
    assert outcome.verdict.allowed, outcome.verdict.deny_message()
    assert check.metrics()["trust_root_loaded"] == 1.0
    assert all(t.daemon and t is not threading.main_thread() for t in slow_fetch.threads)


async def test_a_fetch_that_hangs_gives_the_failure_mode_within_the_deadline(
    env, registry, tools, keyless, slow_fetch
) -> None:
    repo = registry.repo()
    digest = registry.push_image(repo, "v1")
    keyless_sign(registry, tools, keyless, repo, digest)
    check = env.check(**public_good_policy(env, failure_mode="allow"))
    outcome = await env.admit(check, f"{registry.host}/{repo}:v1", budget=0.5)
    assert slow_fetch.released is None  # still blocked: the verdict did not wait for it
    assert outcome.verdict.allowed
    assert any("trust root" in w and "allowed by failure mode" in w for w in outcome.verdict.warnings)
    denying = env.check(**public_good_policy(env))
    outcome = await env.admit(denying, f"{registry.host}/{repo}:v1", budget=0.5)
    assert not outcome.verdict.allowed
    assert "trust root" in outcome.verdict.deny_message()


async def test_start_does_not_wait_for_the_fetch(env, slow_fetch) -> None:
    check = env.check(**public_good_policy(env))
    await check.start()  # returns while the stub is still blocked
    assert not slow_fetch.released
    await check.close()


async def test_a_stale_root_keeps_serving_while_a_refresh_runs_and_is_then_replaced(keyless) -> None:
    now = [0.0]
    roots = [trustroot.load_trust_root(str(keyless.trust_root), str) for _ in range(2)]
    calls: list[int] = []

    def loader() -> trustroot.TrustRoots:
        calls.append(1)
        return roots[len(calls) - 1]

    source = trustroot.TrustRootSource("test", str, refresh_seconds=100, loader=loader, clock=lambda: now[0])
    first = await source.ensure(Deadline.after(10))
    assert first is roots[0]
    now[0] = 50.0
    assert await source.ensure(Deadline.after(10)) is roots[0]
    assert len(calls) == 1  # fresh: no refresh
    now[0] = 150.0
    assert await source.ensure(Deadline.after(10)) is roots[0]  # stale: served at once...
    await source.refresh()  # ...while the refresh it started completes
    assert source.get() is roots[1]
    assert source.loads == 2


async def test_a_failed_refresh_keeps_the_root_in_hand(keyless) -> None:
    now = [0.0]
    root = trustroot.load_trust_root(str(keyless.trust_root), str)
    outcomes: list[Any] = [root, errors.UpstreamError("TUF mirror unreachable")]

    def loader() -> trustroot.TrustRoots:
        item = outcomes.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    source = trustroot.TrustRootSource("test", str, refresh_seconds=100, loader=loader, clock=lambda: now[0])
    await source.ensure(Deadline.after(10))
    now[0] = 200.0
    with pytest.raises(errors.UpstreamError):
        await source.refresh()
    assert source.get() is root
    assert "TUF mirror unreachable" in source.last_error


def test_get_never_fetches() -> None:
    def loader() -> trustroot.TrustRoots:
        raise AssertionError("get() must not load")

    source = trustroot.TrustRootSource("public-good", str, loader=loader)
    with pytest.raises(errors.UpstreamError, match="not loaded yet"):
        source.get()


async def test_after_a_failed_load_requests_do_not_start_a_fetch_each(keyless) -> None:
    """TUF down and a burst of admissions: one fetch, then the error until the retry delay passes."""
    now = [0.0]
    calls: list[int] = []
    root = trustroot.load_trust_root(str(keyless.trust_root), str)

    def loader() -> trustroot.TrustRoots:
        calls.append(1)
        if len(calls) == 1:
            raise errors.UpstreamError("TUF mirror unreachable")
        return root

    source = trustroot.TrustRootSource("public-good", str, retry_seconds=10, loader=loader, clock=lambda: now[0])
    with pytest.raises(errors.UpstreamError, match="TUF mirror unreachable"):
        await source.ensure(Deadline.after(10))
    for _ in range(5):
        with pytest.raises(errors.UpstreamError, match="TUF mirror unreachable"):
            await source.ensure(Deadline.after(10))
    assert len(calls) == 1
    now[0] = 11.0
    assert await source.ensure(Deadline.after(10)) is root
    assert len(calls) == 2
