"""The public side's waiting rules, the same for every broker and transport.

T1 (``no_app_timeout``, RH-64) ends a request with 504 only when no application is polling or
working; otherwise the request waits for T2 (``reply_timeout``, RH-65), which also covers a busy
application's backlog. A public client that leaves withdraws its request (notes P10).

:func:`relay` waits in a coroutine; :func:`relay_nowait` (the direct path, docs/direct-path.md)
waits with a callback and a timer, and continues in a task running the same rules only when T1
passes or the public client leaves first.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import Callable

from ..waiting import Flag, wait_either
from .base import Broker, PublicRequest, Reply, Ticket

logger = logging.getLogger(__name__)

NO_APP_MESSAGE = "No application server was available for this address"
NO_REPLY_MESSAGE = "Timeout waiting for the response from the application"

_background: set[asyncio.Task[None]] = set()  # held references (asyncio's advice)


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
        return await _after_first_wait(
            broker, ticket, reply, no_app_timeout, reply_timeout, client_gone
        )
    finally:
        broker.forget(ticket)


async def _after_first_wait(
    broker: Broker,
    ticket: Ticket,
    reply: Reply | None,
    no_app_timeout: float,
    reply_timeout: float,
    client_gone: asyncio.Event,
) -> Reply | None:
    """The rest of :func:`relay` once the first wait (T1, or less) ended with ``reply``."""
    key = ticket.key
    first_wait = min(no_app_timeout, reply_timeout)
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


def relay_nowait(
    broker: Broker,
    key: str,
    request: PublicRequest,
    on_reply: Callable[[Reply | None], None],
    *,
    no_app_timeout: float,
    reply_timeout: float,
    client_gone: Flag,
    max_queued: int | None = None,
) -> bool:
    """:func:`relay` without a coroutine, when the broker can queue ``request`` without I/O.

    Returns False (nothing done) when it cannot; call :func:`relay` then. Otherwise
    ``on_reply`` is called once with what :func:`relay` would return: from the reply's done
    callback, or from a task that applies T1, T2 and withdrawal when the first wait passes or
    ``client_gone`` is set first. Raises ``QueueFull`` like :func:`relay`.
    """
    ticket = broker.enqueue_nowait(key, request, max_queued=max_queued)
    if ticket is None:
        return False
    _DirectWait(broker, ticket, on_reply, no_app_timeout, reply_timeout, client_gone)
    return True


class _Deadlines:
    """One event-loop timer for many deadlines (the direct waits' first waits).

    ``loop.call_later`` per request cost a timer of the loop's own (uvloop: a libuv timer) set
    and cancelled for nearly every request; here a push onto a heap is all, and the single
    timer is re-armed only when the earliest deadline changes.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _DirectWait]] = []
        self._count = itertools.count()
        self._live = 0  # unsettled waits in the heap
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def add(self, delay: float, wait: _DirectWait) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        heapq.heappush(self._heap, (deadline, next(self._count), wait))
        self._live += 1
        if deadline < self._armed_for:
            self._arm(loop, deadline)

    def settled(self) -> None:
        """One wait settled before its deadline: its entry is dropped lazily, and the heap
        rebuilt once it is mostly settled entries (memory stays bounded by the live ones)."""
        self._live -= 1
        heap = self._heap
        if len(heap) > 256 and len(heap) > 4 * self._live:
            heap[:] = [entry for entry in heap if not entry[2].settled]
            heapq.heapify(heap)

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = deadline
        self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer, self._armed_for = None, math.inf
        loop = asyncio.get_running_loop()
        heap, moment = self._heap, loop.time()
        while heap and (heap[0][2].settled or heap[0][0] <= moment):
            _, _, wait = heapq.heappop(heap)
            if not wait.settled:
                self._live -= 1
                wait.wait_on(expired=True)
        if heap:
            self._arm(loop, heap[0][0])


_deadlines = _Deadlines()


class _DirectWait:
    """Waits for one ticket's reply with callbacks; hands over to a task if it must wait on."""

    __slots__ = (
        "broker",
        "ticket",
        "on_reply",
        "no_app_timeout",
        "reply_timeout",
        "client_gone",
        "settled",
    )

    def __init__(
        self,
        broker: Broker,
        ticket: Ticket,
        on_reply: Callable[[Reply | None], None],
        no_app_timeout: float,
        reply_timeout: float,
        client_gone: Flag,
    ) -> None:
        self.broker = broker
        self.ticket = ticket
        self.on_reply = on_reply
        self.no_app_timeout = no_app_timeout
        self.reply_timeout = reply_timeout
        self.client_gone = client_gone
        self.settled = False
        _deadlines.add(max(min(no_app_timeout, reply_timeout), 0), self)
        ticket.reply.add_done_callback(self._replied)
        client_gone.add_callback(self.wait_on)

    def _detach(self, *, expired: bool = False) -> bool:
        """Stop the callbacks; False if that was done already."""
        if self.settled:
            return False
        self.settled = True
        if not expired:
            _deadlines.settled()
        self.ticket.reply.remove_done_callback(self._replied)
        self.client_gone.remove_callback(self.wait_on)
        return True

    def _replied(self, future: asyncio.Future[Reply]) -> None:
        if self._detach():
            self.broker.forget(self.ticket)
            self._deliver(future.result())

    def wait_on(self, *, expired: bool = False) -> None:
        """T1 passed or the client left before the reply: the rest of the rules, in a task."""
        if self._detach(expired=expired):
            task = asyncio.ensure_future(self._rest())
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def _rest(self) -> None:
        reply: Reply | None = None
        try:
            done = self.ticket.reply
            reply = await _after_first_wait(
                self.broker,
                self.ticket,
                done.result() if done.done() else None,
                self.no_app_timeout,
                self.reply_timeout,
                self.client_gone,
            )
        except Exception as exc:  # the broker failed (Redis outage): answer, never hang
            logger.warning("Waiting for a reply failed: %s", exc)
            reply = Reply.error(503, "The gateway's queue is unavailable", retry_after=5)
        finally:
            self.broker.forget(self.ticket)
            self._deliver(reply)

    def _deliver(self, reply: Reply | None) -> None:
        try:
            self.on_reply(reply)
        except Exception:  # a callback's bug must not go unnoticed, nor break the loop
            logger.exception("Delivering a reply to the public side failed")


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
