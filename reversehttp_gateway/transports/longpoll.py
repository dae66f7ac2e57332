"""ReverseHttp long-poll: GET a Request URL to take requests, POST the reply (RH-20..RH-53).

A poller that asks for ``application/http`` explicitly in ``Accept`` may get several queued
requests in one poll, concatenated in queue order, and answers them with one pipeline of
responses in the same order (RH-26, RH-72). Request ``i`` of such a batch is bound to the slot
``<slot>.<i>``; a single ``message/http`` request is bound to ``<slot>`` itself.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from django.db import DatabaseError

from .. import capabilities
from ..addresses import RegistrationAddress
from ..conf import gateway_settings
from ..http import (
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    respond,
    respond_error,
    watch_disconnect,
)
from ..metrics import count_chained_poll
from ..protocol.embedded_response import (
    InvalidResponse,
    parse_embedded_response,
    parse_embedded_responses,
)
from ..queue.base import (
    Broker,
    BrokerUnavailable,
    PublicRequest,
    RegistrationGone,
    Reply,
    Taken,
    TooManyPollers,
)
from ..resolution import resolve_private_url
from .delivery import SlotBusy, buffer_streamed_body, take_and_bind

logger = logging.getLogger(__name__)

BAD_REPLY_MESSAGE = "Bad response from the application"
SLOT_BUSY_MESSAGE = (
    "Another poller is using this Request URL; each poller needs its own "
    "(register again for a new one)"
)
PIPELINE_TYPE = b"application/http"
TOO_MANY_POLLERS = "Too many pollers are waiting for this registration"
KEY_NOT_FOUND = "Request key not found"  # RH-47: the reference's words for a duplicate reply
CHAIN_HEADER = b"reversehttp-poll"
CHAIN_ERROR = "Reversehttp-Poll must be a Request URL of the same registration"


def wants_pipeline(scope: Scope) -> bool:
    """Whether ``Accept`` names ``application/http`` explicitly, with q > 0 (RH-26)."""
    accept = (header(scope, b"accept") or b"").lower()
    for item in accept.split(b","):
        media, *params = (part.strip() for part in item.split(b";"))
        if media == PIPELINE_TYPE:
            return not any(p.replace(b" ", b"") in (b"q=0", b"q=0.0", b"q=0.00") for p in params)
    return False


def _batch_slot(slot: str, index: int) -> str:
    return f"{slot}.{index}"


def _delivery_headers(
    address: RegistrationAddress, requests: list[PublicRequest], pipelined: bool
) -> list[tuple[bytes, bytes]]:
    """Headers of a 200 poll response with a fresh rel="next" Request URL (RH-21).

    ``Requesting-Client`` of a pipeline lists each request's requestor, comma-separated, in the
    batch's order (the first one alone is what a single delivery would say, RH-28).
    """
    next_url = address.request_url(capabilities.new_slot(address.key))
    clients = ", ".join(request.requesting_client for request in requests)
    return [
        (b"content-type", PIPELINE_TYPE if pipelined else b"message/http"),
        (b"link", f'<{next_url}>; rel="next"'.encode()),
        (b"requesting-client", clients.encode()),
    ]


async def _pending(broker: Broker, slot: str, pipelined: bool) -> list[PublicRequest]:
    """Requests delivered on ``slot`` and still unanswered (RH-29)."""
    if not pipelined:
        single = await broker.redeliver(slot)
        return [single] if single is not None else []
    batch: list[PublicRequest] = []
    while len(batch) < gateway_settings.PIPELINE_MAX:
        request = await broker.redeliver(_batch_slot(slot, len(batch)))
        if request is None:
            break
        batch.append(request)
    return batch


async def _take_more(broker: Broker, first: Taken, slot: str) -> list[Taken]:
    """Requests already queued behind the first one of a pipeline, bound to ``slot.<i>``."""
    if first.local:
        return await _take_more_held(broker, first.key, slot)
    more: list[Taken] = []
    while len(more) + 1 < gateway_settings.PIPELINE_MAX:
        taken = await broker.take_nowait(first.key)
        if taken is None:
            break
        batch_slot = _batch_slot(slot, len(more) + 1)
        if not await broker.bind(batch_slot, taken, 0):
            await broker.put_back(taken)
            break
        if not await buffer_streamed_body(broker, taken, batch_slot):
            break  # answered with an error; the batch ends before it
        more.append(taken)
    return more


async def _take_more_held(broker: Broker, key: str, slot: str) -> list[Taken]:
    """:func:`_take_more` after a request held in this process: only others held here join
    it (no round trip to the shared queue, whole bodies only), bound in one round trip."""
    more: list[Taken] = []
    while len(more) + 1 < gateway_settings.PIPELINE_MAX:
        taken = await broker.take_nowait(key, shared=False)
        if taken is None:
            break
        more.append(taken)
    if not more:
        return []
    slots = [_batch_slot(slot, index + 1) for index in range(len(more))]
    bound = await asyncio.gather(*(broker.bind(s, t, 0) for s, t in zip(slots, more, strict=True)))
    if all(bound):
        return more
    cut = bound.index(False)  # another poller on this URL (SlotBusy): the batch ends before it
    for batch_slot, taken, ok in reversed(list(zip(slots, more, bound, strict=True))[cut:]):
        if ok:
            await broker.unbind(batch_slot, taken)
        await broker.put_back(taken)  # in reverse: back at the head in their order (RH-30)
    return more[:cut]


class PollRefused(Exception):
    """A poll the gateway does not hold: answered ``status`` with ``message``."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
