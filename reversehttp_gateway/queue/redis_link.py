"""One pipelined Redis connection for the Redis broker's per-request commands.

redis-py's asyncio client takes a pooled connection, encodes, sends, awaits the reply and
returns the connection for every command, with locks, retries and observability hooks on the
way: about 50 µs of CPU per command here, three to six commands per long-poll request. A
:class:`RedisLink` writes every command it is given in one event-loop turn in one ``write``
and matches the replies, parsed by hiredis (the C parser redis-py uses too), to the callers in
order. It is for short commands only (never a blocking pop, which would hold up the others) and
keeps no state between commands: MULTI/EXEC is sent as one contiguous group.

A lost connection fails the commands in flight with ``ConnectionError`` (the broker answers
503, as for redis-py's errors) and the next command connects again.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["RedisLink", "pack"]

Arg = bytes | str | int | float


def pack(*args: Arg) -> bytes:
    """A command in RESP (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int | float):
            arg = repr(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    """One connection: writes the commands of a loop turn at once, hands the replies to the
    waiting futures in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: collections.deque[tuple[asyncio.Future[Any], bool]] = collections.deque()
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def send(self, packed: list[bytes]) -> asyncio.Future[Any]:
        """Queue ``packed`` commands; the future gets the last one's reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        for _ in packed[:-1]:
            self.waiting.append((future, False))
        self.waiting.append((future, True))
        if not self.out:
            asyncio.get_running_loop().call_soon(self.flush)
        self.out.extend(packed)
        return future

    def flush(self) -> None:
        out, self.out = self.out, []
        if not self.closed and self.transport is not None:
            self.transport.writelines(out)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future, wanted = self.waiting.popleft()
            if not wanted or future.done():
                continue  # a reply nobody waits for (MULTI's +OK and +QUEUED)
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        failure = RedisConnectionError(f"Redis connection lost: {exc or 'closed'}")
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(failure)


class RedisLink:
    """Pipelined short commands on one connection to the Redis at ``url`` (redis-py's URLs)."""

    def __init__(self, url: str, *, connect_timeout: float = 2.0) -> None:
        self._options = parse_url(url)
        self._connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def call(self, *args: Arg) -> Any:
        """Send one command; its reply (bytes, int, list, None) or ``ResponseError``."""
        return await self._send([pack(*args)])

    async def transaction(self, commands: list[tuple[Arg, ...]]) -> list[Any]:
        """``MULTI``, ``commands``, ``EXEC`` as one group; the list of their results."""
        result = await self._send(
            [pack("MULTI"), *(pack(*command) for command in commands), pack("EXEC")]
        )
        if result is None:
            raise ResponseError("transaction aborted")
        return list(result)

    async def _send(self, packed: list[bytes]) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return await protocol.send(packed)

    async def _connect(self) -> _Protocol:
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(self._connecting)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"Cannot connect to Redis: {exc}") from exc

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self._options
        kind = options.get("connection_class")
        async with asyncio.timeout(self._connect_timeout):
            if kind is UnixDomainSocketConnection:
                _, protocol = await loop.create_unix_connection(_Protocol, options["path"])
            else:
                context = ssl.create_default_context() if kind is SSLConnection else None
                host, port = options.get("host", "localhost"), options.get("port", 6379)
                _, protocol = await loop.create_connection(_Protocol, host, port, ssl=context)
            try:
                if options.get("password"):
                    user = [options["username"]] if options.get("username") else []
                    await protocol.send([pack("AUTH", *user, options["password"])])
                if options.get("db"):
                    await protocol.send([pack("SELECT", options["db"])])
            except ResponseError as exc:  # refused credentials or database: unavailable
                protocol.transport.close()
                raise RedisConnectionError(f"Redis refused the connection: {exc}") from exc
        self._protocol = protocol
        return protocol

    def close(self) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        self._protocol = None
