"""The client survives a gateway restart: it backs off while the gateway is down, then resumes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from reversehttp_gateway.client import AsyncGatewayClient

from ..gateway_process import Gateway
from ..rh import unique_label
from . import apps
from .conftest import eventually


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_client_reconnects_after_the_gateway_restarts(start_gateway, broker):
    first = start_gateway(broker)
    client = AsyncGatewayClient(
        first.service_url, unique_label("rst"), apps.asgi_echo, pollers=2, max_backoff=1.0
    )
    public_url = await asyncio.wait_for(client.start(), 15)
    second: Gateway | None = None
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
            assert (await http.get(public_url + "before")).status_code == 200
            await asyncio.to_thread(first.stop)
            with pytest.raises(httpx.ConnectError):
                await http.get(public_url)
            # Same port, same database, same settings: a restarted gateway.
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
