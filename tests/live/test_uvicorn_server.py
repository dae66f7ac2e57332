"""``rungateway --server uvicorn``: the guarantees of the Daphne server, under uvicorn.

Relaying over every transport, the PTTH listener, the graceful drain, TCP_NODELAY, the idle
limit, request bodies streamed with back-pressure, the WebSocket message limit, and cutting a
requestor's connection when a streamed response breaks off (``http.abort_response``).
The whole live suite also runs under uvicorn with ``RHGW_TEST_SERVER=uvicorn``.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import pytest
import websockets

from ..gateway_process import ROOT, Gateway, free_port, make_gateway
from ..rh import envelope, register, unique_label
from ..ws_streaming_app import MIB, frame, pattern, streaming_app
from .test_limits import _idle_connection_lifetime
from .test_ptth import TOKEN, connect_app, private_path, start_ptth_gateway
from .test_streaming import STREAMING, peak_rss
from .test_tcp_nodelay import _socket_of
from .test_websocket import echo_app, ws_url

pytest.importorskip("uvicorn")
pytestmark = pytest.mark.asyncio

UVICORN = "uvicorn"


@pytest.fixture(scope="module", params=["redis", "memory"])
def uv_gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    db_template: Path,
    redis_url: str,
) -> Iterator[Gateway]:
    """A uvicorn gateway with a PTTH listener, per broker, with the FAST settings."""
    tmp = tmp_path_factory.mktemp("uv")
    gw = start_ptth_gateway(request.param, tmp, db_template, redis_url, server=UVICORN)
    yield gw
    gw.stop()


async def test_served_by_uvicorn_with_daphnes_header_spelling(uv_gateway):
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, uv_gateway.service_url, unique_label())
    names = [name for name, _ in reg.response.headers.raw]
    assert b"Link" in names and b"Location" in names  # as Twisted writes them (Java client)
    assert "Gateway listening on" in uv_gateway.log()
    assert "(uvicorn)" in uv_gateway.log()


async def test_relay_over_long_poll(uv_gateway):
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, uv_gateway.service_url, unique_label())
        public = asyncio.ensure_future(client.post(reg.public + "lp?x=1", content=b"hello"))
        delivered = await client.get(reg.first)
        assert delivered.status_code == 200
        assert b"POST /" in delivered.content and delivered.content.endswith(b"hello")
        reply = envelope(headers={"Content-Length": "5", "X-App": "yes"}, body=b"world")
        assert (await client.post(reg.first, content=reply)).status_code == 202
        response = await public
        assert response.status_code == 200 and response.text == "world"
        assert response.headers["X-App"] == "yes"
        assert "server" not in response.headers  # no header of uvicorn's own is added
        assert {b"X-App", b"Content-Length"} <= {name for name, _ in response.headers.raw}


async def test_relay_over_websocket(uv_gateway):
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, uv_gateway.service_url, unique_label())
        async with websockets.connect(ws_url(reg.private)) as ws:
            await ws.send(frame("ready", "", 8))
            app = asyncio.ensure_future(echo_app(ws))
            await asyncio.sleep(0.2)
            responses = await asyncio.gather(
                *(client.post(reg.public + f"w{i}", content=f"b{i}".encode()) for i in range(8))
            )
            app.cancel()
    label = reg.public.rstrip("/").rsplit("/", 1)[1]
    assert [r.text for r in responses] == [f"/{label}/w{i}|b{i}" for i in range(8)]


async def test_relay_over_ptth(uv_gateway):
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, uv_gateway.service_url, unique_label(), token=TOKEN)
        app = await connect_app(uv_gateway, private_path(reg))
        public = asyncio.ensure_future(client.get(reg.public + "ptth"))
        request, _ = await app.request()
        assert request.target.endswith(b"/ptth")
        await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nptth")
        assert (await public).text == "ptth"
        app.close()


async def test_accepted_sockets_have_tcp_nodelay(uv_gateway):
    with httpx.Client(timeout=10) as client:
        response = client.get(uv_gateway.url + "/")  # keep-alive: the connection stays open
        local_port = response.extensions["network_stream"].get_extra_info("socket").getsockname()[1]
        sock = _socket_of(uv_gateway.process.pid, local_port)
        if sock is None:
            pytest.skip("cannot inspect the gateway's sockets here (pidfd_getfd refused)")
        with sock:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def _data_segments_in(sock: socket.socket) -> int:
    """``tcpi_data_segs_in`` of Linux's ``struct tcp_info``: segments received with data."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, 152)[0]


