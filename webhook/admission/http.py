"""HTTP/1.1 for the webhook's ports (wire stage): requests in, one write per response out.

The webhook serves a fixed table of a few routes; aiohttp's application (request and response
objects, router, middlewares, a stream reader per body, a writer per response) cost more CPU per
review than decoding and judging it. This is the part of HTTP a webhook needs and no more:
``llhttp`` (through ``httptools``: the same parser aiohttp and uvicorn use) parses, and the
protocol below owns the rest:

- bounded input: request heads up to ``MAX_HEAD_BYTES``, bodies up to the route table's limit
  (``Request.too_large``), pipelined requests queued up to ``MAX_QUEUED`` before reading pauses;
- a request's handler starts when its head is complete (as in aiohttp), one at a time per
  connection, and answers in order; a handler that answers before its body is in (a refusal)
  closes the connection after the answer, since the rest of the body cannot be skipped safely;
- idle keep-alive connections are closed after ``keepalive_timeout``; heads not complete
  ``head_timeout`` after their first byte (a new connection's first after it opened), and clients
  that do not read their answers for ``keepalive_timeout``, are cut off;
- only HTTP/1.0 and 1.1, ``chunked`` as the only transfer coding, ``Host`` on 1.1 (RFC 9112),
  and ``Expect: 100-continue`` as the only expectation; anything else is refused before a handler;
- ``GET`` routes answer ``HEAD``; other paths get 404, other methods 405 with ``Allow``;
- ``shutdown`` stops accepting, closes idle connections and lets requests in progress finish
  within a timeout (the webhook drains in-flight reviews on SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

import httptools

log = logging.getLogger("portcullis.http")

# A request line and headers longer than this are refused (aiohttp's own limits are 8 KiB per
# line and per field); the apiserver sends a few hundred bytes.
MAX_HEAD_BYTES = 32 * 1024
# Repeats of a header field (each joined into one value, so each costs a copy of the value so far).
MAX_REPEATED_FIELDS = 32
# Requests a client may pipeline ahead of the answers before the connection stops being read.
MAX_QUEUED = 16
# Requests parsed from reads already taken (up to 256 KiB each) before the connection is cut off.
MAX_PIPELINED = 4 * MAX_QUEUED
KEEPALIVE_TIMEOUT = 75.0  # aiohttp's default
# A head not complete this long after its first byte is cut off (slowloris: a head dribbled a byte
# at a time would otherwise hold the connection for the whole keep-alive timeout). The apiserver
# sends a head in one write.
HEAD_TIMEOUT = 10.0
# After answering a request whose body is still arriving (a refusal), the rest of the body is
# read and dropped for up to this long before the connection closes: closing a socket with
# unread data resets it, and the client could lose the answer (aiohttp's lingering_time is 10 s).
LINGER_SECONDS = 5.0

JSON = b"application/json"
JSON_UTF8 = b"application/json; charset=utf-8"
TEXT_UTF8 = b"text/plain; charset=utf-8"


class _Refused(Exception):
    """Raised from a parser callback to stop parsing at once (llhttp then reports a callback error)."""


# ``_refusal`` when the connection is cut off without an error answer (too deep a pipeline)
_CUT_OFF = (0, "")


class Response:
    """What a handler answers: status, body and its type, extra headers (name, value)."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: bytes,
        status: int = 200,
        content_type: bytes = JSON,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers = headers

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(text.encode(), status, TEXT_UTF8)


Handler = Callable[["Request"], Awaitable[Response]]


