"""Multiplexed WebSocket transport: many requests in flight on one application connection.

``ws(s)://…/reversehttp/r/<label>/<secret>/ws``. Every WebSocket message is binary, a msgpack
array ``[kind, id, payload]``:

- application → gateway ``["ready", "", n]``: serve up to ``n`` requests at once (0..256);
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
pings of the server (both servers ping every 20 s) and of the client library.

The connection is a synchronous core (docs/direct-path.md): ``ready n`` gives it ``n`` slots,
each polling the broker with a :class:`~..queue.base.Handoff`; a request handed over in process
is bound, framed and written in the handover itself, and its ``response`` frame is claimed,
parsed and routed back in the call that reads it. Under uvicorn the frames come from and go to
:class:`DirectSocket` (``uvicorn_server.GatewayWebSocketProtocol``); under other servers an ASGI
loop feeds the same core and :class:`_AsgiChannel` writes for it. What needs I/O (requests from
the shared queue, streamed bodies, replies that cross processes) runs in tasks, in arrival order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import msgpack

from .. import capabilities
from ..addresses import RegistrationAddress
from ..conf import gateway_settings
from ..http import Receive, Scope, Send
from ..protocol.embedded_request import with_content_length
from ..protocol.embedded_response import InvalidResponse, parse_embedded_response
from ..queue.base import (
    Broker,
    Handoff,
    PublicRequest,
    RegistrationGone,
    Reply,
    StreamAborted,
    Taken,
    TooManyPollers,
)
from .longpoll import BAD_REPLY_MESSAGE

logger = logging.getLogger(__name__)

MAX_CONCURRENCY = 256
INITIAL_WINDOW = 1024 * 1024
GONE_MESSAGE = "The application disconnected before answering"
DIRECT_EXTENSION = "reversehttp.direct_websocket"
"""ASGI scope extension under which a server offers a :class:`DirectSocket`."""
INBOX_LIMIT = 64  # frames waiting for their task before reading pauses (direct sockets)


def pack(kind: str, ident: str, payload: Any) -> bytes:
    return msgpack.packb([kind, ident, payload], use_bin_type=True)


class ChannelClosed(Exception):
    """The WebSocket is closing or closed: nothing more can be sent on it."""


class DirectSocket(Protocol):
    """What a server offers for synchronous frame I/O on an accepted WebSocket."""

    on_message: Callable[[bytes], None] | None
    """Called with each binary message as it is read, instead of queueing it for ``receive``."""

    @property
    def open(self) -> bool: ...

    def write(self, data: bytes) -> None:
        """Send ``data`` as one binary message, in order, without waiting (raises
        ChannelClosed)."""

    async def drain(self) -> None:
        """Return once what was written has left or the socket can take more (flow control)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class _Channel(Protocol):
    open: bool

    def write(self, data: bytes) -> None: ...

    async def send(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class _DirectChannel:
    """Frames written at once on a :class:`DirectSocket`; ``send`` waits for room."""

    __slots__ = ("socket", "send_close")

    def __init__(self, socket: DirectSocket, send: Send) -> None:
        self.socket = socket
        self.send_close = send

    @property
    def open(self) -> bool:
        return self.socket.open

    def write(self, data: bytes) -> None:
        self.socket.write(data)

    async def send(self, data: bytes) -> None:
        self.socket.write(data)
        await self.socket.drain()

    async def close(self, code: int, reason: str) -> None:
        if self.socket.open:
            await self.send_close({"type": "websocket.close", "code": code, "reason": reason})


class _AsgiChannel:
    """Frames sent through ASGI ``send`` by one writer task, in the order they were written."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._queue: collections.deque[tuple[Any, asyncio.Future[None] | None]] = (
            collections.deque()
        )
        self._writer: asyncio.Task[None] | None = None
        self.open = True

    def write(self, data: bytes) -> None:
        self._put({"type": "websocket.send", "bytes": data}, None)

    async def send(self, data: bytes) -> None:
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put({"type": "websocket.send", "bytes": data}, sent)
        await sent

    async def close(self, code: int, reason: str) -> None:
        if not self.open:
            return
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put({"type": "websocket.close", "code": code, "reason": reason}, closed)
        self.open = False
        with contextlib.suppress(ChannelClosed):
            await closed

    def _put(self, message: dict[str, Any], done: asyncio.Future[None] | None) -> None:
        if not self.open:
            raise ChannelClosed
        self._queue.append((message, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_all())

    async def _write_all(self) -> None:
        while self._queue:
            message, done = self._queue.popleft()
            try:
                await self._send(message)
            except Exception as exc:  # the socket broke: everything still queued fails too
                self.open = False
                failed = [done, *(d for _, d in self._queue)]
                self._queue.clear()
                for future in failed:
                    if future is not None and not future.done():
                        future.set_exception(ChannelClosed(str(exc)))
                return
            if done is not None and not done.done():
                done.set_result(None)


class _Connection:
    """One application WebSocket: its polling slots and its requests in flight."""

    def __init__(self, channel: _Channel, broker: Broker, address: RegistrationAddress) -> None:
        self.channel = channel
        self.broker = broker
        self.address = address
        self.key = address.key
        self.gone = False  # the socket closed (or is closing): take no more requests
        self.registration_gone = False
        self.wanted = 0  # slots the application asked for (ready n)
        self.slots = 0  # slots alive: polling, delivering or in flight
        self.waiters: set[Handoff] = set()
        self.in_flight: dict[str, PublicRequest] = {}
        self.bound_here: set[str] = set()  # slots bound without I/O: claimed without I/O
        self.tasks: set[asyncio.Task[None]] = set()
        self.response_streams: dict[str, tuple[str, int]] = {}  # id -> (stream, bytes so far)
        self.credit: dict[str, int] = {}  # request bodies: bytes the application still accepts
        self.credit_changed: dict[str, asyncio.Event] = {}

    # Frames in ------------------------------------------------------------------------
    def on_message(self, data: bytes) -> Coroutine[Any, Any, None] | None:
        """Handle one message; returns the work it still needs I/O for (run it in order)."""
        try:
            kind, ident, payload = msgpack.unpackb(data, raw=False)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.UnpackException):
            kind = ident = payload = None
        if isinstance(ident, str):
            if kind == "response" and isinstance(payload, bytes):
                if len(payload) > gateway_settings.MAX_BODY_SIZE + 65536:
                    self.write_frame("error", ident, "Response too large")
                    return None
                return self.on_response(ident, payload)
            if kind == "window" and isinstance(payload, int):
                self.grant(ident, payload)
                return None
            if kind == "ready" and isinstance(payload, int) and 0 <= payload <= MAX_CONCURRENCY:
                self.set_concurrency(payload)
                return None
            if kind == "response-start" and isinstance(payload, bytes):
                return self.on_response_start(ident, payload)
            if kind == "error":
                return self.on_app_error(ident, str(payload))
            if kind in ("body", "end") and isinstance(payload, bytes):
                return self.on_body(ident, payload, end=kind == "end")
        return self.close(4400, "invalid frame; see docs/websocket.md")

    # Frames out -----------------------------------------------------------------------
    def write_frame(self, kind: str, ident: str, payload: Any) -> None:
        """Queue a frame in order, without waiting; a closed socket just ends the connection."""
        try:
            self.channel.write(pack(kind, ident, payload))
        except ChannelClosed:
            self.gone = True

    async def send_frame(self, kind: str, ident: str, payload: Any) -> None:
        """Send a frame in order, waiting for room (streamed bodies); raises ChannelClosed."""
        await self.channel.send(pack(kind, ident, payload))

    # Slots ----------------------------------------------------------------------------
    def set_concurrency(self, wanted: int) -> None:
        """Serve ``wanted`` requests at once; lowering it (even to 0) stops the surplus slots
        from taking more, and lets those in flight finish (an application draining)."""
        self.wanted = wanted
        while self.slots > wanted and self.waiters:
            self.waiters.pop().cancel()
            self.slots -= 1
        while self.slots < wanted and not self.gone and not self.registration_gone:
            self.slots += 1
            self._poll()

    def _poll(self) -> None:
        """One free slot asks the broker for its next request."""
        waiter = Handoff(self._taken, self._poll_failed)
        try:
            taken = self.broker.poll_nowait(self.key, waiter)
        except TooManyPollers:
            self.slots -= 1  # this connection serves fewer requests at once than it asked for
            return
        if taken is None:
            self.waiters.add(waiter)
        else:
            self._deliver(taken)

    def _taken(self, waiter: Handoff, taken: Taken) -> None:
        self.waiters.discard(waiter)
        self._deliver(taken)

    def _poll_failed(self, waiter: Handoff, exc: BaseException) -> None:
        self.waiters.discard(waiter)
        self.slots -= 1
        if isinstance(exc, RegistrationGone):
            self._registration_gone()
        else:  # pragma: no cover - brokers fail waiters only with RegistrationGone
            logger.error("Polling for %s failed: %r", self.key, exc)

    def _slot_free(self) -> None:
        """A slot's request is done: it polls again, unless the connection serves fewer now."""
        if self.registration_gone:
            self.slots -= 1
            if not self.in_flight:
                self._spawn(self.close(4410, "registration deleted"))
        elif self.gone or self.slots > self.wanted:
            self.slots -= 1
        else:
            self._poll()

    def _registration_gone(self) -> None:
        """RH-52: requests in flight still get their answers; close once they have."""
        self.registration_gone = True
        if not self.in_flight:
            self._spawn(self.close(4410, "registration deleted"))

    # Requests out ---------------------------------------------------------------------
    def _deliver(self, taken: Taken) -> None:
        """Send a request handed to one of the slots (inside the broker's handover)."""
        request = taken.request
        if self.gone or not self.channel.open:  # not written: the next poller gets it (RH-30)
            self.slots -= 1
            self._spawn(self.broker.put_back(taken))
            return
        slot = capabilities.connection_slot()
        bound = None if request.body_stream else self.broker.bind_nowait(slot, taken)
        if bound is None:
            self._spawn(self._deliver_later(slot, taken))
            return
        if not bound:  # pragma: no cover - a fresh slot is never busy
            self._spawn(self.broker.put_back(taken))
            self._slot_free()
            return
        self.bound_here.add(slot)
        self.in_flight[slot] = request
        self.write_frame("request", slot, [request.envelope, request.requesting_client, False])

    async def _deliver_later(self, slot: str, taken: Taken) -> None:
        """:meth:`_deliver` for what needs I/O: binding a request from the shared queue,
        streaming a request body."""
        try:
            bound = await self.broker.bind(
                slot, taken, gateway_settings.REPLY_TIMEOUT, answered_here=True
            )
        except Exception as exc:  # the shared store failed: the request stays queued there
            logger.warning("WebSocket of %s: cannot bind a request: %r", self.address.label, exc)
            self._slot_free()
            return
        if not bound or self.gone:
            if bound:
                await self.broker.unbind(slot, taken)
            await self.broker.put_back(taken)
            self._slot_free()
            return
        request = taken.request
        self.in_flight[slot] = request
        head = request.envelope
        if request.body_stream and request.body_length is not None:
            head = with_content_length(head, request.body_length)
        try:
            await self.send_frame(
                "request", slot, [head, request.requesting_client, bool(request.body_stream)]
            )
            if request.body_stream:
                await self._send_body(slot, request)
        except ChannelClosed:  # the socket broke while writing: never replay (PT-07 rule)
            self.gone = True

    def grant(self, ident: str, amount: int) -> None:
        """A ``window`` frame from the application for a streamed request body."""
        if ident in self.credit:
            self.credit[ident] += amount
            self.credit_changed[ident].set()

    async def _wait_for_credit(self, ident: str, needed: int) -> None:
        changed = self.credit_changed[ident]
        while self.credit[ident] < needed and not self.gone:
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
            claimed = await self.broker.claim(slot)
            if claimed is not None:
                status = 413 if "too large" in reason else 400
                await self.broker.route_reply(claimed, Reply.error(status, reason))
            self._finish(slot)
            self.write_frame("error", slot, reason)
        finally:
            self.credit.pop(slot, None)
            self.credit_changed.pop(slot, None)

    # Responses in ---------------------------------------------------------------------
    def on_response(self, ident: str, message: bytes) -> Coroutine[Any, Any, None] | None:
        """A whole response: routed back at once when the request was bound here."""
        if ident not in self.bound_here:
            return self._on_response_later(ident, message)
        self.bound_here.discard(ident)
        self.in_flight.pop(ident, None)
        try:
            claimed = self.broker.claim_nowait(ident)
            if claimed is None:  # expired meanwhile: the requestor already got its 504
                self.write_frame("error", ident, "Request no longer pending")
                return None
            reply = self._reply(ident, claimed, message)
            if not self.broker.route_reply_nowait(claimed, reply):
                return self.broker.route_reply(claimed, reply)
            return None
        finally:
            self._slot_free()

    async def _on_response_later(self, ident: str, message: bytes) -> None:
        if self.in_flight.pop(ident, None) is None:
            self.write_frame("error", ident, "Unknown or already answered request id")
            return
        try:
            claimed = await self.broker.claim(ident)
            if claimed is None:
                self.write_frame("error", ident, "Request no longer pending")
                return
            await self.broker.route_reply(claimed, self._reply(ident, claimed, message))
        finally:
            self._slot_free()

    def _reply(self, ident: str, claimed: PublicRequest, message: bytes) -> Reply:
        """The reply for ``message``; an invalid one is 502 for the requestor and an error
        frame for the application (RH-48)."""
        try:
            parsed = parse_embedded_response(message, request_method=claimed.method)
        except InvalidResponse as exc:
            self.write_frame("error", ident, str(exc))
            return Reply.error(502, BAD_REPLY_MESSAGE)
        return Reply(
            parsed.status, parsed.asgi_headers(), parsed.body, parsed.reason, via="websocket"
        )

    async def on_response_start(self, ident: str, head: bytes) -> None:
        """The head of a streamed response: answer the requestor now, the body follows."""
        claimed = await self.broker.claim(ident) if ident in self.in_flight else None
        if claimed is None:
            self._finish(ident)
            self.write_frame("error", ident, "Unknown or already answered request id")
            return
        self.bound_here.discard(ident)
        try:
            parsed = parse_embedded_response(head, request_method="HEAD")
        except InvalidResponse as exc:
            await self.broker.route_reply(claimed, Reply.error(502, BAD_REPLY_MESSAGE))
            self._finish(ident)
            self.write_frame("error", ident, str(exc))
            return
        stream = "r" + claimed.request_id
        self.response_streams[ident] = (stream, 0)
        reply = Reply(
            parsed.status, parsed.asgi_headers(), b"", parsed.reason, stream=stream, via="websocket"
        )
        await self.broker.route_reply(claimed, reply)
        self.write_frame("window", ident, INITIAL_WINDOW)

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
            self.write_frame("error", ident, str(exc) or "The requestor stopped reading")
            return
        if end:
            self.response_streams.pop(ident, None)
            self._finish(ident)
        else:
            self.response_streams[ident] = (stream, size)
            if chunk:  # the requestor's side took it: the application may send as much again
                self.write_frame("window", ident, len(chunk))

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
        """The request ``ident`` is done (answered, refused or cancelled): free its slot."""
        if self.in_flight.pop(ident, None) is not None:
            self.bound_here.discard(ident)
            self._slot_free()

    # Life cycle -----------------------------------------------------------------------
    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("WebSocket of %s: %r", self.address.label, exc)

    async def close(self, code: int, reason: str) -> None:
        self.gone = True
        with contextlib.suppress(Exception):
            await self.channel.close(code, reason)

    async def shut_down(self) -> None:
        """The socket closed: stop polling, let deliveries under way settle, then answer the
        requests sent but unanswered 502 (never replayed)."""
        self.gone = True
        for waiter in self.waiters:
            waiter.cancel()
        self.waiters.clear()
        for changed in self.credit_changed.values():
            changed.set()  # request bodies waiting for a window stop waiting
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=gateway_settings.POLL_TIMEOUT)
        for stream, _ in self.response_streams.values():
            with contextlib.suppress(Exception):
                await self.broker.stream_write(stream, abort=GONE_MESSAGE)
        self.response_streams.clear()
        for ident in list(self.in_flight):
            claimed = await self.broker.claim(ident)
            if claimed is not None:
                await self.broker.route_reply(claimed, Reply.error(502, GONE_MESSAGE))
        self.in_flight.clear()
        self.bound_here.clear()