async def test_a_whole_response_leaves_in_one_segment(uv_gateway):
    """Head and body of a response sent whole go out in one write (TCP_NODELAY sends every
    write as its own segment: two writes would cost the requestor a second segment)."""
    label = unique_label()  # never registered: the gateway's own 404, head and body
    with socket.create_connection(("127.0.0.1", uv_gateway.port), timeout=10) as sock:
        request = f"GET /{label}/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        counts = []
        for _ in range(5):  # keep-alive: the same connection every time
            before = _data_segments_in(sock)
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
                data += sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 404 ") and b"No application" in data
            await asyncio.sleep(0.05)  # anything still in flight has arrived
            counts.append(_data_segments_in(sock) - before)
    assert counts == [1] * 5


async def test_oversized_request_head_is_refused(uv_gateway):
    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", uv_gateway.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            for _ in range(200):  # 200 KiB of headers, more than any limit
                sock.sendall(b"X-Pad: " + b"p" * 1024 + b"\r\n")
            return sock.recv(65536)

    try:
        answer = await asyncio.to_thread(exchange)
    except (ConnectionResetError, BrokenPipeError):
        return  # closed while we were still sending: refused as well
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_second_signal_stops_at_once(start_gateway):
    gw = start_gateway("memory", server=UVICORN, SHUTDOWN_TIMEOUT="60")
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gw.service_url, unique_label())
        in_flight = asyncio.ensure_future(client.get(reg.public + "never answered"))
        assert (await client.get(reg.first)).status_code == 200
        gw.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert gw.process.poll() is None  # waiting for the in-flight request
        gw.process.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(gw.process.wait, 10) == 0
        with pytest.raises(httpx.TransportError):
            await in_flight
    assert "Second signal: stopping now" in gw.log()


async def test_idle_limit_cuts_slow_heads_and_bodies_but_not_long_polls(start_gateway):
    gw = start_gateway("memory", server=UVICORN, IDLE_TIMEOUT="1", POLL_TIMEOUT="3")
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a"
    assert await asyncio.to_thread(_idle_connection_lifetime, gw.port, head, 8) < 4
    nothing = await asyncio.to_thread(_idle_connection_lifetime, gw.port, b"", 8)
    assert nothing < 4  # connected, sent nothing
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gw.service_url, unique_label())
        path = httpx.URL(reg.public).path
        body = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
        assert await asyncio.to_thread(_idle_connection_lifetime, gw.port, body.encode(), 8) < 4
        # keep-alive: a complete request, then half a head of the next one
        second = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nX-Slow: b"
        assert await asyncio.to_thread(_idle_connection_lifetime, gw.port, second, 8) < 4
        poll = await client.get(reg.first)  # held 3 s, longer than the idle limit
        assert poll.status_code == 204


