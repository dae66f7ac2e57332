"""The long-poll client's ``application/http`` pipelines (RH-26) against live gateways.

One poller, held busy by a first request while three more queue up at the gateway: with
``pipeline=True`` its next poll takes all three at once, the app handles them concurrently and
one reply answers them, in order. Runs once per broker (Redis: held in process and bound in one
round trip; memory: taken one by one).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest

from reversehttp_gateway.client import AsyncGatewayClient

from ..rh import unique_label

pytestmark = pytest.mark.asyncio


class HoldThenGather:
    """``/hold`` waits for :attr:`release`; other paths answer only once ``expected`` of them
    are handled at the same time, with the requestor's address as the app saw it."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.together = 0
        self.release: asyncio.Event | None = None
        self.everyone: asyncio.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        if self.release is None:
            self.release, self.everyone = asyncio.Event(), asyncio.Event()
        assert self.everyone is not None
        if scope["path"].endswith("/hold"):
            await self.release.wait()
            status, text = 200, b"held"
        else:
            self.together += 1
            if self.together >= self.expected:
                self.everyone.set()
            try:
                await asyncio.wait_for(self.everyone.wait(), 3.0)
                host, port = scope["client"]
                status, text = 200, f"{scope['path']} {host}:{port}".encode()
            except TimeoutError:
                status, text = 503, b"alone"
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": text})


async def _get(public_url: str, path: str, sent: asyncio.Event | None = None) -> tuple[str, str]:
    """GET ``path`` on a connection of its own: (the body, this side's ``ip:port``)."""
    parts = urlsplit(public_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    host, port = writer.get_extra_info("sockname")[:2]
    target = parts.path + path
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    if sent is not None:
        sent.set()
    data = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return body.decode(), f"{host}:{port}"


async def test_one_poll_takes_the_queued_requests_and_answers_them_together(gateway):
    app = HoldThenGather(expected=3)
    client = AsyncGatewayClient(
        gateway.service_url, unique_label("pl"), app, pollers=1, pipeline=True
    )
    async with client:
        held = asyncio.ensure_future(_get(client.public_url, "hold"))
        await asyncio.sleep(0.5)  # delivered alone: the only poller is busy with it
        queued = []
        for index in range(3):
            sent = asyncio.Event()
            queued.append(asyncio.ensure_future(_get(client.public_url, f"g{index}", sent)))
            await sent.wait()
            await asyncio.sleep(0.05)  # queue order = arrival order
        await asyncio.sleep(0.3)
        assert app.release is not None
        app.release.set()
        assert (await held)[0] == "held"
        for index, task in enumerate(queued):
            body, requestor = await task
            path, seen = body.split(" ")
            assert path.endswith(f"/g{index}")  # each response went to its own requestor
            assert seen == requestor  # RH-28: each request's own Requesting-Client