class Routes:
    """The route table: path -> method -> handler, and the largest body any route reads."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self.table: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        methods = self.table.setdefault(path, {})
        methods[method] = handler
        if method == "GET":
            methods.setdefault("HEAD", handler)


class Request:
    """One request: its head at once, its body when the parser has it all (``complete``)."""

    __slots__ = (
        "_chunks",
        "_waiter",
        "broken",
        "complete",
        "content_length",
        "error",
        "headers",
        "http10",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "size",
        "too_large",
    )

    def __init__(self, method: str, path: str, query_string: str, headers: dict[bytes, bytes]) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        # as received (bytes: decoding every field costs more than the few reads), names
        # lower-cased, repeated fields joined with ", "
        self.headers = headers
        length = headers.get(b"content-length")
        # llhttp refuses a malformed or repeated Content-Length before this is built
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self._chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.too_large = False  # more body than the route table's limit (the excess was dropped)
        self.broken = False  # the connection closed before the body was complete
        self._waiter: asyncio.Future[None] | None = None
        self.keep_alive = False
        self.http10 = False
        self.error: tuple[int, str] | None = None  # refused by the protocol before any handler

    @property
    def body(self) -> bytes:
        """The body received so far (all of it once ``complete``)."""
        chunks = self._chunks
        if len(chunks) == 1:
            return chunks[0]
        joined = b"".join(chunks)
        self._chunks = [joined]
        return joined

    def query(self, name: str) -> str | None:
        """The first value of query parameter ``name``, percent-decoded (as aiohttp's ``query``)."""
        query = self.query_string
        if not query:
            return None
        if "%" not in query and "+" not in query:  # nothing to decode: split it as parse_qsl would
            for pair in query.split("&"):
                key, _, value = pair.partition("=")
                if key == name:
                    return value
            return None
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == name:
                return value
        return None

    async def wait_body(self) -> None:
        """Until the body is complete, too large, or the connection is gone."""
        if self.complete:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    def _add(self, chunk: bytes, limit: int) -> None:
        if self.too_large:
            return
        self.size += len(chunk)
        if self.size > limit:
            self.too_large = True
            self._chunks = []
            self._finish()
        else:
            self._chunks.append(chunk)

    def _finish(self) -> None:
        self.complete = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))
    return line


