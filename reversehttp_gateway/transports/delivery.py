"""Handing one queued request to one poller, the same way for every long-poll transport."""

from __future__ import annotations

import asyncio

from ..conf import gateway_settings
from ..queue.base import Broker, Taken


class SlotBusy(Exception):
    """Another request is already pending on this Request URL (two pollers share it)."""


async def take_and_bind(
    broker: Broker, key: str, slot: str, gone: asyncio.Event, timeout: float | None = None
) -> Taken | None:
    """Wait for the next request of ``key`` and bind it to ``slot``.

    None on timeout or when the poller left; a request taken for a poller that left meanwhile
    goes back to the head of the queue (RH-30). Raises ``RegistrationGone`` (410) and
    ``SlotBusy`` (409).
    """
    poll_timeout = gateway_settings.POLL_TIMEOUT if timeout is None else timeout
    taken = await broker.take(key, poll_timeout, gone)
    if taken is None:
        return None
    if gone.is_set():
        await broker.put_back(taken)
        return None
    if not await broker.bind(slot, taken, gateway_settings.REPLY_TIMEOUT):
        await broker.put_back(taken)
        raise SlotBusy
    return taken
