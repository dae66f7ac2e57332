"""The client's WebSocket and PTTH transports end to end against live gateways.

Each test runs once per transport. The module's gateway has a PTTH listener and a small
``STREAM_THRESHOLD`` so that request bodies over 64 KiB reach WebSocket clients as streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reversehttp_gateway.client import AsyncGatewayClient

from ..conftest import FAST
from ..gateway_process import Gateway, free_port, make_gateway
from ..rh import unique_label
from . import apps
from .conftest import eventually, wait_until

TIMEOUT = httpx.Timeout(30.0)
MIB = 1024 * 1024
STREAMING = {"STREAM_THRESHOLD": "65536"}
TRANSPORTS = ["websocket", "ptth"]


def ptth_settings() -> dict[str, str]:
    return {"PTTH_LISTEN": f"127.0.0.1:{free_port()}"}


def transport_options(gateway: Gateway, transport: str) -> dict[str, str]:
    options = {"transport": transport}
    if transport == "ptth":
        options["ptth_url"] = gateway.env["RHGW_PTTH_LISTEN"]
    return options


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, db_template: Path) -> Iterator[Gateway]:
    """One memory-broker gateway with a PTTH listener and streaming from 64 KiB on."""
    settings = {**FAST, **STREAMING, **ptth_settings(), "BROKER": "memory"}
    gw = make_gateway(tmp_path_factory.mktemp("transports"), db_template, **settings).start()
    yield gw
    gw.stop()


def client_for(gateway: Gateway, transport: str, app: object, **options: object):
    name = unique_label(transport[:2])
    return AsyncGatewayClient(
        gateway.service_url, name, app, **transport_options(gateway, transport), **options
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_serves_an_asgi_app(gateway, transport):
    client = client_for(gateway, transport, apps.asgi_echo, pollers=2)
    name = client.name
    async with client, httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.get(
            client.public_url + "hello/w%C3%B6rld?x=1&y=%20", headers={"X-Test": "yes"}
        )
        assert response.status_code == 200
        assert response.headers["X-App"] == "asgi"
        assert response.headers.get_list("Set-Cookie") == ["a=1", "b=2"]
        echo = response.json()
        assert echo["method"] == "GET"
        assert echo["path"] == f"/{name}/hello/wörld"
        assert echo["root_path"] == f"/{name}"
        assert echo["route"] == "/hello/wörld"
        assert echo["query_string"] == "x=1&y=%20"
        assert echo["headers"]["x-test"] == "yes"
        assert echo["client"][0] == "127.0.0.1"
        assert echo["lifespan_started"] is True

        body = apps.pattern(MIB + 12345)  # over STREAM_THRESHOLD: streamed to WebSocket clients
        posted = await http.post(client.public_url + "upload", content=body)
        assert posted.status_code == 201
        assert posted.json()["body_length"] == len(body)
        assert posted.json()["body_sha256"] == hashlib.sha256(body).hexdigest()

        small = await http.post(client.public_url + "form", data={"k": "v"})
        assert small.status_code == 201 and small.json()["body_length"] == 3

        head = await http.head(client.public_url + "x")
        assert head.status_code == 200 and head.content == b""
        await asyncio.to_thread(wait_until, lambda: client.relayed == 4, 10, "4 relayed")
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        assert (await http.get(client.public_url)).status_code == 404


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connections_have_tcp_nodelay(gateway, transport):
    client = client_for(gateway, transport, apps.asgi_echo, pollers=2)
    async with client, httpx.AsyncClient(timeout=TIMEOUT) as http:
        assert (await http.get(client.public_url)).status_code == 200
        await asyncio.to_thread(
            wait_until,
            lambda: all(worker.socket is not None for worker in client._workers),
            10,
            "every connection to be open",
        )
        sockets = [worker.socket for worker in client._workers]
        for sock in sockets:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_serves_a_wsgi_app_and_survives_its_errors(gateway, transport):
    client = client_for(gateway, transport, apps.wsgi_echo, pollers=2)
    async with client, httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.post(client.public_url + "form/a%20b?a=b", data={"k": "v"})
        assert response.status_code == 202
        assert response.json()["path_info"] == "/form/a b"
        assert response.json()["body"] == "k=v"
        assert (await http.get(client.public_url + "fail")).status_code == 500
        assert (await http.get(client.public_url + "again")).status_code == 202
        # A whole body larger than the stream threshold (and than Daphne's 1 MiB WebSocket
        # message limit): the WebSocket transport sends it as a stream with its Content-Length.
        big = await http.get(client.public_url + f"big/{2 * MIB + 1}")
        assert big.status_code == 200
        assert big.headers["Content-Length"] == str(2 * MIB + 1)
        assert big.content == apps.pattern(2 * MIB + 1)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_requests_are_handled_concurrently(gateway, transport):
    count = 8
    app = apps.Gathering(count)
    limits = httpx.Limits(max_connections=2 * count)
    client = client_for(gateway, transport, app, pollers=count)
    async with client, httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as http:
        # WebSocket: all of them in flight on one socket; PTTH: one socket each.
        assert len(client._workers) == (1 if transport == "websocket" else count)
        requests = [http.get(client.public_url + f"n{i}") for i in range(count)]
        responses = await asyncio.wait_for(asyncio.gather(*requests), 30)
    assert [(r.status_code, r.text) for r in responses] == [(200, "together")] * count


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_20_mib_post_streams_both_ways_over_websocket(start_gateway, broker, server):
    """Larger than the gateway's MAX_BODY_SIZE (10 MiB) and Daphne's WebSocket message limit
    (1 MiB): only streaming in both directions, within the flow-control windows, carries it.
    Both brokers: their streams differ (an asyncio queue, a Redis list). Both servers: uvicorn
    streams the upload too, and the echo starts while it arrives, to a requestor (httpx) that
    reads only after uploading: the gateway reads the reply ahead meanwhile, or both stall."""
    gateway = start_gateway(broker, server=server, **STREAMING)
    app = apps.StreamingEcho()
    upload = apps.pattern(20 * MIB)
    client = client_for(gateway, "websocket", app, pollers=2)
    async with client, httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as http:
        digest = hashlib.sha256()
        received = 0
        async with http.stream("POST", client.public_url + "echo", content=upload) as response:
            assert response.status_code == 200
            assert "content-length" not in response.headers  # streamed: chunked
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                received += len(chunk)
        assert received == len(upload)
        assert digest.hexdigest() == hashlib.sha256(upload).hexdigest()
        assert app.messages > 20  # handed to the app chunk by chunk ...
        assert app.largest <= 1 * MIB  # ... never more than a window at once


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_forward_mode_streams_large_bodies(gateway, transport, local_server):
    # WebSocket: 8 MiB cannot travel as one frame, so this only works streamed. PTTH: the
    # gateway buffers up to MAX_BODY_SIZE (10 MiB); the client still writes it in pieces.
    size = 8 * MIB if transport == "websocket" else 3 * MIB
    client = client_for(gateway, transport, local_server.url, pollers=2)
    async with client, httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as http:
        response = await http.get(client.public_url + f"big/{size}")
        assert response.status_code == 200
        assert len(response.content) == size
        assert hashlib.sha256(response.content).hexdigest() == response.headers["X-Sha256"]
        assert response.content == apps.pattern(size)

        upload = apps.pattern(3 * MIB + 7)  # a streamed request body, relayed as it arrives
        digest = await http.post(client.public_url + "digest", content=upload)
        assert digest.status_code == 200
        assert digest.json()["length"] == len(upload)
        assert digest.json()["sha256"] == hashlib.sha256(upload).hexdigest()
        # The gateway's streamed request head should carry the requestor's Content-Length
        # (docs/websocket.md), which the client then passes on; without it the body goes to the
        # local server with the chunked coding. Either way it is streamed, not buffered.
        assert digest.json()["transfer_encoding"] in (None, "chunked")

        echo = await http.post(client.public_url + "api?q=1", content=b"hello")
        assert echo.json()["path"] == "/api?q=1"
        assert echo.json()["body"] == "hello"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reconnects_after_the_gateway_restarts(start_gateway, transport):
    first = start_gateway("memory", **ptth_settings())
    client = AsyncGatewayClient(
        first.service_url,
        unique_label("rst"),
        apps.asgi_echo,
        pollers=2,
        max_backoff=1.0,
        **transport_options(first, transport),
    )
    public_url = await asyncio.wait_for(client.start(), 15)
    second: Gateway | None = None
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
            before = await eventually(
                lambda: http.get(public_url + "before"), lambda r: r.status_code == 200, 10, "200"
            )
            assert before.json()["route"] == "/before"
            await asyncio.to_thread(first.stop)
            with pytest.raises(httpx.ConnectError):
                await http.get(public_url)
            # Same ports, same database, same settings: a restarted gateway.
            second = Gateway(first.port, first.db_path, dict(first.env), first.log_path)
            await asyncio.to_thread(second.start)
            response = await eventually(
                lambda: http.get(public_url + "after"),
                lambda r: r.status_code == 200,
                20,
                "the restarted gateway to relay to the client",
            )
            assert response.json()["route"] == "/after"
    finally:
        await asyncio.wait_for(client.stop(), 20)
        if second is not None:
            await asyncio.to_thread(second.stop)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_registers_again_after_the_registration_is_deleted(gateway, transport):
    client = client_for(gateway, transport, apps.asgi_echo, pollers=2, max_backoff=1.0)
    async with client, httpx.AsyncClient(timeout=TIMEOUT) as http:
        assert (await http.get(client.public_url)).status_code == 200
        old_private = client.private_url
        assert (await http.delete(old_private)).status_code == 204
        await asyncio.to_thread(
            wait_until, lambda: client.private_url != old_private, 15, "a new registration"
        )
        response = await eventually(
            lambda: http.get(client.public_url + "back"),
            lambda r: r.status_code == 200,
            15,
            "the public URL to answer again",
        )
        assert response.json()["route"] == "/back"
        assert (await http.get(old_private)).status_code == 404
        assert (await http.get(client.private_url)).status_code == 200


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stop_answers_requests_in_hand_then_deletes_the_registration(gateway, transport):
    app = apps.Slow(delay=1.0)
    client = client_for(gateway, transport, app, pollers=2)
    name = client.name
    public_url = await asyncio.wait_for(client.start(), 15)
    private_url = client.private_url
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        in_hand = asyncio.ensure_future(http.get(public_url + "slow"))
        await asyncio.to_thread(
            wait_until, lambda: app.arrived is not None and app.arrived.is_set(), 10, "request"
        )
        await asyncio.wait_for(client.stop(), 15)
        response = await asyncio.wait_for(in_hand, 15)
        assert (response.status_code, response.text) == (200, "finished")
        assert (await http.get(public_url)).status_code == 404
        assert (await http.get(private_url)).status_code == 404
        again = await http.post(gateway.service_url, data={"name": name, "token": uuid.uuid4().hex})
        assert again.status_code == 201  # the label is free again, for anyone


async def test_ptth_needs_its_address():
    with pytest.raises(ValueError, match="ptth_url"):
        AsyncGatewayClient("http://127.0.0.1:9", "x", apps.asgi_echo, transport="ptth")
    with pytest.raises(ValueError, match="transport"):
        AsyncGatewayClient("http://127.0.0.1:9", "x", apps.asgi_echo, transport="carrier-pigeon")
