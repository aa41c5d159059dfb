"""List then watch one kind of object, like client-go's Reflector, in a worker thread.

The list is paged (``limit`` + ``continue``) and gives the resourceVersion the watch starts
from; every event (BOOKMARKs included) moves that version forward, so a dropped watch
resumes where it stopped. ``410 Gone`` (version compacted away, or continue token expired)
forces a fresh list; other failures reconnect with exponential backoff. A watch silent for
``watch_idle_timeout`` is reopened (the socket's read timeout), so a connection that hangs open
is found out, and staleness counts from the last word heard from the API server, not from
the moment a failure was noticed. Results reach the owner on its event loop
(``call_soon_threadsafe``) so the owner's state has a single writer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes.client
import urllib3
from kubernetes.watch.watch import iter_resp_lines

from webhook.config.kubernetes import KubernetesConfig
from webhook.kube import client

log = logging.getLogger("portcullis.kube")

Object = Mapping[str, Any]
OnReplace = Callable[[list[Object]], None]
OnEvent = Callable[[str, Object], None]


# The official client's keyword names for a list/watch call → the API's query parameters.
_QUERY_NAMES = {
    "limit": "limit",
    "_continue": "continue",
    "watch": "watch",
    "resource_version": "resourceVersion",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds",
}


def list_query(kwargs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The query parameters of a ``list_func`` call the reflector makes with the official
    client's keyword names (for list functions over collections the generated client lacks)."""
    return [
        (_QUERY_NAMES[k], ("true" if v else "false") if isinstance(v, bool) else str(v))
        for k, v in kwargs.items()
        if k in _QUERY_NAMES and v is not None
    ]


class _Gone(Exception):
    """The resourceVersion (or continue token) is too old: list again."""


class Reflector:
    """Keeps an owner in step with one collection: ``on_replace`` after each full list,
    ``on_event(type, object)`` for every ADDED / MODIFIED / DELETED."""

    def __init__(
        self,
        what: str,
        list_func: Callable[..., Any],
        config: KubernetesConfig,
        on_replace: OnReplace,
        on_event: OnEvent,
    ) -> None:
        self.what = what
        self._list_func = list_func
        self._config = config
        self._on_replace = on_replace
        self._on_event = on_event
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._response: Any = None
        self._synced = asyncio.Event()
        self.resource_version: str | None = None
        self.last_error: str | None = None
        self.disconnected_since: float | None = time.monotonic()
        self.last_heard = time.monotonic()  # a list page, a watch opened, or any watch line
        self.quiet_reopens = 0  # watches reopened after watch_idle_timeout of silence
        self.lists = 0  # full lists done (first one, then one per 410 Gone)
        self.watches = 0  # watch requests opened

    # -- owner side (event loop) -----------------------------------------------------------
    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"reflector-{self.what}", daemon=True)
        self._thread.start()

    def ready(self) -> bool:
        """True once the first list reached the owner."""
        return self._synced.is_set()

    async def wait_ready(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def stale_for(self) -> float:
        """Seconds the owner's view may lag the API server: 0 while the watch is connected and
        heard from within its idle timeout (plus one request's time to reopen it), else the time
        since the API server was last heard from."""
        silent = time.monotonic() - self.last_heard
        if self.disconnected_since is None and silent <= self._config.watch_idle_timeout + self._config.request_timeout:
            return 0.0
        return silent

    async def close(self) -> None:
        self._stopping.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()  # unblocks the thread's read on the watch stream
            except Exception:  # the stream may be closing on its own
                log.debug("shutdown of the %s watch failed", self.what, exc_info=True)
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 10)

    # -- worker thread ---------------------------------------------------------------------
    def _deliver(self, func: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not self._stopping.is_set():
            try:
                loop.call_soon_threadsafe(func, *args)
            except RuntimeError:  # loop closed under us during shutdown
                self._stopping.set()

    def _run(self) -> None:
        backoff = self._config.backoff_initial
        while not self._stopping.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                self._watch()
                backoff = self._config.backoff_initial
            except _Gone:
                log.info("%s: resourceVersion %s expired (410 Gone); listing again", self.what, self.resource_version)
                self.resource_version = None
            except Exception as exc:
                if self._stopping.is_set():
                    break
                self._lost(exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self._config.backoff_max)

    def _lost(self, exc: BaseException) -> None:
        if isinstance(exc, client.ApiStatusError | kubernetes.client.ApiException):
            status = getattr(exc, "status", "?")
            text = str(exc) if isinstance(exc, client.ApiStatusError) else f"HTTP {status}: {exc.reason}"
        else:
            text = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
        self.last_error = text[:300]
        if self.disconnected_since is None:
            self.disconnected_since = time.monotonic()
        log.warning("%s: watch failed (%s); reconnecting", self.what, self.last_error)

    def _connected(self) -> None:
        self.last_heard = time.monotonic()
        self.disconnected_since = None

    def _list(self) -> None:
        items: list[Object] = []
        token: str | None = None
        timeout = self._config.request_timeout
        while True:
            kwargs: dict[str, Any] = {"limit": self._config.list_page_size, "_request_timeout": timeout}
            if token:
                kwargs["_continue"] = token
            try:
                response = self._list_func(_preload_content=False, **kwargs)
            except kubernetes.client.ApiException as exc:
                if exc.status == 410:
                    raise _Gone from exc  # continue token expired mid-list
                raise
            body = client.read_json(response)
            items.extend(body.get("items") or ())
            metadata = body.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
        self.resource_version = str(metadata.get("resourceVersion") or "")
        self.lists += 1
        self._connected()
        self._deliver(self._replaced, items)

    def _replaced(self, items: list[Object]) -> None:
        self._on_replace(items)
        self._synced.set()

    def _watch(self) -> None:
        config = self._config
        try:  # the read timeout bounds each wait for data: the watch's idle timeout
            response = self._list_func(
                watch=True,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=config.watch_timeout,
                _preload_content=False,
                _request_timeout=(config.request_timeout, config.watch_idle_timeout),
            )
        except kubernetes.client.ApiException as exc:
            if exc.status == 410:
                raise _Gone from exc
            raise
        self._response = response
        self._connected()
        self.watches += 1
        try:
            if self._stopping.is_set():  # close() ran before the response was visible to it
                return
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self._stopping.is_set():
                    return
                self.last_heard = time.monotonic()
                if line:
                    self._event(line)
        except urllib3.exceptions.ReadTimeoutError:
            # Nothing for watch_idle_timeout: a quiet watch or one hung open; either way reopen
            # from the resourceVersion (an API server that is gone fails the reopening).
            self.quiet_reopens += 1
            log.debug("%s: no word on the watch for %gs; reopening it", self.what, config.watch_idle_timeout)
        except urllib3.exceptions.ProtocolError:
            if not self._stopping.is_set():
                raise
        finally:
            self._response = None
            response.release_conn()

    def _event(self, line: str) -> None:
        event = json.loads(line)
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Gone
            raise client.ApiStatusError(
                f"{self.what} watch: API server sent error {code}: {obj.get('message', '')}", int(code or 0)
            )
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if version:
                self.resource_version = str(version)
            return
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._deliver(self._on_event, kind, obj)
            if version:
                self.resource_version = str(version)
