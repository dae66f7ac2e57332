"""PTTH: an application upgrades its own connection and then serves HTTP on it (PT-01..PT-12).

The application connects out to the gateway and sends ``Upgrade: PTTH/1.0``; after the
``101 Switching Protocols`` the roles are reversed and the gateway sends it ordinary HTTP/1.1
requests on that socket, one at a time, and reads the responses.

ASGI cannot take over a socket after a non-WebSocket 101 (PT-11, design notes §6), so this is a
listener of its own, asyncio + h11, running on the serving event loop next to Daphne. Each
reversed socket is one more poller of the registration's queue: it takes requests from the same
broker as the long-poll transport, binds each to a fresh slot and routes the reply the same way,
so one name can be served over both transports at once.

Guarantees (docs/ptth.md): a request taken for a socket that closed before the request was
written goes back to the head of the queue for the next poller (PT-07); a request that was
written is never written again: if no complete response comes back, the requestor gets 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import re
import socket
import time
from collections.abc import Iterable

import h11
from django.db import DatabaseError

from .. import capabilities
from ..addresses import RegistrationAddress
from ..conf import gateway_settings
from ..ids import new_id
from ..protocol.embedded_request import HOP_BY_HOP, hop_by_hop_names
from ..protocol.embedded_response import relayable_response
from ..queue.base import (
    Broker,
    BrokerUnavailable,
    PublicRequest,
    Reply,
    StreamAborted,
    Taken,
    now,
)
from ..resolution import BadToken, resolve_private_url, resolve_token
from ..waiting import Flag

logger = logging.getLogger(__name__)
access_log = logging.getLogger("reversehttp_gateway.access")

UPGRADE_TOKENS = {b"ptth/1.0": b"PTTH/1.0", b"ptth/0.9": b"PTTH/0.9"}
"""Accepted ``Upgrade`` tokens (compared case-insensitively) and the spelling we answer (PT-10)."""

TOKEN_PATH = "/ptth/"
HANDSHAKE_TIMEOUT = 10.0
MAX_UPGRADE_BODY = 64 * 1024
READ_SIZE = 64 * 1024
DEFAULT_HOST = "127.0.0.1"

CLOSED_MESSAGE = "The application closed the connection before answering"
BAD_RESPONSE_MESSAGE = "Bad response from the application"
TOO_LARGE_MESSAGE = "The application's response was too large"
NO_RESPONSE_MESSAGE = "Timeout waiting for the response from the application"
STOPPED_MESSAGE = "The gateway stopped while the application was answering"

_LISTEN = re.compile(r"^(?:(?P<host>\[[0-9a-fA-F:.]+\]|[\w.-]+):)?(?P<port>\d{1,5})$")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def parse_listen(value: str) -> tuple[str, int]:
    """``"[host:]port"`` (IPv6 hosts in brackets) -> ``(host, port)``; host defaults to loopback.

    Raises:
        ValueError: ``value`` is not of that form or the port is out of range.
    """
    match = _LISTEN.match(value.strip())
    if match is None or not 0 < int(match.group("port")) < 65536:
        raise ValueError(f"{value!r} is not a valid [host:]port")
    return (match.group("host") or DEFAULT_HOST).strip("[]"), int(match.group("port"))


def accept_head(token: bytes) -> bytes:
    """The whole ``101`` head: exactly these three lines, written at once (PT-02, PT-03)."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: "
        + token
        + b"\r\nConnection: Upgrade\r\n\r\n"
    )


