"""ReverseHttp long-poll: GET a Request URL to take a request, POST the reply (RH-20..RH-53)."""

from __future__ import annotations

import logging

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
from ..protocol.embedded_response import InvalidResponse, parse_embedded_response
from ..queue.base import Broker, PublicRequest, RegistrationGone, Reply
from .delivery import SlotBusy, take_and_bind

logger = logging.getLogger(__name__)

BAD_REPLY_MESSAGE = "Bad response from the application"
SLOT_BUSY_MESSAGE = (
    "Another poller is using this Request URL; each poller needs its own "
    "(register again for a new one)"
)


def _delivery_headers(address: RegistrationAddress, request: PublicRequest, slot: str):
    """Headers of a 200 poll response; ``slot`` is the Request URL to use next (RH-21)."""
    return [
        (b"content-type", b"message/http"),
        (b"link", f'<{address.request_url(slot)}>; rel="next"'.encode()),
        (b"requesting-client", request.requesting_client.encode()),
    ]


async def poll(
    scope: Scope,
    receive: Receive,
    send: Send,
    broker: Broker,
    address: RegistrationAddress,
    slot: str,
) -> None:
    """Hold the GET until a request arrives (200) or POLL_TIMEOUT passes (204)."""
    if not capabilities.slot_matches(address.key, slot):
        await respond_error(send, 404, "Unknown Request URL")  # RH-23: never issued
        return
    head = scope["method"] == "HEAD"
    pending = await broker.redeliver(slot)
    if pending is not None:  # RH-29: the 200 was lost in transit; deliver the same request again
        await respond(
            send,
            200,
            _delivery_headers(address, pending, address_next(address)),
            pending.envelope,
            head=head,
        )
        return
    gone, watcher = watch_disconnect(receive)
    try:
        taken = await take_and_bind(broker, address.key, slot, gone)
    except RegistrationGone:
        await respond_error(send, 410, "This registration was deleted")  # RH-24
        return
    except SlotBusy:
        await respond_error(send, 409, SLOT_BUSY_MESSAGE)
        return
    finally:
        watcher.cancel()
    if taken is None:
        if not gone.is_set():  # RH-22: the same URL stays valid after a 204
            link = f'<{address.request_url(slot)}>; rel="next"'.encode()
            await respond(send, 204, [(b"link", link)])
        return
    headers = _delivery_headers(address, taken.request, address_next(address))
    await respond(send, 200, headers, taken.request.envelope, head=head)


def address_next(address: RegistrationAddress) -> str:
    return capabilities.new_slot(address.key)


async def reply(scope: Scope, receive: Receive, send: Send, broker: Broker, slot: str) -> None:
    """Accept the application's response for the request delivered on ``slot`` (RH-45..RH-53)."""
    try:
        body = await read_body(scope, receive, gateway_settings.MAX_BODY_SIZE)
    except ClientDisconnected:
        return
    except BodyTooLarge:
        request = await broker.claim(slot)
        if request is not None:
            await broker.route_reply(
                request, Reply.error(502, "The application's response was too large")
            )
        await respond_error(send, 413, "Response body too large")
        return
    request = await broker.claim(slot)  # authorised by the unguessable slot alone (RH-53)
    if request is None:
        await respond_error(send, 404, "Request key not found")  # RH-47
        return
    try:
        parsed = parse_embedded_response(body, request_method=request.method)
    except InvalidResponse as exc:  # RH-48: 400 to the app, 502 to the requestor
        await broker.route_reply(request, Reply.error(502, BAD_REPLY_MESSAGE))
        await respond_error(send, 400, str(exc))
        return
    relayed = Reply(parsed.status, parsed.asgi_headers(), parsed.body, parsed.reason)
    await broker.route_reply(request, relayed)
    await respond(send, 202, [])  # RH-46
