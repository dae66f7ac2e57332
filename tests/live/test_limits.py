"""Limits and hostile clients (issue 6): each limit is a setting with a default, and tested."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from ..rh import envelope, register, unique_label

pytestmark = pytest.mark.asyncio


async def test_queued_requests_per_label(start_gateway):
    gw = start_gateway("redis", MAX_QUEUED_PER_LABEL="2", NO_APP_TIMEOUT="1", REPLY_TIMEOUT="2")
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gw.service_url, unique_label())
        first = [asyncio.ensure_future(client.get(reg.public + f"q{i}")) for i in range(2)]
        await asyncio.sleep(0.3)
        third = await client.get(reg.public + "q2")
        assert third.status_code == 503
        assert third.headers["Retry-After"] == "5"
        assert [(await f).status_code for f in first] == [504, 504]


async def test_waiting_pollers_per_label(start_gateway):
    gw = start_gateway("memory", MAX_POLLERS_PER_LABEL="2")
    async with httpx.AsyncClient(timeout=15) as client:
        name = unique_label()
        urls = [(await register(client, gw.service_url, name)).first for _ in range(3)]
        polls = [asyncio.ensure_future(client.get(url)) for url in urls[:2]]
        await asyncio.sleep(0.3)
        refused = await client.get(urls[2])
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "2"
        assert [(await p).status_code for p in polls] == [204, 204]


async def test_registrations_per_ip_per_minute(start_gateway):
    gw = start_gateway("redis", REGISTRATIONS_PER_MINUTE="3")
    async with httpx.AsyncClient(timeout=15) as client:
        for _ in range(3):
            assert (
                await client.post(gw.service_url, data={"name": unique_label()})
            ).status_code == 201
        limited = await client.post(gw.service_url, data={"name": unique_label()})
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "60"


async def test_header_count_and_size(start_gateway):
    gw = start_gateway("memory", MAX_HEADERS="20", MAX_HEADER_BYTES="2000")
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gw.service_url, unique_label())
        many = {f"X-H{i}": "v" for i in range(30)}
        assert (await client.get(reg.public, headers=many)).status_code == 431
        assert (await client.get(reg.public, headers={"X-Big": "v" * 3000})).status_code == 431


async def test_held_connections_per_process(start_gateway):
    gw = start_gateway("memory", MAX_HELD_CONNECTIONS="2")
    async with httpx.AsyncClient(timeout=15) as client:
        name = unique_label()
        urls = [(await register(client, gw.service_url, name)).first for _ in range(2)]
        polls = [asyncio.ensure_future(client.get(url)) for url in urls]
        await asyncio.sleep(0.3)
        refused = await client.get(gw.url + f"/{name}/")
        assert refused.status_code == 503
        assert "connection limit" in refused.text
        await asyncio.gather(*polls)
        assert (await client.post(gw.service_url, data={"name": unique_label()})).status_code == 201


def _idle_connection_lifetime(port: int, partial: bytes, limit: float) -> float:
    """Seconds until the server closes a connection that sent only ``partial``."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(partial)
        sock.settimeout(limit)
        started = time.monotonic()
        try:
            while sock.recv(1024):
                pass
        except TimeoutError:
            return limit
        return time.monotonic() - started


async def test_slowloris_headers_are_cut_but_long_polls_are_not(start_gateway):
    gw = start_gateway("memory", IDLE_TIMEOUT="1", POLL_TIMEOUT="3")
    lifetime = await asyncio.to_thread(
        _idle_connection_lifetime, gw.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a", 8
    )
    assert lifetime < 6
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gw.service_url, unique_label())
        poll = await client.get(reg.first)  # held 3 s, longer than the idle limit
        assert poll.status_code == 204


async def test_gateway_cookies_never_reach_applications(gateway):
    """RH-93: the gateway's session and CSRF cookies are not relayed, nor can apps set them."""
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        public = asyncio.ensure_future(
            client.get(reg.public, headers={"Cookie": "sessionid=s3; app=1; csrftoken=c"})
        )
        delivered = await client.get(reg.first)
        assert b"\r\nCookie: app=1\r\n" in delivered.content
        assert b"sessionid" not in delivered.content and b"csrftoken" not in delivered.content
        reply = (
            b"HTTP/1.1 200 OK\r\nSet-Cookie: sessionid=evil; Path=/\r\n"
            b"Set-Cookie: app=2\r\nContent-Length: 0\r\n\r\n"
        )
        await client.post(reg.first, content=reply)
        response = await public
        assert response.headers.get_list("Set-Cookie") == ["app=2"]


async def test_only_gateway_cookies_means_no_cookie_header(gateway):
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gateway.service_url, unique_label())
        public = asyncio.ensure_future(client.get(reg.public, headers={"Cookie": "sessionid=s"}))
        delivered = await client.get(reg.first)
        assert b"Cookie" not in delivered.content
        await client.post(reg.first, content=envelope())
        await public


async def test_refreshes_do_not_count_against_the_registration_limit(start_gateway):
    gw = start_gateway("memory", REGISTRATIONS_PER_MINUTE="2")
    async with httpx.AsyncClient(timeout=15) as client:
        name = unique_label()
        for _ in range(5):  # one new registration, then refreshes for more pollers
            response = await client.post(gw.service_url, data={"name": name, "token": "t"})
            assert response.status_code in (201, 204)
        refused = await client.post(gw.service_url, data={"name": name, "token": "wrong"})
        assert refused.status_code == 403  # counts
        limited = await client.post(gw.service_url, data={"name": unique_label()})
        assert limited.status_code == 429
