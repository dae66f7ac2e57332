"""A lean HTTP/1.1 client for plain-http peers: keep-alive connections over asyncio.

The tunnel client makes at least one HTTP request per relayed request (forward mode's request to
the local server; with long-poll also a poll and a reply to the gateway). Through httpx each
costs about 0.5 ms of CPU in request building, the cookie jar, the connection pool and
anyio; this client does the same exchange in a fraction of that. It does only what those
calls need:

- ``http://`` only, no proxies, no redirects, no cookies, no content decoding: the caller sends
  the headers it wants (``Host`` included) and gets the status, reason, raw headers (original
  case) and the body as it arrives. Anything else goes through httpx.
- the bytes on the wire are written and parsed by :mod:`.http1_wire` (h11's grammar and
  framing rules, at a fraction of h11's cost).
- one :class:`Http1Pool` per ``host:port``: idle connections are reused (newest first, at most
  ``max_idle`` kept); a connection the peer closed, or that got bytes while idle, is dropped.
  ``TCP_NODELAY`` is set on every socket.
- timeouts like httpx's: ``connect_timeout`` to connect, ``timeout`` for each read or each wait
  for the socket to accept more bytes.
- a request whose body is ``bytes`` and whose method is idempotent is sent again on a new
  connection when a reused one turns out to be closed before anything came back (the peer
  closed it as we sent).
- bodies stream both ways: an async iterable body is sent as it is produced (with the caller's
  ``Content-Length``, else the chunked coding), and :meth:`Http1Response.read` returns the
  response body piece by piece (reading pauses while the caller does not read).

Errors: :class:`ConnectFailed` (cannot connect), :class:`Http1Timeout`, and their base
:class:`Http1Error` for everything else (closed early, not HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, cast

from .http1_wire import ProtocolError, ResponseHead, ResponseParser, request_head

if TYPE_CHECKING:
    from .origin_direct import DirectExchange

__all__ = [
    "ConnectFailed",
    "Http1Error",
    "Http1Pool",
    "Http1Response",
    "Http1Timeout",
    "is_plain_target",
]

Headers = list[tuple[bytes, bytes]]

MAX_HEAD = 100 * 1024  # as httpcore
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})  # Content-Length: 0 when empty (httpx)


# Request targets that httpx would send unchanged: it percent-encodes other characters, drops a
# fragment and removes dot segments. Callers send only these through this client, so that the
# peer sees what it saw through httpx.
_PLAIN_TARGET = re.compile(
    rb"/[A-Za-z0-9\-._~!$&'()*+,;=:@/%\[\]]*(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@/%\[\]?]*)?"
)


def is_plain_target(target: bytes) -> bool:
    """True if the origin-form ``target`` is sent as is by httpx too (no normalising needed)."""
    if _PLAIN_TARGET.fullmatch(target) is None:
        return False
    path = target.partition(b"?")[0]
    return b"/." not in path or all(part not in (b".", b"..") for part in path.split(b"/"))


class Http1Error(Exception):
    """The exchange failed: the peer closed the connection early or did not speak HTTP/1.x."""


class ConnectFailed(Http1Error):
    """The connection could not be opened (refused, unreachable, unknown host)."""


class Http1Timeout(Http1Error):
    """Connecting, reading or writing took longer than its timeout."""


def _describe_os_error(exc: OSError) -> str:
    if exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


class _Connection(asyncio.Protocol):
    """One TCP connection: feeds received bytes to the parser, wakes the reader, flow control."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.parser = ResponseParser(MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.busy = False  # in an exchange (bytes received while idle mean trouble)
        self.received = False  # bytes arrived during the current exchange
        self.sent = False  # the current request was sent whole
        self.closed = False  # lost, closed by the peer, or closed by us
        self.direct: DirectExchange | None = None  # an exchange read by callbacks
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False

    # asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport instances: no isinstance).
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # the peer talks out of turn: never trust this connection again
            self.close()
            return
        self.received = True
        if self.direct is not None:
            self.direct.feed(data)
            return
        self.parser.feed(data)
        if self._waiter is not None:
            self._wake()
        elif not self._read_paused and self.transport is not None:
            self._read_paused = True  # nobody is reading: leave the rest in the socket
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.direct is not None:
            self.closed = True
            self.direct.closed()
            return False
        if self.busy:
            self.parser.feed_eof()  # the end of a body read to the close, or an error
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.direct is not None:
            self.direct.closed()
        self._wake()
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # Used by the pool -------------------------------------------------------------------------

    def resume_reading(self) -> None:
        """Read from the socket again (paused while nobody waited for the bytes)."""
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def write(self, data: bytes, timeout: float) -> None:
        """Send ``data``; wait (up to ``timeout``) while the socket's buffer is full."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise Http1Error("the server closed the connection")
        self.transport.write(data)
        if not self._write_paused:
            return
        self._drained = self._loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._drained
        except TimeoutError:
            raise Http1Timeout("timed out writing the request") from None
        finally:
            self._drained = None
        if self.closed:
            raise Http1Error("the server closed the connection")

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` for more bytes (the parser needs them)."""
        if self.closed:
            raise Http1Error("the server closed the connection")
        self.resume_reading()
        self._waiter = self._loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        except TimeoutError:
            raise Http1Timeout("timed out waiting for the server") from None
        finally:
            self._waiter = None


