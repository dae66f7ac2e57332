"""The long-poll client's chained polls (``Reversehttp-Poll``) against live gateways.

With one poller and requests one after another, every request after the first is delivered
on the answer to the previous reply: the gateway counts them as chained polls. ``chain=False``
(``--no-chain``) polls with a GET after each 202, as classic clients do.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from reversehttp_gateway.client import AsyncGatewayClient

from ..live.test_metrics import AUTH, TOKEN, parse, value
from ..rh import unique_label
from . import apps

pytestmark = pytest.mark.asyncio

TIMEOUT = httpx.Timeout(15.0)


async def chained_polls(http: httpx.AsyncClient, gateway) -> float:  # noqa: ANN001
    text = (await http.get(gateway.url + "/metrics", headers=AUTH)).text
    return value(parse(text), "reversehttp_gateway_chained_polls_total")


@pytest.mark.parametrize("broker", ["redis", "memory"])
@pytest.mark.parametrize("chain", [True, False])
async def test_replies_fetch_the_next_request(start_gateway, broker, chain):
    gateway = start_gateway(broker, METRICS_TOKEN=TOKEN)
    name = unique_label("chain")
    client = AsyncGatewayClient(gateway.service_url, name, apps.asgi_echo, pollers=1, chain=chain)
    async with client, httpx.AsyncClient(timeout=TIMEOUT) as http:
        before = await chained_polls(http, gateway)
        for i in range(10):
            response = await http.get(client.public_url + f"n{i}")
            assert response.status_code == 200
            assert response.json()["route"] == f"/n{i}"
        counted = await chained_polls(http, gateway) - before
    # The first request came on a GET; each later one on the answer to the reply before it.
    assert counted == (9 if chain else 0)
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:  # stopped: registration deleted
        assert (await http.get(client.public_url)).status_code == 404


async def test_stop_ends_a_chained_wait(start_gateway):
    """stop() DELETEs the registration: the chained poll is answered 202 at once and the
    poller ends, well before POLL_TIMEOUT."""
    gateway = start_gateway("redis", POLL_TIMEOUT="20")
    client = AsyncGatewayClient(gateway.service_url, unique_label("stopc"), apps.asgi_echo)
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        await client.start()
        assert (await http.get(client.public_url + "x")).status_code == 200
        await asyncio.sleep(0.3)  # the reply's chained poll is waiting now
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(client.stop(), 15)
        assert asyncio.get_running_loop().time() - started < 5
        assert client.relayed == 1


async def test_a_request_is_logged_and_counted_as_its_reply_leaves(start_gateway, caplog):
    """Not when the chained POST is answered, which waits for the next request."""
    gateway = start_gateway("redis", POLL_TIMEOUT="20")
    client = AsyncGatewayClient(gateway.service_url, unique_label("logc"), apps.asgi_echo)
    caplog.set_level("INFO", logger="reversehttp_gateway.client")
    async with client, httpx.AsyncClient(timeout=TIMEOUT) as http:
        assert (await http.get(client.public_url + "logged")).status_code == 200
        await asyncio.sleep(0.5)  # well inside POLL_TIMEOUT: the chained poll still waits
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("GET /")]
        assert len(lines) == 1 and re.fullmatch(r"GET /\S+/logged 200 [\d.]+ms", lines[0])
        elapsed = float(lines[0].rsplit(" ", 1)[1].removesuffix("ms"))
        assert elapsed < 5000
        assert client.relayed == 1