def refusal(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A complete plain-text refusal of an upgrade, after which we close (PT-04)."""
    reply = Reply.error(status, message)
    reason = http.HTTPStatus(status).phrase.encode()
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    for name, value in reply.headers:
        lines.append(b"-".join(word.capitalize() for word in name.split(b"-")) + b": " + value)
    lines.extend(name + b": " + value for name, value in headers or [])
    lines.append(b"Content-Length: %d" % len(reply.body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + reply.body


def _comma_tokens(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [
        token.strip().lower()
        for field, value in headers
        if field == name
        for token in value.split(b",")
        if token.strip()
    ]


def offered_token(request: h11.Request) -> bytes | None:
    """The PTTH token to answer with, if ``request`` offers to reverse the connection (PT-01).

    ``Upgrade`` must name ``PTTH/1.0`` or ``PTTH/0.9`` and the ``Connection`` token list must
    contain ``upgrade`` (``keep-alive, Upgrade`` is fine). ``PTTH/1.0`` wins if both are offered.
    """
    if b"upgrade" not in _comma_tokens(request.headers, b"connection"):
        return None
    offered = _comma_tokens(request.headers, b"upgrade")
    for token in UPGRADE_TOKENS:
        if token in offered:
            return UPGRADE_TOKENS[token]
    return None


def forwarded_value(requesting_client: str) -> bytes:
    """``for="A.B.C.D:PORT"`` (or ``"[v6]:PORT"``) for a ``Forwarded`` header (PT-12, RFC 7239)."""
    return b'for="' + requesting_client.encode("ascii", "replace") + b'"'


def encode_request(
    envelope: bytes, *, forwarded_for: str | None, streamed_length: int | None | bool = False
) -> tuple[h11.Request, bytes]:
    """The queued ``message/http`` envelope as a request to write on a reversed socket (PT-05).

    The envelope keeps its method, raw target, Host and other headers (names in their original
    case, duplicates in order); ``Forwarded: for=...`` is appended when ``forwarded_for`` is given.
    For a streamed body (``streamed_length`` an int or None) the envelope is a head only, and
    the request gets ``Content-Length`` (when known) or ``Transfer-Encoding: chunked``.

    Raises:
        ValueError: the envelope is not a request h11 accepts.
    """
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=max(len(envelope), 16384))
    parser.receive_data(envelope)
    parser.receive_data(b"")
    request: h11.Request | None = None
    body: list[bytes] = []
    try:
        while True:
            event = parser.next_event()
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise ValueError("incomplete envelope")
    except h11.ProtocolError as exc:
        raise ValueError(f"envelope is not a valid request: {exc}") from None
    if request is None:  # pragma: no cover - h11 yields the Request first
        raise ValueError("envelope has no request")
    raw_headers = request.headers.raw_items()
    dropped = hop_by_hop_names(raw_headers) | HOP_BY_HOP
    headers = [(name, value) for name, value in raw_headers if name.lower() not in dropped]
    if forwarded_for:
        headers.append((b"Forwarded", forwarded_value(forwarded_for)))
    if streamed_length is not False:  # the body follows from a broker stream
        headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        if isinstance(streamed_length, int):
            headers.append((b"Content-Length", str(streamed_length).encode()))
        else:
            headers.append((b"Transfer-Encoding", b"chunked"))
    outgoing = h11.Request(method=request.method, target=request.target, headers=headers)
    return outgoing, b"".join(body)


class Refused(Exception):
    """An upgrade we answer with a plain HTTP error and close (PT-04)."""

    def __init__(
        self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class _NoResponse(Exception):
    """The written request got no complete, acceptable response; the requestor gets 502/504."""

    def __init__(self, status: int, message: str, detail: str = "") -> None:
        super().__init__(detail or message)
        self.status = status
        self.message = message


async def identify(broker: Broker, request: h11.Request) -> RegistrationAddress:
    """The registration an upgrade request wants to serve, from its target (PT-09).

    - ``{SERVICE_PATH}/r/<label>/<secret>`` (the private URL, or a Request URL below it): the
      unguessable URL is the credential, exactly as for long-polling; an expired registration is
      revived while its label is free (RH-23).
    - ``/ptth/<label>`` with ``Authorization: Bearer <the registration's token>``.

    Raises:
        Refused: 404 unknown endpoint or registration, 401 no usable credentials, 403 bad token.
    """
    target = request.target.decode("ascii", "replace")
    if "://" in target:  # absolute-form
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    path = target.partition("?")[0]
    private_prefix = gateway_settings.SERVICE_PATH + "/r/"
    if path.startswith(private_prefix):
        parts = [part for part in path[len(private_prefix) :].split("/") if part]
        if len(parts) not in (2, 3):
            raise Refused(404, "Unknown PTTH endpoint")
        label, secret = parts[0].lower(), parts[1]
        address = await resolve_private_url(broker, label, secret)
        if address is None:
            raise Refused(404, "No such registration")
        if len(parts) == 3 and not capabilities.slot_matches(address.key, parts[2]):
            raise Refused(404, "Unknown Request URL")
        return address
    if path.startswith(TOKEN_PATH):
        label = path[len(TOKEN_PATH) :].strip("/").lower()
        if not _LABEL.fullmatch(label):
            raise Refused(404, "Unknown PTTH endpoint")
        token = _bearer(request)
        try:
            address = await resolve_token(broker, label, token)
        except BadToken:
            raise Refused(403, "Bad token") from None
        if address is None:
            raise Refused(404, "No such registration")
        return address
    raise Refused(404, "Unknown PTTH endpoint")


def _bearer(request: h11.Request) -> str:
    challenge = [(b"WWW-Authenticate", b'Bearer realm="reversehttp"')]
    values = [value for name, value in request.headers if name == b"authorization"]
    if not values:
        raise Refused(401, "Authorization: Bearer <registration token> is required", challenge)
    scheme, _, token = values[0].decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused(401, "Unsupported Authorization scheme; use Bearer <token>", challenge)
    return token.strip()


class ReversedConnection:
    """One socket from its upgrade request until it closes."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, broker: Broker
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.broker = broker
        self.address: RegistrationAddress | None = None
        self.released = Flag()  # the socket is gone (or we stop): take no more requests
        self.background: set[asyncio.Task[None]] = set()  # put-backs, routed replies (held)
        self.broken = False  # a request or response was cut off mid-body: close the socket
        self.streamed_status = 0  # the status of the response being streamed, for the log
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"

    def stop(self) -> None:
        """Stop taking requests; an exchange under way is finished first."""
        self.released.set()

    async def run(self) -> None:
        try:
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    # A peer that vanished without closing is found while the socket idles.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            token = await self._handshake()
            if token is None:
                return
            self.writer.write(accept_head(token))  # one write: npm needs the head in one chunk
            await self.writer.drain()
            assert self.address is not None
            logger.debug("PTTH socket from %s serves %s", self.peer, self.address.label)
            from .ptth_direct import DirectReversedSocket  # imports this module

            await DirectReversedSocket(self).serve()
        except (ConnectionError, OSError):
            pass
        except BrokerUnavailable as exc:
            logger.warning("PTTH socket of %s closed: broker unavailable (%s)", self.peer, exc)
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2)

    # Handshake ------------------------------------------------------------------------
    async def _handshake(self) -> bytes | None:
        """Read the upgrade request and identify its registration; None when refused or gone."""
        try:
            request = await asyncio.wait_for(self._read_upgrade_request(), HANDSHAKE_TIMEOUT)
            if request is None:
                return None
            token = offered_token(request)
            if token is None:
                raise Refused(
                    400, "This port accepts only Upgrade: PTTH/1.0 with Connection: Upgrade"
                )
            # Not refused while draining: npm gives up for good on any non-101 (PT-04), and
            # polls are served until the drain ends anyway.
            self.address = await identify(self.broker, request)
            return token
        except TimeoutError:
            return None
        except Refused as refused:
            await self._refuse(refused)
        except BrokerUnavailable as exc:
            logger.warning("PTTH upgrade refused: broker unavailable (%s)", exc)
            await self._refuse(Refused(503, "The gateway's queue is unavailable"))
        except DatabaseError as exc:
            logger.warning("PTTH upgrade refused: database unavailable (%s)", exc)
            await self._refuse(Refused(503, "The gateway's database is unavailable"))
        return None

    async def _read_upgrade_request(self) -> h11.Request | None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        request: h11.Request | None = None
        body_size = 0
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await self.reader.read(READ_SIZE))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body_size += len(event.data)
                    if body_size > MAX_UPGRADE_BODY:
                        raise Refused(413, "The upgrade request's body is too large")
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return None
        except h11.RemoteProtocolError as exc:  # 400, or 431 for an overlong head
            raise Refused(exc.error_status_hint, "Malformed upgrade request") from None
        if conn.trailing_data[0]:
            raise Refused(400, "Unexpected data after the upgrade request")
        return request

    async def _refuse(self, refused: Refused) -> None:
        logger.info("PTTH upgrade from %s refused: %s %s", self.peer, refused.status, refused)
        with contextlib.suppress(ConnectionError, OSError):
            self.writer.write(refusal(refused.status, refused.message, refused.headers))
            await self.writer.drain()

    # Reversed HTTP on the stream path (ptth_direct.py hands these exchanges over) ------------
    async def _deliver(self, client: h11.Connection, taken: Taken) -> bool:
        """Bind, write one taken request and relay its response; False when the socket is done."""
        if self.released.is_set() or self.reader.at_eof() or self.writer.is_closing():
            await self.broker.put_back(taken)  # PT-07: not written, so the next poller gets it
            return False
        slot = capabilities.connection_slot()
        bound = await self.broker.bind(
            slot, taken, gateway_settings.REPLY_TIMEOUT, answered_here=True
        )
        if not bound:
            await self.broker.put_back(taken)
            return True
        if self.writer.is_closing() or self.reader.at_eof():
            await self.broker.unbind(slot, taken)  # closed while binding; still not written
            await self.broker.put_back(taken)
            return False
        return await self._relay(client, taken, slot, written=False)

    async def _read_written(self, client: h11.Connection, taken: Taken, slot: str) -> bool:
        """Relay the response to a request the direct path wrote already (bound to ``slot``),
        from the response's first byte on (the direct path fed back what it read)."""
        return await self._relay(client, taken, slot, written=True)

    async def _relay(
        self, client: h11.Connection, taken: Taken, slot: str, *, written: bool
    ) -> bool:
        """Write (unless ``written``) the request bound to ``slot`` and route its response."""
        request = taken.request
        forwarded_for = request.requesting_client if gateway_settings.PTTH_FORWARDED else None
        method, target = request.method, "-"
        started = time.monotonic()
        reply: Reply | None = Reply.error(502, STOPPED_MESSAGE)  # if cancelled (shutdown)
        keep = False
        try:
            outgoing, body = encode_request(
                request.envelope,
                forwarded_for=forwarded_for,
                streamed_length=request.body_length if request.body_stream else False,
            )
            target = outgoing.target.decode("latin-1")
            reply = await self._exchange(client, outgoing, body, request, slot, written=written)
            keep = (
                not self.broken
                and client.our_state is h11.DONE
                and client.their_state is h11.DONE
                and not client.trailing_data[0]
            )
        except _NoResponse as failure:
            logger.info("PTTH socket of %s: no usable response (%s)", self.peer, failure)
            reply = Reply.error(failure.status, failure.message)
        except (ValueError, h11.LocalProtocolError) as exc:  # the envelope is the gateway's own
            logger.error("Cannot write a queued request on PTTH: %s", exc)
            reply = Reply.error(502, BAD_RESPONSE_MESSAGE)
        finally:
            status = reply.status if reply is not None else self.streamed_status
            if reply is not None:
                await self._route(slot, reply)
            # The public side logs the request (transport=ptth); this line is for debugging.
            access_log.debug(
                'ptth %s "%s %s" %s %s %.1fms',
                request.requesting_client or "-",
                method,
                target,
                taken.key.partition(".")[0],
                status,
                (time.monotonic() - started) * 1000,
            )
        return keep and not self.released.is_set()

    async def _route(self, slot: str, reply: Reply) -> None:
        claimed = await self.broker.claim(slot)
        if claimed is not None:  # None: the requestor already got its 504 (or left)
            await self.broker.route_reply(claimed, reply)

    async def _exchange(
        self,
        client: h11.Connection,
        outgoing: h11.Request,
        body: bytes,
        request: PublicRequest,
        slot: str,
        *,
        written: bool = False,
    ) -> Reply | None:
        """Write the request (PT-05, PT-06: one at a time; h11 is told even when ``written``,
        so that it reads the response) and read its response.

        Returns the whole response, or None when it was streamed to the requestor already.
        """
        data = client.send(outgoing) or b""
        if body:
            data += client.send(h11.Data(data=body)) or b""
        if not request.body_stream:
            data += client.send(h11.EndOfMessage()) or b""
        if not written:
            await self._write(data, request)  # from here on never replayed (PT-07)
        if request.body_stream:
            await self._write_streamed_body(client, request)
        return await self._read_response(client, request, slot)

    async def _write(self, data: bytes, request: PublicRequest) -> None:
        self.writer.write(data)
        remaining = request.deadline - now()
        try:
            async with asyncio.timeout(max(remaining, 0.01)):  # no task per write, as wait_for
                await self.writer.drain()
        except TimeoutError:
            raise _NoResponse(504, NO_RESPONSE_MESSAGE, "request not accepted in time") from None
        except (ConnectionError, OSError):
            raise _NoResponse(502, CLOSED_MESSAGE, "closed while the request was written") from None

    async def _write_streamed_body(self, client: h11.Connection, request: PublicRequest) -> None:
        """Copy a streamed request body from its broker stream onto the socket, chunk by chunk.

        The socket's own flow control (``drain``) and the stream's window bound the memory.
        """
        while True:
            try:
                chunk, last = await self.broker.stream_read(
                    request.body_stream, max(request.deadline - now(), 0.01)
                )
            except StreamAborted as exc:
                self.broken = True  # half a request is on the socket: it cannot be reused
                status = 413 if "too large" in str(exc) else 400
                raise _NoResponse(status, str(exc), "request body aborted") from None
            except TimeoutError:
                self.broken = True
                raise _NoResponse(408, "The request body did not arrive in time") from None
            if last:
                await self._write(client.send(h11.EndOfMessage()) or b"", request)
                return
            await self._write(client.send(h11.Data(data=chunk)) or b"", request)

    async def _read_response(
        self, client: h11.Connection, request: PublicRequest, slot: str
    ) -> Reply | None:
        """Read the response. Bodies over ``STREAM_THRESHOLD`` go on to the requestor as they
        arrive (docs/streaming.md) and None is returned; smaller ones are relayed whole."""
        response: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        stream = ""
        received = False
        try:
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    data = await self._receive(request.deadline)
                    received = received or bool(data)
                    client.receive_data(data)
                elif isinstance(event, h11.InformationalResponse):
                    continue  # 100 Continue, 103 Early Hints: the final response follows
                elif isinstance(event, h11.Response):
                    _check_response(event)
                    response = event
                elif isinstance(event, h11.Data):
                    assert response is not None
                    size += len(event.data)
                    if stream:
                        await self._stream_chunk(stream, bytes(event.data), size)
                        continue
                    chunks.append(bytes(event.data))
                    if size > gateway_settings.STREAM_THRESHOLD:
                        stream = await self._start_stream(slot, response)
                        await self._stream_chunk(stream, b"".join(chunks), size)
                        chunks = []
                    elif size > gateway_settings.MAX_BODY_SIZE:  # too large to hold whole
                        raise _NoResponse(502, TOO_LARGE_MESSAGE, "response body too large")
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed before the end of the response
                    raise _NoResponse(502, CLOSED_MESSAGE, "closed before answering")
        except h11.RemoteProtocolError as exc:
            if stream:
                await self._abort_stream(stream, str(exc))
                return None
            if not received:
                raise _NoResponse(502, CLOSED_MESSAGE, "closed before answering") from None
            raise _NoResponse(502, BAD_RESPONSE_MESSAGE, str(exc)) from None
        except _NoResponse as failure:
            if stream:
                await self._abort_stream(stream, failure.message)
                return None
            raise
        if stream:
            await self.broker.stream_write(stream, end=True)
            return None
        assert response is not None
        return _reply(response, b"".join(chunks), request.method)

    async def _start_stream(self, slot: str, response: h11.Response) -> str:
        """Answer the requestor with the status and headers now; the body follows on a stream."""
        parsed = relayable_response(response, b"", head_request=True)
        headers = parsed.asgi_headers()  # keeps a declared Content-Length, adds none
        stream = "r" + new_id()
        claimed = await self.broker.claim(slot)
        if claimed is None:  # the requestor already got its 504 or left
            raise _NoResponse(504, NO_RESPONSE_MESSAGE, "requestor gone")
        reply = Reply(parsed.status, headers, b"", parsed.reason, stream=stream, via="ptth")
        await self.broker.route_reply(claimed, reply)
        self.streamed_status = parsed.status
        return stream

    async def _stream_chunk(self, stream: str, chunk: bytes, size: int) -> None:
        if size > gateway_settings.MAX_STREAM_SIZE:
            raise _NoResponse(502, TOO_LARGE_MESSAGE, "streamed response too large")
        step = gateway_settings.STREAM_CHUNK_SIZE
        try:
            for start in range(0, len(chunk), step):
                await self.broker.stream_write(stream, chunk[start : start + step])
        except (StreamAborted, TimeoutError):
            raise _NoResponse(499, "The requestor stopped reading", "requestor gone") from None

    async def _abort_stream(self, stream: str, reason: str) -> None:
        self.broken = True  # the rest of the response is still on the socket
        with contextlib.suppress(Exception):
            await self.broker.stream_write(stream, abort=reason)

    async def _receive(self, deadline: float) -> bytes:
        remaining = deadline - now()
        if remaining <= 0:
            raise _NoResponse(504, NO_RESPONSE_MESSAGE, "no response before the deadline")
        try:
            async with asyncio.timeout(remaining):  # no task per read, as wait_for would make
                return await self.reader.read(READ_SIZE)
        except TimeoutError:
            raise _NoResponse(504, NO_RESPONSE_MESSAGE, "no response before the deadline") from None
        except (ConnectionError, OSError):
            return b""


