"""``UvicornGatewayServer``: uvicorn serving the gateway (``rungateway``, its default server).

The same application, PTTH listener, startup and graceful drain as ``server.GatewayServer``
(shared in ``server.ServingBase``); what Twisted gave Daphne is added here on uvicorn's HTTP
protocol (httptools, or h11 when httptools is missing; uvloop when installed):

- ``TCP_NODELAY`` on every accepted socket (asyncio and uvloop set it too; set again, cheaply);
- the ``IDLE_TIMEOUT`` slowloris limit, with Twisted's rule: it runs while a request head or
  body is being received and between keep-alive requests (uvicorn's ``timeout_keep_alive``),
  never while a request is being answered; while uvicorn has paused reading because the
  application has not taken the body yet (back-pressure), the client is not idle;
- a limit on the request head (httptools has none; h11 bounds the incomplete head it buffers);
- a response's head and first body bytes in one write (one TCP segment, as Twisted does);
- response header names spelled as Twisted spells them (``Link``, ``Content-Type``, ``ETag``):
  uvicorn writes them in lower case, and some ReverseHttp clients match ``Link`` exactly.

Unlike Daphne, uvicorn hands request bodies to the application as they arrive, reading at most
64 KiB ahead of it, so a large upload streams through with bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http import h11_impl
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State as WsState

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets without its C extension
    from websockets.utils import apply_mask

from .conf import gateway_settings
from .http import content_length
from .public_direct import DirectExchange, exchange_for
from .reply_direct import DirectReply, reply_exchange_for
from .server import ServingBase
from .transports.websocket import DIRECT_EXTENSION, ChannelClosed

try:
    from uvicorn.protocols.http import httptools_impl
    from uvicorn.protocols.http.httptools_impl import (
        HEADER_RE,
        HEADER_VALUE_RE,
        STATUS_LINE,
        HttpToolsProtocol,
    )
except ImportError:  # uvicorn without the [standard] extra
    httptools_impl = None  # type: ignore[assignment]
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

logger = logging.getLogger(__name__)


def head_limit() -> int:
    """Most bytes of request line and headers accepted (at least 64 KiB, like a proxy's)."""
    return max(64 * 1024, gateway_settings.MAX_HEADER_BYTES + 8 * 1024)


class _HeadTooLarge(Exception):
    pass


# Twisted's unconventional spellings (twisted.web.http_headers._NameEncoder._caseMappings).
_CASE_MAPPINGS = {
    b"Content-Md5": b"Content-MD5",
    b"Dnt": b"DNT",
    b"Etag": b"ETag",
    b"P3p": b"P3P",
    b"Te": b"TE",
    b"Www-Authenticate": b"WWW-Authenticate",
    b"X-Xss-Protection": b"X-XSS-Protection",
}
_canonical: dict[bytes, bytes] = {}


def canonical_name(name: bytes) -> bytes:
    """A header name in Twisted's (so Daphne's) capitalisation: ``content-type`` ->
    ``Content-Type``, ``etag`` -> ``ETag``."""
    known = _canonical.get(name)
    if known is None:
        known = b"-".join([word.capitalize() for word in name.split(b"-")])
        known = _CASE_MAPPINGS.get(known, known)
        if len(_canonical) < 10_000:  # bounded, as Twisted's cache
            _canonical[name] = known
    return known


def canonical_head(head: bytes) -> bytes:
    """A response head (status line, header lines, blank line) with canonical header names."""
    lines = head.split(b"\r\n")
    for index in range(1, len(lines)):
        name, colon, rest = lines[index].partition(b":")
        if colon:
            lines[index] = canonical_name(name) + colon + rest
    return b"\r\n".join(lines)


class _HeadWriter:
    """The cycle's transport while uvicorn writes a response head: holds the head (with
    canonical header names) until the first body write, so that a response sent whole leaves
    in one write and one TCP segment instead of two. A head whose body does not follow at once
    (a streamed response waiting for its first chunk) is written at the end of the event-loop
    iteration; either way the writer then takes itself out of the cycle."""

    def __init__(self, cycle: Any, transport: asyncio.Transport) -> None:
        self._cycle = cycle
        self._transport = transport
        self._head = b""
        self._expecting_head = True

    def write(self, data: bytes) -> None:
        if self._expecting_head and data.startswith(b"HTTP/"):
            self._expecting_head = False
            self._head = canonical_head(data)
            asyncio.get_running_loop().call_soon(self.release)
            return
        self.release(data)

    def head_sent(self) -> None:
        """uvicorn's start message is done: nothing held means nothing to wait for."""
        self._expecting_head = False
        if not self._head:
            self.release()

    def release(self, data: bytes = b"") -> None:
        """Leave the cycle; write the held head, with ``data`` after it in the same write."""
        if self._cycle.transport is self:
            self._cycle.transport = self._transport
        head, self._head = self._head, b""
        if self._transport.is_closing():  # aborted (http.abort_response) or closed meanwhile
            return
        if head and data:
            self._transport.writelines((head, data))  # one (vectored) write, no copy
        elif head or data:
            self._transport.write(head or data)

    def close(self) -> None:
        self.release()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _CanonicalHeaders:
    """Mixed into uvicorn's request/response cycles: the head goes out through _HeadWriter."""

    transport: Any
    response_started: bool

    async def send(self, message: dict[str, Any]) -> None:
        if self.response_started or message["type"] != "http.response.start":
            await super().send(message)  # type: ignore[misc]
            return
        writer = _HeadWriter(self, self.transport)
        self.transport = writer
        try:
            await super().send(message)  # type: ignore[misc]
        finally:
            writer.head_sent()


class _H11Cycle(_CanonicalHeaders, h11_impl.RequestResponseCycle):
    pass


if httptools_impl is not None:

    class _HttpToolsCycle(_CanonicalHeaders, httptools_impl.RequestResponseCycle):
        pass


class _GatewayProtocol:
    """Mixed into uvicorn's HTTP protocols: TCP_NODELAY, idle limit, head size limit."""

    transport: asyncio.Transport
    cycle: Any
    flow: Any
    loop: asyncio.AbstractEventLoop
    _idle: asyncio.TimerHandle | None = None
    _upgraded = False
    _head_bytes = 0
    _head_too_large = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_idle()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._receiving():
            self._arm_idle()
        else:
            self._cancel_idle()

    def _canonical_cycle(self) -> None:
        """Make the cycle uvicorn just created spell header names canonically (its ASGI task
        has not started yet, so every ``send`` it makes is the subclass's)."""
        cycle = self.cycle
        if cycle is not None and not isinstance(cycle, _CanonicalHeaders):
            for subclass in _CYCLES:
                if type(cycle) in subclass.__bases__:
                    cycle.__class__ = subclass
                    return

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._upgraded = True
        self._cancel_idle()
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]

    def _receiving(self) -> bool:
        """Whether the server waits for the client: a head, a body, or the next request."""
        if self._upgraded or self.transport is None or self.transport.is_closing():
            return False
        cycle = self.cycle
        return cycle is None or cycle.response_complete or cycle.more_body

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.loop.call_later(gateway_settings.IDLE_TIMEOUT, self._idle_expired)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_expired(self) -> None:
        self._idle = None
        if not self._receiving():
            return
        if self.flow is not None and self.flow.read_paused:
            self._arm_idle()  # back-pressure: the application, not the client, is behind
            return
        self.transport.close()

    # httptools only (h11 limits the head itself): count request line and header bytes.
    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()  # type: ignore[misc]

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)  # type: ignore[misc]

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)  # type: ignore[misc]

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > head_limit():
            self._head_too_large = True
            raise _HeadTooLarge  # httptools stops parsing; uvicorn answers and closes

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            super().send_400_response(msg)  # type: ignore[misc]
            return
        body = b"431 Request header fields too large"
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


