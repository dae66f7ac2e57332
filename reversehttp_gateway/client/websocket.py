"""The multiplexed WebSocket transport: one connection carries many requests at once.

The client opens ``ws(s)://…/r/<label>/<secret>/ws`` (the private URL with ``/ws``), sends
``["ready", "", n]`` and then, per request id (docs/websocket.md):

- ``request`` → a task runs the handler; up to ``n`` at once (the gateway sends no more).
  A streamed request (``streamed`` true: the envelope is the head only) gets its body from the
  ``body`` frames that follow, handed to the handler as it reads them; each chunk read is
  acknowledged with a ``window`` frame, so the gateway never has more than its window in flight.
- the answer is one ``response`` frame, or, for a body that streams (an ASGI app sending
  ``more_body=True``, a large forwarded response, a large whole body), ``response-start``,
  ``body`` frames within the credit the gateway grants with ``window`` frames, then ``end``.
- ``error`` → the request was cancelled by the gateway (requestor gone, body refused): its
  handler task is cancelled.

When the socket drops, the client reconnects with backoff; when the gateway refuses the private
URL (close codes 4404/4410, or a handshake refused with 403/404/410) it registers again first.
Handlers still running on a dropped socket are cancelled: the gateway already answered their
requestors 502 (it never replays a request that was sent).

Graceful stop: requests arriving after the stop began are answered 503 (a WebSocket cannot say
"send me no more"); the socket is closed once the requests in hand are answered, and only then
is the registration deleted (the gateway closes the WebSocket of a deleted registration at once,
which would fail the requests in flight).

``TCP_NODELAY``: asyncio sets it on every TCP connection (``websockets`` uses
``loop.create_connection``); it is also set here explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import msgpack
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State

from .envelope import (
    AppResponse,
    EmbeddedRequest,
    InvalidEmbeddedRequest,
    build_head,
    build_reply,
    has_body,
    parse_embedded_request,
    parse_request_head,
)
from .handlers import ForwardHandler, GeneralPath, PublicSite
from .origin_direct import DirectExchange
from .registration import Registration
from .streams import RequestBody, Responder
from .worker import ConnectionWorker, error_response

__all__ = ["WebSocketWorker", "websocket_url"]

logger = logging.getLogger("reversehttp_gateway.client")

MAX_CONCURRENCY = 256  # the gateway's limit for "ready"
CHUNK_SIZE = 64 * 1024  # body frames; the gateway's STREAM_CHUNK_SIZE
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 3.0
GONE_CODES = (4404, 4410)  # unknown private URL, registration deleted
REFUSED_STATUSES = (403, 404, 410)  # a handshake refused before accept (Daphne answers 403)
HEALTHY_AFTER = 10.0  # a socket that stayed open this long resets the backoff


def websocket_url(private_url: str) -> str:
    """``http(s)://…/r/<label>/<secret>`` → ``ws(s)://…/r/<label>/<secret>/ws``."""
    if private_url.startswith("https://"):
        return "wss://" + private_url[len("https://") :].rstrip("/") + "/ws"
    if private_url.startswith("http://"):
        return "ws://" + private_url[len("http://") :].rstrip("/") + "/ws"
    raise ValueError(f"not an http(s) URL: {private_url!r}")


def _pack(kind: str, ident: str, payload: Any) -> bytes:
    return msgpack.packb([kind, ident, payload], use_bin_type=True)


class _StreamAborted(Exception):
    """The gateway cancelled the request (an ``error`` frame) or the socket closed."""


class _Exchange:
    """One request in flight on the socket: its handler task, body queue and flow control."""

    def __init__(self, worker: WebSocketWorker, ident: str, method: str) -> None:
        self.worker = worker
        self.ident = ident
        self.method = method
        self.queue: asyncio.Queue[tuple[bytes, bool]] | None = None  # streamed bodies only
        self.unacked = 0  # request body bytes received but not read by the handler yet
        self.responder = _WsResponder(worker, ident, method)
        self.task: asyncio.Task[None] | None = None
        self.direct: DirectExchange | None = None  # relayed by callbacks (no task)

    async def pull(self) -> tuple[bytes, bool]:
        if self.queue is None:
            self.queue = asyncio.Queue()
        chunk, last = await self.queue.get()
        if chunk:
            self.unacked -= len(chunk)
            await self.worker.send_frame("window", self.ident, len(chunk))
        return chunk, last

    def feed(self, chunk: bytes, *, last: bool) -> None:
        if self.queue is None:
            self.queue = asyncio.Queue()
        self.unacked += len(chunk)
        self.queue.put_nowait((chunk, last))

    def cancel(self) -> None:
        """Stop working on the request: cancel its task, or drop its direct exchange."""
        if self.task is not None:
            self.task.cancel()
        elif self.direct is not None:
            direct, self.direct = self.direct, None
            direct.abort()
            self.worker._exchange_done(self)