Lookup = asyncio.Future[list[PublicRequest]]


async def poll(
    scope: Scope,
    receive: Receive,
    send: Send,
    broker: Broker,
    address: RegistrationAddress,
    slot: str,
) -> None:
    """Hold the GET until requests arrive (200) or POLL_TIMEOUT passes (204)."""
    gone, watcher = watch_disconnect(receive)
    try:
        answer = await poll_answer(broker, address, slot, pipelined=wants_batch(scope), gone=gone)
    except PollRefused as exc:
        await respond_error(send, exc.status, exc.message, retry_after=exc.retry_after)
        return
    finally:
        watcher.cancel()
    if answer is not None:
        status, headers, body = answer
        await respond(send, status, headers, body, head=scope["method"] == "HEAD")


def wants_batch(scope: Scope) -> bool:
    """Whether a poll may deliver an ``application/http`` batch (RH-26)."""
    return wants_pipeline(scope) and gateway_settings.PIPELINE_MAX > 1


async def poll_answer(
    broker: Broker,
    address: RegistrationAddress,
    slot: str,
    *,
    pipelined: bool,
    gone: asyncio.Event,
    pending: Lookup | None = None,
) -> Answer | None:
    """What a poll on ``slot`` gets: 200 with the request(s), or 204 after POLL_TIMEOUT.

    None when the poller left meanwhile (``gone``). Raises :class:`PollRefused` (404, 409,
    410, 429). ``pending``: a look at ``slot`` (RH-29) already under way, if any.
    """
    if not capabilities.slot_matches(address.key, slot):
        raise PollRefused(404, "Unknown Request URL")  # RH-23: never issued
    requests = await (pending if pending is not None else _pending(broker, slot, pipelined))
    if not requests:
        first_slot = _batch_slot(slot, 0) if pipelined else slot
        try:
            taken = await take_and_bind(broker, address.key, first_slot, gone)
        except RegistrationGone:
            raise PollRefused(410, "This registration was deleted") from None  # RH-24
        except SlotBusy:
            raise PollRefused(409, SLOT_BUSY_MESSAGE) from None
        except TooManyPollers:
            raise PollRefused(429, TOO_MANY_POLLERS, retry_after=2) from None
        if taken is not None and not await buffer_streamed_body(broker, taken, first_slot):
            taken = None  # its requestor got the error; this poller simply polls again
        if taken is None:
            if gone.is_set():
                return None
            # RH-22: the same URL stays valid after a 204
            return 204, [(b"link", f'<{address.request_url(slot)}>; rel="next"'.encode())], b""
        more = await _take_more(broker, taken, slot) if pipelined else []
        requests = [taken.request] + [t.request for t in more]
    body = b"".join(request.envelope for request in requests)
    return 200, _delivery_headers(address, requests, pipelined), body


@dataclass(frozen=True, slots=True)
class ChainedPoll:
    """A reply's request to poll the next Request URL once accepted (``Reversehttp-Poll``,
    docs/protocol.md "Chained polls"): the reply's label and secret, the slot to poll, and
    whether the poll may deliver a batch (RH-26)."""

    private: tuple[str, str]
    slot: str
    pipelined: bool

    @classmethod
    def asked(cls, scope: Scope, label: str, secret: str) -> ChainedPoll | None:
        """The chained poll a reply POST asks for, if any.

        The header's value is the ``rel="next"`` URL the delivery gave, so it must name a
        Request URL of the same private URL as the reply's. Raises ``ValueError`` otherwise.
        """
        value = header(scope, CHAIN_HEADER)
        if value is None:
            return None
        try:
            path = urlsplit(value.decode("ascii").strip()).path
        except (UnicodeDecodeError, ValueError):
            raise ValueError(CHAIN_ERROR) from None
        parts = [unquote(part) for part in path.split("/") if part]
        if (
            len(parts) < 4
            or parts[-4] != "r"
            or parts[-3].lower() != label
            or parts[-2] != secret
            or parts[-1] in ("json", "ws")
        ):
            raise ValueError(CHAIN_ERROR)
        return cls((label, secret), parts[-1], wants_batch(scope))

    def look_ahead(self, broker: Broker, reply_slot: str) -> Lookup | None:
        """Start the poll's look for requests still pending on its slot (RH-29) now, so that
        it goes to Redis with the reply's claim, in one round trip. None when the chain polls
        the reply's own slot: that look must follow the claim."""
        if self.slot == reply_slot:
            return None
        return asyncio.ensure_future(_pending(broker, self.slot, self.pipelined))

    async def answer(
        self, broker: Broker, gone: asyncio.Event, pending: Lookup | None = None
    ) -> Answer | None:
        """The answer to the accepted reply: what a poll of the slot gets, 200 or 204.
        Anything else a poll could get (the URL refused, the registration gone, the gateway's
        queue or database unavailable) is a 202, as without the chain: the next GET finds it
        out. None when the application left meanwhile. ``pending``: :meth:`look_ahead`'s (the
        caller discards it)."""
        try:
            address = await resolve_private_url(broker, *self.private)
            if address is not None:
                answer = await poll_answer(
                    broker, address, self.slot, pipelined=self.pipelined, gone=gone, pending=pending
                )
                if answer is not None:
                    count_chained_poll()
                return answer
        except (PollRefused, BrokerUnavailable, DatabaseError):
            pass
        return 202, [], b""