class _Inbox:
    """Runs a direct socket's frame work one item at a time, in arrival order; pauses reading
    while ``INBOX_LIMIT`` items wait (the ASGI loop gets this by awaiting each frame)."""

    def __init__(self, socket: DirectSocket) -> None:
        self.socket = socket
        self.items: collections.deque[Coroutine[Any, Any, None]] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.paused = False

    def put(self, work: Coroutine[Any, Any, None]) -> None:
        self.items.append(work)
        if len(self.items) >= INBOX_LIMIT and not self.paused:
            self.paused = True
            self.socket.pause_reading()
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self.items:
            work = self.items.popleft()
            try:
                await work
            except ChannelClosed:
                pass
            except Exception:
                logger.exception("WebSocket frame handling failed")
            if self.paused and len(self.items) < INBOX_LIMIT // 2:
                self.paused = False
                self.socket.resume_reading()

    async def finish(self) -> None:
        for work in self.items:
            work.close()
        self.items.clear()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task


async def serve(
    scope: Scope, receive: Receive, send: Send, broker: Broker, address: RegistrationAddress
) -> None:
    """Run one application WebSocket until it closes."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    direct: DirectSocket | None = scope.get("extensions", {}).get(DIRECT_EXTENSION)
    channel: _Channel = _DirectChannel(direct, send) if direct is not None else _AsgiChannel(send)
    connection = _Connection(channel, broker, address)
    inbox = _Inbox(direct) if direct is not None else None
    if direct is not None:

        def on_message(data: bytes) -> None:
            work = connection.on_message(data)
            if work is not None:
                assert inbox is not None
                inbox.put(work)

        direct.on_message = on_message
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            work = connection.on_message(message.get("bytes") or b"")  # text is invalid
            if work is not None:
                with contextlib.suppress(ChannelClosed):
                    await work
            if connection.gone:
                break
    finally:
        if direct is not None:
            direct.on_message = None
        if inbox is not None:
            await inbox.finish()
        await connection.shut_down()
