"""Leases on a live gateway: dormant expiry, re-creation on poll, label reuse (RH-07, RH-23)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ..rh import envelope, register, unique_label

pytestmark = pytest.mark.asyncio

SHORT = {"MIN_LEASE": "1", "DEFAULT_LEASE": "2", "EXPIRY_INTERVAL": "0.3"}


@pytest.fixture(params=["redis", "memory"])
def short_lease_gateway(request, start_gateway):
    return start_gateway(request.param, **SHORT)


async def state(client: httpx.AsyncClient, private: str) -> dict[str, str]:
    response = await client.get(private)
    return dict(httpx.QueryParams(response.text)) if response.status_code == 200 else {}


async def test_waiting_poller_keeps_the_registration_alive(short_lease_gateway):
    """RH-07: no expiry while a poller waits; the countdown starts when polling stops."""
    gw = short_lease_gateway
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gw.service_url, unique_label(), lease="1")
        for _ in range(3):  # 3 polls of 2 s each: 6 s, well past the 1 s lease
            assert (await client.get(reg.first)).status_code == 204
        assert (await state(client, reg.private))["status"] == "active"
        public = asyncio.ensure_future(client.get(reg.public))
        delivered = await client.get(reg.first)
        assert delivered.status_code == 200
        await client.post(reg.first, content=envelope(body=b"alive"))
        assert (await public).text == "alive"


async def test_dormant_registration_expires_and_its_label_is_free(short_lease_gateway):
    """RH-07: dormant for its lease -> expired; public requests 404; another token may take it."""
    gw = short_lease_gateway
    async with httpx.AsyncClient(timeout=15) as client:
        name = unique_label()
        reg = await register(client, gw.service_url, name, lease="1")
        await asyncio.sleep(2.5)
        assert (await client.get(reg.public)).status_code == 404
        assert (await state(client, reg.private))["status"] == "expired"
        other = await client.post(gw.service_url, data={"name": name, "token": "someone-else"})
        assert other.status_code == 201
        # The old client's URLs now belong to nobody: its polls get 404, not the new app's work.
        assert (await client.get(reg.first)).status_code == 404


async def test_expired_registration_is_recreated_by_its_old_poller(short_lease_gateway):
    """RH-23 (X): a client that keeps polling its old Request URL gets its label back."""
    gw = short_lease_gateway
    async with httpx.AsyncClient(timeout=15) as client:
        reg = await register(client, gw.service_url, unique_label(), lease="1")
        await asyncio.sleep(2.5)
        assert (await client.get(reg.public)).status_code == 404
        poll = asyncio.ensure_future(client.get(reg.first))
        await asyncio.sleep(0.5)
        public = asyncio.ensure_future(client.get(reg.public + "back"))
        delivered = await poll
        assert delivered.status_code == 200
        await client.post(reg.first, content=envelope(body=b"back"))
        assert (await public).text == "back"
        assert (await state(client, reg.private))["status"] == "active"


async def test_same_token_re_registration_after_expiry_is_201(short_lease_gateway):
    """RH-10: after expiry the registration is created again, with the same URLs."""
    gw = short_lease_gateway
    async with httpx.AsyncClient(timeout=15) as client:
        name = unique_label()
        reg = await register(client, gw.service_url, name, lease="1")
        await asyncio.sleep(2.5)
        again = await client.post(gw.service_url, data={"name": name, "token": "secret"})
        assert again.status_code == 201
        assert again.headers["Location"] == reg.private
