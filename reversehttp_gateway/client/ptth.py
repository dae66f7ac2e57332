"""The PTTH transport: the client connects out, upgrades with ``Upgrade: PTTH/1.0`` and then is
the HTTP server on that socket (docs/ptth.md).

Each :class:`PtthWorker` keeps one socket to the gateway's PTTH listener:

1. TCP connect (``TCP_NODELAY`` and ``SO_KEEPALIVE`` set), then the upgrade request
   ``POST <private URL path>`` with ``Upgrade: PTTH/1.0`` and ``Connection: Upgrade``; anything
   but ``101 Switching Protocols`` is a refusal (404: the registration is gone, so register
   again; others: back off and retry).
2. Serve HTTP/1.1 with h11 in the server role, one request at a time, keep-alive. The request
   body is handed to the handler as it is read from the socket; the response is written as the
   handler produces it (``Content-Length`` for whole bodies, the application's own
   ``Content-Length`` or the chunked coding for streamed ones). The gateway still buffers
   PTTH messages whole, up to its ``MAX_BODY_SIZE``.
3. When the gateway closes the socket (idle socket of a deleted registration, the gateway
   stopping, a failed exchange) the worker connects again, with backoff after failures.

``N`` workers give ``N`` sockets, so up to ``N`` requests at once. On a graceful stop the client
deletes the registration first: the gateway then closes the idle sockets itself, and the busy
ones after the response under way, so no request is lost in a race with our own close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import h11

from .envelope import (
    AppResponse,
    EmbeddedRequest,
    build_reply,
    has_body,
    parse_requesting_client,
    reason_phrase,
    relayed_headers,
)
from .handlers import ForwardHandler, GeneralPath
from .ptth_direct import RequestReader
from .registration import Registration
from .streams import RequestBody, Responder
from .worker import ConnectionWorker, error_response

__all__ = ["PtthWorker", "parse_ptth_address"]

logger = logging.getLogger("reversehttp_gateway.client")

CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0
READ_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024
MAX_REFUSAL_BODY = 16 * 1024
HEALTHY_AFTER = 1.0  # a socket closed sooner, without serving anything, counts as a failure

_FORWARDED_FOR = re.compile(rb'for\s*=\s*"?([^";,\s]+)"?', re.IGNORECASE)


def parse_ptth_address(value: str) -> tuple[str, int, bool]:
    """``"host:port"``, ``"[v6]:port"`` or ``"ptth://host:port"`` → ``(host, port, tls)``.

    ``https://`` or ``ptths://`` means TLS (default port 443); a bare or ``http://`` /
    ``ptth://`` address is plain TCP (default port 80).

    Raises:
        ValueError: not such an address.
    """
    text = value.strip()
    if "://" not in text:
        text = "ptth://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("ptth", "http", "ptths", "https") or not parts.hostname:
        raise ValueError(f"not a PTTH address (host:port): {value!r}")
    tls = parts.scheme in ("ptths", "https")
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        raise ValueError(f"bad port in PTTH address {value!r}") from None
    return parts.hostname, port, tls


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        text = message if message.startswith(str(status)) else f"{status} {message}".strip()
        super().__init__(text)
        self.status = status


class _SocketGone(Exception):
    """The socket closed (or broke) under an exchange."""


def _requesting_client(headers: list[tuple[bytes, bytes]]) -> tuple[str, int] | None:
    """The requestor's address from the last ``Forwarded: for=`` element (PT-12), if any."""
    found: bytes | None = None
    for name, value in headers:
        if name == b"forwarded":
            for match in _FORWARDED_FOR.finditer(value):
                found = match.group(1)
    return parse_requesting_client(found.decode("latin-1")) if found else None


