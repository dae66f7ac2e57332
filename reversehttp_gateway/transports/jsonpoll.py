"""JSON long-poll for browser code (CJ-01..CJ-08): ``POST {private URL}/json``.

Each POST may carry replies (one JSON object, or a list of them as our CJ-08 extension) for
requests received earlier, then waits for the next request: 200 with the event, or 200 ``{}``
after ``POLL_TIMEOUT`` (CJ-03). The ``message-id`` of an event is the slot the request is bound
to, so replies are accepted once, exactly like ``message/http`` replies.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .. import capabilities
from ..addresses import RegistrationAddress
from ..conf import gateway_settings
from ..http import (
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    read_body,
    respond,
    respond_error,
    watch_disconnect,
)
from ..protocol.json_events import InvalidReplyEvent, parse_reply_event, request_event
from ..queue.base import Broker, RegistrationGone, Reply, TooManyPollers
from .delivery import buffer_streamed_body, take_and_bind
from .longpoll import BAD_REPLY_MESSAGE, TOO_MANY_POLLERS

logger = logging.getLogger(__name__)

JSON = [(b"content-type", b"application/json")]


async def _deliver_replies(broker: Broker, replies: list[Any]) -> str | None:
    """Route each reply; returns the first problem as a 400 message, or None."""
    problem = None
    for event in replies:
        if not isinstance(event, dict) or not event:
            continue  # {} means "nothing to answer"
        message_id = event.get("message-id")
        request = await broker.claim(message_id) if isinstance(message_id, str) else None
        if request is None:  # CJ-04: unknown or already answered ids are ignored
            logger.info("JSON reply for an unknown message-id ignored")
            continue
        try:
            parsed = parse_reply_event(event, request_method=request.method)
        except InvalidReplyEvent as exc:
            await broker.route_reply(request, Reply.error(502, BAD_REPLY_MESSAGE))
            problem = problem or str(exc)
            continue
        await broker.route_reply(
            request,
            Reply(parsed.status, parsed.asgi_headers(), parsed.body, parsed.reason, via="json"),
        )
    return problem


async def json_poll(
    scope: Scope, receive: Receive, send: Send, broker: Broker, address: RegistrationAddress
) -> None:
    """Deliver the replies in the body, then hold the POST until the next request or ``{}``."""
    try:
        body = await read_body(scope, receive, gateway_settings.MAX_BODY_SIZE * 2)
    except BodyTooLarge:
        await respond_error(send, 413, "Reply too large")
        return
    except ClientDisconnected:
        return
    replies: list[Any] = []
    if body.strip():
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            await respond_error(send, 400, "Invalid JSON")  # CJ-05: strict JSON only
            return
        replies = parsed if isinstance(parsed, list) else [parsed]
    problem = await _deliver_replies(broker, replies)
    if problem is not None:
        await respond_error(send, 400, problem)
        return
    slot = capabilities.new_slot(address.key)
    gone, watcher = watch_disconnect(receive)
    try:
        taken = await take_and_bind(broker, address.key, slot, gone)
    except RegistrationGone:
        await respond_error(send, 410, "This registration was deleted")
        return
    except TooManyPollers:
        await respond_error(send, 429, TOO_MANY_POLLERS, retry_after=2)
        return
    finally:
        watcher.cancel()
    if taken is not None and not await buffer_streamed_body(broker, taken, slot):
        taken = None
    if taken is None:
        if not gone.is_set():
            await respond(send, 200, JSON, b"{}")  # CJ-03
        return
    event = request_event(taken.request.envelope, slot, taken.request.requesting_client)
    await respond(send, 200, JSON, json.dumps(event).encode())
