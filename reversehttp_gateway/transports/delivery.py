"""Handing one queued request to one poller, the same way for every long-poll transport."""

from __future__ import annotations

import asyncio

from ..conf import gateway_settings
from ..protocol.embedded_request import with_content_length
from ..queue.base import Broker, Reply, StreamAborted, Taken


class SlotBusy(Exception):
    """Another request is already pending on this Request URL (two pollers share it)."""


async def take_and_bind(
    broker: Broker,
    key: str,
    slot: str,
    gone: asyncio.Event,
    timeout: float | None = None,
    *,
    answered_here: bool = False,
) -> Taken | None:
    """Wait for the next request of ``key`` and bind it to ``slot``.

    None on timeout or when the poller left; a request taken for a poller that left meanwhile
    goes back to the head of the queue (RH-30). Raises ``RegistrationGone`` (410) and
    ``SlotBusy`` (409). ``answered_here``: see :meth:`Broker.bind`.
    """
    poll_timeout = gateway_settings.POLL_TIMEOUT if timeout is None else timeout
    taken = await broker.take(key, poll_timeout, gone)
    if taken is None:
        return None
    if gone.is_set():
        await broker.put_back(taken)
        return None
    if not await broker.bind(
        slot, taken, gateway_settings.REPLY_TIMEOUT, answered_here=answered_here
    ):
        await broker.put_back(taken)
        raise SlotBusy
    return taken


async def buffer_streamed_body(broker: Broker, taken: Taken, slot: str) -> bool:
    """For transports that need whole messages: read a streamed body into the envelope.

    Returns False when the body cannot be had (too large for ``MAX_BODY_SIZE``, aborted by the
    requestor, or stalled); the requestor then already has its error reply.
    """
    request = taken.request
    if not request.body_stream:
        return True
    chunks: list[bytes] = []
    size = 0
    failure: Reply | None = None
    try:
        while True:
            chunk, last = await broker.stream_read(
                request.body_stream, gateway_settings.REPLY_TIMEOUT
            )
            if last:
                break
            size += len(chunk)
            if size > gateway_settings.MAX_BODY_SIZE:
                failure = Reply.error(413, "Request body too large for this transport")
                await broker.stream_discard(request.body_stream)
                break
            chunks.append(chunk)
    except StreamAborted as exc:
        failure = Reply.error(413 if "too large" in str(exc) else 400, str(exc))
    except TimeoutError:
        failure = Reply.error(408, "The request body did not arrive in time")
    if failure is not None:
        claimed = await broker.claim(slot)
        if claimed is not None:
            await broker.route_reply(claimed, failure)
        return False
    body = b"".join(chunks)
    request.envelope = with_content_length(request.envelope, len(body)) + body
    request.body_stream = ""
    await broker.store_envelope(request)
    return True
