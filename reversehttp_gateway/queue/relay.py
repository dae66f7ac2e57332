"""The public side's waiting rules, the same for every broker and transport.

T1 (``no_app_timeout``, RH-64) ends a request with 504 only when no application is polling or
working; otherwise the request waits for T2 (``reply_timeout``, RH-65), which also covers a busy
application's backlog. A public client that leaves withdraws its request (notes P10).
"""

from __future__ import annotations

import asyncio

from ..waiting import wait_either
from .base import Broker, PublicRequest, Reply

NO_APP_MESSAGE = "No application server was available for this address"
NO_REPLY_MESSAGE = "Timeout waiting for the response from the application"


async def _wait(future: asyncio.Future[Reply], timeout: float, gone: asyncio.Event) -> Reply | None:
    """The reply, or None when ``timeout`` passed or ``gone`` was set first."""
    await wait_either(future, gone, max(timeout, 0))
    return future.result() if future.done() else None


async def relay(
    broker: Broker,
    key: str,
    request: PublicRequest,
    *,
    no_app_timeout: float,
    reply_timeout: float,
    client_gone: asyncio.Event,
    max_queued: int | None = None,
) -> Reply | None:
    """Queue ``request`` and wait for its reply; None only when the public client left.

    Raises ``QueueFull`` when ``max_queued`` requests of ``key`` wait already.
    """
    ticket = await broker.enqueue(key, request, max_queued=max_queued)
    try:
        first_wait = min(no_app_timeout, reply_timeout)
        reply = await _wait(ticket.reply, first_wait, client_gone)
        if reply is None and not client_gone.is_set() and reply_timeout > first_wait:
            available = await broker.app_available(key, grace=no_app_timeout)
            if not available and await broker.withdraw(ticket):
                if ticket.reply.done():
                    return ticket.reply.result()
                return Reply.error(504, NO_APP_MESSAGE)
            reply = await _wait(ticket.reply, reply_timeout - first_wait, client_gone)
        if reply is not None:
            return reply
        never_delivered = await broker.withdraw(ticket)
        if ticket.reply.done():  # the reply raced the timeout and won
            return ticket.reply.result()
        if client_gone.is_set():
            return None
        if never_delivered and not await broker.app_available(key, grace=no_app_timeout):
            return Reply.error(504, NO_APP_MESSAGE)
        return Reply.error(504, NO_REPLY_MESSAGE)
    finally:
        broker.forget(ticket)


async def relay_with_settings(
    broker: Broker, key: str, request: PublicRequest, client_gone: asyncio.Event
) -> Reply | None:
    """:func:`relay` with the timeouts and queue limit of the gateway's settings."""
    from ..conf import gateway_settings

    return await relay(
        broker,
        key,
        request,
        no_app_timeout=gateway_settings.NO_APP_TIMEOUT,
        reply_timeout=gateway_settings.REPLY_TIMEOUT,
        client_gone=client_gone,
        max_queued=gateway_settings.MAX_QUEUED_PER_LABEL,
    )