async def test_request_body_streams_with_back_pressure(start_gateway):
    """The application gets the body while it is being uploaded; when the application stops
    taking it, the gateway stops reading it (the uploader blocks), and its memory stays flat."""
    gw = start_gateway("memory", server=UVICORN, REPLY_TIMEOUT="30", **STREAMING)
    sent = 0
    total = 64 * MIB
    first_chunk_seen = asyncio.Event()

    async def upload():
        nonlocal sent
        piece = pattern(256 * 1024)
        for _ in range(total // len(piece)):
            if sent == 4 * MIB:  # the application must see the body before the upload ends
                await asyncio.wait_for(first_chunk_seen.wait(), 10)
            sent += len(piece)
            yield piece

    async with httpx.AsyncClient(timeout=60) as client:
        reg = await register(client, gw.service_url, unique_label())
        async with websockets.connect(ws_url(reg.private), max_size=None) as ws:
            await ws.send(frame("ready", "", 1))
            await asyncio.sleep(0.2)
            before = peak_rss(gw.process.pid)
            public = asyncio.ensure_future(client.post(reg.public + "up", content=upload()))
            kind, ident, payload = msgpack.unpackb(await ws.recv(), raw=False)
            assert kind == "request" and payload[2]  # streamed: the body follows in frames
            kind, _, chunk = msgpack.unpackb(await ws.recv(), raw=False)
            assert kind == "body" and chunk
            first_chunk_seen.set()
            # Grant no window: the gateway must stop reading, and the uploader must block.
            await asyncio.sleep(2)  # (REPLY_TIMEOUT is 30 s: nothing times out meanwhile)
            stalled_at = sent
            await asyncio.sleep(1.5)
            assert sent == stalled_at, "the upload went on while nobody read it"
            assert sent < total / 2
            assert peak_rss(gw.process.pid) - before < 24 * MIB
            public.cancel()
            with pytest.raises((asyncio.CancelledError, httpx.TransportError)):
                await public


async def test_large_upload_is_relayed_with_bounded_memory(start_gateway):
    gw = start_gateway("redis", server=UVICORN, **STREAMING)
    body = pattern(64 * MIB)

    async def upload():
        for offset in range(0, len(body), 256 * 1024):
            yield body[offset : offset + 256 * 1024]

    async with httpx.AsyncClient(timeout=120) as client:
        reg = await register(client, gw.service_url, unique_label())
        async with websockets.connect(ws_url(reg.private), max_size=None) as ws:
            await ws.send(frame("ready", "", 1))
            app = asyncio.ensure_future(streaming_app(ws))
            await asyncio.sleep(0.2)
            warm = await client.post(reg.public + "warm", content=pattern(2 * MIB))
            assert warm.status_code == 200
            before = peak_rss(gw.process.pid)
            digest = hashlib.sha256()
            received = 0
            async with client.stream("POST", reg.public + "echo", content=upload()) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    digest.update(chunk)
            growth = peak_rss(gw.process.pid) - before
            app.cancel()
    assert received == len(body)
    assert response.headers["X-Request-Sha256"] == hashlib.sha256(body).hexdigest()
    assert digest.hexdigest() == hashlib.sha256(body).hexdigest()
    assert growth <= 32 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB for a 64 MiB upload"


async def test_websocket_messages_up_to_max_body_size(start_gateway):
    """uvicorn's WebSocket limit is MAX_BODY_SIZE + 64 KiB, as Daphne's: one bigger closes."""
    gw = start_gateway("memory", server=UVICORN, MAX_BODY_SIZE=str(MIB))
    async with httpx.AsyncClient(timeout=30) as client:
        reg = await register(client, gw.service_url, unique_label())
        async with websockets.connect(ws_url(reg.private), max_size=None) as ws:
            await ws.send(frame("ready", "", 1))
            await asyncio.sleep(0.2)
            public = asyncio.ensure_future(client.get(reg.public))
            _, ident, _ = msgpack.unpackb(await ws.recv(), raw=False)
            body = b"z" * MIB
            headers = {"Content-Length": str(len(body))}
            await ws.send(frame("response", ident, envelope(headers=headers, body=body)))
            response = await public
            assert response.status_code == 200 and len(response.content) == MIB
            public = asyncio.ensure_future(client.get(reg.public))
            _, ident, _ = msgpack.unpackb(await ws.recv(), raw=False)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                # The gateway may close (1009) while the frame is still being sent.
                await ws.send(frame("response", ident, b"x" * (MIB + 100 * 1024)))
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            assert (await public).status_code == 502


@pytest.mark.parametrize("which", ["public", "ptth"])
async def test_port_in_use_stops_rungateway_at_once(tmp_path, db_template, which):
    gw = make_gateway(tmp_path, db_template, BROKER="memory")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        addr = f"127.0.0.1:{busy if which == 'public' else gw.port}"
        command = [sys.executable, "manage.py", "rungateway", addr, "--no-static"]
        command += ["--server", UVICORN, "--ptth", busy if which == "ptth" else str(free_port())]
        result = await asyncio.to_thread(
            subprocess.run,
            command,
            cwd=ROOT,
            env=gw.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert "Address already in use" in result.stdout + result.stderr