class _WsResponder(Responder):
    """Sends a response as one ``response`` frame, or streamed within the gateway's credit."""

    streaming = True

    def __init__(self, worker: WebSocketWorker, ident: str, method: str) -> None:
        super().__init__()
        self.worker = worker
        self.ident = ident
        self.method = method
        self.stream_threshold = worker.stream_threshold
        self._credit = 0  # the gateway grants the first window when it accepts response-start
        self._credit_changed: asyncio.Event | None = None  # made when first waited for

    def grant(self, amount: int) -> None:
        self._credit += amount
        if self._credit_changed is not None:
            self._credit_changed.set()

    def send_nowait(self, response: AppResponse) -> None:
        """:meth:`send` for a response no larger than ``stream_threshold``, from a callback.

        Raises:
            _StreamAborted: the WebSocket is closed.
        """
        message = build_reply(response, request_method=self.method)
        self.status = response.status
        self.started = True
        self.worker.send_frame_nowait("response", self.ident, message)
        self.finished = True

    async def send(self, response: AppResponse) -> None:
        body = response.body
        if has_body(self.method, response.status) and len(body) > self.worker.stream_threshold:
            headers = [(n, v) for n, v in response.headers if n.lower() != b"content-length"]
            headers.append((b"content-length", b"%d" % len(body)))
            await self.start(response.status, headers, response.reason)
            await self.write(body)
            await self.end()
            return
        message = build_reply(response, request_method=self.method)
        self.status = response.status
        self.started = True
        await self.worker.send_frame("response", self.ident, message)
        self.finished = True

    async def start(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b""
    ) -> None:
        head = build_head(status, headers, reason)
        self.status = status
        self.started = True
        await self.worker.send_frame("response-start", self.ident, head)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            while self._credit <= 0:  # never more than the gateway allowed
                if self._credit_changed is None:
                    self._credit_changed = asyncio.Event()
                self._credit_changed.clear()
                await self._credit_changed.wait()
            size = min(len(view), CHUNK_SIZE, self._credit)
            self._credit -= size
            await self.worker.send_frame("body", self.ident, bytes(view[:size]))
            view = view[size:]

    async def end(self) -> None:
        await self.worker.send_frame("end", self.ident, b"")
        self.finished = True


class _DirectConnection(ClientConnection):
    """A client connection that hands whole binary messages to ``on_message`` as they arrive.

    ``websockets`` queues every message for a ``recv()`` in another task, which costs a task
    wake-up per frame. Here a complete (unfragmented) binary frame goes to the callback in the
    event-loop turn that parsed it. Anything else (text, fragments, or any frame while earlier
    ones still wait in the queue, so that order is kept) takes the library's queue, which the
    worker still reads.
    """

    on_message: Callable[[bytes], None] | None = None

    def process_event(self, event: Event) -> None:
        on_message = self.on_message
        if (
            on_message is not None
            and isinstance(event, Frame)
            and event.opcode is Opcode.BINARY
            and event.fin
            and not self.recv_messages.frames  # nothing queued before it
        ):
            on_message(bytes(event.data))
            return
        super().process_event(event)


