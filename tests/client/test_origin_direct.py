"""Forward mode's callback paths (client/origin_direct.py, client/ptth_direct.py), real sockets.

The handler is driven as the WebSocket transport drives it: :meth:`ForwardHandler.forward_nowait`
with callbacks; what it hands to the general path is run as the transport runs it. The origin
is :mod:`.raw_origin`, which writes exact bytes: chunked bodies, interim responses, responses cut
short, garbage after a response. End-to-end runs through a gateway and the WebSocket transport
are at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reversehttp_gateway.client import AsyncGatewayClient
from reversehttp_gateway.client.envelope import AppResponse
from reversehttp_gateway.client.handlers import ForwardHandler, GeneralPath
from reversehttp_gateway.client.ptth_direct import RequestReader

from ..conftest import FAST
from ..gateway_process import Gateway, free_port, make_gateway
from ..rh import unique_label
from .raw_origin import Exchange, Origin, echo, ok
from .test_forward_keepalive import SITE, RecordingResponder, get

MAX_BODY = 1000  # RecordingResponder's stream_threshold


class Outcome:
    """What :meth:`ForwardHandler.forward_nowait` called back with."""

    def __init__(self) -> None:
        self.done: asyncio.Future[tuple[str, object]] = asyncio.get_running_loop().create_future()

    def on_response(self, response: AppResponse) -> None:
        assert not self.done.done()
        self.done.set_result(("response", response))

    def on_general(self, finish: GeneralPath) -> None:
        assert not self.done.done()
        self.done.set_result(("general", finish))

    async def result(self) -> tuple[str, object]:
        return await asyncio.wait_for(self.done, 5)


async def warm(handler: ForwardHandler) -> None:
    """One request on the general path, which leaves an idle keep-alive connection."""
    assert (await handler(get(b"/warm"), SITE)).status == 200
    assert handler._pool is not None and handler._pool.idle == 1


async def direct(handler: ForwardHandler, target: bytes, method: str = "GET", body: bytes = b""):
    """Forward one request by callbacks; returns ``(kind, value)`` as called back."""
    outcome = Outcome()
    request = get(target, method=method)
    if body:
        request = get(target, method=method).__class__(
            method, target, "1.1", request.headers, body, request.requesting_client
        )
    exchange = handler.forward_nowait(
        request,
        SITE,
        max_body=MAX_BODY,
        on_response=outcome.on_response,
        on_general=outcome.on_general,
    )
    if exchange is None:
        return "declined", None
    return await outcome.result()


def serving(answers: dict[bytes, bytes | None], close_after: bool = False):
    """An origin that answers ``/warm`` with 200 and the other targets from ``answers``
    (None: close without answering)."""

    async def serve(exchange: Exchange) -> bool:
        target = exchange.request_line.split(" ")[1].encode()
        if target == b"/warm":
            await exchange.answer(ok(b"warm"))
            return True
        answer = answers[target]
        if answer is None:
            return False
        await exchange.answer(answer)
        return not close_after

    return serve


async def test_a_small_response_comes_back_by_callback_on_the_kept_connection() -> None:
    async with Origin(echo) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        await warm(handler)
        for n in range(3):
            kind, response = await direct(handler, b"/n%d?x=1" % n)
            assert kind == "response"
            assert isinstance(response, AppResponse)
            assert (response.status, response.reason) == (200, b"OK")
            assert response.body == b"GET /n%d?x=1 HTTP/1.1" % n
            assert (b"Content-Length", b"%d" % len(response.body)) in response.headers
        kind, response = await direct(handler, b"/post", method="POST", body=b"payload")
        assert kind == "response" and response.body == b"payload"  # type: ignore[union-attr]
        assert origin.connections == 1
        exchange = origin.exchanges[-1]
        assert exchange.header("content-length") == "7"
        assert exchange.header("x-forwarded-for") == "10.0.0.7"
        assert exchange.header("host") == f"127.0.0.1:{origin.port}"
        await handler.shutdown()


async def test_declined_without_an_idle_connection_for_head_and_odd_targets() -> None:
    async with Origin(echo) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        await handler.startup()
        assert await direct(handler, b"/cold") == ("declined", None)  # nothing to reuse yet
        await warm(handler)
        assert await direct(handler, b"/head", method="HEAD") == ("declined", None)
        assert await direct(handler, b"/a/../b") == ("declined", None)  # httpx normalises it
        assert handler._pool is not None and handler._pool.idle == 1  # nothing was taken
        await handler.shutdown()


async def test_chunked_and_large_responses_continue_on_the_general_path_and_stream() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    large = ok(b"x" * 5000)
    async with Origin(serving({b"/chunked": chunked, b"/large": large})) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        await warm(handler)
        kind, finish = await direct(handler, b"/chunked")
        assert kind == "general"
        responder = RecordingResponder()
        await finish(responder)  # type: ignore[operator]
        assert responder.calls == ["start 200", "write", "end"]  # unknown length: streamed
        assert responder.body == b"hello"

        kind, finish = await direct(handler, b"/large")
        assert kind == "general"
        responder = RecordingResponder()
        await finish(responder)  # type: ignore[operator]
        assert responder.calls[0] == "start 200" and responder.calls[-1] == "end"
        assert responder.body == b"x" * 5000
        assert origin.connections == 1  # both were read to their end and the connection kept
        await handler.shutdown()


async def test_interim_responses_http_1_0_and_odd_statuses_take_the_general_path() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after 100")
    old = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold"
    odd = b"HTTP/1.1 600 Odd\r\nContent-Length: 3\r\n\r\nodd"
    async with Origin(serving({b"/interim": interim, b"/old": old, b"/odd": odd})) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        cases = ((b"/interim", 200, b"after 100"), (b"/old", 200, b"old"), (b"/odd", 600, b"odd"))
        for target, status, body in cases:
            await warm(handler)
            kind, finish = await direct(handler, target)
            assert kind == "general"
            responder = RecordingResponder()
            await finish(responder)  # type: ignore[operator]
            assert responder.calls == [f"send {status}"] and responder.body == body
        await handler.shutdown()


async def test_304_and_204_have_no_body_on_the_callback_path() -> None:
    not_modified = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 40\r\nETag: x\r\n\r\n"
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    answers = {b"/304": not_modified, b"/204": no_content}
    async with Origin(serving(answers)) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        await warm(handler)
        for target, status in ((b"/304", 304), (b"/204", 204), (b"/304", 304)):
            kind, response = await direct(handler, target)
            assert kind == "response"
            assert isinstance(response, AppResponse)
            assert (response.status, response.body) == (status, b"")
        assert origin.connections == 1
        await handler.shutdown()


async def test_origin_closing_mid_response_is_502() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"
    async with Origin(serving({b"/cut": cut}, close_after=True)) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        await warm(handler)
        kind, response = await direct(handler, b"/cut")
        assert kind == "response"
        assert isinstance(response, AppResponse) and response.status == 502
        assert b"Cannot reach the local server" in response.body
        await handler.shutdown()


async def test_a_kept_connection_closed_before_answering_is_retried_for_get_only() -> None:
    async with Origin(serving({b"/gone": None, b"/post-gone": None})) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        await warm(handler)
        kind, finish = await direct(handler, b"/gone")
        assert kind == "general"  # sent again on the general path, on a new connection
        responder = RecordingResponder()
        await finish(responder)  # type: ignore[operator]
        assert responder.calls == ["send 502"]  # the origin closes that one too
        assert origin.connections == 2

        await warm(handler)
        kind, response = await direct(handler, b"/post-gone", method="POST", body=b"x")
        assert kind == "response"  # not idempotent: never sent twice
        assert isinstance(response, AppResponse) and response.status == 502
        assert origin.connections == 3
        await handler.shutdown()


async def test_a_slow_origin_is_504() -> None:
    async def serve(exchange: Exchange) -> bool:
        if "/slow" in exchange.request_line:
            await asyncio.sleep(1)
            return False
        await exchange.answer(ok(b"warm"))
        return True

    async with Origin(serve) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}", timeout=0.3)
        await warm(handler)
        kind, response = await direct(handler, b"/slow")
        assert kind == "response"
        assert isinstance(response, AppResponse) and response.status == 504
        await handler.shutdown()


async def test_bytes_after_the_response_mean_the_connection_is_not_kept() -> None:
    garbage = ok(b"fine") + b"HTTP/1.1 200 OK\r\n"
    async with Origin(serving({b"/garbage": garbage})) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        await warm(handler)
        kind, response = await direct(handler, b"/garbage")
        assert kind == "response"
        assert isinstance(response, AppResponse) and response.body == b"fine"
        assert handler._pool is not None and handler._pool.idle == 0
        await warm(handler)
        assert origin.connections == 2
        await handler.shutdown()


async def test_a_bad_response_head_gets_the_general_parsers_502() -> None:
    bad = b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 2\r\n\r\nok"
    async with Origin(serving({b"/bad": bad})) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        await warm(handler)
        kind, finish = await direct(handler, b"/bad")
        assert kind == "general"
        responder = RecordingResponder()
        await finish(responder)  # type: ignore[operator]
        assert responder.calls == ["send 502"]
        await handler.shutdown()


async def test_whole_calls_take_the_callback_path_and_fall_back_when_they_must() -> None:
    # ForwardHandler.__call__ is the long-poll's entry point: the response comes back whole.
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    answers = {b"/small": ok(b"small"), b"/chunked": chunked, b"/big": ok(b"b" * 300_000)}
    async with Origin(serving(answers)) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        await warm(handler)
        assert (await handler(get(b"/small"), SITE)).body == b"small"
        assert (await handler(get(b"/chunked"), SITE)).body == b"hi"
        assert (await handler(get(b"/big"), SITE)).body == b"b" * 300_000
        assert (await handler(get(b"/small"), SITE)).body == b"small"
        assert origin.connections == 1
        await handler.shutdown()


# ------------------------------------------------------- end to end, over WebSocket and PTTH

TRANSPORTS = ["websocket", "ptth"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, db_template: Path) -> Iterator[Gateway]:
    settings = {
        **FAST,
        "STREAM_THRESHOLD": "65536",
        "BROKER": "memory",
        "PTTH_LISTEN": f"127.0.0.1:{free_port()}",
    }
    gw = make_gateway(tmp_path_factory.mktemp("direct"), db_template, **settings).start()
    yield gw
    gw.stop()


def client_for(gateway: Gateway, transport: str, target: object, pollers: int):
    options = {"transport": transport}
    if transport == "ptth":
        options["ptth_url"] = gateway.env["RHGW_PTTH_LISTEN"]
    return AsyncGatewayClient(
        gateway.service_url, unique_label(transport[:2]), target, pollers=pollers, **options
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_forward_mode_end_to_end(gateway: Gateway, transport: str) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: streamed in body frames
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"

    async def serve(exchange: Exchange) -> bool:
        target = exchange.request_line.split(" ")[1]
        if target == "/big":
            digest = hashlib.sha256(big).hexdigest().encode()
            await exchange.answer(ok(big, b"X-Sha256: %s\r\n" % digest))
        elif target == "/chunked":
            await exchange.answer(chunked)
        elif target == "/odd":
            await exchange.answer(b"HTTP/1.1 600 Odd\r\nContent-Length: 3\r\n\r\nodd")
        elif target == "/cut":
            await exchange.answer(cut)
            return False
        elif exchange.request_line.startswith("HEAD"):
            await exchange.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        else:
            await exchange.answer(ok(exchange.body or exchange.request_line.encode()))
        return True

    async with Origin(serve) as origin:
        client = client_for(gateway, transport, f"http://127.0.0.1:{origin.port}", 4)
        async with client, httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
            url = client.public_url
            responses = await asyncio.gather(*(http.get(url + f"n{n}") for n in range(40)))
            assert [r.status_code for r in responses] == [200] * 40
            assert [r.text for r in responses] == [f"GET /n{n} HTTP/1.1" for n in range(40)]
            assert origin.connections <= 4 + 1  # kept and reused (one per request at once)

            posted = await http.post(url + "post", content=b"a body")
            assert posted.text == "a body"
            upload = bytes(range(256)) * 1024  # 256 KiB: streamed (WebSocket), held (PTTH)
            assert (await http.put(url + "put", content=upload)).content == upload
            head = await http.head(url + "head")
            assert head.status_code == 200 and head.headers["content-length"] == "1234"
            assert (await http.get(url + "chunked")).text == "abc"
            assert (await http.get(url + "odd")).status_code == 500  # as on the general path
            response = await http.get(url + "big")
            assert response.status_code == 200 and response.content == big
            cut_short = await http.get(url + "cut")
            assert cut_short.status_code == 502
            assert "Cannot reach the local server" in cut_short.text
            assert (await http.get(url + "after")).status_code == 200


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_forward_mode_origin_refusing_connections_is_502(
    gateway: Gateway, transport: str
) -> None:
    port = free_port()  # nothing listens there
    client = client_for(gateway, transport, f"http://127.0.0.1:{port}", 2)
    async with client, httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
        response = await http.get(client.public_url + "x")
        assert response.status_code == 502
        assert f"Cannot reach the local server at http://127.0.0.1:{port}" in response.text


# ------------------------------------------------------------ PTTH: whole requests by llhttp


def read(*pieces: bytes) -> tuple[RequestReader, bool | None]:
    reader = RequestReader()
    result: bool | None = False
    for piece in pieces:
        result = reader.feed(piece)
        if result is not False:
            break
    return reader, result


def test_ptth_reader_takes_a_whole_keep_alive_request() -> None:
    head = b'POST /a%2Fb?x=1 HTTP/1.1\r\nHost: gw\r\nForwarded: for="10.0.0.1:5"\r\n'
    reader, whole = read(head, b"Content-Length: 5\r\n\r\nhel", b"lo")
    assert whole is True
    request = reader.request(("10.0.0.1", 5))
    assert (request.method, request.target, request.body) == ("POST", b"/a%2Fb?x=1", b"hello")
    assert request.headers[0] == (b"host", b"gw")  # names lower-case, as h11 gives them
    assert request.requesting_client == ("10.0.0.1", 5)
    assert b"".join(reader.raw).endswith(b"hello")


@pytest.mark.parametrize(
    "data",
    [
        b"HEAD / HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: gw\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host: h11 refuses it, so must we
        b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\n\r\nGET /2 HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\nHost: gw\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000,
    ],
)
def test_ptth_reader_leaves_the_rest_to_h11(data: bytes) -> None:
    reader, whole = read(data)
    assert whole is None
    assert b"".join(reader.raw) == data  # every byte, for h11


class _FailingForward(ForwardHandler):
    """Fails inside the WebSocket's frame callback for /boom (a bug there, simulated)."""

    def forward_nowait(self, request, site, **kwargs):  # type: ignore[no-untyped-def]
        if request.raw_path.endswith(b"/boom"):
            raise RuntimeError("simulated bug")
        return super().forward_nowait(request, site, **kwargs)


async def test_websocket_a_failure_in_the_frame_callback_is_500_and_the_socket_lives_on(
    gateway: Gateway,
) -> None:
    async with Origin(echo) as origin:
        handler = _FailingForward(f"http://127.0.0.1:{origin.port}")
        client = client_for(gateway, "websocket", handler, 2)  # type: ignore[arg-type]
        async with client, httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
            url = client.public_url
            assert (await http.get(url + "before")).status_code == 200
            boom = await http.get(url + "boom")
            assert boom.status_code == 500
            assert (await http.get(url + "after")).text == "GET /after HTTP/1.1"
            assert (await http.get(url + "again")).text == "GET /again HTTP/1.1"
