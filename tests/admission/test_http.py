"""The webhook's HTTP/1.1 layer (``admission.http``) on a real loopback socket, byte for byte.

A client of raw bytes (asyncio streams) speaks to an ``HttpServer`` with a small route table:
routing, HEAD, pipelining, chunked bodies, 100-continue, HTTP/1.0, the limits on heads and
bodies, request smuggling attempts, a handler that fails, a client that leaves mid-body, the
idle timeout and the graceful shutdown. The webhook's own endpoints over TLS are tested in
``test_server.py``; the timeouts below are hang guards, not timing assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from webhook.admission import http


class Recorder:
    """Handlers that echo what they were given, and what they saw of their body."""

    def __init__(self) -> None:
        self.seen: list[http.Request] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def echo(self, request: http.Request) -> http.Response:
        self.seen.append(request)
        self.entered.set()
        await self.gate.wait()
        await request.wait_body()
        if request.too_large:
            return http.Response.text("too large", 413)
        if request.broken:
            return http.Response.text("broken", 400)
        return http.Response(request.body)

    async def query(self, request: http.Request) -> http.Response:
        return http.Response.text(f"{request.path}|{request.query('timeout')}")

    async def fail(self, _request: http.Request) -> http.Response:
        raise RuntimeError("a bug")

    async def big(self, _request: http.Request) -> http.Response:
        return http.Response(b"b" * (8 * 1024 * 1024))


@pytest.fixture
async def served() -> AsyncIterator[tuple[http.HttpServer, int, Recorder]]:
    recorder = Recorder()
    routes = http.Routes(max_body_bytes=64)
    routes.add("POST", "/echo", recorder.echo)
    routes.add("GET", "/query", recorder.query)
    routes.add("GET", "/fail", recorder.fail)
    routes.add("GET", "/big", recorder.big)
    server = http.HttpServer(routes, keepalive_timeout=0.5, linger_seconds=0.5)
    await server.start("127.0.0.1", 0, ssl_context=None)
    assert server._listener is not None
    port = server._listener.sockets[0].getsockname()[1]
    try:
        yield server, port, recorder
    finally:
        await server.shutdown(timeout=1.0)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-cased names), body (by its Content-Length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
    return status, headers, body


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 10) == b""


async def test_routes_404_405_and_head(served: Any) -> None:
    _, port, _ = served
    reader, writer = await connect(port)
    writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[::2] == (404, b"404: Not Found")
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, headers["allow"], body) == (405, "POST", b"405: Method Not Allowed")
    writer.write(b"HEAD /query HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 11\r\n" in head  # the GET's length, and no body follows:
    writer.write(b"GET /query HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[2] == b"/query|None"
    writer.close()


async def test_pipelined_requests_are_answered_in_order(served: Any) -> None:
    _, port, recorder = served
    reader, writer = await connect(port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none"
        b"GET /query?timeout=2s HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\ntwo"
    )
    answers = [await read_response(reader) for _ in range(3)]
    assert [body for _, _, body in answers] == [b"one", b"/query|2s", b"two"]
    assert len(recorder.seen) == 2
    writer.close()


async def test_a_chunked_body_is_reassembled(served: Any) -> None:
    _, port, _ = served
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await writer.drain()
    writer.write(b"4\r\ndefg\r\n0\r\n\r\n")
    assert (await read_response(reader))[::2] == (200, b"abcdefg")
    writer.close()


async def test_a_body_sent_in_pieces_is_awaited(served: Any) -> None:
    _, port, recorder = served
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
    await asyncio.wait_for(recorder.entered.wait(), 10)  # the handler runs once the head is in
    writer.write(b"56789")
    assert (await read_response(reader))[::2] == (200, b"0123456789")
    writer.close()


async def test_query_values_are_percent_decoded_and_the_first_wins(served: Any) -> None:
    _, port, _ = served
    reader, writer = await connect(port)
    writer.write(b"GET /%71uery?timeout=1%30s&timeout=9s HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[2] == b"/query|10s"
    writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT A REQUEST\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        # request smuggling: both framings at once must not be accepted
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /query HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ],
)
async def test_malformed_requests_get_400_and_the_connection_closes(served: Any, raw: bytes) -> None:
    _, port, recorder = served
    reader, writer = await connect(port)
    writer.write(raw)
    status, headers, body = await read_response(reader)
    assert status == 400
    assert body.startswith(b"Bad Request")
    assert headers["connection"] == "close"
    assert await closed(reader)
    assert all(r.body in (b"", b"abc") for r in recorder.seen)  # no handler got a smuggled body
    writer.close()


async def test_a_request_answered_before_a_malformed_one_still_gets_its_answer(served: Any) -> None:
    _, port, _ = served
    reader, writer = await connect(port)
    writer.write(b"GET /query HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    assert (await read_response(reader))[0] == 400
    assert await closed(reader)
    writer.close()


async def test_an_oversized_head_is_refused(served: Any) -> None:
    _, port, _ = served
    reader, writer = await connect(port)
    writer.write(b"GET /query HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (http.MAX_HEAD_BYTES + 10))
    status, headers, _ = await read_response(reader)
    assert status == 431
    assert headers["connection"] == "close"
    assert await closed(reader)
    writer.close()


async def test_a_body_over_the_limit_is_dropped_and_the_connection_closed(served: Any) -> None:
    _, port, recorder = served
    reader, writer = await connect(port)
    chunk = b"x" * 40
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(b"28\r\n" + chunk + b"\r\n28\r\n" + chunk + b"\r\n")  # 80 bytes > 64, and not ended
    status, headers, body = await read_response(reader)
    assert (status, body) == (413, b"too large")
    assert headers["connection"] == "close"
    assert recorder.seen[0].body == b""  # what was over the limit was not kept
    assert await closed(reader)  # after the linger time (0.5 s here): the body never ends
    writer.close()


async def test_expect_100_continue_gets_the_interim_answer(served: Any) -> None:
    _, port, _ = served
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    assert (await read_response(reader))[::2] == (200, b"ok")
    writer.close()


async def test_http10_closes_unless_asked_to_keep_alive(served: Any) -> None:
    _, port, _ = served
    reader, writer = await connect(port)
    writer.write(b"GET /query HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (200, "keep-alive")
    writer.write(b"GET /query HTTP/1.0\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (200, "close")
    assert await closed(reader)
    writer.close()


async def test_connection_close_is_honoured(served: Any) -> None:
    _, port, _ = served
    reader, writer = await connect(port)
    writer.write(b"GET /query HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await read_response(reader))[1]["connection"] == "close"
    assert await closed(reader)
    writer.close()


async def test_a_failing_handler_is_a_500_and_the_connection_goes_on(served: Any) -> None:
    _, port, _ = served
    reader, writer = await connect(port)
    writer.write(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\nGET /query HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 500
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_a_client_leaving_mid_body_releases_the_handler(served: Any) -> None:
    _, port, recorder = served
    _, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nabc")
    await asyncio.wait_for(recorder.entered.wait(), 10)
    writer.close()
    request = recorder.seen[0]
    await asyncio.wait_for(request.wait_body(), 10)
    assert request.broken


async def test_idle_keep_alive_connections_and_unfinished_heads_are_closed(served: Any) -> None:
    _, port, _ = served
    reader, writer = await connect(port)
    writer.write(b"GET /query HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_response(reader)
    assert await closed(reader)  # after keepalive_timeout (0.5 s here)
    writer.close()
    reader, writer = await connect(port)
    writer.write(b"GET /query HTTP/1.1\r\nHo")  # a head that never ends
    assert await closed(reader)
    writer.close()


async def test_shutdown_lets_the_request_in_progress_finish(served: Any) -> None:
    server, port, recorder = served
    idle_reader, idle_writer = await connect(port)
    reader, writer = await connect(port)
    recorder.gate.clear()
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nlast")
    await asyncio.wait_for(recorder.entered.wait(), 10)
    stopping = asyncio.create_task(server.shutdown(timeout=10))
    assert await closed(idle_reader)  # the idle connection goes at once
    with pytest.raises(OSError):
        await connect(port)  # and no new one is accepted
    recorder.gate.set()
    status, headers, body = await read_response(reader)
    assert (status, body, headers["connection"]) == (200, b"last", "close")
    await asyncio.wait_for(stopping, 10)
    writer.close()
    idle_writer.close()


class CountingTransport:
    """Records each write, to show how a response leaves (no socket: the count is the point)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def test_each_response_leaves_in_one_write() -> None:
    """One ``write`` per response, head and body together: one TLS record and one send, as the
    bare echo sends (aiohttp also wrote once, through several more layers of objects)."""
    routes = http.Routes(max_body_bytes=1024)

    async def answer(_request: http.Request) -> http.Response:
        return http.Response(b'{"allowed":true}')

    routes.add("POST", "/validate", answer)
    conn = http.HttpServer(routes).protocol()
    transport = CountingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    for _ in range(3):
        conn.data_received(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        while conn.serving or conn.queue:
            await asyncio.sleep(0)
    assert len(transport.writes) == 3
    for written in transport.writes:
        head, _, body = written.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nContent-Length: 16" in head
        assert b"\r\nDate: " in head
        assert body == b'{"allowed":true}'
    conn.connection_lost(None)
    assert conn.worker is not None
    await asyncio.wait_for(conn.worker, 10)


async def test_a_long_pipeline_pauses_reading_and_is_answered_whole_in_order(served: Any) -> None:
    """Past ``MAX_QUEUED`` requests ahead of their answers the connection is not read (memory
    stays bounded); it is read again as answers go out, also for a body still arriving."""
    _, port, recorder = served
    reader, writer = await connect(port)
    recorder.gate.clear()
    count = http.MAX_QUEUED + 4
    for i in range(count - 1):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n%02d" % i)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nl")  # the last body, half sent
    await writer.drain()
    await asyncio.wait_for(recorder.entered.wait(), 10)
    recorder.gate.set()
    writer.write(b"a")
    bodies = [(await read_response(reader))[2] for _ in range(count)]
    assert bodies == [b"%02d" % i for i in range(count - 1)] + [b"la"]
    writer.close()


