"""The lean HTTP/1.1 client (reversehttp_gateway/client/http1_client.py) against real sockets.

Each test runs an origin on a loopback port (:mod:`.raw_origin`) that reads raw requests and
writes raw responses, so framing, keep-alive and failure cases are exactly what the test writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import string
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reversehttp_gateway.client.http1_client import (
    ConnectFailed,
    Http1Error,
    Http1Pool,
    Http1Timeout,
    is_plain_target,
)

from .raw_origin import Exchange, Origin, echo, ok

HOST = [(b"Host", b"origin.test")]


async def fetch(pool: Http1Pool, target: bytes = b"/", **kwargs: object) -> tuple[int, bytes]:
    response = await pool.request(kwargs.pop("method", b"GET"), target, HOST, timeout=5, **kwargs)  # type: ignore[arg-type]
    try:
        return response.status, await response.read_all()
    finally:
        response.close()


async def test_keeps_connections_alive_with_tcp_nodelay() -> None:
    async with Origin(echo) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        for n in range(3):
            assert await fetch(pool, b"/n%d" % n) == (200, b"GET /n%d HTTP/1.1" % n)
        assert origin.connections == 1
        assert pool.idle == 1
        sock = pool._idle[0].transport.get_extra_info("socket")  # the pooled client socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        await pool.aclose()


async def test_sends_headers_as_given_and_frames_bytes_bodies() -> None:
    async with Origin(echo) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        headers = [(b"Host", b"origin.test"), (b"X-Case", b"Kept")]
        response = await pool.request(b"POST", b"/p?q=1", headers, b"data", timeout=5)
        assert await response.read_all() == b"data"
        empty = await pool.request(b"POST", b"/e", HOST, b"", timeout=5)
        await empty.read_all()
        get = await pool.request(b"GET", b"/g", HOST, timeout=5)
        await get.read_all()
        first, second, third = origin.exchanges
        assert first.request_line == "POST /p?q=1 HTTP/1.1"
        assert b"\r\nX-Case: Kept\r\n" in first.head  # name case and order kept
        assert first.header("content-length") == "4"
        assert second.header("content-length") == "0"  # like httpx for an empty POST
        assert third.header("content-length") is None and third.header("transfer-encoding") is None
        await pool.aclose()


async def test_response_head_keeps_the_peers_case_and_reason() -> None:
    async def serve(exchange: Exchange) -> bool:
        await exchange.answer(
            b"HTTP/1.1 299 Fine Thanks\r\nX-Mixed-Case: a\r\nSet-Cookie: a=1\r\n"
            b"Set-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok"
        )
        return True

    async with Origin(serve) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        response = await pool.request(b"GET", b"/", HOST, timeout=5)
        assert (response.status, response.reason) == (299, b"Fine Thanks")
        assert response.headers[:3] == [
            (b"X-Mixed-Case", b"a"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ]
        assert response.header(b"x-mixed-case") == b"a"
        assert await response.read_all() == b"ok"
        await pool.aclose()


async def test_chunked_and_close_delimited_bodies() -> None:
    async def serve(exchange: Exchange) -> bool:
        if exchange.request_line.startswith("GET /chunked"):
            await exchange.answer(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            return True
        await exchange.answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")  # no framing: to EOF
        return False

    async with Origin(serve) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        assert await fetch(pool, b"/chunked") == (200, b"hello world")
        assert pool.idle == 1
        assert await fetch(pool, b"/close") == (200, b"until the end")
        assert pool.idle == 0  # a body delimited by the close cannot be followed by another
        assert await fetch(pool, b"/chunked") == (200, b"hello world")
        assert origin.connections == 2
        await pool.aclose()


async def test_connection_close_and_http10_are_not_reused() -> None:
    async def serve(exchange: Exchange) -> bool:
        if "/old" in exchange.request_line:
            await exchange.answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            await exchange.answer(ok(b"ok", b"Connection: close\r\n"))
        return True  # the client must not wait for the origin to close

    async with Origin(serve) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        assert await fetch(pool, b"/old") == (200, b"ok")
        assert await fetch(pool, b"/close") == (200, b"ok")
        assert await fetch(pool, b"/close") == (200, b"ok")
        assert origin.connections == 3
        await pool.aclose()


async def test_head_response_has_no_body_and_keeps_the_connection() -> None:
    async def serve(exchange: Exchange) -> bool:
        await exchange.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        return True

    async with Origin(serve) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        assert await fetch(pool, method=b"HEAD") == (200, b"")
        assert await fetch(pool, method=b"HEAD") == (200, b"")
        assert origin.connections == 1
        await pool.aclose()


async def test_skips_interim_responses() -> None:
    async def serve(exchange: Exchange) -> bool:
        await exchange.answer(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"))
        return True

    async with Origin(serve) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        assert await fetch(pool, method=b"POST", body=b"x") == (200, b"final")
        await pool.aclose()


async def test_an_idle_connection_the_origin_closed_is_replaced() -> None:
    async def serve(exchange: Exchange) -> bool:
        await exchange.answer(ok(b"once"))
        return False  # close after every response, without saying so

    async with Origin(serve) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        assert await fetch(pool) == (200, b"once")
        await asyncio.sleep(0.1)  # the close reaches the client while the connection is idle
        assert pool.idle == 0
        assert await fetch(pool) == (200, b"once")
        assert origin.connections == 2
        await pool.aclose()


async def test_a_reused_connection_closed_under_a_get_is_retried_but_not_a_post() -> None:
    answered = 0

    async def serve(exchange: Exchange) -> bool:
        nonlocal answered
        if exchange.connection == 1 and answered:  # the race: closed as the request arrived
            return False
        answered += 1
        await exchange.answer(ok(b"fine"))
        return True

    async with Origin(serve) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        assert await fetch(pool) == (200, b"fine")
        assert await fetch(pool) == (200, b"fine")  # sent again on a new connection
        assert origin.connections == 2
        assert len(origin.exchanges) == 3

    async with Origin(serve) as origin:
        answered = 0
        pool = Http1Pool("127.0.0.1", origin.port)
        assert await fetch(pool) == (200, b"fine")
        with pytest.raises(Http1Error):
            await fetch(pool, method=b"POST", body=b"not twice")
        assert len(origin.exchanges) == 2
        await pool.aclose()


async def test_bytes_while_idle_make_a_connection_unusable() -> None:
    async def serve(exchange: Exchange) -> bool:
        await exchange.answer(ok(b"first") + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
        return True

    async with Origin(serve) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        assert await fetch(pool) == (200, b"first")
        assert await fetch(pool) == (200, b"first")  # never the stray "stale" response
        assert origin.connections == 2
        await pool.aclose()


async def test_streams_request_bodies_chunked_or_with_their_length() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for n in range(5):
            yield bytes([n]) * 1000
            await asyncio.sleep(0)

    async with Origin(echo) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        expected = b"".join(bytes([n]) * 1000 for n in range(5))
        assert await fetch(pool, method=b"PUT", body=pieces()) == (200, expected)
        assert origin.exchanges[0].header("transfer-encoding") == "chunked"
        headers = [*HOST, (b"content-length", b"5000")]
        response = await pool.request(b"PUT", b"/", headers, pieces(), timeout=5)
        assert await response.read_all() == expected
        assert origin.exchanges[1].header("transfer-encoding") is None
        assert origin.connections == 1
        await pool.aclose()


async def test_reads_a_large_body_in_pieces() -> None:
    data = bytes(range(256)) * 80_000  # 20 MiB

    async def serve(exchange: Exchange) -> bool:
        await exchange.answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data))
        for offset in range(0, len(data), 1 << 20):
            await exchange.answer(data[offset : offset + (1 << 20)])
        return True

    async with Origin(serve) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        response = await pool.request(b"GET", b"/", HOST, timeout=5)
        digest, pieces, largest = hashlib.sha256(), 0, 0
        while piece := await response.read():
            digest.update(piece)
            pieces += 1
            largest = max(largest, len(piece))
        assert digest.digest() == hashlib.sha256(data).digest()
        assert pieces > 10 and largest < len(data) // 4
        assert pool.idle == 1
        await pool.aclose()


async def test_an_unread_body_drops_its_connection() -> None:
    async with Origin(echo) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        response = await pool.request(b"GET", b"/", HOST, timeout=5)
        response.close()
        assert pool.idle == 0
        assert await fetch(pool) == (200, b"GET / HTTP/1.1")
        assert origin.connections == 2
        await pool.aclose()


async def test_timeouts_and_refused_connections() -> None:
    async def silent(exchange: Exchange) -> bool:
        await asyncio.sleep(10)
        return False

    async with Origin(silent) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        started = asyncio.get_running_loop().time()
        with pytest.raises(Http1Timeout):
            await pool.request(b"GET", b"/", HOST, timeout=0.3)
        assert asyncio.get_running_loop().time() - started < 2
        port = origin.port
    await asyncio.sleep(0.05)
    with pytest.raises(ConnectFailed, match="Connection refused"):
        await Http1Pool("127.0.0.1", port).request(b"GET", b"/", HOST, timeout=5)


async def test_garbage_is_an_error_not_a_response() -> None:
    async def serve(exchange: Exchange) -> bool:
        await exchange.answer(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        return False

    async with Origin(serve) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        with pytest.raises(Http1Error):
            await fetch(pool)
        await pool.aclose()


async def test_bad_header_values_are_refused_before_sending() -> None:
    async with Origin(echo) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        with pytest.raises(Http1Error, match="cannot send"):
            await pool.request(b"GET", b"/", [*HOST, (b"x-bad", b"a\r\nInjected: 1")], timeout=5)
        assert origin.exchanges == []
        await pool.aclose()


# Targets: what the lean client sends as is must be what httpx would have sent.

TARGET_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%[]?#\"<>{}|\\^` é"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=TARGET_CHARS, max_size=30))
def test_plain_targets_are_the_ones_httpx_sends_unchanged(tail: str) -> None:
    target = "/" + tail
    try:
        sent = httpx.URL("http://origin.test" + target).raw_path
    except httpx.InvalidURL:
        sent = None
    encoded = target.encode("utf-8")
    if is_plain_target(encoded):
        assert sent == encoded


def test_plain_target_examples() -> None:
    assert is_plain_target(b"/api/items?q=1&r=%2F")
    assert is_plain_target(b"/.well-known/x?next=/../")
    assert not is_plain_target(b"/a/../b")  # httpx removes dot segments
    assert not is_plain_target(b"/a/.")
    assert not is_plain_target(b"/a b")
    assert not is_plain_target(b"*")
    assert not is_plain_target(b"http://elsewhere/")


async def test_a_close_is_noticed_on_a_connection_whose_reading_was_paused() -> None:
    async def serve(exchange: Exchange) -> bool:
        await exchange.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        await asyncio.sleep(0.05)
        await exchange.answer(b"body")  # arrives while the client reads nothing
        await asyncio.sleep(0.2)
        return False  # then close the idle connection

    async with Origin(serve) as origin:
        pool = Http1Pool("127.0.0.1", origin.port)
        response = await pool.request(b"GET", b"/", HOST, timeout=5)
        await asyncio.sleep(0.15)
        assert await response.read_all() == b"body"
        assert pool.idle == 1
        await asyncio.sleep(0.3)
        assert pool.idle == 0  # the close was seen: never handed out for the next request
        await pool.aclose()