class GatewayH11Protocol(_GatewayProtocol, H11Protocol):
    """uvicorn's pure-Python HTTP/1.1 protocol with the gateway's limits."""

    def handle_events(self) -> None:
        # h11 creates cycles while handling events; swap each before its task runs.
        super().handle_events()
        self._canonical_cycle()


_CYCLES: list[type[_CanonicalHeaders]] = [_H11Cycle]

if HttpToolsProtocol is not None:
    _CYCLES.append(_HttpToolsCycle)

    class GatewayHttpToolsProtocol(_GatewayProtocol, HttpToolsProtocol):
        """uvicorn's httptools (llhttp) protocol with the gateway's limits, and the direct path
        for public requests and long-poll replies (docs/direct-path.md): a request that may go
        direct starts no ASGI task; its :class:`~.public_direct.DirectExchange` (or
        :class:`~.reply_direct.DirectReply`) gets the body and answers through
        :class:`_CycleWriter`, or declines and the ASGI task starts after all."""

        # The request started on the direct path whose body is still arriving, and the one
        # whose response is not complete (the same request, or the previous one).
        _pending_direct: tuple[Any, DirectExchange | DirectReply, Any] | None = None
        _direct: tuple[Any, DirectExchange | DirectReply] | None = None

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._canonical_cycle()

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            exchange: DirectExchange | DirectReply | None = None
            if not cycle.waiting_for_100_continue:
                exchange = exchange_for(cycle.scope) or reply_exchange_for(cycle.scope)
            if exchange is None:
                super()._start_asgi_task(cycle, app)
                return
            self._pending_direct = (cycle, exchange, app)
            if not cycle.more_body:
                self._begin_direct()

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            pending = self._pending_direct
            if pending is not None and pending[0] is self.cycle and self.flow.read_paused:
                self.flow.resume_reading()  # no ASGI receive() resumes it: the body is ours

        def on_message_complete(self) -> None:
            super().on_message_complete()
            pending = self._pending_direct
            if pending is not None and pending[0] is self.cycle:
                self._begin_direct()

        def _begin_direct(self) -> None:
            pending, self._pending_direct = self._pending_direct, None
            assert pending is not None
            cycle, exchange, app = pending
            body, cycle.body = bytes(cycle.body), bytearray()
            if exchange.start(body, _CycleWriter(self.transport, cycle)):
                if not cycle.response_complete:
                    self._direct = (cycle, exchange)
                return
            cycle.body = bytearray(body)  # declined: the ASGI path reads it
            super()._start_asgi_task(cycle, app)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            direct, self._direct = self._direct, None
            if direct is not None and not direct[0].response_complete:
                direct[1].client_left()


