"""Hostile PTTH traffic (issue 6): random upgrade requests and random application responses."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..conftest import _factory
from ..gateway_process import free_port
from ..rh import register, unique_label
from .test_ptth import TOKEN, connect_app, private_path, ptth_port

HOSTILE = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory, db_template, redis_url):
    start, started = _factory(tmp_path_factory.mktemp("ptthfuzz"), db_template, redis_url)
    yield start("memory", PTTH_LISTEN=f"127.0.0.1:{free_port()}", REPLY_TIMEOUT="3")
    for gw in started:
        gw.stop()


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


@HOSTILE
@given(
    prefix=st.sampled_from([b"", b"POST / HTTP/1.1\r\n", b"GET /ptth/x HTTP/1.1\r\nHost: a\r\n"]),
    junk=st.binary(max_size=400),
)
def test_random_upgrade_requests_get_an_http_refusal(fuzz_gateway, prefix, junk):
    answer = _exchange(ptth_port(fuzz_gateway), prefix + junk)
    if answer:
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 4") or status_line.startswith(b"HTTP/1.1 5"), (
            status_line
        )
    assert fuzz_gateway.process.poll() is None


@HOSTILE
@given(reply=st.binary(max_size=600))
def test_random_responses_give_the_requestor_one_clear_status(fuzz_gateway, reply):
    async def scenario() -> int:
        async with httpx.AsyncClient(timeout=15) as client:
            reg = await register(client, fuzz_gateway.service_url, unique_label(), token=TOKEN)
            app = await connect_app(fuzz_gateway, private_path(reg))
            public = asyncio.ensure_future(client.get(reg.public))
            await app.request()
            await app.send(reply)
            app.writer.close()
            return (await public).status_code

    status = asyncio.run(scenario())
    # Garbage is a 502 (RH-63); only bytes that really are an HTTP/1.x response get through.
    assert status == 502 or reply.startswith(b"HTTP/1."), status
    assert fuzz_gateway.process.poll() is None


async def test_listener_still_serves_after_the_fuzzing(fuzz_gateway):
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, fuzz_gateway.service_url, unique_label(), token=TOKEN)
        app = await connect_app(fuzz_gateway, private_path(reg))
        public = asyncio.ensure_future(client.get(reg.public))
        await app.request()
        await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert (await public).text == "ok"