class _PtthResponder(Responder):
    """Writes the response with h11 on the reversed socket."""

    streaming = True

    def __init__(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        method: str,
        body: RequestBody,
        threshold: int,
    ) -> None:
        super().__init__()
        self._conn = conn
        self._writer = writer
        self._method = method
        self._body = body
        self.stream_threshold = threshold

    async def _write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise _SocketGone("the socket is closed")
        self._writer.write(data)
        # While the request body is still arriving the gateway is not reading yet (it writes the
        # whole request first): buffer instead of waiting, or both sides would wait forever.
        if self._body.complete:
            try:
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                raise _SocketGone(str(exc)) from exc

    def _head(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes, length: int | None
    ) -> bytes:
        if not 200 <= status <= 599:
            raise ValueError(f"status code out of range for a final response: {status}")
        kept, declared = relayed_headers(headers)
        if length is not None:
            if has_body(self._method, status):
                kept.append((b"content-length", b"%d" % length))
        elif declared is not None and declared.isdigit() and status != 204:
            kept.append((b"content-length", declared))
        event = h11.Response(status_code=status, headers=kept, reason=reason_phrase(status, reason))
        return self._conn.send(event) or b""

    async def send(self, response: AppResponse) -> None:
        status = response.status
        body = response.body if has_body(self._method, status) else b""
        if self._method.upper() == "HEAD" or status == 304:
            data = self._head(status, response.headers, response.reason, None)
        else:
            data = self._head(status, response.headers, response.reason, len(body))
        self.status = status
        self.started = True
        if body:
            data += self._conn.send(h11.Data(data=body)) or b""
        data += self._conn.send(h11.EndOfMessage()) or b""
        await self._write(data)
        self.finished = True

    async def start(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b""
    ) -> None:
        data = self._head(status, headers, reason, None)
        self.status = status
        self.started = True
        await self._write(data)

    async def write(self, data: bytes) -> None:
        if data:
            await self._write(self._conn.send(h11.Data(data=data)) or b"")

    async def end(self) -> None:
        await self._write(self._conn.send(h11.EndOfMessage()) or b"")
        self.finished = True