class _CycleWriter:
    """Writes a direct exchange's response through uvicorn's cycle bookkeeping (keep-alive,
    pipelining, ``Connection: close``), as uvicorn's ``send`` and :class:`_HeadWriter` would:
    one write, header names in Twisted's spelling."""

    __slots__ = ("transport", "cycle", "send")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self.transport = transport
        self.cycle = cycle
        self.send = cycle.send  # streamed replies go through the ASGI send

    def write_whole(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, head: bool
    ) -> None:
        cycle = self.cycle
        if cycle.disconnected or cycle.response_started:
            return
        lines = [STATUS_LINE.get(status) or b"HTTP/1.1 %d \r\n" % status]
        keep_alive = cycle.keep_alive
        close_sent = False
        for name, value in [*cycle.default_headers, *headers]:
            if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
                logger.warning("Dropping an invalid response header %r", name)
                continue
            lowered = name.lower()
            if lowered == b"content-length":
                continue
            if lowered == b"connection" and b"close" in [
                token.strip().lower() for token in value.split(b",")
            ]:
                keep_alive, close_sent = False, True
            lines.append(b"%s: %s\r\n" % (canonical_name(lowered), value))
        length = content_length(status, headers, body, head=head)
        if length is not None:
            lines.append(b"Content-Length: %s\r\n" % length)
        if not keep_alive and not close_sent:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        if not head and body:
            lines.append(body)
        cycle.keep_alive = keep_alive
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        self.transport.write(b"".join(lines))
        cycle.message_event.set()
        if not keep_alive:
            self.transport.close()
        cycle.on_response()


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (websockets' sans-I/O implementation), offering the
    application's transport a :class:`~.transports.websocket.DirectSocket`: binary messages go
    to ``on_message`` as they are parsed (no ``receive()`` queue, no pause and resume of reading
    around each), and ``write`` queues frames that leave together at the end of the event-loop
    turn (one ``write`` for all frames of a turn; uvicorn's own writes send them first)."""

    on_message: Callable[[bytes], None] | None = None
    _flush_scheduled = False

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            self.scope["extensions"][DIRECT_EXTENSION] = self

    def data_received(self, data: bytes) -> None:
        if self.on_message is not None:
            data = self._take_messages(data)
            if not data:
                return
        super().data_received(data)

    def _take_messages(self, data: bytes) -> bytes:
        """Cut whole binary messages of one frame off ``data`` and hand them over; return the
        rest for websockets, from the first frame this does not parse (control frames, text,
        fragments, a frame not yet complete, anything invalid). Only while websockets' parser
        sits at a frame boundary with nothing buffered and no message in progress, so it goes
        on from there; its generator-based parser cost more than the relay of a request."""
        conn = self.conn
        if (
            conn.reader.buffer
            or conn.current_size is not None
            or conn.extensions
            or conn.state is not WsState.OPEN
            or self.close_sent
        ):
            return data
        pos, end, limit = 0, len(data), conn.max_message_size
        while end - pos >= 6:
            if data[pos] != 0x82 or data[pos + 1] < 0x80:  # FIN binary, masked (RFC 6455 5.2)
                break
            length, start = data[pos + 1] & 0x7F, pos + 6
            if length == 126:
                start += 2
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                start += 8
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            if start + length > end or (limit is not None and length > limit):
                break  # incomplete, or too large: websockets closes with 1009
            payload = apply_mask(data[start : start + length], data[start - 4 : start])
            pos = start + length
            self._hand_over(payload)
            if self.on_message is None or self.close_sent:
                break
        return data[pos:] if pos else data

    def send_receive_event_to_app(self) -> None:
        if self.on_message is None or self.curr_msg_data_type != "bytes" or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        self._hand_over(data)

    def _hand_over(self, data: bytes) -> None:
        handler = self.on_message
        assert handler is not None
        try:
            handler(data)
        except Exception:
            logger.exception("WebSocket message handling failed; closing the connection")
            self.on_message = None
            self.conn.fail(1011, "internal error")
            self._flush()
            self.transport.close()

    @property
    def open(self) -> bool:
        return not (self.disconnected or self.close_sent) and self.conn.state is WsState.OPEN

    def write(self, data: bytes) -> None:
        """Queue ``data`` as one binary frame: framed here (unmasked, as a server sends) and
        put in websockets' own output queue, so that its frames (pongs, close) keep their
        order with ours."""
        if not self.open:
            raise ChannelClosed
        length = len(data)
        if length < 126:
            head = bytes((0x82, length))
        elif length < 65536:
            head = b"\x82\x7e" + length.to_bytes(2, "big")
        else:
            head = b"\x82\x7f" + length.to_bytes(8, "big")
        self.conn.writes += (head, data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        output = self.conn.data_to_send()
        if output and not self.transport.is_closing():
            self.transport.writelines(output)

    async def drain(self) -> None:
        self._flush()
        await self.writable.wait()
        if self.disconnected:
            raise ChannelClosed

    def pause_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()


def http_protocol() -> type[asyncio.Protocol]:
    """The fastest HTTP protocol available: httptools, else h11."""
    if HttpToolsProtocol is not None:
        return GatewayHttpToolsProtocol
    return GatewayH11Protocol


def bind(host: str, port: int) -> socket.socket:
    """The public listening socket, bound now so that a port in use stops rungateway at once."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family, backlog=2048)


class _Server(uvicorn.Server):
    """uvicorn's server loop, with the gateway's startup and signal handling."""

    def __init__(self, config: uvicorn.Config, gateway: UvicornGatewayServer) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            try:  # like Daphne's ready callback: a broker that cannot start yet is retried
                await self.gateway._startup()  # by the first request (503 until then)
            except Exception:
                logger.exception("Gateway runtime did not start")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # After the gateway's drain (or a second signal), HTTP connections still open (polls,
        # a request that outlived SHUTDOWN_TIMEOUT) are closed without an answer, as Daphne's
        # reactor.stop() drops them, rather than cancelled into 500s; their handlers see
        # http.disconnect. WebSockets get uvicorn's close 1012 (service restart).
        for connection in list(self.server_state.connections):
            if isinstance(connection, _GatewayProtocol) and connection.transport is not None:
                connection.transport.close()
        await super().shutdown(sockets=sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.loop is None:  # not serving yet: uvicorn's own handling (stop)
            super().handle_exit(sig, frame)
        else:
            self.loop.call_soon_threadsafe(self.gateway._begin_shutdown)


class UvicornGatewayServer(ServingBase):
    """Runs ``application`` under uvicorn on ``host``:``port`` until stopped."""

    server_name = "uvicorn"

    def config(self) -> uvicorn.Config:
        """uvicorn settings matching what Daphne does for the gateway (docs/deployment.md)."""
        ws_max = gateway_settings.MAX_BODY_SIZE + 65536  # a whole response in one message
        return uvicorn.Config(
            self.application,
            host=self.host,
            port=self.port,
            http=http_protocol(),
            ws=GatewayWebSocketProtocol,  # websockets' sans-I/O implementation, direct I/O
            ws_max_size=ws_max,
            ws_per_message_deflate=False,  # as Daphne: no compression of relayed bodies
            ws_ping_interval=20.0,
            ws_ping_timeout=30.0,
            lifespan="off",  # the runtime starts in _Server.startup, as under Daphne
            log_config=None,  # Django's LOGGING stays in charge
            access_log=False,  # the gateway writes its own access log
            proxy_headers=False,  # as Daphne: scope["client"] is the TCP peer
            server_header=False,  # relayed responses keep the application's headers
            date_header=False,
            timeout_keep_alive=gateway_settings.IDLE_TIMEOUT,  # type: ignore[arg-type]
            timeout_graceful_shutdown=1,  # after the gateway's own drain: stop promptly
            h11_max_incomplete_event_size=head_limit(),
        )

    def run(self) -> None:
        sock = bind(self.host, self.port)
        self._bind_ptth()
        self.server = _Server(self.config(), self)
        self.server.run(sockets=[sock])

    def _stop_now(self) -> None:
        self.server.should_exit = True
        self.server.force_exit = True  # the drain is done: don't wait for open connections