def discard(lookup: Lookup | None) -> None:
    """Drop a :meth:`ChainedPoll.look_ahead` that is not needed (its outcome retrieved)."""
    if lookup is None:
        return
    if not lookup.done():
        lookup.cancel()
    elif not lookup.cancelled():
        lookup.exception()  # retrieved: no "never retrieved" warning


async def _fail_all(broker: Broker, requests: list[PublicRequest | None], reply: Reply) -> None:
    for request in requests:
        if request is not None:
            await broker.route_reply(request, reply)


def parse_replies(requests: list[PublicRequest | None], body: bytes) -> list[Reply]:
    """The application's response(s) in ``body`` to ``requests``, in order (RH-48..RH-51).

    A position whose requestor left has no method any more: its response is parsed as GET's.

    Raises:
        InvalidResponse: not exactly one valid response per request.
    """
    methods = [request.method if request is not None else "GET" for request in requests]
    if len(requests) == 1:
        responses = [parse_embedded_response(body, request_method=methods[0])]
    else:
        responses = parse_embedded_responses(body, request_methods=methods)
    via = "pipeline" if len(requests) > 1 else "longpoll"
    return [Reply(p.status, p.asgi_headers(), p.body, p.reason, via=via) for p in responses]


async def reply(
    scope: Scope,
    receive: Receive,
    send: Send,
    broker: Broker,
    slot: str,
    private: tuple[str, str] | None = None,
) -> None:
    """Accept the application's response(s) for what was delivered on ``slot`` (RH-45..RH-53).

    A pipeline's reply answers every position of the batch, in order, including those whose
    requestor left meanwhile (their responses are dropped; the others are delivered). When this
    process delivered them and holds their requestors, the responses go out before the claim's
    round trip; its outcome only decides between 202 and 404 for the application.

    ``private`` (label, secret) of the reply's URL allows a chained poll: with a
    ``Reversehttp-Poll`` header naming the next Request URL, an accepted reply is answered as
    a GET of that URL would be (docs/protocol.md, "Chained polls").
    """
    try:
        chain = ChainedPoll.asked(scope, *private) if private is not None else None
    except ValueError as exc:
        await respond_error(send, 400, str(exc))  # nothing read, nothing routed
        return
    limit = gateway_settings.PIPELINE_MAX
    try:
        body = await read_body(scope, receive, gateway_settings.MAX_BODY_SIZE)
    except ClientDisconnected:
        return
    except BodyTooLarge:
        too_large = Reply.error(502, "The application's response was too large")
        await _fail_all(broker, await broker.claim_batch(slot, limit), too_large)
        await respond_error(send, 413, "Response body too large")
        return
    pending = chain.look_ahead(broker, slot) if chain is not None else None
    try:
        if not await _accept(broker, slot, body, send):
            return
        if chain is None:
            await respond(send, 202, [])  # RH-46
            return
        gone, watcher = watch_disconnect(receive)
        try:
            answer = await chain.answer(broker, gone, pending)
        finally:
            watcher.cancel()
        if answer is not None:
            await respond(send, *answer)
    finally:
        discard(pending)


async def _accept(broker: Broker, slot: str, body: bytes, send: Send) -> bool:
    """Route the response(s) in ``body`` and claim ``slot``; False once the reply was refused
    (answered 404 or 400 here)."""
    limit = gateway_settings.PIPELINE_MAX
    early = broker.delivered_here(slot, limit)
    requests = early if early is not None else await broker.claim_batch(slot, limit)
    if not requests:
        await respond_error(send, 404, KEY_NOT_FOUND)  # RH-47
        return False
    try:
        replies = parse_replies(requests, body)
    except InvalidResponse as exc:  # RH-48: 400 to the app, 502 to the requestor(s)
        await _fail_all(broker, requests, Reply.error(502, BAD_REPLY_MESSAGE))
        if early is not None:
            await broker.claim_batch(slot, limit)
        await respond_error(send, 400, str(exc))
        return False
    for request, relayed in zip(requests, replies, strict=True):
        if request is not None:
            await broker.route_reply(request, relayed)
    if early is not None and not await broker.claim_batch(slot, limit):
        # Answered through another process meanwhile, or every requestor left: the first
        # reply won (a requestor is answered once) and this one counts as a duplicate.
        await respond_error(send, 404, KEY_NOT_FOUND)  # RH-47
        return False
    return True
