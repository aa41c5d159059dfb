"""The Sigstore trust root: loaded and refreshed in a daemon thread, never on the event loop.

Used by the keyless authorities and by keyed ones that require a transparency-log entry.
``public-good`` is Sigstore's production root, fetched and verified over TUF (network: seconds,
or a hang); a path names a ``trusted_root.json`` (air-gapped clusters). Either way the load runs
in a thread the loop only awaits with a timeout, so a slow TUF mirror costs the requests that
need a root their deadline, and never stalls admission for everyone else. The root in hand keeps
serving while a refresh runs; a failed refresh keeps it (and says why in ``last_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook import errors
from webhook.core.deadline import Deadline
from webhook.signatures import fulcio

PUBLIC_GOOD = "public-good"


@dataclass(frozen=True, slots=True)
class TrustRoots:
    """One trusted root, as our checks (``fulcio.TrustRoot``) and the library's verifier see it."""

    parsed: fulcio.TrustRoot
    verifier: Any  # sigstore.verify.Verifier


def load_trust_root(setting: str, resolve: Callable[[str], Any]) -> TrustRoots:
    """``public-good`` (over TUF) or a trusted_root.json path. Blocking: call it off the loop.

    Raises ``ConfigError`` (bad file) or ``UpstreamError`` (TUF unreachable).
    """
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import TrustedRoot
    from sigstore.verify import Verifier

    if setting == PUBLIC_GOOD:
        source = "sigstore public-good trust root"
        data, root = _public_good()
    else:
        path = Path(resolve(setting))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise errors.ConfigError(f"images.trust_root: cannot read {path}: {exc.strerror or exc}") from exc
        source = str(path)
        try:
            root = TrustedRoot.from_file(str(path))
        except (SigstoreError, ValueError) as exc:
            raise errors.ConfigError(f"{source}: not a valid Sigstore trusted root: {exc}") from exc
    parsed = fulcio.parse_trust_root(data, source)
    try:
        verifier = Verifier(trusted_root=root)
    except SigstoreError as exc:
        raise errors.ConfigError(f"{source}: unusable trusted root: {exc}") from exc
    return TrustRoots(parsed, verifier)


def _public_good() -> tuple[bytes, Any]:
    """The production root's JSON and the library's ``TrustedRoot`` for it.

    sigstore-python has no public accessor for the root's JSON (``TrustedRoot._inner``); this is
    the one private attribute we use, and pyproject pins ``sigstore`` to the tested minor version.
    """
    from sigstore.models import ClientTrustConfig

    try:
        root = ClientTrustConfig.production().trusted_root
        data = root._inner.to_json().encode()
    except Exception as exc:  # network/TUF trouble: an outside failure, not bad config
        raise errors.UpstreamError(f"cannot load the Sigstore public-good trust root: {exc}") from exc
    return data, root


class TrustRootSource:
    """Holds the trust root; loads and refreshes it in a daemon thread (single flight)."""

    def __init__(
        self,
        setting: str,
        resolve: Callable[[str], Any],
        *,
        refresh_seconds: float = 6 * 3600.0,
        fetch_timeout: float = 30.0,
        retry_seconds: float = 10.0,
        loader: Callable[[], TrustRoots] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.setting = setting
        self.refresh_seconds = refresh_seconds
        self.fetch_timeout = fetch_timeout
        # After a failed load, requests do not start another for this long: with TUF down, a
        # burst of admissions must not become a burst of fetch threads.
        self.retry_seconds = retry_seconds
        self._failed_at = float("-inf")
        # Looked up at call time, so tests can stand a slow or hanging fetch in for TUF.
        self._loader = loader or (lambda: load_trust_root(setting, resolve))
        self._clock = clock
        self._root: TrustRoots | None = None
        self._loaded_at = float("-inf")
        self._inflight: asyncio.Future[TrustRoots] | None = None
        self.loads = 0  # completed loads (first and refreshes), for metrics and tests
        self.last_error = ""

    @property
    def loaded(self) -> bool:
        return self._root is not None

    @property
    def stale(self) -> bool:
        return self._clock() - self._loaded_at >= self.refresh_seconds

    def get(self) -> TrustRoots:
        """The root in hand. Never fetches (it is called on the loop); ``UpstreamError`` if none yet."""
        if self._root is None:
            why = f": {self.last_error}" if self.last_error else ""
            raise errors.UpstreamError(f"Sigstore trust root ({self.setting}) is not loaded yet{why}")
        return self._root

    def load_now(self) -> TrustRoots:
        """Load synchronously: only where blocking is fine (config validation, before serving)."""
        self._set(self._loader())
        assert self._root is not None
        return self._root

    async def ensure(self, deadline: Deadline) -> TrustRoots:
        """A root to judge with: the one in hand (a stale one starts a background refresh), or
        the first load, awaited within ``deadline`` and ``fetch_timeout``.

        Raises ``UpstreamError`` (not loaded in time, or the load failed): the failure mode decides.
        """
        if self._root is not None:
            if self.stale and self._clock() - self._failed_at >= self.retry_seconds:
                self.refresh()
            return self._root
        idle = self._inflight is None or self._inflight.done()
        if idle and self._clock() - self._failed_at < self.retry_seconds:
            raise errors.UpstreamError(f"Sigstore trust root ({self.setting}) is not loaded: {self.last_error}")
        timeout = max(0.0, min(deadline.remaining(), self.fetch_timeout))
        try:
            return await asyncio.wait_for(asyncio.shield(self.refresh()), timeout)
        except TimeoutError as exc:
            raise errors.UpstreamError(
                f"Sigstore trust root ({self.setting}) not loaded within {timeout * 1000:.0f} ms"
            ) from exc
        except errors.PortcullisError as exc:
            raise errors.UpstreamError(f"Sigstore trust root ({self.setting}): {exc}") from exc

    def refresh(self) -> asyncio.Future[TrustRoots]:
        """Start a load in a daemon thread unless one runs; the future of the running one.

        A daemon thread, not the loop's executor: a TUF fetch that hangs must neither block the
        loop nor keep the process from exiting (executor threads are joined at exit).
        """
        if self._inflight is not None and not self._inflight.done():
            return self._inflight
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TrustRoots] = loop.create_future()
        future.add_done_callback(self._settled)

        def work() -> None:
            try:
                result = self._loader()
            except BaseException as exc:  # handed to the loop, which decides what it means
                _deliver(loop, future, None, exc)
                return
            _deliver(loop, future, result, None)

        threading.Thread(target=work, name="portcullis-trust-root", daemon=True).start()
        self._inflight = future
        return future

    async def refresh_forever(self) -> None:
        """Refresh every ``refresh_seconds`` (every minute until a first load succeeded)."""
        while True:
            await asyncio.sleep(self.refresh_seconds if self._root is not None else min(60.0, self.refresh_seconds))
            with contextlib.suppress(Exception):  # kept in last_error; the old root keeps serving
                await asyncio.wait_for(asyncio.shield(self.refresh()), self.fetch_timeout)

    def _settled(self, future: asyncio.Future[TrustRoots]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self._set(future.result())
        else:
            self.last_error = str(exc)
            self._failed_at = self._clock()

    def _set(self, root: TrustRoots) -> None:
        self._root = root
        self._loaded_at = self._clock()
        self.loads += 1
        self.last_error = ""


def _deliver(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[TrustRoots],
    result: TrustRoots | None,
    exc: BaseException | None,
) -> None:
    def settle() -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            assert result is not None
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
        loop.call_soon_threadsafe(settle)
