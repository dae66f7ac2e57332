"""Multiplexed WebSocket transport: many requests in flight on one application connection.

``ws(s)://…/reversehttp/r/<label>/<secret>/ws``. Every WebSocket message is binary, a msgpack
array ``[kind, id, payload]``:

- application → gateway ``["ready", "", n]``: serve up to ``n`` requests at once (1..256);
- gateway → application ``["request", id, [envelope, requesting_client, streamed]]``: a
  ``message/http`` request, exactly as a long-poll would deliver it; when ``streamed`` is
  true the envelope is the head only, and ``["body", id, chunk]`` frames follow, then
  ``["end", id, b""]``;
- application → gateway ``["response", id, message]``: the ``message/http`` response to ``id``,
  parsed by the same rules as long-poll replies (RH-48..RH-51); or, streamed,
  ``["response-start", id, head]``, ``["body", id, chunk]``…, ``["end", id, b""]``;
- gateway → application ``["error", id, text]``: that request or response was cancelled or
  refused (the requestor got an error status);
- either way ``["window", id, n]``: flow control for streamed bodies, as in HTTP/2. The sender
  of a streamed body may have ``INITIAL_WINDOW`` bytes unacknowledged; each ``window`` frame
  from the receiver allows ``n`` more. The gateway grants a streamed response its initial
  window with the ``window`` frame that answers ``response-start``.

``id`` is the request's single-use slot, so a response is accepted once. Requests in flight when
the connection drops are answered 502 (never replayed to another poller, like PTTH, PT-07);
requests not yet sent stay queued for the other pollers. Dead peers are found by the WebSocket
pings of the server (Daphne pings every 20 s) and of the client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgpack

from .. import capabilities
from ..addresses import RegistrationAddress
from ..conf import gateway_settings
from ..http import Receive, Scope, Send
from ..protocol.embedded_request import with_content_length
from ..protocol.embedded_response import InvalidResponse, parse_embedded_response
from ..queue.base import (
    Broker,
    PublicRequest,
    RegistrationGone,
    Reply,
    StreamAborted,
    TooManyPollers,
)
from ..waiting import Flag, wait_either
from .delivery import SlotBusy, take_and_bind
from .longpoll import BAD_REPLY_MESSAGE

logger = logging.getLogger(__name__)

MAX_CONCURRENCY = 256
INITIAL_WINDOW = 1024 * 1024
GONE_MESSAGE = "The application disconnected before answering"


def pack(kind: str, ident: str, payload: Any) -> bytes:
    return msgpack.packb([kind, ident, payload], use_bin_type=True)


class _Connection:
    """One application WebSocket: its take loops and its requests in flight."""

    def __init__(self, send: Send, broker: Broker, address: RegistrationAddress) -> None:
        self.send = send
        self.broker = broker
        self.address = address
        self.gone = Flag()
        self.in_flight: dict[str, tuple[PublicRequest, asyncio.Future[None]]] = {}
        self.loops: list[asyncio.Task[None]] = []
        self.wanted = 0
        self.send_lock = asyncio.Lock()
        self.response_streams: dict[str, tuple[str, int]] = {}  # id -> (stream, bytes so far)
        self.credit: dict[str, int] = {}  # request bodies: bytes the application still accepts
        self.credit_changed: dict[str, asyncio.Event] = {}

    async def send_frame(self, kind: str, ident: str, payload: Any) -> None:
        async with self.send_lock:
            await self.send({"type": "websocket.send", "bytes": pack(kind, ident, payload)})

    def set_concurrency(self, wanted: int) -> None:
        """Run ``wanted`` take loops; lowering it (even to 0) lets the surplus loops end after
        their current request (an application draining before it closes)."""
        self.loops = [loop for loop in self.loops if not loop.done()]
        self.wanted = wanted
        while len(self.loops) < wanted:
            self.loops.append(asyncio.ensure_future(self._take_loop()))

    async def _take_loop(self) -> None:
        """Take one request, send it, wait for its response; repeat until the socket closes."""
        while not self.gone.is_set():
            if sum(1 for loop in self.loops if not loop.done()) > self.wanted:
                return  # the application lowered its concurrency
            slot = capabilities.connection_slot()
            try:
                taken = await take_and_bind(
                    self.broker, self.address.key, slot, self.gone, answered_here=True
                )
            except RegistrationGone:
                # Requests in flight still get their answers (RH-52); close once they have.
                while self.in_flight and not self.gone.is_set():
                    await asyncio.sleep(0.05)
                await self.close(4410, "registration deleted")
                return
            except (TooManyPollers, SlotBusy):
                return  # this connection serves fewer requests at once than it asked for
            if taken is None:
                continue
            answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.in_flight[slot] = (taken.request, answered)
            request = taken.request
            head = request.envelope
            if request.body_stream and request.body_length is not None:
                head = with_content_length(head, request.body_length)
            try:
                await self.send_frame(
                    "request", slot, [head, request.requesting_client, bool(request.body_stream)]
                )
                if request.body_stream:
                    await self._send_body(slot, request)
            except Exception:  # the socket broke while writing: never replay (PT-07 rule)
                self.gone.set()
                return
            await wait_either(answered, self.gone)

    def grant(self, ident: str, amount: int) -> None:
        """A ``window`` frame from the application for a streamed request body."""
        if ident in self.credit:
            self.credit[ident] += amount
            self.credit_changed[ident].set()

    async def _wait_for_credit(self, ident: str, needed: int) -> None:
        changed = self.credit_changed[ident]
        while self.credit[ident] < needed and not self.gone.is_set():
            changed.clear()
            await asyncio.wait_for(changed.wait(), gateway_settings.REPLY_TIMEOUT)
        self.credit[ident] -= needed

    async def _send_body(self, slot: str, request: PublicRequest) -> None:
        """Forward a streamed request body as ``body`` frames within the window, then ``end``."""
        self.credit[slot] = INITIAL_WINDOW
        self.credit_changed[slot] = asyncio.Event()
        try:
            while True:
                chunk, last = await self.broker.stream_read(
                    request.body_stream, gateway_settings.REPLY_TIMEOUT
                )
                if last:
                    await self.send_frame("end", slot, b"")
                    return
                await self._wait_for_credit(slot, len(chunk))
                await self.send_frame("body", slot, chunk)
        except (StreamAborted, TimeoutError) as exc:
            reason = str(exc) or "The request body did not arrive in time"
            self.in_flight.pop(slot, None)
            claimed = await self.broker.claim(slot)
            if claimed is not None:
                status = 413 if "too large" in reason else 400
                await self.broker.route_reply(claimed, Reply.error(status, reason))
            await self.send_frame("error", slot, reason)
        finally:
            self.credit.pop(slot, None)
            self.credit_changed.pop(slot, None)

    async def on_response_start(self, ident: str, head: bytes) -> None:
        """The head of a streamed response: answer the requestor now, the body follows."""
        entry = self.in_flight.get(ident)
        claimed = await self.broker.claim(ident) if entry is not None else None
        if claimed is None:
            self._finish(ident)
            await self.send_frame("error", ident, "Unknown or already answered request id")
            return
        try:
            parsed = parse_embedded_response(head, request_method="HEAD")
        except InvalidResponse as exc:
            await self.broker.route_reply(claimed, Reply.error(502, BAD_REPLY_MESSAGE))
            self._finish(ident)
            await self.send_frame("error", ident, str(exc))
            return
        stream = "r" + claimed.request_id
        self.response_streams[ident] = (stream, 0)
        reply = Reply(
            parsed.status, parsed.asgi_headers(), b"", parsed.reason, stream=stream, via="websocket"
        )
        await self.broker.route_reply(claimed, reply)
        await self.send_frame("window", ident, INITIAL_WINDOW)

    async def on_body(self, ident: str, chunk: bytes, *, end: bool) -> None:
        """A chunk (or the end) of a streamed response."""
        entry = self.response_streams.get(ident)
        if entry is None:
            return  # cancelled earlier; the application was told with an error frame
        stream, size = entry
        size += len(chunk)
        try:
            if size > gateway_settings.MAX_STREAM_SIZE:
                await self.broker.stream_write(stream, abort="Response too large")
                raise StreamAborted("Response too large")
            await self.broker.stream_write(stream, chunk, end=end)
        except (StreamAborted, TimeoutError) as exc:
            self.response_streams.pop(ident, None)
            self._finish(ident)
            await self.send_frame("error", ident, str(exc) or "The requestor stopped reading")
            return
        if end:
            self.response_streams.pop(ident, None)
            self._finish(ident)
        else:
            self.response_streams[ident] = (stream, size)
            if chunk:  # the requestor's side took it: the application may send as much again
                await self.send_frame("window", ident, len(chunk))

    async def on_app_error(self, ident: str, text: str) -> None:
        """The application gives up on ``ident``: abort its streamed response, or answer 502."""
        entry = self.response_streams.pop(ident, None)
        if entry is not None:
            with contextlib.suppress(Exception):
                await self.broker.stream_write(entry[0], abort=text or "The application failed")
        elif ident in self.in_flight:
            claimed = await self.broker.claim(ident)
            if claimed is not None:
                await self.broker.route_reply(claimed, Reply.error(502, BAD_REPLY_MESSAGE))
        self._finish(ident)

    def _finish(self, ident: str) -> None:
        entry = self.in_flight.pop(ident, None)
        if entry is not None and not entry[1].done():
            entry[1].set_result(None)

    async def on_response(self, ident: str, message: bytes) -> None:
        entry = self.in_flight.pop(ident, None)
        if entry is None:
            await self.send_frame("error", ident, "Unknown or already answered request id")
            return
        request, answered = entry
        claimed = await self.broker.claim(ident)
        if not answered.done():
            answered.set_result(None)
        if claimed is None:  # expired meanwhile: the requestor already got its 504
            await self.send_frame("error", ident, "Request no longer pending")
            return
        try:
            parsed = parse_embedded_response(message, request_method=claimed.method)
        except InvalidResponse as exc:
            await self.broker.route_reply(claimed, Reply.error(502, BAD_REPLY_MESSAGE))
            await self.send_frame("error", ident, str(exc))
            return
        reply = Reply(
            parsed.status, parsed.asgi_headers(), parsed.body, parsed.reason, via="websocket"
        )
        await self.broker.route_reply(claimed, reply)

    async def fail_in_flight(self) -> None:
        """Requests sent but unanswered when the socket closed: 502, never replayed."""
        for stream, _ in self.response_streams.values():
            with contextlib.suppress(Exception):
                await self.broker.stream_write(stream, abort=GONE_MESSAGE)
        self.response_streams.clear()
        for ident, (_, answered) in list(self.in_flight.items()):
            claimed = await self.broker.claim(ident)
            if claimed is not None:
                await self.broker.route_reply(claimed, Reply.error(502, GONE_MESSAGE))
            if not answered.done():
                answered.set_result(None)
        self.in_flight.clear()

    async def close(self, code: int, reason: str) -> None:
        self.gone.set()
        with contextlib.suppress(Exception):
            async with self.send_lock:
                await self.send({"type": "websocket.close", "code": code, "reason": reason})


async def serve(
    scope: Scope, receive: Receive, send: Send, broker: Broker, address: RegistrationAddress
) -> None:
    """Run one application WebSocket until it closes."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    connection = _Connection(send, broker, address)
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            try:
                kind, ident, payload = msgpack.unpackb(data, raw=False) if data else (None,) * 3
            except (ValueError, TypeError, msgpack.ExtraData, msgpack.UnpackException):
                kind = ident = payload = None
            if kind == "ready" and isinstance(payload, int) and 0 <= payload <= MAX_CONCURRENCY:
                connection.set_concurrency(payload)
            elif kind == "response" and isinstance(ident, str) and isinstance(payload, bytes):
                if len(payload) > gateway_settings.MAX_BODY_SIZE + 65536:
                    await connection.send_frame("error", ident, "Response too large")
                    continue
                await connection.on_response(ident, payload)
            elif kind == "response-start" and isinstance(ident, str) and isinstance(payload, bytes):
                await connection.on_response_start(ident, payload)
            elif kind == "error" and isinstance(ident, str):
                await connection.on_app_error(ident, str(payload))
            elif kind == "window" and isinstance(ident, str) and isinstance(payload, int):
                connection.grant(ident, payload)
            elif kind in ("body", "end") and isinstance(ident, str) and isinstance(payload, bytes):
                await connection.on_body(ident, payload, end=kind == "end")
            else:
                await connection.close(4400, "invalid frame; see docs/websocket.md")
                break
    finally:
        connection.gone.set()
        for loop in connection.loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(loop), timeout=gateway_settings.POLL_TIMEOUT)
        await connection.fail_in_flight()
