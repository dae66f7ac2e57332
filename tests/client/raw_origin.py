"""A loopback origin for tests that need exact bytes: it reads raw requests, writes raw answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Serve = Callable[["Exchange"], Awaitable[bool]]  # False: close the connection after it


class Exchange:
    """One request as the origin read it, and the means to answer it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: int):
        self.reader = reader
        self.writer = writer
        self.connection = connection  # 1 for the origin's first connection, 2 for the next ...
        self.head = b""
        self.body = b""

    async def read_request(self) -> bool:
        try:
            self.head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        lines = self.head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if fields.get("transfer-encoding") == "chunked":
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                self.body += await self.reader.readexactly(size)
                await self.reader.readline()
            await self.reader.readline()
        elif "content-length" in fields:
            self.body = await self.reader.readexactly(int(fields["content-length"]))
        return True

    @property
    def request_line(self) -> str:
        return self.head.decode("latin-1").split("\r\n", 1)[0]

    def header(self, name: str) -> str | None:
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return None

    async def answer(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


class Origin:
    """A loopback server that hands every request to ``serve``; counts its connections."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.connections = 0
        self.exchanges: list[Exchange] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Origin:
        self.server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                exchange = Exchange(reader, writer, number)
                if not await exchange.read_request():
                    return
                self.exchanges.append(exchange)
                if not await self.serve(exchange):
                    return
        finally:
            writer.close()


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def echo(exchange: Exchange) -> bool:
    await exchange.answer(ok(exchange.body or exchange.request_line.encode()))
    return True
