"""This process's gateway runtime: the broker instance and the lease keeper task."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from .conf import gateway_settings
from .queue.base import Broker

logger = logging.getLogger(__name__)


def build_broker() -> Broker:
    """The broker named by the ``BROKER`` setting."""
    if gateway_settings.BROKER == "redis":
        from .queue.redis_broker import RedisBroker

        return RedisBroker(
            gateway_settings.REDIS_URL,
            gateway_settings.REDIS_PREFIX,
            stream_window=gateway_settings.STREAM_WINDOW,
            stream_timeout=gateway_settings.REPLY_TIMEOUT,
            dead_after=max(10.0, 4 * gateway_settings.EXPIRY_INTERVAL),
            local_hold=gateway_settings.LOCAL_QUEUE_SECONDS,
        )
    from .queue.memory import MemoryBroker

    return MemoryBroker(
        stream_window=gateway_settings.STREAM_WINDOW, stream_timeout=gateway_settings.REPLY_TIMEOUT
    )


def freeze_heap() -> None:
    """Take what is alive once the gateway serves out of the cyclic garbage collector's sight.

    Django, the server and the gateway's long-lived objects (about 100,000 here) are never
    garbage, yet every full collection walks them all: ~130 ms of a busy process every few
    thousand relayed requests, about 10 % of its CPU (docs/benchmarks.md). ``gc.freeze`` moves
    them to a permanent generation; everything allocated later is collected as usual.
    """
    gc.collect()
    gc.freeze()


class Runtime:
    """Starts the broker and background tasks once, on the serving event loop."""

    def __init__(self) -> None:
        self._broker: Broker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.draining = False
        self.in_flight = 0  # public requests being relayed
        self.held = 0  # gateway HTTP requests in progress (polls, public requests, replies)

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            raise RuntimeError("The gateway runtime is not started")
        return self._broker

    def started_broker(self) -> Broker | None:
        """The broker if the runtime has started on the running loop, else None (no waiting)."""
        broker = self._broker
        if broker is None:
            return None
        try:
            return broker if asyncio.get_running_loop() is self._loop else None
        except RuntimeError:
            return None

    async def ensure_started(self) -> Broker:
        loop = asyncio.get_running_loop()
        if self._broker is not None and self._loop is loop:
            return self._broker
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop, self._broker = asyncio.Lock(), loop, None
        async with self._lock:
            if self._broker is None:
                broker = build_broker()
                broker.max_pollers = gateway_settings.MAX_POLLERS_PER_LABEL
                await broker.start()
                self._broker = broker
                from .inspector import keep_request_log
                from .leases import keep_leases
                from .metrics import install as install_metrics

                self.spawn(keep_leases(broker))
                self.spawn(keep_request_log())  # request log writer, dashboard traffic
                install_metrics()  # Prometheus counters, when METRICS_TOKEN is set
        return self._broker

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a background task, holding a strong reference to it (notes P20)."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._broker is not None:
            await self._broker.close()
        self._broker = None

    def run_from_thread(
        self, make: Callable[[Broker], Coroutine[Any, Any, Any]], timeout: float = 10
    ) -> bool:
        """Run ``make(broker)`` on the serving loop from a sync thread (admin actions).

        Returns False when this process serves no gateway loop; the lease keeper of the serving
        process then reconciles within ``EXPIRY_INTERVAL``.
        """
        loop, broker = self._loop, self._broker
        if loop is None or broker is None or not loop.is_running():
            return False
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:
                return False
        future = asyncio.run_coroutine_threadsafe(make(broker), loop)
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            logger.warning("Broker update from a thread timed out")
            return False
        return True


runtime = Runtime()