async def test_a_refused_body_is_drained_so_the_client_reads_the_answer(served: Any) -> None:
    """Answered before its body is in (over the limit): the rest is read and dropped before the
    connection closes, so the client is not reset while still sending and gets the answer."""
    _, port, recorder = served
    reader, writer = await connect(port)
    size = 4 * 1024 * 1024
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
    chunk = b"x" * 65536
    for _ in range(size // len(chunk)):
        writer.write(chunk)
        await writer.drain()  # fails with a reset if the server closed on unread data
    status, headers, body = await read_response(reader)
    assert (status, body, headers["connection"]) == (413, b"too large", "close")
    assert await closed(reader)
    assert recorder.seen[0].body == b""
    writer.close()


# -- adversarial review (issue 22 follow-up): each test below failed before its fix ------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        # the whole head in one read: the limits must hold however the bytes arrive
        (b"GET /query?" + b"a" * (http.MAX_HEAD_BYTES + 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /query HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (http.MAX_HEAD_BYTES + 10) + b"\r\n\r\n", 431),
        # a field repeated (joined into one value each time): bounded in count, not only in bytes
        (b"GET /query HTTP/1.1\r\nHost: x\r\n" + b"X: a\r\n" * (http.MAX_REPEATED_FIELDS + 2) + b"\r\n", 431),
        # a head that follows a body in the same read is counted too
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz"
            b"GET /query HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (http.MAX_HEAD_BYTES + 10) + b"\r\n\r\n",
            431,
        ),
    ],
    ids=["url", "field", "repeated-field", "head-after-body"],
)
async def test_a_head_over_the_limit_in_one_read_is_refused(served: Any, raw: bytes, status: int) -> None:
    _, port, _ = served
    reader, writer = await connect(port)
    writer.write(raw)
    answer = await read_response(reader)
    if raw.startswith(b"POST"):  # the request before the big head is answered first
        assert answer[::2] == (200, b"z")
        answer = await read_response(reader)
    assert answer[0] == status
    assert answer[1]["connection"] == "close"
    assert await closed(reader)
    writer.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        # RFC 9112 3.2: a 1.1 request without Host, or with more than one, is a 400
        (b"GET /query HTTP/1.1\r\n\r\n", 400),
        (b"GET /query HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        # RFC 9112 6.1: a transfer coding not understood is a 501 (the body is not what it looks like)
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501),
        # ... and Transfer-Encoding in HTTP/1.0 is faulty framing
        (b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        # only HTTP/1.0 and 1.1 are spoken (llhttp also reads 0.9 and "2.0" request lines)
        (b"GET /query\r\n\r\n", 505),
        (b"GET /query HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        # RFC 9110 10.1.1: an expectation not met is a 417
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\na", 417),
    ],
    ids=["no-host", "two-hosts", "gzip-chunked", "http10-te", "http09", "http20", "expect"],
)
async def test_requests_the_rfcs_refuse_are_refused_before_any_handler(served: Any, raw: bytes, status: int) -> None:
    _, port, recorder = served
    reader, writer = await connect(port)
    writer.write(raw)
    answer = await read_response(reader)
    assert answer[0] == status
    assert answer[1]["connection"] == "close"
    assert await closed(reader)
    assert recorder.seen == []
    writer.close()


