"""The direct path (docs/direct-path.md) against live gateways: what takes it, and that HTTP/1.1
and the relay rules behave on it exactly as on the ASGI path.

The gateways here run uvicorn explicitly (the direct path is uvicorn's); the last test checks
that Daphne relays the same traffic without it.
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import msgpack
import pytest
import websockets

from ..rh import envelope, register, unique_label
from ..ws_streaming_app import frame
from .test_metrics import AUTH, TOKEN, parse, value
from .test_websocket import echo_app, ws_url

pytestmark = pytest.mark.asyncio


def direct_count(text: str) -> float:
    return value(parse(text), "reversehttp_gateway_direct_requests_total", transport="websocket")


async def serving(client: httpx.AsyncClient, gateway, *, ready: int = 4):  # noqa: ANN001, ANN201
    """Register a label, connect an echo WebSocket application; returns (registration, socket,
    application task)."""
    reg = await register(client, gateway.service_url, unique_label())
    ws = await websockets.connect(ws_url(reg.private), max_size=None)
    await ws.send(frame("ready", "", ready))
    app = asyncio.ensure_future(echo_app(ws))
    await asyncio.sleep(0.2)
    return reg, ws, app


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_requests_to_a_local_poller_take_the_direct_path(start_gateway, broker):
    gateway = start_gateway(broker, server="uvicorn", METRICS_TOKEN=TOKEN)
    async with httpx.AsyncClient(timeout=15) as client:
        reg, ws, app = await serving(client, gateway)
        before = direct_count((await client.get(gateway.url + "/metrics", headers=AUTH)).text)
        bodies = [f"b{i}".encode() * (i + 1) for i in range(12)]
        responses = await asyncio.gather(
            *(client.post(reg.public + f"p{i}", content=body) for i, body in enumerate(bodies))
        )
        label = reg.public.rstrip("/").rsplit("/", 1)[1]
        assert [r.content for r in responses] == [
            f"/{label}/p{i}|".encode() + body for i, body in enumerate(bodies)
        ]
        after = direct_count((await client.get(gateway.url + "/metrics", headers=AUTH)).text)
        assert after - before == len(bodies)
        app.cancel()
        await ws.close()


async def test_bodies_beyond_uvicorns_read_ahead_are_relayed_whole(start_gateway):
    """A body over uvicorn's 64 KiB read-ahead (it pauses reading for the application) but
    under STREAM_THRESHOLD goes direct: reading resumes for the exchange, not for receive()."""
    gateway = start_gateway("memory", server="uvicorn", METRICS_TOKEN=TOKEN)
    async with httpx.AsyncClient(timeout=15) as client:
        reg, ws, app = await serving(client, gateway)
        body = bytes(range(256)) * 1200  # 300 KiB
        response = await client.post(reg.public + "big", content=body)
        assert response.status_code == 200 and response.content.endswith(b"|" + body)
        metrics = (await client.get(gateway.url + "/metrics", headers=AUTH)).text
        assert direct_count(metrics) == 1
        app.cancel()
        await ws.close()


def raw_exchange(port: int, data: bytes, *, until_close: bool = False, count: int = 1) -> bytes:
    """Send ``data`` on one connection; read ``count`` responses (or until the peer closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
            if not until_close and received.count(b"HTTP/1.1 ") >= count:
                heads = received.split(b"HTTP/1.1 ")[1:]
                last = heads[-1]
                if b"\r\n\r\n" in last:
                    head, _, rest = last.partition(b"\r\n\r\n")
                    length = [
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ]
                    if length and len(rest) >= length[0]:
                        return received


async def test_pipelined_requests_are_answered_in_order(start_gateway):
    """RH-71: direct and ASGI requests pipelined on one connection keep their order."""
    gateway = start_gateway("memory", server="uvicorn")
    async with httpx.AsyncClient(timeout=15) as client:
        reg, ws, app = await serving(client, gateway)
        label = reg.public.rstrip("/").rsplit("/", 1)[1]
        private_path = reg.private.split(str(gateway.port), 1)[1]
        pipeline = (
            f"GET /{label}/one HTTP/1.1\r\nHost: x\r\n\r\n"
            f"GET {private_path} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n"
            f"POST /{label}/three HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        ).encode()
        data = await asyncio.to_thread(raw_exchange, gateway.port, pipeline, count=3)
        first, second, third = data.split(b"HTTP/1.1 ")[1:]
        assert first.startswith(b"200") and first.endswith(f"/{label}/one|".encode())
        assert second.startswith(b"200") and b'"name"' in second  # the registration's state
        assert third.startswith(b"200") and third.endswith(f"/{label}/three|abc".encode())
        app.cancel()
        await ws.close()


async def test_head_and_connection_close_on_the_direct_path(start_gateway):
    gateway = start_gateway("memory", server="uvicorn")
    async with httpx.AsyncClient(timeout=15) as client:
        reg, ws, app = await serving(client, gateway)
        label = reg.public.rstrip("/").rsplit("/", 1)[1]
        head = await client.head(reg.public + "h")
        assert head.status_code == 200 and head.content == b""
        close = f"GET /{label}/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        data = await asyncio.to_thread(raw_exchange, gateway.port, close, until_close=True)
        assert data.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close\r\n" in data
        old = f"GET /{label}/old HTTP/1.0\r\nHost: x\r\n\r\n".encode()
        data = await asyncio.to_thread(raw_exchange, gateway.port, old, until_close=True)
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(f"/{label}/old|".encode())
        app.cancel()
        await ws.close()


async def test_expect_continue_and_chunked_bodies_take_the_asgi_path(start_gateway):
    gateway = start_gateway("memory", server="uvicorn", METRICS_TOKEN=TOKEN)
    async with httpx.AsyncClient(timeout=15) as client:
        reg, ws, app = await serving(client, gateway)

        async def chunks():  # noqa: ANN202
            yield b"ab"
            yield b"cd"

        chunked = await client.post(reg.public + "chunked", content=chunks())
        assert chunked.content.endswith(b"|abcd")
        label = reg.public.rstrip("/").rsplit("/", 1)[1]
        expect = (
            f"POST /{label}/expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            "Content-Length: 2\r\n\r\nhi"
        ).encode()
        data = await asyncio.to_thread(raw_exchange, gateway.port, expect, count=2)
        assert data.endswith(f"/{label}/expect|hi".encode())
        metrics = (await client.get(gateway.url + "/metrics", headers=AUTH)).text
        assert direct_count(metrics) == 0
        app.cancel()
        await ws.close()


async def test_a_requestor_that_leaves_withdraws_its_direct_request(start_gateway):
    """The application's late answer is refused (RH-47) and the log says 499."""
    gateway = start_gateway("memory", server="uvicorn")
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        async with websockets.connect(ws_url(reg.private)) as ws:
            await ws.send(frame("ready", "", 1))
            await asyncio.sleep(0.2)
            label = reg.public.rstrip("/").rsplit("/", 1)[1]
            sock = socket.create_connection(("127.0.0.1", gateway.port))
            sock.sendall(f"GET /{label}/gone HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            _, ident, _ = msgpack.unpackb(await ws.recv(), raw=False)
            sock.close()
            await asyncio.sleep(0.3)
            await ws.send(frame("response", ident, envelope(body=b"late")))
            kind, same, text = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 5), raw=False)
            assert (kind, same, text) == ("error", ident, "Request no longer pending")
    assert f'"GET /{label}/gone" label={label} status=499' in gateway.log()


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_timeouts_on_the_direct_path(start_gateway, broker):
    """RH-64 (T1, no application) and RH-65 (T2, an application that never answers)."""
    gateway = start_gateway(broker, server="uvicorn")
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        no_app = await client.get(reg.public + "t1")
        assert no_app.status_code == 504 and "No application server" in no_app.text
        async with websockets.connect(ws_url(reg.private)) as ws:
            await ws.send(frame("ready", "", 1))
            await asyncio.sleep(0.2)
            silent = asyncio.ensure_future(client.get(reg.public + "t2"))
            kind, _, _ = msgpack.unpackb(await ws.recv(), raw=False)
            assert kind == "request"
            response = await silent
            assert response.status_code == 504 and "Timeout waiting" in response.text


def direct_replies(text: str) -> float:
    return value(parse(text), "reversehttp_gateway_direct_replies_total")


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_long_poll_replies_take_the_direct_path_with_the_same_rules(start_gateway, broker):
    """RH-45..RH-48 on the direct reply path: 202 and the requestor answered; a duplicate 404;
    a bad response, a CORS request and a reply for a request delivered by nobody take the ASGI
    path (400 and 502; CORS headers; 404)."""
    gateway = start_gateway(
        broker, server="uvicorn", METRICS_TOKEN=TOKEN, CORS_ALLOWED_ORIGINS="http://app.test"
    )

    async def replies() -> float:
        return direct_replies((await client.get(gateway.url + "/metrics", headers=AUTH)).text)

    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        url = reg.first
        for index, (reply, origin) in enumerate(
            [
                (envelope(headers={"Content-Length": "2"}, body=b"ok"), None),
                (b"not a response", None),
                (envelope(headers={"Content-Length": "4"}, body=b"cors"), "http://app.test"),
            ]
        ):
            public = asyncio.ensure_future(client.get(reg.public + f"d{index}"))
            delivered = await client.get(url)
            assert delivered.status_code == 200
            before = await replies()
            headers = {"Origin": origin} if origin else {}
            answer = await client.post(url, content=reply, headers=headers)
            response = await public
            if index == 0:
                assert (answer.status_code, response.status_code, response.text) == (202, 200, "ok")
                assert await replies() == before + 1
                again = await client.post(url, content=reply)
                assert again.status_code == 404  # RH-47, claimed already: the ASGI path
            elif index == 1:
                assert (answer.status_code, response.status_code) == (400, 502)  # RH-48
            else:
                assert answer.status_code == 202 and response.text == "cors"
                assert answer.headers["Access-Control-Allow-Origin"] == origin
            if index:
                assert await replies() == before
            url = delivered.headers["Link"].split(">")[0][1:]
        stranger = await client.post(url, content=envelope(body=b"x"))
        assert stranger.status_code == 404  # nothing was delivered on it


async def test_daphne_relays_the_same_traffic_without_the_direct_path(start_gateway):
    gateway = start_gateway("memory", server="daphne", METRICS_TOKEN=TOKEN)
    async with httpx.AsyncClient(timeout=15) as client:
        reg, ws, app = await serving(client, gateway)
        responses = await asyncio.gather(*(client.get(reg.public + f"d{i}") for i in range(5)))
        assert all(r.status_code == 200 for r in responses)
        metrics = (await client.get(gateway.url + "/metrics", headers=AUTH)).text
        assert direct_count(metrics) == 0
        app.cancel()
        await ws.close()


async def test_websocket_frames_split_and_coalesced_any_way_arrive_whole(start_gateway):
    """The gateway cuts whole binary frames off what it reads and leaves the rest (partial
    frames, pings, fragments) to websockets: every split and mix must give the same messages."""
    from websockets.client import ClientProtocol
    from websockets.frames import Frame, Opcode
    from websockets.protocol import State
    from websockets.uri import parse_uri

    gateway = start_gateway("memory", server="uvicorn")
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        label = reg.public.rstrip("/").rsplit("/", 1)[1]
        protocol = ClientProtocol(parse_uri(ws_url(reg.private)), max_size=None)
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def receive_events() -> list:
            protocol.receive_data(sock.recv(65536))
            return protocol.events_received()

        protocol.send_request(protocol.connect())
        sock.sendall(b"".join(protocol.data_to_send()))
        while protocol.state is not State.OPEN:
            await asyncio.to_thread(receive_events)
        protocol.send_binary(frame("ready", "", 8))
        sock.sendall(b"".join(protocol.data_to_send()))
        await asyncio.sleep(0.2)
        bodies = [b"x" * size for size in (0, 5, 200, 70_000, 3)]
        publics = [
            asyncio.ensure_future(client.get(reg.public + f"s{i}")) for i in range(len(bodies))
        ]
        idents: dict[str, int] = {}
        while len(idents) < len(bodies):
            for event in await asyncio.to_thread(receive_events):
                kind, ident, payload = msgpack.unpackb(event.data, raw=False)
                if kind == "request":
                    index = int(payload[0].split(b" ")[1].rsplit(b"/s", 1)[1])
                    idents[ident] = index
        for ident, index in idents.items():
            body = bodies[index]
            answer = envelope(headers={"Content-Length": str(len(body))}, body=body)
            protocol.send_binary(frame("response", ident, answer))
            if index == 1:
                protocol.send_ping(b"ping")
            if index == 2:  # a fragmented message: websockets reassembles it
                data = frame("window", "nobody", 1)
                protocol.send_frame(Frame(Opcode.BINARY, data[:3], fin=False))
                protocol.send_frame(Frame(Opcode.CONT, data[3:], fin=True))
        wire = b"".join(protocol.data_to_send())
        for cut in (1, 2, 7, 100, 150, 71_000):  # heads, masks and payloads split apart
            sock.sendall(wire[:cut])
            wire = wire[cut:]
            await asyncio.sleep(0.02)
        sock.sendall(wire)
        responses = await asyncio.gather(*publics)
        assert [r.content for r in responses] == bodies
        events = await asyncio.to_thread(receive_events)
        assert any(e.opcode is Opcode.PONG and e.data == b"ping" for e in events)
        sock.close()
    assert f'"GET /{label}/s3" label={label} status=200' in gateway.log()


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_chained_polls_take_the_direct_path(start_gateway, broker):
    """A reply with ``Reversehttp-Poll`` (docs/protocol.md, "Chained polls") is answered on the
    direct path too: the responses go out, then the POST is held as a poll of the next URL.
    An application that hangs up while it waits loses nothing: the request that arrives
    after is delivered to the next poll."""
    gateway = start_gateway(broker, server="uvicorn", METRICS_TOKEN=TOKEN)

    async def replies() -> float:
        return direct_replies((await client.get(gateway.url + "/metrics", headers=AUTH)).text)

    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        first = asyncio.ensure_future(client.get(reg.public + "c1"))
        delivered = await client.get(reg.first)
        nxt = delivered.headers["Link"].split(">")[0][1:]
        before = await replies()
        chained = asyncio.ensure_future(
            client.post(reg.first, content=envelope(body=b"1"), headers={"Reversehttp-Poll": nxt})
        )
        assert (await first).text == "1"
        second = asyncio.ensure_future(client.get(reg.public + "c2"))
        answer = await chained
        assert answer.status_code == 200 and b"/c2 HTTP/1.1\r\n" in answer.content
        assert await replies() == before + 1
        after = answer.headers["Link"].split(">")[0][1:]

        # Reply to c2 and chain on a connection of its own, then hang up while it waits.
        target = nxt.split(str(gateway.port), 1)[1]
        body = envelope(body=b"2")
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
            f"Content-Length: {len(body)}\r\nReversehttp-Poll: {after}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        assert (await second).text == "2"
        await asyncio.sleep(0.3)
        writer.close()
        await asyncio.sleep(0.3)  # the gateway notices and withdraws the chained poll
        assert await replies() == before + 2
        third = asyncio.ensure_future(client.get(reg.public + "c3"))
        await asyncio.sleep(0.2)
        # Another poller, on a Request URL of its own: the one that hung up took nothing.
        fresh = (await register(client, gateway.service_url, reg.public.split("/")[-2])).first
        again = await client.get(fresh)
        assert again.status_code == 200 and b"/c3 HTTP/1.1\r\n" in again.content
        assert (await client.post(fresh, content=envelope(body=b"3"))).status_code == 202
        assert (await third).text == "3"