class PtthWorker(ConnectionWorker):
    """One reversed socket to the gateway's PTTH listener, reconnecting forever."""

    kind = "ptth"

    def __init__(self, *args: Any, address: tuple[str, int, bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.host, self.port, self.tls = address
        self._writer: asyncio.StreamWriter | None = None
        self._idle = False  # waiting for the gateway's next request
        self._forward = self._handler if isinstance(self._handler, ForwardHandler) else None

    def abort_wait(self) -> None:
        """Stop for good: an idle socket is closed at once, a busy one after its exchange."""
        super().abort_wait()
        if self._idle and self._writer is not None:
            self._writer.close()  # the waiting read ends (without a task per read to race it)

    @property
    def socket(self) -> socket.socket | None:
        """The TCP socket of the current connection, if any (for inspection)."""
        writer = self._writer
        return writer.get_extra_info("socket") if writer and not writer.is_closing() else None

    # Connection loop --------------------------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping.is_set() and not self._abort.is_set():
            registration = await self._registration()
            if registration is None:
                return
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.host,
                        self.port,
                        ssl=ssl.create_default_context() if self.tls else None,
                        server_hostname=self.host if self.tls else None,
                    ),
                    CONNECT_TIMEOUT,
                )
            except (OSError, TimeoutError) as exc:
                what = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
                await self._failed(f"cannot connect to {self.host}:{self.port}: {what}")
                continue
            self._writer = writer
            try:
                await self._connected(reader, writer, registration)
            finally:
                self._writer = None
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 2)

    async def _connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, registration: Registration
    ) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        try:
            leftover = await asyncio.wait_for(
                self._upgrade(reader, writer, registration), HANDSHAKE_TIMEOUT
            )
        except _Refused as refused:
            if refused.status in (404, 410):
                await self._gone(registration, f"PTTH upgrade refused ({refused})")
            else:
                await self._failed(f"PTTH upgrade refused: {refused}")
            return
        except (OSError, TimeoutError, h11.ProtocolError, _SocketGone) as exc:
            await self._failed(f"PTTH upgrade failed: {str(exc) or type(exc).__name__}")
            return
        opened = time.monotonic()
        self._recovered()
        served = await self._serve(reader, writer, leftover, self.site(registration))
        if self._stopping.is_set() or self._abort.is_set():
            return
        if served or time.monotonic() - opened > HEALTHY_AFTER:
            logger.debug("ptth %d: the gateway closed the socket; connecting again", self.index)
        else:  # closed at once: something is wrong, do not hammer the gateway
            await self._failed("the gateway closed the PTTH socket")

    async def _upgrade(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, registration: Registration
    ) -> bytes:
        """Send the upgrade request; return the bytes that followed the 101 (a request's start).

        Raises:
            _Refused: the gateway answered anything but ``101 Switching Protocols``.
        """
        from .runner import USER_AGENT  # late: runner imports this module

        parts = urlsplit(registration.private_url)
        target = parts.path or "/"
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if self.tls else 80
        authority = host if self.port == default_port else f"{host}:{self.port}"
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("Host", authority),
                ("Upgrade", "PTTH/1.0"),
                ("Connection", "Upgrade"),
                ("Content-Length", "0"),
                ("User-Agent", USER_AGENT),
            ],
        )
        writer.write((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        await writer.drain()
        refusal: h11.Response | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_SIZE))
            elif isinstance(event, h11.InformationalResponse):
                if event.status_code != 101:
                    raise _Refused(event.status_code, "instead of 101 Switching Protocols")
                upgrade = dict(event.headers).get(b"upgrade", b"")
                if not upgrade.lower().startswith(b"ptth/"):
                    raise _Refused(101, f"switched to {upgrade.decode('latin-1')!r}, not PTTH")
                return bytes(conn.trailing_data[0])
            elif isinstance(event, h11.Response):
                refusal = event
            elif isinstance(event, h11.Data):
                body = (body + bytes(event.data))[:MAX_REFUSAL_BODY]
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                if refusal is None:
                    raise _SocketGone("the gateway closed the connection during the upgrade")
                message = body.decode("utf-8", "replace").strip().splitlines()
                raise _Refused(refusal.status_code, message[0][:300] if message else "")

    # Serving ----------------------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader, *, idle: bool) -> bytes | None:
        """The next bytes from the socket; None if aborted while idle."""
        if not idle:
            try:
                return await reader.read(READ_SIZE)
            except (ConnectionError, OSError) as exc:
                raise _SocketGone(str(exc)) from exc
        if self._abort.is_set():
            return None
        self._idle = True  # abort_wait() closes the socket to end this read
        try:
            data = await reader.read(READ_SIZE)
        except (ConnectionError, OSError):
            data = b""
        finally:
            self._idle = False
        return None if not data and self._abort.is_set() else data

    async def _next_event(
        self, conn: h11.Connection, reader: asyncio.StreamReader, *, idle: bool = False
    ) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self._read(reader, idle=idle)
            if data is None:
                return None
            conn.receive_data(data)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        leftover: bytes,
        site: Any,
    ) -> int:
        """Serve requests on the reversed socket until it closes; returns how many."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        if leftover:  # (receive_data(b"") would mean EOF)
            conn.receive_data(leftover)
        served = 0
        while True:
            finish: GeneralPath | None = None
            if self._forward is not None and not conn.trailing_data[0]:
                outcome = await self._direct(conn, reader, writer, site)
                if outcome is None:
                    return served  # closed (or aborted while idle)
                if outcome is True:
                    served += 1
                    if self._abort.is_set():
                        return served
                    continue
                if outcome is not False:
                    finish = outcome  # the request is in h11's buffer; finish it from there
            try:
                event = await self._next_event(conn, reader, idle=True)
            except h11.RemoteProtocolError as exc:
                logger.warning("ptth %d: bad request from the gateway: %s", self.index, exc)
                return served
            if not isinstance(event, h11.Request):
                return served  # closed (or aborted while idle)
            keep = await self._exchange(conn, reader, writer, event, site, finish=finish)
            served += 1
            if not keep or self._abort.is_set():
                return served
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return served
            conn.start_next_cycle()

    async def _exchange(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        event: h11.Request,
        site: Any,
        *,
        finish: GeneralPath | None = None,
        started: float | None = None,
    ) -> bool:
        """Answer one request; False when the socket cannot be used any more.

        ``finish`` (from :meth:`_direct`) answers it instead of the handler's ``serve``.
        """
        started = time.monotonic() if started is None else started
        headers = [(bytes(name), bytes(value)) for name, value in event.headers]
        request = EmbeddedRequest(
            method=event.method.decode("ascii"),
            target=bytes(event.target),
            http_version=event.http_version.decode("ascii"),
            headers=headers,
            body=b"",
            requesting_client=_requesting_client(headers),
        )
        path = request.raw_path.decode("latin-1")

        async def pull() -> tuple[bytes, bool]:
            try:
                item = await self._next_event(conn, reader)
            except h11.RemoteProtocolError as exc:
                raise _SocketGone(f"bad request body: {exc}") from exc
            if isinstance(item, h11.Data):
                return bytes(item.data), False
            if isinstance(item, h11.EndOfMessage):
                return b"", True
            raise _SocketGone("the gateway closed the socket during the request body")

        length = request.header(b"content-length")
        body = RequestBody(pull, length=int(length) if length and length.isdigit() else None)
        responder = _PtthResponder(conn, writer, request.method, body, self.stream_threshold)
        try:
            if finish is not None:
                await finish(responder)
            else:
                await self._handler.serve(request, body, site, responder)
            if not responder.finished:
                raise RuntimeError("the handler returned without completing its response")
            await body.drain()  # keep the connection in step for the next request
            await self._flush(writer)
        except _SocketGone as exc:
            logger.info("%s %s: the PTTH socket closed (%s)", request.method, path, exc)
            return False
        except Exception:
            if responder.started:  # cannot be completed honestly: close, the body is cut short
                logger.exception(
                    "ptth %d: the response to %s %s failed mid-way",
                    self.index,
                    request.method,
                    path,
                )
                return False
            logger.exception(
                "ptth %d: the application failed on %s %s", self.index, request.method, path
            )
            try:
                await body.drain()
                await responder.send(error_response(500, "Internal Server Error"))
                await self._flush(writer)
            except (_SocketGone, h11.LocalProtocolError):
                return False
        self._log_request(request.method, path, responder, started)
        return True

    async def _direct(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        site: Any,
    ) -> bool | GeneralPath | None:
        """Forward mode: read the next request and relay it by callbacks (:mod:`.ptth_direct`).

        Returns True when it was answered, None when the socket closed (or the worker was
        aborted) while idle, False when the request's bytes were handed to h11 for the general
        path, or a coroutine function that finishes the request (already in h11's buffer) on
        the general path: the local server's response needs it (streaming, a retry).
        """
        assert self._forward is not None
        reader_ = RequestReader()
        idle = True
        while True:
            try:
                data = await self._read(reader, idle=idle)
            except _SocketGone as exc:
                logger.info("ptth %d: the socket broke during a request (%s)", self.index, exc)
                return None
            if not data:  # closed, or aborted while idle
                if idle:
                    return None
                conn.receive_data(b"".join(reader_.raw))  # h11 reports the cut request
                conn.receive_data(b"")
                return False
            idle = False
            whole = reader_.feed(data)
            if whole is None:
                conn.receive_data(b"".join(reader_.raw))
                return False
            if whole:
                break
        started = time.monotonic()
        request = reader_.request(_requesting_client(reader_.headers))
        loop = asyncio.get_running_loop()
        done: asyncio.Future[AppResponse | GeneralPath] = loop.create_future()
        exchange = self._forward.forward_nowait(
            request,
            site,
            max_body=self.stream_threshold,
            on_response=done.set_result,
            on_general=done.set_result,
        )
        if exchange is None:
            conn.receive_data(b"".join(reader_.raw))
            return False
        try:
            outcome = await done
        except asyncio.CancelledError:
            exchange.abort()
            raise
        if not isinstance(outcome, AppResponse):
            conn.receive_data(b"".join(reader_.raw))
            return outcome
        if writer.is_closing():
            logger.info("%s %s: the PTTH socket closed", request.method, _path(request))
            return None
        writer.write(build_reply(outcome, request_method=request.method))
        try:
            await self._flush(writer)
        except _SocketGone as exc:
            logger.info("%s %s: the PTTH socket closed (%s)", request.method, _path(request), exc)
            return None
        answered = Responder()
        answered.status = outcome.status
        self._log_request(request.method, _path(request), answered, started)
        return True

    @staticmethod
    async def _flush(writer: asyncio.StreamWriter) -> None:
        try:
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            raise _SocketGone(str(exc)) from exc


def _path(request: EmbeddedRequest) -> str:
    return request.raw_path.decode("latin-1")