class WebSocketWorker(ConnectionWorker):
    """One WebSocket serving up to ``concurrency`` requests at once, reconnecting forever."""

    kind = "websocket"

    def __init__(self, *args: Any, concurrency: int = 4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.concurrency = max(1, min(concurrency, MAX_CONCURRENCY))
        self._ws: ClientConnection | None = None
        self._send_lock = asyncio.Lock()
        self._exchanges: dict[str, _Exchange] = {}
        self._quiet = asyncio.Event()  # no exchange in flight
        self._quiet.set()
        self._site: PublicSite | None = None
        self._forward = self._handler if isinstance(self._handler, ForwardHandler) else None
        self._sends: set[asyncio.Task[None]] = set()  # frames that had to wait to be sent

    @property
    def in_flight(self) -> int:
        return len(self._exchanges)

    @property
    def socket(self) -> socket.socket | None:
        """The TCP socket of the open WebSocket, if any (for inspection)."""
        ws = self._ws
        return ws.transport.get_extra_info("socket") if ws and ws.transport else None

    # Connection loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect; return once stopping and the socket is closed."""
        while not self._stopping.is_set():
            registration = await self._registration()
            if registration is None:
                return
            url = websocket_url(registration.private_url)
            try:
                async with websockets.connect(
                    url,
                    max_size=None,  # the gateway bounds its frames (STREAM_THRESHOLD)
                    compression=None,  # bodies are often compressed already
                    open_timeout=OPEN_TIMEOUT,
                    close_timeout=CLOSE_TIMEOUT,
                    user_agent_header=_user_agent(),
                    create_connection=_DirectConnection,
                ) as ws:
                    opened = time.monotonic()
                    code = await self._serve_socket(ws, registration)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in REFUSED_STATUSES:
                    await self._gone(registration, f"WebSocket refused ({status})")
                else:
                    await self._failed(f"WebSocket refused ({status})")
                continue
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
                await self._failed(f"cannot open the WebSocket: {_describe(exc)}")
                continue
            if self._stopping.is_set():
                return
            if code in GONE_CODES:
                what = "registration deleted" if code == 4410 else "private URL unknown"
                await self._gone(registration, f"{what} (close code {code})")
                continue
            if time.monotonic() - opened > HEALTHY_AFTER:
                self._backoff.reset()
            await self._failed(f"the WebSocket closed (code {code})")

    async def _serve_socket(self, ws: ClientConnection, registration: Registration) -> int | None:
        """Serve one open socket until it closes; returns the close code.

        Whole binary messages are handled in the callback that parsed them
        (:class:`_DirectConnection`); this loop reads the rest from the library's queue.
        """
        _set_nodelay(ws)
        self._ws = ws
        self._site = self.site(registration)
        drainer = asyncio.ensure_future(self._close_when_stopping(ws))
        try:
            await self.send_frame("ready", "", self.concurrency)
            self._recovered()
            logger.debug(
                "websocket %d: connected, serving %d at once", self.index, self.concurrency
            )
            if isinstance(ws, _DirectConnection):
                ws.on_message = self._on_message
            async for data in ws:
                if isinstance(data, bytes):  # the protocol has binary frames only
                    self._on_message(data)
        except (ConnectionClosed, _StreamAborted):
            pass
        finally:
            if isinstance(ws, _DirectConnection):
                ws.on_message = None
            drainer.cancel()
            self._ws = None
            await self._cancel_exchanges("the WebSocket closed")
        return ws.close_code

    def _on_message(self, data: bytes) -> None:
        try:
            kind, ident, payload = msgpack.unpackb(data, raw=False)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.UnpackException):
            logger.warning("websocket %d: ignoring an undecodable frame", self.index)
            return
        try:
            self._on_frame(kind, ident, payload)
        except Exception:
            # Called from the connection's data_received: an error here must not break the
            # socket for the other requests on it. A request it hit is answered 500.
            logger.exception("websocket %d: failed to handle a %r frame", self.index, kind)
            if kind == "request" and isinstance(ident, str):
                exchange = self._exchanges.get(ident)
                if exchange is None or (exchange.task is None and exchange.direct is None):
                    if exchange is not None:
                        self._exchange_done(exchange)
                    self._reply_nowait(ident, error_response(500, "Internal Server Error"))

    async def _close_when_stopping(self, ws: ClientConnection) -> None:
        """Once stopping: close as soon as the requests in hand are answered (or on abort)."""
        await self._stopping.wait()
        quiet = asyncio.ensure_future(self._quiet.wait())
        abort = asyncio.ensure_future(self._abort.wait())
        try:
            await asyncio.wait({quiet, abort}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            quiet.cancel()
            abort.cancel()
        if self._exchanges:
            await self._cancel_exchanges("the client stopped before they were answered")
        with contextlib.suppress(Exception):
            await ws.close(1000, "client stopping")

    async def send_frame(self, kind: str, ident: str, payload: Any) -> None:
        await self._send_data(_pack(kind, ident, payload))

    async def _send_data(self, data: bytes) -> None:
        ws = self._ws
        if ws is None:
            raise _StreamAborted("the WebSocket is closed")
        if self._can_write_now(ws):
            self._write_now(ws, data)
            return
        async with self._send_lock:
            try:
                # One frame is written whole; never leave the socket mid-frame on cancellation.
                await asyncio.shield(ws.send(data))
            except ConnectionClosed as exc:
                raise _StreamAborted("the WebSocket closed") from exc

    def send_frame_nowait(self, kind: str, ident: str, payload: Any) -> None:
        """Send a frame from a callback: at once when the socket takes it, else in a task that
        keeps the order of the frames already waiting.

        Raises:
            _StreamAborted: the WebSocket is closed.
        """
        ws = self._ws
        if ws is None:
            raise _StreamAborted("the WebSocket is closed")
        data = _pack(kind, ident, payload)
        if self._can_write_now(ws):
            self._write_now(ws, data)
            return
        task = asyncio.ensure_future(self._send_later(data))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send_later(self, data: bytes) -> None:
        with contextlib.suppress(_StreamAborted):
            await self._send_data(data)

    def _can_write_now(self, ws: ClientConnection) -> bool:
        """True if a frame written now cannot overtake another or overfill the socket."""
        return (
            not self._send_lock.locked()
            and ws.send_in_progress is None
            and not ws.paused
            and ws.protocol.state is State.OPEN
        )

    @staticmethod
    def _write_now(ws: ClientConnection, data: bytes) -> None:
        """What ``ws.send(data)`` does when it need not wait (websockets' sans-I/O protocol)."""
        ws.protocol.send_binary(data)
        try:
            ws.send_data()
        except Exception as exc:  # as websockets' send_context: the connection is broken
            ws.set_connection_exc(exc)
            ws.transport.abort()
            raise _StreamAborted("the WebSocket closed") from exc

    # Frames -----------------------------------------------------------------------------------

    def _on_frame(self, kind: object, ident: object, payload: object) -> None:
        if not isinstance(ident, str):
            return
        exchange = self._exchanges.get(ident)
        if kind == "request" and isinstance(payload, list) and len(payload) >= 3:
            self._on_request(ident, payload)
        elif kind in ("body", "end") and isinstance(payload, bytes):
            if exchange is not None:
                exchange.feed(payload, last=kind == "end")
            elif kind == "body" and payload:
                # A body nobody reads any more (answered early, refused): let the rest through.
                self._ack(ident, len(payload))
        elif kind == "window" and isinstance(payload, int):
            if exchange is not None:
                exchange.responder.grant(payload)
        elif kind == "error":
            if exchange is not None and (exchange.task is not None or exchange.direct is not None):
                logger.info(
                    "websocket %d: the gateway cancelled a request: %s", self.index, payload
                )
                exchange.cancel()
            else:
                logger.debug("websocket %d: error frame for %s: %s", self.index, ident, payload)
        else:
            logger.debug("websocket %d: ignoring a %r frame", self.index, kind)

    def _ack(self, ident: str, amount: int) -> None:
        with contextlib.suppress(_StreamAborted):
            self.send_frame_nowait("window", ident, amount)

    def _reply_nowait(self, ident: str, response: AppResponse) -> None:
        with contextlib.suppress(_StreamAborted):
            self.send_frame_nowait("response", ident, build_reply(response))

    def _on_request(self, ident: str, payload: list[Any]) -> None:
        envelope, requesting_client, streamed = payload[0], payload[1], bool(payload[2])
        client = requesting_client if isinstance(requesting_client, str) else None
        try:
            if not isinstance(envelope, bytes):
                raise InvalidEmbeddedRequest("the envelope is not bytes")
            parse = parse_request_head if streamed else parse_embedded_request
            request = parse(envelope, requesting_client=client)
        except InvalidEmbeddedRequest as exc:
            logger.warning(
                "websocket %d: bad embedded request (%s); answering 400", self.index, exc
            )
            self._reply_nowait(
                ident, error_response(400, "The gateway delivered a malformed request")
            )
            return
        if self._stopping.is_set():
            reply = error_response(503, "The application is shutting down")
            reply.headers.append((b"retry-after", b"1"))
            self._reply_nowait(ident, reply)
            return
        exchange = _Exchange(self, ident, request.method)
        if not streamed and self._forward is not None and self._forward_nowait(exchange, request):
            return
        if streamed:
            length = request.header(b"content-length")
            body = RequestBody(
                exchange.pull,
                length=int(length) if length is not None and length.isdigit() else None,
            )
        else:
            body = RequestBody.whole(request.body)
        self._exchanges[ident] = exchange
        self._quiet.clear()
        exchange.task = asyncio.ensure_future(self._run_exchange(exchange, request, body))

    # Handling ---------------------------------------------------------------------------------

    def _forward_nowait(self, exchange: _Exchange, request: EmbeddedRequest) -> bool:
        """Forward mode: relay a whole request by callbacks (:mod:`.origin_direct`).

        False if the handler declined (the caller starts the general task). A response that
        needs the general path after all (streaming, a retry) continues in a task from there.
        """
        assert self._forward is not None
        started = time.monotonic()
        site = self._site or PublicSite("http", "localhost", 80, "")
        responder = exchange.responder

        def on_response(response: AppResponse) -> None:
            if exchange.direct is None:
                return  # cancelled meanwhile
            exchange.direct = None
            try:
                responder.send_nowait(response)
            except _StreamAborted:
                logger.info(
                    "%s %s: the WebSocket closed before the response was sent", *_mp(request)
                )
            except Exception:  # as the general path: a response that cannot be sent is a 500
                logger.exception(
                    "websocket %d: the application failed on %s %s", self.index, *_mp(request)
                )
                self._reply_nowait(exchange.ident, error_response(500, "Internal Server Error"))
            else:
                self._log_request(request.method, _mp(request)[1], responder, started)
            self._exchange_done(exchange)

        def on_general(finish: GeneralPath) -> None:
            if exchange.direct is None:
                return
            exchange.direct = None
            exchange.task = asyncio.ensure_future(
                self._run_exchange(exchange, request, None, finish=finish, started=started)
            )

        direct = self._forward.forward_nowait(
            request,
            site,
            max_body=responder.stream_threshold,
            on_response=on_response,
            on_general=on_general,
        )
        if direct is None:
            return False
        exchange.direct = direct
        self._exchanges[exchange.ident] = exchange
        self._quiet.clear()
        return True

    def _exchange_done(self, exchange: _Exchange) -> None:
        if self._exchanges.get(exchange.ident) is exchange:
            del self._exchanges[exchange.ident]
        if not self._exchanges:
            self._quiet.set()

    async def _run_exchange(
        self,
        exchange: _Exchange,
        request: EmbeddedRequest,
        body: RequestBody | None,
        *,
        finish: GeneralPath | None = None,
        started: float | None = None,
    ) -> None:
        """Run the handler for one request (or ``finish``, the rest of a direct one)."""
        started = time.monotonic() if started is None else started
        responder = exchange.responder
        path = request.raw_path.decode("latin-1")
        site = self._site or PublicSite("http", "localhost", 80, "")
        completed = False
        try:
            if finish is not None:
                await finish(responder)
            else:
                assert body is not None
                await self._handler.serve(request, body, site, responder)
            if not responder.finished:
                raise RuntimeError("the handler returned without completing its response")
            completed = True
        except asyncio.CancelledError:
            logger.info("%s %s cancelled", request.method, path)
            raise
        except _StreamAborted:
            logger.info("%s %s: the WebSocket closed before the response was sent", *_mp(request))
        except Exception:
            logger.exception(
                "websocket %d: the application failed on %s %s", self.index, *_mp(request)
            )
            completed = await self._fail(exchange)
        finally:
            self._exchange_done(exchange)
        if exchange.unacked > 0:  # body the handler did not read: let the gateway finish
            self._ack(exchange.ident, exchange.unacked)
            exchange.unacked = 0
        if completed:
            self._log_request(request.method, path, responder, started)

    async def _fail(self, exchange: _Exchange) -> bool:
        """Answer 500 for a handler that failed before responding; True if that was sent.

        A streamed response already under way cannot be completed honestly and the protocol
        has no frame for the application to abort it. A ``response`` frame for the same id
        releases the gateway's slot (the gateway answers it with an ``error`` frame, which is
        ignored) while the stream is never ended: the gateway breaks the requestor's connection
        off when no more body arrives, so the requestor sees an incomplete response rather
        than a truncated one that looks complete.
        """
        responder = exchange.responder
        try:
            if not responder.started:
                await responder.send(error_response(500, "Internal Server Error"))
                return True
            reply = build_reply(error_response(502, "The application failed mid-response"))
            await self.send_frame("response", exchange.ident, reply)
        except _StreamAborted:
            pass
        return False

    async def _cancel_exchanges(self, why: str) -> None:
        exchanges = list(self._exchanges.values())
        if not exchanges:
            return
        logger.warning(
            "websocket %d: cancelling %d request(s) in flight: %s", self.index, len(exchanges), why
        )
        tasks = [exchange.task for exchange in exchanges if exchange.task is not None]
        for exchange in exchanges:
            exchange.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)


def _mp(request: EmbeddedRequest) -> tuple[str, str]:
    return request.method, request.raw_path.decode("latin-1")


def _set_nodelay(ws: ClientConnection) -> None:
    sock = ws.transport.get_extra_info("socket") if ws.transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _user_agent() -> str:
    from .runner import USER_AGENT  # late: runner imports this module

    return USER_AGENT