class Http1Response:
    """A response whose head has arrived; read the body with :meth:`read` or :meth:`read_all`.

    ``headers`` keep the peer's order and case. Call :meth:`close` when done (a response read
    to its end has already returned its connection to the pool).
    """

    __slots__ = ("status", "reason", "headers", "_pool", "_connection", "_timeout", "_done")

    def __init__(
        self, pool: Http1Pool, connection: _Connection, head: ResponseHead, timeout: float
    ) -> None:
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self._pool = pool
        self._connection = connection
        self._timeout = timeout
        self._done = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    async def read(self) -> bytes:
        """The next piece of the body; ``b""`` at its end."""
        if self._done:
            return b""
        connection = self._connection
        while True:
            try:
                piece = connection.parser.body()
            except ProtocolError as exc:
                raise Http1Error(f"invalid HTTP from the server: {exc}") from exc
            if piece is None:
                await connection.wait(self._timeout)
                continue
            if not piece:
                self._done = True
                self._pool._release(connection)
            return piece

    async def read_all(self) -> bytes:
        """The rest of the body, joined."""
        chunks = []
        while chunk := await self.read():
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        """Drop the connection if the body was not read to its end."""
        if not self._done:
            self._done = True
            self._connection.close()

    async def aclose(self) -> None:
        """:meth:`close`, for ``await response.aclose()`` as with httpx."""
        self.close()


