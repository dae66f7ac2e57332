"""The live dashboard for staff: traffic, pollers and queues per label, pushed over a WebSocket.

``/gateway/dashboard/`` (``views.dashboard``) is a page whose script opens the WebSocket
``/gateway/dashboard/ws/`` (``routing.py``), served by :class:`DashboardConsumer`: staff only,
one JSON snapshot per second.

A snapshot joins two sources:

- the broker: the registered labels (``active_keys``), whether pollers wait (``activity``) and,
  where the broker can tell cheaply, queue depth and pollers in this process (:func:`queue_gauges`);
- :data:`traffic`, a rolling window of the last minute of relayed requests fed by an
  ``events`` observer (subscribed by ``inspector.keep_request_log`` when the runtime starts).

Each gateway process keeps its own window, so with several processes behind a load balancer a
dashboard shows the traffic of the process that serves its WebSocket; registrations, waiting
pollers and the Redis queue depth are shared and the same everywhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import events
from .conf import gateway_settings
from .queue.base import Broker, BrokerUnavailable
from .runtime import runtime

WINDOW = 60  # seconds of traffic kept per label
RATE_WINDOW = 10  # requests per second are averaged over this many seconds


def is_unknown_label(record: events.RelayRecord) -> bool:
    """The gateway answered 404 itself: nobody is registered at that label.

    Such records are not kept per label (dashboard, request log): anyone can make up labels.
    """
    return record.transport == "gateway" and record.status == 404


def is_error(status: int) -> bool:
    """What the error rate counts: 5xx, from the application or the gateway (502, 503, 504)."""
    return status >= 500


class TrafficWindow:
    """Per-label request counts in one-second buckets over the last ``window`` seconds.

    :meth:`observe` is an ``events`` observer: it runs on the event loop for every relayed
    request and only bumps counters.
    """

    def __init__(self, window: int = WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        # label -> deque of [second, requests, errors, summed duration in seconds]
        self._buckets: dict[str, collections.deque[list[Any]]] = {}
        self._totals: dict[str, list[int]] = {}  # label -> [requests, errors] since start

    def observe(self, record: events.RelayRecord) -> None:
        if is_unknown_label(record):
            return
        second = int(self._clock())
        buckets = self._buckets.get(record.label)
        if buckets is None:
            buckets = self._buckets[record.label] = collections.deque()
        if not buckets or buckets[-1][0] != second:
            buckets.append([second, 0, 0, 0.0])
            while buckets[0][0] <= second - self.window:
                buckets.popleft()
        bucket = buckets[-1]
        error = is_error(record.status)
        bucket[1] += 1
        bucket[2] += error
        bucket[3] += record.duration
        totals = self._totals.setdefault(record.label, [0, 0])
        totals[0] += 1
        totals[1] += error

    def labels(self) -> set[str]:
        return set(self._buckets)

    def stats(self, label: str) -> dict[str, Any]:
        """Requests, errors and mean latency in the window; requests per second of late."""
        now = int(self._clock())
        requests = errors = recent = 0
        duration = 0.0
        for second, count, failed, spent in self._buckets.get(label, ()):
            if second <= now - self.window:
                continue
            requests += count
            errors += failed
            duration += spent
            if second > now - RATE_WINDOW:
                recent += count
        total, total_errors = self._totals.get(label, (0, 0))
        return {
            "requests": requests,
            "errors": errors,
            "error_rate": errors / requests if requests else 0.0,
            "rps": recent / RATE_WINDOW,
            "mean_ms": duration / requests * 1000 if requests else None,
            "total": total,
            "total_errors": total_errors,
        }

    def forget(self, keep: Iterable[str]) -> None:
        """Drop labels with no traffic in the window, except ``keep`` (the registered ones)."""
        kept = set(keep)
        now = int(self._clock())
        for label in list(self._buckets):
            buckets = self._buckets[label]
            if label not in kept and (not buckets or buckets[-1][0] <= now - self.window):
                del self._buckets[label]
                self._totals.pop(label, None)


traffic = TrafficWindow()
"""This process's window; ``inspector.keep_request_log`` subscribes it to relay events."""


@dataclass(frozen=True, slots=True)
class QueueGauge:
    """What a broker can tell cheaply about one registration's queue (None: it cannot)."""

    pollers: int | None  # pollers waiting in this process
    queue_depth: int | None  # requests not yet handed to a poller (all processes)
    in_flight: int | None  # handed to a poller, not answered yet (all processes)


UNKNOWN = QueueGauge(None, None, None)