@pytest.mark.parametrize(
    "head",
    [
        b"POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",  # RFC 9110 10.1.1
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 9999\r\n\r\n",  # over the limit
    ],
    ids=["http10", "too-large"],
)
async def test_no_100_continue_for_a_client_that_must_not_get_one(served: Any, head: bytes) -> None:
    _, port, recorder = served
    reader, writer = await connect(port)
    recorder.gate.clear()
    writer.write(head)
    await asyncio.wait_for(recorder.entered.wait(), 10)
    writer.write(b"ok" if b"HTTP/1.0" in head else b"x" * 100)
    recorder.gate.set()
    status, _, _ = await read_response(reader)  # the final answer, with no interim one before
    assert status in (200, 413)
    writer.close()


@pytest.mark.parametrize("connection", [b"keep-alive", b"close"])
async def test_a_client_that_never_reads_its_answers_is_disconnected(served: Any, connection: bytes) -> None:
    """The write buffer does not grow past its high-water mark (the worker waits for it to drain),
    and a connection that never drains is aborted after ``keepalive_timeout`` (0.5 s here) rather
    than held for ever; also when it was to close after that answer (a plain transport's close
    waits for its buffer to drain, with no limit)."""
    server, port, _ = served
    _, writer = await connect(port)
    writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: %s\r\n\r\n" % connection * 4)
    await writer.drain()
    for _ in range(1000):  # hang guard, not a timing assertion
        await asyncio.sleep(0.02)
        if not server.connections:
            break
    assert not server.connections
    writer.close()


