"""Public requests on the direct path: no ASGI cycle, no task while the reply is awaited.

The server's protocol (``uvicorn_server.GatewayHttpToolsProtocol``) asks :func:`exchange_for`
at the end of a request head; a :class:`DirectExchange` then gets the body, queues the request
with :func:`queue.relay.relay_nowait` and writes the reply through its
:class:`ResponseWriter`. Everything it declines goes to the ASGI path (``public.handle``), which
answers every error status. The rules are ``public.py``'s (docs/direct-path.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from .asgi import public_traffic_label
from .conf import gateway_settings
from .http import Scope, Send, header
from .protocol.client_address import format_requesting_client
from .public import (
    QUEUE_FULL_MESSAGE,
    Outcome,
    declared_length,
    public_request,
    record,
    refusal,
    send_streamed,
    without_gateway_cookies,
)
from .queue.base import Broker, QueueFull, Reply
from .queue.relay import relay_nowait
from .runtime import runtime
from .waiting import Flag

__all__ = ["DirectExchange", "ResponseWriter", "exchange_for"]

logger = logging.getLogger(__name__)

_background: set[asyncio.Task[None]] = set()  # streamed replies (held references)


class ResponseWriter(Protocol):
    """The server's side of an exchange: writes the response on the requestor's connection."""

    send: Send
    """ASGI ``send`` of the request, for replies whose body streams."""

    def write_whole(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, head: bool
    ) -> None:
        """Write a complete response at once, as ``http.respond`` does: ``Content-Length`` of
        ``body`` (replacing any in ``headers``), no body when ``head``."""


def exchange_for(scope: Scope) -> DirectExchange | None:
    """A direct exchange for this request head, or None when the ASGI path must serve it."""
    broker = runtime.started_broker()
    if (
        broker is None
        or runtime.draining
        or runtime.held >= gateway_settings.MAX_HELD_CONNECTIONS
        or scope["type"] != "http"
    ):
        return None
    label = public_traffic_label(scope)
    if label is None:
        return None
    key = broker.lookup_label_nowait(label)
    if key is None:
        return None
    client = format_requesting_client(scope.get("client"))
    if refusal(scope, client) is not None:
        return None
    declared = declared_length(scope)
    if declared is None:
        if header(scope, b"transfer-encoding") is not None:
            return None  # chunked: its size is unknown until it ends
    elif declared > min(gateway_settings.STREAM_THRESHOLD, gateway_settings.MAX_BODY_SIZE):
        return None  # streamed or refused by the ASGI path
    return DirectExchange(scope, broker, label, key, Outcome(client, direct=True))


class DirectExchange:
    """One public request relayed on the direct path, from its body to its logged reply."""

    __slots__ = ("scope", "broker", "label", "key", "writer", "gone", "outcome")

    def __init__(
        self, scope: Scope, broker: Broker, label: str, key: str, outcome: Outcome
    ) -> None:
        self.scope = scope
        self.broker = broker
        self.label = label
        self.key = key
        self.writer: ResponseWriter | None = None
        self.gone = Flag()
        self.outcome = outcome

    def start(self, body: bytes, writer: ResponseWriter) -> bool:
        """Relay the request with ``body``; False when it must take the ASGI path instead
        (nothing was done: the request is not queued)."""
        if runtime.draining:
            return False
        assert self.outcome.client is not None  # exchange_for() checked
        try:
            request = public_request(self.scope, body, self.outcome.client)
        except ValueError:
            return False  # the ASGI path answers 400
        self.writer = writer
        runtime.held += 1
        runtime.in_flight += 1
        try:
            queued = relay_nowait(
                self.broker,
                self.key,
                request,
                self._on_reply,
                no_app_timeout=gateway_settings.NO_APP_TIMEOUT,
                reply_timeout=gateway_settings.REPLY_TIMEOUT,
                client_gone=self.gone,
                max_queued=gateway_settings.MAX_QUEUED_PER_LABEL,
            )
        except QueueFull:
            self.outcome.request_bytes = len(body)
            self._write(Reply.error(503, QUEUE_FULL_MESSAGE, retry_after=5))
            return True
        if not queued:
            runtime.held -= 1
            runtime.in_flight -= 1
            return False
        self.outcome.request = request
        self.outcome.request_bytes = len(body)
        return True

    def client_left(self) -> None:
        """The requestor's connection closed: the request is withdrawn (relay rules)."""
        self.gone.set()

    def _on_reply(self, reply: Reply | None) -> None:
        reply = without_gateway_cookies(reply)
        if reply is None:  # the requestor left
            self.outcome.status = 499
            self._finish()
            return
        self.outcome.reply = reply
        self._write(reply)

    def _write(self, reply: Reply) -> None:
        self.outcome.status = reply.status
        if reply.stream:
            task = asyncio.ensure_future(self._stream(reply))
            _background.add(task)
            task.add_done_callback(_background.discard)
            return
        assert self.writer is not None
        try:
            head = self.scope["method"] == "HEAD"
            self.writer.write_whole(reply.status, reply.headers, reply.body, head=head)
        finally:
            self._finish()

    async def _stream(self, reply: Reply) -> None:
        assert self.writer is not None
        try:
            await send_streamed(
                self.writer.send, self.broker, reply, self.gone, head=self.scope["method"] == "HEAD"
            )
        finally:
            self._finish()

    def _finish(self) -> None:
        runtime.held -= 1
        runtime.in_flight -= 1
        record(self.scope, self.label, self.outcome)
