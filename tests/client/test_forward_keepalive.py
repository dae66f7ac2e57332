"""Forward mode on its lean path (http:// local servers): keep-alive, no cookies, 502/504, streams.

The local server is a real loopback socket (:mod:`.raw_origin`); the handler is driven directly
with the requests a transport would hand it.
"""

from __future__ import annotations

import asyncio

from reversehttp_gateway.client.envelope import AppResponse, EmbeddedRequest
from reversehttp_gateway.client.handlers import ForwardHandler, PublicSite
from reversehttp_gateway.client.streams import BufferedResponder, RequestBody, Responder

from .raw_origin import Exchange, Origin, echo, ok

SITE = PublicSite("https", "demo.gw.test", 443, "")


def get(target: bytes, *headers: tuple[bytes, bytes], method: str = "GET") -> EmbeddedRequest:
    fields = [(b"host", b"demo.gw.test"), *headers]
    return EmbeddedRequest(method, target, "1.1", fields, b"", ("10.0.0.7", 5555))


class RecordingResponder(Responder):
    """A streaming responder that records what the handler did."""

    streaming = True
    stream_threshold = 1000

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.body = b""

    async def send(self, response: AppResponse) -> None:
        self.calls.append(f"send {response.status}")
        self.body = response.body
        self.started = self.finished = True

    async def start(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b""
    ) -> None:
        self.calls.append(f"start {status}")
        self.started = True

    async def write(self, data: bytes) -> None:
        self.calls.append("write")
        self.body += data

    async def end(self) -> None:
        self.calls.append("end")
        self.finished = True


async def test_requests_share_one_keep_alive_connection() -> None:
    async with Origin(echo) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        for n in range(5):
            response = await handler(get(b"/n%d?x=1" % n), SITE)
            assert response.status == 200
            assert response.body == b"GET /n%d?x=1 HTTP/1.1" % n
        assert origin.connections == 1
        exchange = origin.exchanges[0]
        assert exchange.header("host") == f"127.0.0.1:{origin.port}"
        assert exchange.header("x-forwarded-host") == "demo.gw.test"
        assert exchange.header("x-forwarded-proto") == "https"
        assert exchange.header("x-forwarded-for") == "10.0.0.7"
        await handler.shutdown()


async def test_cookies_set_for_one_requestor_never_reach_another() -> None:
    async def serve(exchange: Exchange) -> bool:
        seen = (exchange.header("cookie") or "none").encode()
        await exchange.answer(ok(seen, b"Set-Cookie: session=alice; Path=/\r\n"))
        return True

    async with Origin(serve) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        # "/x/../y" needs normalising, so it goes through httpx: both paths are checked.
        for target in (b"/login", b"/other", b"/x/../y", b"/x/../z"):
            response = await handler(get(target), SITE)
            assert (b"set-cookie", b"session=alice; Path=/") in [
                (n.lower(), v) for n, v in response.headers
            ]
            assert response.body == b"none", target
        bob = await handler(get(b"/bob", (b"cookie", b"session=bob")), SITE)
        assert bob.body == b"session=bob"
        await handler.shutdown()


async def test_targets_httpx_would_normalise_are_still_normalised() -> None:
    async with Origin(echo) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}/base/")
        assert (await handler(get(b"/a/../b?q"), SITE)).body == b"GET /base/b?q HTTP/1.1"
        assert (await handler(get(b"/plain?q=%2F"), SITE)).body == b"GET /base/plain?q=%2F HTTP/1.1"
        await handler.shutdown()


async def test_preserve_host_sends_the_public_host() -> None:
    async with Origin(echo) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}", preserve_host=True)
        await handler(get(b"/"), SITE)
        no_host = EmbeddedRequest("GET", b"/", "1.0", [], b"")
        await handler(no_host, SITE)
        assert origin.exchanges[0].header("host") == "demo.gw.test"
        assert origin.exchanges[1].header("host") == f"127.0.0.1:{origin.port}"
        await handler.shutdown()


async def test_slow_local_server_is_504_and_a_broken_one_502() -> None:
    async def serve(exchange: Exchange) -> bool:
        if "/slow" in exchange.request_line:
            await asyncio.sleep(1)
        return False  # close without answering

    async with Origin(serve) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}", timeout=0.3)
        slow = await handler(get(b"/slow"), SITE)
        assert slow.status == 504
        broken = await handler(get(b"/broken", method="POST"), SITE)
        assert broken.status == 502
        assert b"Cannot reach the local server" in broken.body
        await handler.shutdown()


async def test_large_or_unknown_length_responses_stream_small_ones_do_not() -> None:
    big = bytes(range(256)) * 40  # above the responder's threshold of 1000

    async def serve(exchange: Exchange) -> bool:
        if "/big" in exchange.request_line:
            await exchange.answer(ok(big))
        elif "/chunked" in exchange.request_line:
            await exchange.answer(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            )
        else:
            await exchange.answer(ok(b"small"))
        return True

    async with Origin(serve) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        for target, calls, body in (
            (b"/small", ["send 200"], b"small"),
            (b"/big", ["start 200", "write", "end"], big),
            (b"/chunked", ["start 200", "write", "end"], b"abc"),
        ):
            responder = RecordingResponder()
            await handler.serve(get(target), RequestBody.whole(b""), SITE, responder)
            steps = responder.calls
            assert [c for i, c in enumerate(steps) if i == 0 or c != steps[i - 1]] == calls
            assert responder.body == body
        assert origin.connections == 1
        await handler.shutdown()


async def test_streamed_request_bodies_reach_the_local_server_whole() -> None:
    pieces = [bytes([n]) * 30_000 for n in range(4)]  # 120 kB: above the whole-body limit

    def body_of(length: int | None) -> RequestBody:
        queue = list(pieces)

        async def pull() -> tuple[bytes, bool]:
            await asyncio.sleep(0)
            return queue.pop(0), not queue

        return RequestBody(pull, length=length)

    async with Origin(echo) as origin:
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        for length in (120_000, None):
            responder = BufferedResponder()
            request = get(b"/upload", method="PUT")
            await handler.serve(request, body_of(length), SITE, responder)
            assert responder.response is not None and responder.response.body == b"".join(pieces)
        assert origin.exchanges[0].header("content-length") == "120000"
        assert origin.exchanges[1].header("transfer-encoding") == "chunked"
        await handler.shutdown()
