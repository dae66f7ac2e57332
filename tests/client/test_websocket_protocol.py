"""The client's side of the WebSocket protocol against a scripted fake gateway on loopback:
flow control in both directions (never beyond the credit; request bodies acknowledged as read),
``error`` frames cancelling a handler or a request relayed on forward mode's callback path, and
a graceful close."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
import websockets
from websockets.asyncio.server import ServerConnection

from reversehttp_gateway.client.backoff import Backoff
from reversehttp_gateway.client.handlers import AsgiHandler, ForwardHandler
from reversehttp_gateway.client.registration import Registrar, Registration
from reversehttp_gateway.client.websocket import WebSocketWorker, websocket_url

from . import apps
from .raw_origin import Exchange, Origin, ok

KIB = 1024
MIB = 1024 * KIB
WINDOW = MIB  # the gateway's INITIAL_WINDOW
REQUEST_SIZE = 3 * MIB // 2
RESPONSE_SIZE = 3 * MIB


def pack(kind: str, ident: str, payload: Any) -> bytes:
    return msgpack.packb([kind, ident, payload], use_bin_type=True)


class App:
    """``POST /up`` reads the whole body, then streams RESPONSE_SIZE bytes back in 256 KiB
    pieces; ``GET /hang`` waits until cancelled."""

    def __init__(self) -> None:
        self.received = 0
        self.hanging = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"].endswith("/break"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise RuntimeError("the app breaks mid-response")
        if scope["path"].endswith("/hang"):
            self.hanging.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        more = True
        while more:
            message = await receive()
            self.received += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        data = apps.pattern(RESPONSE_SIZE)
        for offset in range(0, RESPONSE_SIZE, 256 * KIB):
            piece = data[offset : offset + 256 * KIB]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class FakeGateway:
    """Collects the frames the client sends; the test drives the conversation."""

    def __init__(self) -> None:
        self.connected: asyncio.Future[ServerConnection] = (
            asyncio.get_running_loop().create_future()
        )
        self.frames: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue()
        self.closed = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        self.connected.set_result(ws)
        try:
            async for data in ws:
                self.frames.put_nowait(tuple(msgpack.unpackb(data, raw=False)))
        finally:
            self.closed.set()

    async def next(self, timeout: float = 5.0) -> tuple[str, str, Any]:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def quiet(self, seconds: float) -> list[tuple[str, str, Any]]:
        """The frames that arrive within ``seconds``."""
        got = []
        try:
            while True:
                got.append(await asyncio.wait_for(self.frames.get(), seconds))
        except TimeoutError:
            return got


def registered(port: int) -> Registrar:
    """A registrar that already holds a registration of ``demo`` whose private URL is on the
    fake gateway listening on ``port``."""
    registrar = Registrar(None, "http://127.0.0.1:9/reversehttp", "demo")  # type: ignore[arg-type]
    private = f"http://127.0.0.1:{port}/reversehttp/r/demo/secret"
    registrar.latest = Registration(
        "demo", private + "/first", "http://127.0.0.1:9/demo/", private, True
    )
    return registrar


async def test_flow_control_error_frames_and_graceful_close():
    fake = FakeGateway()
    app = App()
    async with websockets.serve(fake.handler, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        registrar = registered(port)
        assert registrar.latest is not None
        private = registrar.latest.private_url
        assert websocket_url(private) == f"ws://127.0.0.1:{port}/reversehttp/r/demo/secret/ws"
        stopping = asyncio.Event()
        worker = WebSocketWorker(
            0,
            registrar,
            AsgiHandler(app, lifespan="off"),
            stopping,
            concurrency=2,
            backoff=Backoff(0.1, 0.5),
        )
        running = asyncio.ensure_future(worker.run())
        try:
            ws = await asyncio.wait_for(fake.connected, 10)
            assert await fake.next() == ("ready", "", 2)

            # A streamed request body: never more than the window unacknowledged, so the
            # client must acknowledge chunks as the app reads them, or this stalls.
            head = b"POST /demo/up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % REQUEST_SIZE
            await ws.send(pack("request", "r1", [head, "127.0.0.1:5555", True]))
            body = apps.pattern(REQUEST_SIZE)
            sent = acked = 0
            while sent < REQUEST_SIZE:
                piece = body[sent : sent + 64 * KIB]
                while sent + len(piece) - acked > WINDOW:
                    kind, ident, amount = await fake.next()
                    assert (kind, ident) == ("window", "r1")
                    acked += amount
                await ws.send(pack("body", "r1", piece))
                sent += len(piece)
            await ws.send(pack("end", "r1", b""))
            while True:
                kind, ident, payload = await fake.next()
                if kind != "window":
                    break
                acked += payload
            assert acked == REQUEST_SIZE == app.received

            # The streamed response: nothing before the first window, then exactly the credit.
            assert (kind, ident) == ("response-start", "r1")
            assert payload.startswith(b"HTTP/1.1 200 OK\r\n")
            assert await fake.quiet(0.3) == []
            await ws.send(pack("window", "r1", 100_000))
            got = []
            while sum(len(chunk) for chunk in got) < 100_000:
                kind, ident, chunk = await fake.next()
                assert (kind, ident) == ("body", "r1")
                got.append(chunk)
            assert sum(len(chunk) for chunk in got) == 100_000
            assert await fake.quiet(0.3) == []
            # Then like the gateway: a first window, and every chunk granted back.
            await ws.send(pack("window", "r1", WINDOW))
            while True:
                kind, ident, chunk = await fake.next()
                assert ident == "r1"
                if kind == "end":
                    break
                assert kind == "body"
                got.append(chunk)
                await ws.send(pack("window", "r1", len(chunk)))
            assert b"".join(got) == apps.pattern(RESPONSE_SIZE)

            # An error frame cancels that request's handler.
            hang = b"GET /demo/hang HTTP/1.1\r\nHost: h\r\n\r\n"
            await ws.send(pack("request", "r2", [hang, "127.0.0.1:5555", False]))
            await asyncio.wait_for(app.hanging.wait(), 5)
            await ws.send(pack("error", "r2", "The requestor went away"))
            await asyncio.wait_for(app.cancelled.wait(), 5)
            assert worker.in_flight == 0

            # A handler failing mid-stream: no "end" (the requestor must not take the cut-off
            # body for a whole one), but a response frame that releases the gateway's slot.
            broken = b"GET /demo/break HTTP/1.1\r\nHost: h\r\n\r\n"
            await ws.send(pack("request", "r3", [broken, "127.0.0.1:5555", False]))
            assert (await fake.next())[:2] == ("response-start", "r3")
            await ws.send(pack("window", "r3", WINDOW))
            assert await fake.next() == ("body", "r3", b"partial")
            kind, ident, payload = await fake.next()
            assert (kind, ident) == ("response", "r3") and payload.startswith(b"HTTP/1.1 502 ")
            assert worker.in_flight == 0

            # Graceful stop with nothing in flight: the client closes the socket.
            stopping.set()
            await asyncio.wait_for(fake.closed.wait(), 10)
            await asyncio.wait_for(running, 10)
            assert worker.relayed == 1
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)


async def test_requests_arriving_while_stopping_get_503():
    fake = FakeGateway()
    app = apps.Slow(delay=0.5)
    async with websockets.serve(fake.handler, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        registrar = registered(port)
        stopping = asyncio.Event()
        worker = WebSocketWorker(
            0, registrar, AsgiHandler(app, lifespan="off"), stopping, concurrency=2
        )
        running = asyncio.ensure_future(worker.run())
        try:
            ws = await asyncio.wait_for(fake.connected, 10)
            assert await fake.next() == ("ready", "", 2)
            request = b"GET /demo/slow HTTP/1.1\r\nHost: h\r\n\r\n"
            await ws.send(pack("request", "a", [request, "127.0.0.1:1", False]))
            await asyncio.sleep(0.1)
            stopping.set()
            await ws.send(pack("request", "b", [request, "127.0.0.1:1", False]))
            first = await fake.next()
            assert first[:2] == ("response", "b")
            assert first[2].startswith(b"HTTP/1.1 503 ")
            second = await fake.next()
            assert second[:2] == ("response", "a")
            assert second[2].endswith(b"finished")
            await asyncio.wait_for(fake.closed.wait(), 10)  # closed once "a" was answered
            await asyncio.wait_for(running, 10)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)


@pytest.mark.parametrize(
    ("private", "expected"),
    [
        ("http://gw/reversehttp/r/a/s", "ws://gw/reversehttp/r/a/s/ws"),
        ("https://gw:8443/reversehttp/r/a/s/", "wss://gw:8443/reversehttp/r/a/s/ws"),
    ],
)
def test_websocket_url(private, expected):
    assert websocket_url(private) == expected


async def test_an_error_frame_drops_a_request_on_the_callback_path():
    """Forward mode relays a whole request by callbacks (client/origin_direct.py), with no
    task to cancel. An ``error`` frame for it must still stop the work: the connection to the
    local server is dropped (its answer can no longer be matched to anything), no response
    frame is sent for the cancelled id, and the next requests are served as before."""
    hanging = asyncio.Event()
    hung_up = asyncio.Event()  # the origin saw the client drop the hanging request

    async def serve(exchange: Exchange) -> bool:
        if exchange.request_line.split(" ")[1].endswith("/hang"):
            hanging.set()
            if await exchange.reader.read(1) == b"":
                hung_up.set()
            return False
        await exchange.answer(ok(exchange.request_line.encode()))
        return True

    fake = FakeGateway()
    async with (
        Origin(serve) as origin,
        websockets.serve(fake.handler, "127.0.0.1", 0, max_size=None) as server,
    ):
        port = server.sockets[0].getsockname()[1]
        registrar = registered(port)
        stopping = asyncio.Event()
        handler = ForwardHandler(f"http://127.0.0.1:{origin.port}")
        worker = WebSocketWorker(0, registrar, handler, stopping, concurrency=4)
        running = asyncio.ensure_future(worker.run())

        async def ask(ident: str, target: bytes) -> tuple[str, str, Any]:
            head = b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target
            await ws.send(pack("request", ident, [head, "127.0.0.1:5555", False]))
            return await fake.next()

        try:
            ws = await asyncio.wait_for(fake.connected, 10)
            assert await fake.next() == ("ready", "", 4)
            # No idle connection yet: the general path, which leaves one in the pool.
            kind, ident, reply = await ask("r1", b"/demo/warm")
            assert (kind, ident) == ("response", "r1") and reply.startswith(b"HTTP/1.1 200 ")
            assert handler._pool is not None and handler._pool.idle == 1

            # This one takes the callback path on the kept connection, and hangs there.
            hang = b"GET /demo/hang HTTP/1.1\r\nHost: h\r\n\r\n"
            await ws.send(pack("request", "r2", [hang, "127.0.0.1:5555", False]))
            await asyncio.wait_for(hanging.wait(), 5)
            exchange = worker._exchanges["r2"]
            assert exchange.direct is not None and exchange.task is None
            assert worker.in_flight == 1 and origin.connections == 1

            await ws.send(pack("error", "r2", "The requestor went away"))
            await asyncio.wait_for(hung_up.wait(), 5)
            assert worker.in_flight == 0
            assert handler._pool.idle == 0  # the dropped connection is not reused
            assert await fake.quiet(0.3) == []  # nothing answered for the cancelled id

            # A late error frame for an id that is done is ignored; serving goes on.
            await ws.send(pack("error", "r2", "again"))
            kind, ident, reply = await ask("r3", b"/demo/after")
            assert (kind, ident) == ("response", "r3") and reply.endswith(b"/after HTTP/1.1")
            kind, ident, reply = await ask("r4", b"/demo/again")
            assert (kind, ident) == ("response", "r4") and reply.endswith(b"/again HTTP/1.1")
            # r3 opened the second connection, r4 reused it (kept alive: the callback path).
            assert origin.connections == 2 and worker.in_flight == 0
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await handler.shutdown()
