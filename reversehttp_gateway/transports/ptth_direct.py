"""A reversed PTTH socket after its ``101``: requests relayed by callbacks (docs/direct-path.md).

:class:`DirectReversedSocket` takes the socket over from the listener's stream reader and polls
the broker with a :class:`~..queue.base.Handoff`. A request handed over in this process, whole
and not a HEAD, is bound, written and answered in callbacks: ``httptools`` (llhttp) finds where
the response ends, and :func:`~..protocol.embedded_response.parse_first_response` reads it by
the rules every transport's replies follow (RH-48..RH-51). Everything else, a request from the
shared queue, a streamed or HEAD request, a response larger than ``STREAM_THRESHOLD`` (it
streams), takes :meth:`ReversedConnection._deliver <.ptth.ReversedConnection._deliver>` with
the socket handed back to the stream reader for that one exchange, a response under way
replayed into it from its first byte. The guarantees are ``ptth.py``'s (PT-05..PT-07): one
request at a time, a request not written goes back to the queue, one written is never written
again, and a socket that sends bytes while idle, closes, or answers late is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

import h11
import httptools

from .. import capabilities
from ..conf import gateway_settings
from ..protocol.embedded_response import MAX_HEAD_BYTES, InvalidResponse, parse_first_response
from ..queue.base import Handoff, PublicRequest, RegistrationGone, Reply, Taken, TooManyPollers
from .ptth import (
    BAD_RESPONSE_MESSAGE,
    CLOSED_MESSAGE,
    NO_RESPONSE_MESSAGE,
    ReversedConnection,
)

logger = logging.getLogger(__name__)
access_log = logging.getLogger("reversehttp_gateway.access")

__all__ = ["DirectReversedSocket", "request_bytes"]


def request_bytes(envelope: bytes, forwarded_for: str | None) -> bytes:
    """A whole queued request as written on a reversed socket (PT-05): the envelope is a valid
    HTTP/1.1 request already (Host, Content-Length, no hop-by-hop headers: RH-36..RH-39), plus
    ``Forwarded: for=...`` (PT-12)."""
    if not forwarded_for:
        return envelope
    end = envelope.index(b"\r\n\r\n") + 2
    value = b'for="' + forwarded_for.encode("ascii", "replace") + b'"'
    return envelope[:end] + b"Forwarded: " + value + b"\r\n" + envelope[end:]


class _Exchange:
    """One request written on the socket and its response as it arrives."""

    __slots__ = (
        "slot",
        "request",
        "chunks",
        "size",
        "final",
        "keep_alive",
        "started",
        "timer",
        "target",
    )

    def __init__(self, slot: str, request: PublicRequest, target: str) -> None:
        self.slot = slot
        self.request = request
        self.chunks: list[bytes] = []
        self.size = 0
        self.final = False  # the final (non-1xx) response is complete
        self.keep_alive = False  # it lets the connection be reused (llhttp's reading)
        self.started = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.target = target


class DirectReversedSocket(asyncio.Protocol):
    """The socket's protocol from the ``101`` on, while requests take the direct path."""

    def __init__(self, connection: ReversedConnection) -> None:
        assert connection.address is not None
        self.connection = connection
        self.broker = connection.broker
        self.key = connection.address.key
        self.transport = connection.writer.transport
        self.stream_protocol = self.transport.get_protocol()
        self.loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.waiter: Handoff | None = None
        self.exchange: _Exchange | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.fallback: asyncio.Task[None] | None = None
        # Bodies over this stream or are refused (502) by the stream path, which decides.
        self.body_limit = min(gateway_settings.STREAM_THRESHOLD, gateway_settings.MAX_BODY_SIZE)
        self.limit = self.body_limit + MAX_HEAD_BYTES

    async def serve(self) -> None:
        """Relay requests until the socket is done (closed, stopped, refused or broken)."""
        if self.connection.reader._buffer:  # bytes sent before any request: PT-07
            logger.info("PTTH socket of %s sent data without a request; closing", self._peer)
            return
        self.connection.released.add_callback(self._released)
        self.transport.set_protocol(self)
        self._poll()
        try:
            await self.finished
        finally:
            self.connection.released.remove_callback(self._released)
            if self.waiter is not None:
                self.waiter.cancel()
            if self.fallback is not None:
                await asyncio.wait({self.fallback})

    @property
    def _peer(self) -> str:
        return self.connection.peer

    def _finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def _released(self) -> None:
        """Stop taking requests (gateway stopping); an exchange under way finishes first."""
        if self.exchange is None and self.fallback is None:
            self._finish()

    # Polling -------------------------------------------------------------------------------
    def _poll(self) -> None:
        if self.connection.released.is_set() or self.transport.is_closing():
            self._finish()
            return
        waiter = Handoff(self._taken, self._poll_failed)
        try:
            taken = self.broker.poll_nowait(self.key, waiter)
        except TooManyPollers:
            logger.info("PTTH socket of %s closed: too many pollers", self._peer)
            self._finish()
            return
        if taken is None:
            self.waiter = waiter
        else:
            self._deliver(taken)

    def _taken(self, waiter: Handoff, taken: Taken) -> None:
        self.waiter = None
        self._deliver(taken)

    def _poll_failed(self, waiter: Handoff, exc: BaseException) -> None:
        self.waiter = None
        if isinstance(exc, RegistrationGone):
            logger.info("PTTH socket of %s closed: registration deleted", self._peer)
        self._finish()

    # Requests ------------------------------------------------------------------------------
    def _deliver(self, taken: Taken) -> None:
        request = taken.request
        if self.finished.done() or self.transport.is_closing():
            self._spawn(self.broker.put_back(taken))  # PT-07: not written, the next poller
            return
        if request.body_stream or request.method == "HEAD":
            self._hand_back(taken)
            return
        slot = capabilities.connection_slot()
        bound = self.broker.bind_nowait(slot, taken)
        if bound is None:  # from the shared queue: bound in Redis by the stream path
            self._hand_back(taken)
            return
        if not bound:  # pragma: no cover - a fresh slot is never busy
            self._spawn(self.broker.put_back(taken))
            self._poll()
            return
        forwarded = request.requesting_client if gateway_settings.PTTH_FORWARDED else None
        exchange = _Exchange(slot, request, "-")
        exchange.timer = self.loop.call_at(
            self.loop.time() + max(request.deadline - time.time(), 0.01), self._late
        )
        self.exchange = exchange
        self.parser = httptools.HttpResponseParser(self)
        self.transport.write(request_bytes(request.envelope, forwarded))

    def _hand_back(self, taken: Taken, written: _Exchange | None = None) -> None:
        """Run one exchange on the stream path (ptth.py), then take the socket back; for a
        request ``written`` here already, its response is fed to it from its first byte."""
        self.transport.set_protocol(self.stream_protocol)
        if written is not None:
            for chunk in written.chunks:
                self.connection.reader.feed_data(chunk)
        self.fallback = asyncio.ensure_future(self._exchange_on_streams(taken, written))

    async def _exchange_on_streams(self, taken: Taken, written: _Exchange | None) -> None:
        client = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            if written is None:
                keep = await self.connection._deliver(client, taken)
            else:
                keep = await self.connection._read_written(client, taken, written.slot)
        except Exception:
            logger.exception("PTTH socket of %s: exchange failed", self._peer)
            keep = False
        finally:
            self.fallback = None
        if keep and not self.transport.is_closing():
            self.transport.set_protocol(self)
            self._poll()
        else:
            self._finish()

    # Responses -----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            logger.info("PTTH socket of %s sent data without a request; closing", self._peer)
            self.transport.close()
            self._finish()
            return
        exchange.chunks.append(data)
        exchange.size += len(data)
        if exchange.size > self.limit:  # a large response: ptth.py streams or refuses it
            self._replay(exchange)
            return
        assert self.parser is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if not exchange.final:
                self._complete(exchange, keep=False)  # the reply parser names the error
                return
        if exchange.final:
            self._complete(exchange, keep=exchange.keep_alive)

    def on_message_complete(self) -> None:  # httptools callback
        assert self.parser is not None and self.exchange is not None
        if self.parser.get_status_code() >= 200:  # 1xx interim responses are skipped (RH-49)
            self.exchange.final = True
            self.exchange.keep_alive = self.parser.should_keep_alive()  # reset after this

    def eof_received(self) -> bool:
        return False  # close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None:
            self.waiter.cancel()
            self.waiter = None
        exchange = self.exchange
        if exchange is not None:  # a body that ends with the connection, or none at all
            self._complete(exchange, keep=False)
        self._finish()
        self.stream_protocol.connection_lost(exc)  # the stream writer's wait_closed() returns

    def _replay(self, exchange: _Exchange) -> None:
        """The response is too large to hold: the stream path reads it, from its first byte."""
        self.exchange = None
        if exchange.timer is not None:
            exchange.timer.cancel()
        self._hand_back(Taken(self.key, exchange.request), exchange)

    def _late(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        self.exchange = None
        self._route(exchange, Reply.error(504, NO_RESPONSE_MESSAGE))
        self.transport.close()
        self._finish()

    def _complete(self, exchange: _Exchange, *, keep: bool) -> None:
        data = b"".join(exchange.chunks)
        method = exchange.request.method
        if not data:
            reply = Reply.error(502, CLOSED_MESSAGE)
        else:
            try:
                parsed, leftover = parse_first_response(data, request_method=method)
            except InvalidResponse as exc:
                logger.info("PTTH socket of %s: no usable response (%s)", self._peer, exc)
                reply, keep = Reply.error(502, BAD_RESPONSE_MESSAGE), False
            else:
                if len(parsed.body) > self.body_limit:
                    self._replay(exchange)
                    return
                reply = Reply(
                    parsed.status, parsed.asgi_headers(), parsed.body, parsed.reason, via="ptth"
                )
                keep = keep and not leftover.strip(b"\r\n")
        self.exchange = None
        if exchange.timer is not None:
            exchange.timer.cancel()
        self._route(exchange, reply)
        if keep and not self.transport.is_closing():
            self._poll()
        else:
            self.transport.close()
            self._finish()

    def _route(self, exchange: _Exchange, reply: Reply) -> None:
        claimed = self.broker.claim_nowait(exchange.slot)
        if claimed is not None and not self.broker.route_reply_nowait(claimed, reply):
            self._spawn(self.broker.route_reply(claimed, reply))
        request = exchange.request
        access_log.debug(
            'ptth %s "%s %s" %s %s %.1fms',
            request.requesting_client or "-",
            request.method,
            exchange.target,
            self.key.partition(".")[0],
            reply.status,
            (time.monotonic() - exchange.started) * 1000,
        )

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self.connection.background.add(task)
        task.add_done_callback(self.connection.background.discard)