class _Clock:
    """The ``Date`` header, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True).encode("ascii")
        return self._value


class HttpServer:
    """The connections of one listening port, and their graceful end."""

    def __init__(
        self,
        routes: Routes,
        *,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        head_timeout: float = HEAD_TIMEOUT,
        linger_seconds: float = LINGER_SECONDS,
    ) -> None:
        self.routes = routes
        self.keepalive_timeout = keepalive_timeout
        self.head_timeout = head_timeout
        # the loop's time as of the last sweep: when a head started, at no cost per request
        self.now = 0.0
        self.linger_seconds = linger_seconds
        self.connections: set[_Connection] = set()
        self.closing = False
        self.clock = _Clock()
        self._listener: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def protocol(self) -> _Connection:
        return _Connection(self)

    async def start(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None, backlog: int = 1024) -> None:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self.protocol, host, port, ssl=ssl_context, backlog=backlog, reuse_address=True
        )
        self.now = loop.time()
        self._sweeper = loop.create_task(self._sweep_idle())

    async def _sweep_idle(self) -> None:
        """Close connections idle past ``keepalive_timeout``, or in a head begun more than
        ``head_timeout`` ago. One sweep a second, not a timer per request: arming and cancelling
        one cost more than parsing."""
        loop = asyncio.get_running_loop()
        interval = min(1.0, self.keepalive_timeout / 4, self.head_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            self.now = now = loop.time()
            expired = now - self.keepalive_timeout
            head_expired = now - self.head_timeout
            for conn in [
                c
                for c in self.connections
                if (c.idle_since is not None and c.idle_since <= expired)
                or (c.head_started is not None and c.head_started <= head_expired)
            ]:
                conn.close_if_idle()

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting; close idle connections; let requests in progress end within ``timeout``."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        busy = [c.worker for c in self.connections if c.worker is not None and (c.serving or c.queue)]
        if busy:
            await asyncio.wait(busy, timeout=timeout)  # each ends after its answer (Connection: close)
        workers = [c.worker for c in self.connections if c.worker is not None and not c.worker.done()]
        for conn in list(self.connections):
            conn.abort()
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.wait(workers, timeout=1.0)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.wait_closed(), 1.0)


class _Connection(asyncio.Protocol):
    """One client connection: parser callbacks, the request queue, and the writes."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.routes = server.routes
        self.limit = server.routes.max_body_bytes
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        # One task per connection answers its requests in order (not a task per request: making
        # one costs more than waking one); ``serving`` while a handler runs.
        self.worker: asyncio.Task[None] | None = None
        self.serving = False
        self._wakeup: asyncio.Future[None] | None = None
        self.queue: deque[Request] = deque()
        self.current: Request | None = None  # the request being parsed
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._head_bytes = 0  # bytes read while a head was incomplete (the head split over reads)
        self._head_size = 0  # the current head's target and fields (a head within one read)
        self._repeats = 0
        self._head_error: tuple[int, str] | None = None  # found in a field, answered at the head's end
        self._refusal: tuple[int, str] | None = None  # why a callback stopped the parser
        self._in_body = False  # between a head and the end of its body
        self._lingering: asyncio.TimerHandle | None = None  # answered; dropping the rest of a body
        self._closed_for_reading = False
        self._reading_paused = False
        self._closed = False
        self._writable = True
        self._drained: asyncio.Future[None] | None = None
        self.head_started: float | None = None  # when the head being parsed began (sweeper's clock)
        # since when no request has been in progress (the sweeper closes the connection when
        # that is too long ago); None while one is
        self.idle_since: float | None = None

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.server.connections.add(self)
        self.head_started = self.server.now  # the first request is awaited as a head in progress
        self.worker = asyncio.get_running_loop().create_task(self._work())

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.connections.discard(self)
        for request in (self.current, *self.queue):
            if request is not None and not request.complete:
                request.broken = True
                request._finish()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._wake()

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._closed_for_reading:
            return
        if not self._in_body:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No route upgrades: answer what was parsed, then close (the rest is another protocol).
            self._stop_reading()
        except httptools.HttpParserError as exc:
            # a request whose body failed is answered with the error in place of its handler's
            # answer (its handler sees the body broken): one request, one response
            failed = self.current
            self._stop_reading()
            refusal = self._refusal
            if refusal is None:
                reason = str(exc).strip() or "malformed request"
                refusal = (400, f"Bad Request: {reason}")
            elif refusal is _CUT_OFF:
                return
            if failed is not None:
                failed.error = refusal
            else:
                self._enqueue_error(*refusal)
            return
        if not self._in_body and self._head_bytes > MAX_HEAD_BYTES:
            self._stop_reading()
            self._enqueue_error(431, f"Request Header Fields Too Large: the head exceeds {MAX_HEAD_BYTES} bytes")

    def _stop_reading(self) -> None:
        """Read no more from this connection: answer what is queued, then close."""
        self._closed_for_reading = True
        request = self.current
        if request is not None and not request.complete:
            request.broken = True
            request._finish()
        self.current = None
        self._in_body = False
        with contextlib.suppress(Exception):
            self.transport.pause_reading()

    # -- llhttp callbacks ---------------------------------------------------------------------

    def _refuse(self, status: int, reason: str) -> None:
        self._refusal = (status, reason)
        raise _Refused(reason)

    def on_message_begin(self) -> None:
        if len(self.queue) >= MAX_PIPELINED:
            # many requests in reads already taken: parsing them all would queue each (far more
            # memory than their bytes); answer those queued and close (the client retries the rest)
            self._refusal = _CUT_OFF
            raise _Refused("pipeline too deep")
        self._url = b""
        self._headers = {}
        self._head_size = 0
        self._repeats = 0
        self._head_error = None
        self.current = None
        self.head_started = self.server.now

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD_BYTES:
            self._refuse(414, f"URI Too Long: the request target exceeds {MAX_HEAD_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # a whole head can arrive in one read (data_received's count only sees heads split over reads)
        size = self._head_size + len(name) + len(value) + 4
        self._head_size = size
        if size > MAX_HEAD_BYTES:
            self._refuse(431, f"Request Header Fields Too Large: the head exceeds {MAX_HEAD_BYTES} bytes")
        if self._in_body:
            return  # a trailer field (RFC 9110 6.5.1: not merged into the header fields; counted above)
        key = name.lower()
        headers = self._headers
        if key in headers:
            self._repeats += 1
            if self._repeats > MAX_REPEATED_FIELDS:
                self._refuse(431, f"Request Header Fields Too Large: more than {MAX_REPEATED_FIELDS} repeated fields")
            if key == b"host":  # RFC 9112 3.2
                self._head_error = (400, "Bad Request: more than one Host header")
            headers[key] += b", " + value
        else:
            headers[key] = value

    def on_headers_complete(self) -> None:
        self.head_started = None
        self._in_body = True
        self._head_bytes = 0
        self.idle_since = None
        url = self._url
        # origin-form with nothing to split or decode (the apiserver's is not: it sends ?timeout=)
        if url[:1] == b"/" and b"?" not in url and b"%" not in url and b"#" not in url:
            path, query = url.decode("latin-1"), ""
        else:
            parsed = httptools.parse_url(url)
            path = parsed.path.decode("latin-1")
            if "%" in path:
                path = unquote(path)
            query = parsed.query.decode("latin-1") if parsed.query else ""
        headers = self._headers
        request = Request(self.parser.get_method().decode("ascii"), path, query, headers)
        version = self.parser.get_http_version()
        if version == "1.1":
            if b"host" not in headers:  # RFC 9112 3.2
                self._head_error = (400, "Bad Request: HTTP/1.1 request without a Host header")
        elif version == "1.0":
            request.http10 = True
        else:  # llhttp also reads HTTP/0.9 request lines and versions such as 2.0
            self._head_error = (505, "HTTP Version Not Supported: only HTTP/1.0 and HTTP/1.1")
        if b"transfer-encoding" in headers:
            # RFC 9112 6.1: a coding not understood is a 501 (the body is not what it looks like);
            # Transfer-Encoding in HTTP/1.0 is faulty framing
            if request.http10:
                self._head_error = (400, "Bad Request: Transfer-Encoding in an HTTP/1.0 request")
            elif headers[b"transfer-encoding"].lower() != b"chunked":
                self._head_error = (501, "Not Implemented: transfer codings other than chunked")
        expect = headers.get(b"expect")
        if expect is not None and expect.lower() != b"100-continue":  # RFC 9110 10.1.1
            self._head_error = (417, "Expectation Failed: only 100-continue is supported")
        if self._head_error is None:
            request.keep_alive = self.parser.should_keep_alive()
        else:
            # answered without a handler and closed (keep_alive stays False); the body, if any,
            # is read and dropped as for any refusal
            request.error = self._head_error
        self.current = request
        self._enqueue(request)

    def on_body(self, chunk: bytes) -> None:
        request = self.current
        if request is not None:
            request._add(chunk, self.limit)

    def on_message_complete(self) -> None:
        request = self.current
        if request is not None:
            request._finish()
        self.current = None
        self._in_body = False
        if self._lingering is not None:
            self._close()

    # -- requests -----------------------------------------------------------------------------

    def _enqueue_error(self, status: int, reason: str) -> None:
        failed = Request("", "", "", {})
        failed.complete = True
        failed.error = (status, reason)
        self._enqueue(failed)

    def _enqueue(self, request: Request) -> None:
        if self._lingering is not None:
            return  # the connection closes once the body before this is in: never answered
        self.queue.append(request)
        if self._wakeup is not None:
            self._wake()
        elif len(self.queue) >= MAX_QUEUED and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _work(self) -> None:
        """Answer the queued requests in order, for as long as the connection lasts."""
        loop = asyncio.get_running_loop()
        queue = self.queue
        try:
            while not self._closed:
                if not queue:
                    self.idle_since = loop.time()
                    self._wakeup = loop.create_future()
                    await self._wakeup
                    continue
                self.serving = True
                try:
                    keep_alive = await self._serve(queue[0])
                finally:
                    self.serving = False
                queue.popleft()
                if not keep_alive:
                    if self._in_body and not self._closed_for_reading and not self._closed:
                        self._lingering = loop.call_later(self.server.linger_seconds, self._close)
                        self.current = None  # what is left of the body is dropped
                        if self._reading_paused:
                            self._reading_paused = False
                            self.transport.resume_reading()
                    return
                if self._reading_paused and len(queue) < MAX_QUEUED and not self._closed_for_reading:
                    # room again (also for the body of the request last queued, not yet all read)
                    self._reading_paused = False
                    self.transport.resume_reading()
                if not self._writable and not self._closed:
                    # the client is not reading its answers: wait (the buffer stays at its
                    # high-water mark), but not for ever
                    self._drained = drained = loop.create_future()
                    await asyncio.wait((drained,), timeout=self.server.keepalive_timeout)
                    if not drained.done():
                        log.info("closing a connection whose client has not read its answers")
                        self.abort()
                        return
        except Exception:  # a bug here must not leave the connection open and unanswered
            log.exception("HTTP connection failed")
            self._close()
        finally:
            if self._lingering is None:
                self._close()

    async def _serve(self, request: Request) -> bool:
        """Answer ``request``; True if the connection may carry another."""
        error = request.error
        head_only = request.method == "HEAD"
        if error is not None:
            response = Response.text(error[1] + "\n", error[0])
        else:
            methods = self.routes.table.get(request.path)
            handler = methods.get(request.method) if methods is not None else None
            if handler is not None:
                if (
                    not request.complete
                    and b"expect" in request.headers  # only 100-continue gets this far
                    and not request.http10  # RFC 9110 10.1.1: never to an HTTP/1.0 client
                    and (request.content_length is None or request.content_length <= self.limit)
                ):
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                try:
                    response = await handler(request)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("handler for %s %s failed", request.method, request.path)
                    response = Response.text("500: Internal Server Error\n", 500)
                if request.error is not None:  # its body failed to parse while the handler ran
                    response = Response.text(request.error[1] + "\n", request.error[0])
            elif methods is None:
                response = Response.text("404: Not Found", 404)
            else:
                allow = ",".join(sorted(methods))
                response = Response.text("405: Method Not Allowed", 405)
                response.headers = (("Allow", allow),)
        # The connection carries another request only if this one was read to its end and the
        # client keeps it open; once reading stopped (a malformed request), what was already
        # queued is answered and then the connection closes.
        keep_alive = (
            request.keep_alive
            and request.complete
            and not request.too_large
            and not self.server.closing
            and not (self._closed_for_reading and len(self.queue) == 1)
        )
        self._write(response, keep_alive, request.http10, head_only)
        return keep_alive

    def _write(self, response: Response, keep_alive: bool, http10: bool, head_only: bool) -> None:
        """The whole response in one write (one TLS record for a review's answer)."""
        if self._closed:
            return
        extra = b""
        if response.headers or not keep_alive or http10:
            extra = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in response.headers)
            if not keep_alive:
                extra += b"Connection: close\r\n"
            elif http10:
                extra += b"Connection: keep-alive\r\n"
        body = response.body
        self.transport.write(
            b"%sContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n%s\r\n%s"
            % (
                _status_line(response.status),
                response.content_type,
                len(body),
                self.server.clock.date(),
                extra,
                b"" if head_only else body,
            )
        )

    # -- closing ------------------------------------------------------------------------------

    def close_if_idle(self) -> None:
        if not self.serving and not self.queue and not self._in_body:
            self._close()

    def _close(self) -> None:
        if self._lingering is not None:
            self._lingering.cancel()
        if not self._closed and self.transport is not None:
            self._closed = True
            self.transport.close()
            if self.transport.get_write_buffer_size():
                # a plain transport's close waits for its buffer to drain, for ever if the client
                # never reads (TLS has its own shutdown timeout)
                asyncio.get_running_loop().call_later(self.server.keepalive_timeout, self.transport.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self._closed = True
            self.transport.abort()