class PausableTransport(CountingTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


async def test_a_deep_pipeline_in_one_read_is_cut_off() -> None:
    """Thousands of tiny requests in one read are not all queued (each costs far more memory than
    its bytes): past ``MAX_PIPELINED`` the connection stops being read and closes after the
    answers queued, which RFC 9112 9.3.2 lets a server do (the client retries the rest)."""
    routes = http.Routes(max_body_bytes=1024)

    async def answer(_request: http.Request) -> http.Response:
        return http.Response(b"{}")

    routes.add("GET", "/q", answer)
    conn = http.HttpServer(routes).protocol()
    transport = PausableTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(b"GET /q HTTP/1.1\r\nHost: x\r\n\r\n" * 5000)
    assert len(conn.queue) <= http.MAX_PIPELINED
    assert transport.paused
    assert conn.worker is not None
    await asyncio.wait_for(conn.worker, 10)
    assert len(transport.writes) == http.MAX_PIPELINED
    assert b"Connection: close\r\n" in transport.writes[-1]


async def test_a_body_that_fails_to_parse_gets_one_answer_not_two(served: Any) -> None:
    """The handler started at the head sees its body broken; the parser's 400 replaces its answer
    (one request, one response: a second, unasked-for response is a desync for any proxy)."""
    _, port, recorder = served
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await asyncio.wait_for(recorder.entered.wait(), 10)
    writer.write(b"zz\r\n")
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"]) == (400, "close")
    assert body.startswith(b"Bad Request: Invalid character in chunk size")
    assert await asyncio.wait_for(reader.read(), 10) == b""  # nothing more: no second answer
    writer.close()


async def test_a_head_dribbled_slowly_is_cut_off_before_the_keepalive_timeout() -> None:
    """Slowloris: a head sent a byte at a time is closed after ``head_timeout`` from its first
    byte, however long the keep-alive timeout (60 s here; the test's 10 s is a hang guard)."""
    routes = http.Routes(max_body_bytes=64)
    server = http.HttpServer(routes, keepalive_timeout=60, head_timeout=0.3)
    await server.start("127.0.0.1", 0, ssl_context=None)
    assert server._listener is not None
    port = server._listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await connect(port)
        writer.write(b"GET /query HTTP/1.1\r\nX-")
        for _ in range(200):
            await asyncio.sleep(0.05)
            if reader.at_eof() or writer.is_closing():
                break
            writer.write(b"a")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            with contextlib.suppress(asyncio.TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.01) == b"":
                    break
        assert not server.connections
        writer.close()
    finally:
        await server.shutdown(timeout=1.0)


async def test_trailer_fields_are_not_merged_into_the_headers(served: Any) -> None:
    """RFC 9110 6.5.1: trailers arrive after the handler has read the head, and must not be
    treated as header fields (a trailing ``Host`` or ``Expect`` would change the request)."""
    _, port, recorder = served
    reader, writer = await connect(port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nHost: evil\r\nX-Trailer: 1\r\n\r\n"
    )
    assert (await read_response(reader))[::2] == (200, b"abc")
    assert recorder.seen[0].headers == {b"host": b"x", b"transfer-encoding": b"chunked"}
    writer.close()


async def test_a_connection_that_never_sends_a_request_is_closed_after_head_timeout() -> None:
    """A connection opened and left silent waits ``head_timeout`` for its first request, not the
    keep-alive timeout (60 s here; the 10 s below is a hang guard)."""
    routes = http.Routes(max_body_bytes=64)
    server = http.HttpServer(routes, keepalive_timeout=60, head_timeout=0.3)
    await server.start("127.0.0.1", 0, ssl_context=None)
    assert server._listener is not None
    port = server._listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await connect(port)
        assert await closed(reader)
        writer.close()
    finally:
        await server.shutdown(timeout=1.0)