def _check_response(response: h11.Response) -> None:
    """What h11 accepts but a relaying gateway must not (RH-50)."""
    if response.status_code > 599:
        raise _NoResponse(502, BAD_RESPONSE_MESSAGE, "status code out of range")
    names = {name for name, _ in response.headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        raise _NoResponse(502, BAD_RESPONSE_MESSAGE, "both Content-Length and Transfer-Encoding")


def _reply(response: h11.Response, body: bytes, method: str) -> Reply:
    """The response as relayed: hop-by-hop headers dropped, Content-Length recomputed (RH-50)."""
    parsed = relayable_response(response, body, head_request=method.upper() == "HEAD")
    return Reply(parsed.status, parsed.asgi_headers(), parsed.body, parsed.reason, via="ptth")


class PtthListener:
    """The PTTH listening socket and its reversed connections.

    ``bind()`` happens at construction (so a port conflict fails ``rungateway`` at once);
    ``start()`` must run on the serving event loop, after the runtime's broker started.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family = info[0][0]
        self._socket = socket.create_server((host, port), family=family, backlog=512)
        self.port = self._socket.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], ReversedConnection] = {}

    @classmethod
    def from_address(cls, value: str) -> PtthListener:
        host, port = parse_listen(value)
        return cls(host, port)

    async def start(self, broker: Broker) -> None:
        self._broker = broker
        self._server = await asyncio.start_server(self._accept, sock=self._socket)
        logger.info("PTTH listener on %s:%s", self.host, self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = ReversedConnection(reader, writer, self._broker)
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = connection
        try:
            await connection.run()
        except Exception:
            logger.exception("PTTH connection from %s failed", connection.peer)
        finally:
            self._connections.pop(task, None)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting; let exchanges under way finish for up to ``grace`` s, then cut."""
        if self._server is not None:
            self._server.close()
        else:
            self._socket.close()
        for connection in self._connections.values():
            connection.stop()
        tasks = set(self._connections)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        logger.info("PTTH listener closed")
