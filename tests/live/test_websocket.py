"""The multiplexed WebSocket transport against a live gateway (docs/websocket.md)."""

from __future__ import annotations

import asyncio

import httpx
import msgpack
import pytest
import websockets

from ..rh import envelope, register, unique_label
from ..ws_streaming_app import frame

pytestmark = pytest.mark.asyncio


def ws_url(private_url: str) -> str:
    return private_url.replace("http://", "ws://", 1) + "/ws"


async def echo_app(ws, *, delay: float = 0.0) -> None:
    """Answer every request with its target, concurrently, after ``delay`` seconds."""

    async def answer(ident: str, env: bytes) -> None:
        await asyncio.sleep(delay)
        target = env.split(b" ")[1]
        body = target + b"|" + env.partition(b"\r\n\r\n")[2]
        await ws.send(
            frame(
                "response", ident, envelope(headers={"Content-Length": str(len(body))}, body=body)
            )
        )

    tasks = set()
    async for data in ws:
        kind, ident, payload = msgpack.unpackb(data, raw=False)
        if kind == "request":
            task = asyncio.ensure_future(answer(ident, payload[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


async def test_many_requests_in_flight_on_one_connection(gateway):
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        async with websockets.connect(ws_url(reg.private)) as ws:
            await ws.send(frame("ready", "", 16))
            app = asyncio.ensure_future(echo_app(ws, delay=0.3))
            await asyncio.sleep(0.2)
            started = asyncio.get_running_loop().time()
            responses = await asyncio.gather(
                *(client.post(reg.public + f"w{i}", content=f"b{i}".encode()) for i in range(16))
            )
            elapsed = asyncio.get_running_loop().time() - started
            app.cancel()
        label = reg.public.rstrip("/").rsplit("/", 1)[1]
        assert [r.text for r in responses] == [f"/{label}/w{i}|b{i}" for i in range(16)]
        assert elapsed < 0.3 * 16 / 2  # answered concurrently, not one after the other


async def test_websocket_and_long_poll_share_the_queue(gateway):
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        async with websockets.connect(ws_url(reg.private)) as ws:
            await ws.send(frame("ready", "", 1))
            data = asyncio.ensure_future(ws.recv())
            await asyncio.sleep(0.2)
            first = asyncio.ensure_future(client.get(reg.public + "first"))
            kind, ident, payload = msgpack.unpackb(await data, raw=False)
            assert kind == "request" and b"/first HTTP/1.1" in payload[0]
            # The only WebSocket slot is busy: the next request goes to a long-poller.
            second = asyncio.ensure_future(client.get(reg.public + "second"))
            delivered = await client.get(reg.first)
            assert b"/second HTTP/1.1" in delivered.content
            await client.post(reg.first, content=envelope(body=b"poll"))
            await ws.send(frame("response", ident, envelope(body=b"ws")))
            assert (await first).text == "ws" and (await second).text == "poll"


async def test_disconnect_with_requests_in_flight_gives_502_not_replay(gateway):
    """A request sent on a socket that then closed is answered 502 and not delivered again."""
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        ws = await websockets.connect(ws_url(reg.private))
        await ws.send(frame("ready", "", 2))
        await asyncio.sleep(0.2)
        public = asyncio.ensure_future(client.get(reg.public + "lost"))
        kind, _, _ = msgpack.unpackb(await ws.recv(), raw=False)
        assert kind == "request"
        await ws.close()
        response = await public
        assert response.status_code == 502
        assert (await client.get(reg.first)).status_code == 204  # not replayed


async def test_bad_response_frame_is_reported_and_requestor_gets_502(gateway):
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        async with websockets.connect(ws_url(reg.private)) as ws:
            await ws.send(frame("ready", "", 1))
            await asyncio.sleep(0.2)
            public = asyncio.ensure_future(client.get(reg.public))
            _, ident, _ = msgpack.unpackb(await ws.recv(), raw=False)
            await ws.send(frame("response", ident, b"not http"))
            kind, same, text = msgpack.unpackb(await ws.recv(), raw=False)
            assert (kind, same) == ("error", ident) and "Invalid reply" in text
            assert (await public).status_code == 502


async def test_unknown_registration_and_invalid_frames_close_the_socket(gateway):
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
    with pytest.raises(websockets.exceptions.WebSocketException):
        async with websockets.connect(ws_url(reg.private[:-4] + "xxxx")) as ws:
            await ws.recv()
    async with websockets.connect(ws_url(reg.private)) as ws:
        await ws.send(b"\x00garbage")
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 4400


async def test_delete_closes_the_websocket(gateway):
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        async with websockets.connect(ws_url(reg.private)) as ws:
            await ws.send(frame("ready", "", 1))
            await asyncio.sleep(0.3)
            assert (await client.delete(reg.private)).status_code == 204
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd.code == 4410


async def test_lowering_concurrency_to_zero_drains(gateway):
    """ready 0: requests in hand are answered, no new one is sent; long-pollers get the rest."""
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        async with websockets.connect(ws_url(reg.private)) as ws:
            await ws.send(frame("ready", "", 1))
            await asyncio.sleep(0.2)
            first = asyncio.ensure_future(client.get(reg.public + "held"))
            _, ident, _ = msgpack.unpackb(await ws.recv(), raw=False)
            await ws.send(frame("ready", "", 0))
            await ws.send(frame("response", ident, envelope(body=b"last")))
            assert (await first).text == "last"
            await asyncio.sleep(0.3)
            later = asyncio.ensure_future(client.get(reg.public + "later"))
            delivered = await client.get(reg.first)
            assert b"/later HTTP/1.1" in delivered.content
            await client.post(reg.first, content=envelope(body=b"poll"))
            assert (await later).text == "poll"


async def test_application_error_frame_gives_502(gateway):
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        async with websockets.connect(ws_url(reg.private)) as ws:
            await ws.send(frame("ready", "", 1))
            await asyncio.sleep(0.2)
            public = asyncio.ensure_future(client.get(reg.public))
            _, ident, _ = msgpack.unpackb(await ws.recv(), raw=False)
            await ws.send(frame("error", ident, "handler crashed"))
            assert (await public).status_code == 502


async def test_delete_waits_for_requests_in_hand(gateway):
    """RH-52 on the WebSocket: a DELETE closes the socket only after in-flight answers."""
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        async with websockets.connect(ws_url(reg.private)) as ws:
            await ws.send(frame("ready", "", 2))
            await asyncio.sleep(0.2)
            public = asyncio.ensure_future(client.get(reg.public + "inflight"))
            _, ident, _ = msgpack.unpackb(await ws.recv(), raw=False)
            assert (await client.delete(reg.private)).status_code == 204
            await asyncio.sleep(0.3)
            await ws.send(frame("response", ident, envelope(body=b"answered")))
            assert (await public).text == "answered"
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd.code == 4410


async def test_whole_response_frames_up_to_max_body_size(gateway):
    async with httpx.AsyncClient(timeout=30) as client:
        reg = await register(client, gateway.service_url, unique_label())
        async with websockets.connect(ws_url(reg.private), max_size=None) as ws:
            await ws.send(frame("ready", "", 1))
            await asyncio.sleep(0.2)
            public = asyncio.ensure_future(client.get(reg.public))
            _, ident, _ = msgpack.unpackb(await ws.recv(), raw=False)
            body = b"z" * (3 * 1024 * 1024)
            await ws.send(
                frame(
                    "response",
                    ident,
                    envelope(headers={"Content-Length": str(len(body))}, body=body),
                )
            )
            response = await public
            assert response.status_code == 200 and len(response.content) == len(body)
