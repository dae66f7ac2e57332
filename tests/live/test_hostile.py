"""Hostile input against a live gateway (issue 6): smuggling, fuzzed forms, database outage."""

from __future__ import annotations

import asyncio
import shutil
import socket

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..rh import envelope, register, unique_label


def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, return everything the server answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


SMUGGLING = [
    # Content-Length and Transfer-Encoding together (CL.TE / TE.CL).
    b"POST /{label}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n0\r\n\r\nGET /{label}/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    # Two different Content-Length values.
    b"POST /{label}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\n"
    b"abcGET /{label}/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    # obs-fold.
    b"GET /{label}/a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
    # A bad Content-Length.
    b"POST /{label}/a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    # NUL and a bare CR in a header.
    b"GET /{label}/a HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    b"GET /{label}/a HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
]


@pytest.mark.parametrize("attack", SMUGGLING)
async def test_request_smuggling_never_reaches_the_application(gateway, attack):
    async with httpx.AsyncClient(timeout=10) as client:
        reg = await register(client, gateway.service_url, unique_label())
        label = reg.public.rstrip("/").rsplit("/", 1)[1]
        poll = asyncio.ensure_future(client.get(reg.first))
        await asyncio.sleep(0.2)
        answer = await asyncio.to_thread(
            raw_exchange, gateway.port, attack.replace(b"{label}", label.encode()), 3
        )
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
        delivered = await poll
        # Either nothing reached the application, or one well-formed request without the
        # smuggled one; it never sees /smuggled.
        assert b"smuggled" not in delivered.content
        if delivered.status_code == 200:
            await client.post(reg.first, content=envelope())


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.binary(max_size=300),
    content_type=st.sampled_from(
        ["application/x-www-form-urlencoded", "text/plain", "", "multipart/form-data; boundary=x"]
    ),
)
def test_fuzzed_registration_forms_never_crash(fuzz_gateway, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(fuzz_gateway.service_url, content=body, headers=headers, timeout=10)
    assert response.status_code in (201, 204, 400, 401, 403, 429), response.text
    assert response.status_code >= 400 or "Link" in response.headers


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory, db_template, redis_url):
    from ..conftest import _factory

    start, started = _factory(tmp_path_factory.mktemp("fuzz"), db_template, redis_url)
    yield start("memory", REGISTRATIONS_PER_MINUTE="0")
    for gw in started:
        gw.stop()


async def test_database_outage(start_gateway):
    """Registration answers 503 with Retry-After while the database is gone; relaying for an
    already registered name keeps working (it never touches the database)."""
    gw = start_gateway("redis", EXPIRY_INTERVAL="0.5")
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gw.service_url, unique_label())
        db = gw.db_path
        saved = db.with_suffix(".saved")
        shutil.move(db, saved)
        for extra in ("-wal", "-shm"):
            side = db.with_name(db.name + extra)
            if side.exists():
                shutil.move(side, saved.with_name(saved.name + extra))
        db.write_bytes(b"this is not a database" * 100)
        try:
            refused = await client.post(gw.service_url, data={"name": unique_label()})
            assert refused.status_code == 503
            assert refused.headers["Retry-After"]
            public = asyncio.ensure_future(client.get(reg.public + "during-outage"))
            delivered = await client.get(reg.first)
            assert delivered.status_code == 200
            await client.post(reg.first, content=envelope(body=b"still relaying"))
            assert (await public).text == "still relaying"
        finally:
            db.unlink()
            shutil.move(saved, db)
            for extra in ("-wal", "-shm"):
                side = saved.with_name(saved.name + extra)
                if side.exists():
                    shutil.move(side, db.with_name(db.name + extra))
        again = await client.post(gw.service_url, data={"name": unique_label()})
        assert again.status_code == 201
