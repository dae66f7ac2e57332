"""A PTTH worker told to stop for good (``abort_wait``) lets go of its idle socket at once.

A loopback server plays the gateway's PTTH listener: it accepts the upgrade, then sends nothing,
so the worker waits for a request on the reversed socket until it is aborted.
"""

from __future__ import annotations

import asyncio

import httpx

from reversehttp_gateway.client.handlers import ForwardHandler
from reversehttp_gateway.client.ptth import PtthWorker
from reversehttp_gateway.client.registration import Registrar, Registration


async def test_abort_closes_an_idle_ptth_socket_promptly() -> None:
    upgraded = asyncio.Event()
    closed = asyncio.Event()

    async def listener(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\n\r\n")
        await writer.drain()
        upgraded.set()
        if await reader.read(1) == b"":  # the worker closed the socket
            closed.set()
        writer.close()

    server = await asyncio.start_server(listener, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with httpx.AsyncClient() as http:
        registrar = Registrar(http, f"http://127.0.0.1:{port}", "demo")
        registrar.latest = Registration(
            name="demo",
            first_url=f"http://127.0.0.1:{port}/r/demo/first",
            public_url=f"http://127.0.0.1:{port}/demo/",
            private_url=f"http://127.0.0.1:{port}/r/demo/secret",
            created=True,
        )
        stopping = asyncio.Event()
        handler = ForwardHandler("http://127.0.0.1:9")
        worker = PtthWorker(0, registrar, handler, stopping, address=("127.0.0.1", port, False))
        task = asyncio.ensure_future(worker.run())
        await asyncio.wait_for(upgraded.wait(), 5)
        await asyncio.sleep(0.1)  # the worker now waits for a request
        assert worker.socket is not None
        stopping.set()
        worker.abort_wait()
        await asyncio.wait_for(task, 2)  # returns without a request or a close from the gateway
        await asyncio.wait_for(closed.wait(), 2)
    server.close()
