"""PTTH's direct path (transports/ptth_direct.py, docs/direct-path.md) against live gateways:
the cases it parses itself, and those it hands to the stream path, keep PT-05..PT-07.

Uses test_ptth.py's ``gateway`` (one per broker) and its raw-socket application.
"""

from __future__ import annotations

import asyncio

import pytest

from ..rh import register, unique_label
from .test_ptth import TOKEN, client, connect_app, gateway, private_path  # noqa: F401

pytestmark = pytest.mark.asyncio


async def test_a_response_in_many_small_pieces_keeps_the_socket(gateway, client):  # noqa: F811
    """llhttp finds the end of a response that arrives a few bytes at a time (PT-05), and the
    socket serves the next request (PT-06)."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gateway, private_path(reg))
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer += b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    for i in range(2):
        public = asyncio.ensure_future(client.get(reg.public + f"piece{i}"))
        await app.request()
        for start in range(0, len(answer), 5):
            await app.send(answer[start : start + 5])
            await asyncio.sleep(0.005)
        response = await public
        assert (response.status_code, response.text) == (200, "abcde")
    app.close()


async def test_interim_responses_are_skipped(gateway, client):  # noqa: F811
    """RH-49 on PTTH: a 100 Continue before the final response is not the answer."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gateway, private_path(reg))
    public = asyncio.ensure_future(client.post(reg.public + "c", content=b"x"))
    await app.request()
    await app.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    await asyncio.sleep(0.05)
    await app.send(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone")
    response = await public
    assert (response.status_code, response.text) == (201, "done")
    app.close()


async def test_head_requests_take_the_stream_path_and_the_socket_goes_on(gateway, client):  # noqa: F811
    """A HEAD response's Content-Length frames no body (RH-51): h11 reads it, then the direct
    path takes the socket back for the next request."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gateway, private_path(reg))
    head = asyncio.ensure_future(client.head(reg.public + "h"))
    request, _ = await app.request()
    assert request.method == b"HEAD"
    await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    response = await head
    assert response.status_code == 200 and response.headers["Content-Length"] == "1234"
    get = asyncio.ensure_future(client.get(reg.public + "g"))
    request, _ = await app.request()
    assert request.method == b"GET"
    await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (await get).text == "ok"
    app.close()


async def test_bytes_after_a_response_or_while_idle_end_the_socket(gateway, client):  # noqa: F811
    """PT-06, PT-07: a socket that sends more than the response, or anything unasked while
    idle, is closed after the answer; the answer itself is relayed."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gateway, private_path(reg))
    public = asyncio.ensure_future(client.get(reg.public))
    await app.request()
    await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE")
    assert (await public).text == "ok"
    assert await app.closed_by_gateway()
    idle = await connect_app(gateway, private_path(reg))
    await idle.send(b"GET / HTTP/1.1\r\n\r\n")  # the roles are reversed: unasked bytes
    assert await idle.closed_by_gateway()