class Http1Pool:
    """Keep-alive HTTP/1.1 connections to one ``host:port`` (see the module docstring)."""

    def __init__(
        self, host: str, port: int, *, connect_timeout: float = 10.0, max_idle: int = 20
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self._closed = False

    @property
    def idle(self) -> int:
        """How many open connections wait to be reused."""
        return sum(1 for connection in self._idle if not connection.closed)

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes | AsyncIterable[bytes] = b"",
        *,
        timeout: float,
    ) -> Http1Response:
        """Send one request and return the response once its head has arrived.

        ``headers`` go out as given and must include ``Host``. A ``bytes`` body gets
        ``Content-Length``; an async iterable one is streamed with the caller's
        ``Content-Length`` header, or with the chunked coding when it has none.

        Raises:
            ConnectFailed, Http1Timeout, Http1Error: see the module docstring.
        """
        if self._closed:
            raise Http1Error("the connection pool is closed")
        if isinstance(body, bytes):
            if body:
                headers = [*headers, (b"Content-Length", b"%d" % len(body))]
            elif method in _BODY_METHODS:
                headers = [*headers, (b"Content-Length", b"0")]
        elif not any(name.lower() == b"content-length" for name, _ in headers):
            headers = [*headers, (b"Transfer-Encoding", b"chunked")]
        replayable = isinstance(body, bytes) and method in IDEMPOTENT
        while True:
            connection = self._take_idle()
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
            connection.busy = True
            try:
                try:
                    await self._send(connection, method, target, headers, body, timeout)
                except Http1Error:
                    if not connection.received:
                        raise
                    # The server answered before taking the whole body: read its answer.
                head = await self._head(connection, method, timeout)
            except Http1Error as exc:
                connection.close()
                if (
                    reused
                    and replayable
                    and not connection.received
                    and not isinstance(exc, Http1Timeout)
                ):
                    continue  # the peer closed the idle connection as we reused it
                raise
            except BaseException:
                connection.close()
                raise
            return Http1Response(self, connection, head, timeout)

    async def resume(self, connection: _Connection, method: bytes, timeout: float) -> Http1Response:
        """The response on ``connection`` whose first bytes were read by :mod:`.origin_direct`
        and fed to its parser: the general path from there on.

        Raises:
            Http1Timeout, Http1Error: see the module docstring.
        """
        try:
            head = await self._head(connection, method, timeout)
        except BaseException:
            connection.close()
            raise
        return Http1Response(self, connection, head, timeout)

    async def aclose(self) -> None:
        """Close the idle connections; connections in use close when their response ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    # Internals --------------------------------------------------------------------------------

    def take_idle(self) -> _Connection | None:
        """An open idle connection, newest first (for :mod:`.origin_direct`), or None."""
        return self._take_idle()

    def release_direct(self, connection: _Connection, keep_alive: bool) -> None:
        """Take back ``connection`` after an exchange read by :mod:`.origin_direct`."""
        reusable = (
            keep_alive
            and not self._closed
            and not connection.closed
            and len(self._idle) < self.max_idle
        )
        if not reusable:
            connection.close()
            return
        connection.busy = connection.received = connection.sent = False
        self._idle.append(connection)

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    def _release(self, connection: _Connection) -> None:
        parser = connection.parser
        reusable = (
            not self._closed
            and not connection.closed
            and connection.sent
            and parser.keep_alive
            and not parser.buffered
            and len(self._idle) < self.max_idle
        )
        if not reusable:
            connection.close()
            return
        parser.reset()
        connection.busy = connection.received = connection.sent = False
        connection.resume_reading()  # so that a close by the peer is noticed while idle
        self._idle.append(connection)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _transport, connection = await loop.create_connection(
                    lambda: _Connection(loop), self.host, self.port
                )
        except TimeoutError:
            raise Http1Timeout(f"timed out connecting to {self.host}:{self.port}") from None
        except OSError as exc:
            raise ConnectFailed(_describe_os_error(exc)) from exc
        return connection

    @staticmethod
    async def _send(
        connection: _Connection,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes | AsyncIterable[bytes],
        timeout: float,
    ) -> None:
        try:
            head = request_head(method, target, headers)
        except ProtocolError as exc:
            raise Http1Error(f"cannot send this request: {exc}") from exc
        if isinstance(body, bytes):
            await connection.write(head + body, timeout)
            connection.sent = True
            return
        await connection.write(head, timeout)
        declared = _declared_length(headers)
        sent = 0
        async for chunk in body:
            if not chunk:
                continue
            sent += len(chunk)
            if declared is None:
                await connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk), timeout)
            elif sent > declared:
                raise Http1Error("the request body is longer than its Content-Length")
            else:
                await connection.write(chunk, timeout)
        if declared is None:
            await connection.write(b"0\r\n\r\n", timeout)
        elif sent != declared:
            raise Http1Error("the request body is shorter than its Content-Length")
        connection.sent = True

    @staticmethod
    async def _head(connection: _Connection, method: bytes, timeout: float) -> ResponseHead:
        while True:
            try:
                head = connection.parser.head(method)
            except ProtocolError as exc:
                raise Http1Error(f"invalid HTTP from the server: {exc}") from exc
            if head is not None:
                return head
            await connection.wait(timeout)


def _declared_length(headers: Headers) -> int | None:
    """The ``Content-Length`` among ``headers``, if any.

    Raises:
        Http1Error: it is not a number.
    """
    for name, value in headers:
        if name.lower() == b"content-length":
            if not value.strip().isdigit():
                raise Http1Error(f"cannot send this request: bad Content-Length {value!r}")
            return int(value)
    return None