async def queue_gauges(broker: Broker, keys: Iterable[str]) -> dict[str, QueueGauge]:
    """Gauges of ``keys`` for the two brokers of this package; unknown for any other broker.

    Reads the brokers' internals (a deque length, or one Redis pipeline of LLEN and ZCOUNT):
    cheap enough for a status page or a snapshot per second.
    """
    from .queue.base import now
    from .queue.memory import MemoryBroker
    from .queue.redis_broker import RedisBroker

    keys = list(keys)
    if isinstance(broker, MemoryBroker):
        moment = now()
        return {
            key: QueueGauge(
                pollers=sum(1 for w in broker._waiters.get(key, ()) if not w.done()),
                queue_depth=len(broker._queues.get(key, ())),
                in_flight=sum(1 for d in broker._inflight.get(key, {}).values() if d > moment),
            )
            for key in keys
        }
    if isinstance(broker, RedisBroker) and keys:
        moment = now()
        async with broker._guard(), broker._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(broker._k("q", key))
                pipe.zcount(broker._k("inflight", key), moment, "+inf")
            results = await pipe.execute()
        gauges = {}
        for i, key in enumerate(keys):
            dispatcher = broker._dispatchers.get(key)
            waiting = sum(1 for w in dispatcher.waiters if not w.done()) if dispatcher else 0
            in_flight = int(results[2 * i + 1]) + broker.local_in_flight(key)
            queued = int(results[2 * i]) + broker.local_queued(key)  # shared + held here
            gauges[key] = QueueGauge(waiting, queued, in_flight)
        return gauges
    return dict.fromkeys(keys, UNKNOWN)


def queue_gauges_from_thread(keys: Iterable[str]) -> dict[str, QueueGauge]:
    """:func:`queue_gauges` from a sync view; all unknown when no gateway loop runs here."""
    keys = list(keys)
    found: dict[str, QueueGauge] = {}

    async def read(broker: Broker) -> None:
        found.update(await queue_gauges(broker, keys))

    with contextlib.suppress(BrokerUnavailable):
        runtime.run_from_thread(read, timeout=2)
    return {key: found.get(key, UNKNOWN) for key in keys}


async def snapshot(broker: Broker, window: TrafficWindow | None = None) -> dict[str, Any]:
    """What the dashboard shows: one row per registered or recently active label, and totals."""
    from .inspector import pending

    window = window or traffic
    keys = sorted(await broker.active_keys())
    key_of = {key.split(".", 1)[0]: key for key in keys}
    activity = await broker.activity(keys)
    gauges = await queue_gauges(broker, keys)
    window.forget(key_of)
    rows = []
    for label in sorted(set(key_of) | window.labels()):
        key = key_of.get(label)
        gauge = gauges.get(key, UNKNOWN) if key else UNKNOWN
        rows.append(
            {
                "label": label,
                "registered": key is not None,
                "pollers_waiting": bool(key and activity[key].pollers_waiting),
                **asdict(gauge),
                **window.stats(label),
            }
        )
    requests = sum(row["requests"] for row in rows)
    errors = sum(row["errors"] for row in rows)
    return {
        "at": time.time(),
        "process": os.getpid(),
        "broker": gateway_settings.BROKER,
        "window": window.window,
        "inspector_dropped": pending.dropped,
        "totals": {
            "registrations": len(keys),
            "polling": sum(1 for row in rows if row["pollers_waiting"]),
            "queued": sum(row["queue_depth"] or 0 for row in rows),
            "in_flight": sum(row["in_flight"] or 0 for row in rows),
            "requests": requests,
            "errors": errors,
            "error_rate": errors / requests if requests else 0.0,
            "rps": sum(row["rps"] for row in rows),
        },
        "labels": rows,
    }


def is_staff(user: Any) -> bool:
    return bool(
        user is not None and getattr(user, "is_active", False) and getattr(user, "is_staff", False)
    )


class DashboardConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Pushes :func:`snapshot` every ``interval`` seconds to a staff user; refuses anyone else.

    Needs ``scope["user"]``: route it through ``channels.auth.AuthMiddlewareStack``
    (``routing.py``). A refused handshake gets HTTP 403.
    """

    interval = 1.0

    async def connect(self) -> None:
        self._pusher: asyncio.Task[None] | None = None
        if not is_staff(self.scope.get("user")):
            await self.close(code=4403)
            return
        await self.accept()
        self._pusher = asyncio.ensure_future(self._push())

    async def disconnect(self, code: int) -> None:
        pusher = getattr(self, "_pusher", None)
        if pusher is not None:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pusher

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        return None  # nothing to ask for: the snapshots come on their own

    async def _push(self) -> None:
        broker = await runtime.ensure_started()
        while True:
            try:
                data = await snapshot(broker)
            except BrokerUnavailable as exc:
                data = {"at": time.time(), "error": f"The broker is unavailable: {exc}"}
            await self.send_json(data)
            await asyncio.sleep(self.interval)
