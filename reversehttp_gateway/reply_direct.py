"""Long-poll replies on the direct path: the requestors answered in the turn the body completes.

A ``POST`` of a reply to a Request URL (RH-45) whose request(s) this process delivered and
whose requestors it holds (``Broker.delivered_here``) needs no I/O before the responses can go
out: under uvicorn, ``uvicorn_server.GatewayHttpToolsProtocol`` asks :func:`reply_exchange_for`
at the end of the head, and :class:`DirectReply` parses the body and routes the responses as
soon as it is in, without an ASGI cycle. The claim's round trip follows in a task and only
decides the application's answer, 202 or 404 (RH-46, RH-47), as in ``transports/longpoll.reply``.
Anything else (a reply from another process's delivery, an invalid response, a body over
``STREAM_THRESHOLD``, CORS requests, ``Expect: 100-continue``) takes the ASGI path unchanged.
A chained poll (``Reversehttp-Poll``) is held in the same task after the claim, as
``transports/longpoll.reply`` would hold it, and answered through the same writer.
"""

from __future__ import annotations

import asyncio
import logging

from .conf import gateway_settings
from .http import Scope, header
from .metrics import count_direct_reply
from .protocol.embedded_response import InvalidResponse
from .public import declared_length
from .public_direct import ResponseWriter
from .queue.base import Broker, BrokerUnavailable, PublicRequest, Reply
from .runtime import runtime
from .transports.longpoll import KEY_NOT_FOUND, ChainedPoll, discard, parse_replies
from .waiting import Flag

__all__ = ["DirectReply", "reply_exchange_for"]

logger = logging.getLogger(__name__)

_background: set[asyncio.Task[None]] = set()  # claims under way (held references)


def reply_exchange_for(scope: Scope) -> DirectReply | None:
    """A direct reply for this request head, or None when the ASGI path must serve it."""
    broker = runtime.started_broker()
    if (
        broker is None
        or scope["type"] != "http"
        or scope["method"] != "POST"
        or runtime.held >= gateway_settings.MAX_HELD_CONNECTIONS
    ):
        return None
    prefix = gateway_settings.SERVICE_PATH + "/r/"
    path: str = scope["path"]
    if not path.startswith(prefix):
        return None
    parts = path[len(prefix) :].split("/")
    if len(parts) != 3 or not all(parts) or parts[2] == "json":
        return None
    if header(scope, b"origin") is not None or header(scope, b"transfer-encoding") is not None:
        return None  # CORS headers, chunked bodies: the ASGI path
    declared = declared_length(scope)
    limit = min(gateway_settings.STREAM_THRESHOLD, gateway_settings.MAX_BODY_SIZE)
    if declared is None or declared > limit:
        return None
    slot = parts[2]
    if broker.delivered_here(slot, gateway_settings.PIPELINE_MAX) is None:
        return None
    try:
        chain = ChainedPoll.asked(scope, parts[0].lower(), parts[1])
    except ValueError:
        return None  # the ASGI path answers 400
    return DirectReply(broker, slot, chain)


class DirectReply:
    """One long-poll reply answered on the direct path (see the module docstring)."""

    __slots__ = ("broker", "chain", "gone", "slot")

    def __init__(
        self,
        broker: Broker,
        slot: str,
        chain: ChainedPoll | None = None,
    ) -> None:
        self.broker = broker
        self.slot = slot
        self.chain = chain
        self.gone = Flag() if chain is not None else None  # set when the application leaves

    def start(self, body: bytes, writer: ResponseWriter) -> bool:
        """Route the responses in ``body``; False (nothing done) when the ASGI path must."""
        limit = gateway_settings.PIPELINE_MAX
        requests = self.broker.delivered_here(self.slot, limit)
        if requests is None:
            return False  # claimed meanwhile
        try:
            replies = parse_replies(requests, body)
        except InvalidResponse:
            return False  # the ASGI path answers 400, and 502 to the requestors
        pending = [
            (request, reply)
            for request, reply in zip(requests, replies, strict=True)
            if not self.broker.route_reply_nowait(request, reply)
        ]  # none: delivered_here() only gives requests whose requestor is held here
        count_direct_reply()
        runtime.held += 1
        task = asyncio.ensure_future(self._confirm(writer, pending))
        _background.add(task)
        task.add_done_callback(_background.discard)
        return True

    def client_left(self) -> None:
        """The application's connection closed before the answer: a chained poll ends."""
        if self.gone is not None:
            self.gone.set()

    async def _confirm(
        self, writer: ResponseWriter, pending: list[tuple[PublicRequest, Reply]]
    ) -> None:
        """Claim the slot(s), then answer the application: 202, or 404 for a duplicate; for a
        chained poll, what a poll of the next URL gets."""
        chain = self.chain
        lookup = chain.look_ahead(self.broker, self.slot) if chain is not None else None
        try:
            for request, reply in pending:
                await self.broker.route_reply(request, reply)
            claimed = await self.broker.claim_batch(self.slot, gateway_settings.PIPELINE_MAX)
            if not claimed:
                # Answered through another process meanwhile, or every requestor left: the
                # first reply won (a requestor is answered once) and this one is a duplicate.
                answer = Reply.error(404, KEY_NOT_FOUND)
            elif chain is None:
                answer = Reply(202, [], b"")
            else:
                assert self.gone is not None
                polled = await chain.answer(self.broker, self.gone, lookup)
                if polled is None:
                    return  # the application left
                answer = Reply(*polled)
        except BrokerUnavailable as exc:
            logger.warning("Broker unavailable: %s", exc)
            answer = Reply.error(503, "The gateway's queue is unavailable", retry_after=5)
        except Exception:  # as the ASGI path would: logged, and a 500 rather than no answer
            logger.exception("Claiming a long-poll reply failed")
            answer = Reply.error(500, "Internal Server Error")
        finally:
            runtime.held -= 1
            discard(lookup)
        writer.write_whole(answer.status, answer.headers, answer.body, head=False)
