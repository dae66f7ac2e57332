"""Waiting for "this future, unless that flag is set first" without a task per wait.

``asyncio.wait({future, asyncio.ensure_future(event.wait())})`` creates and cancels a task and
two futures each time; the relay path waited like that three times per request. A
:class:`Flag` is an ``asyncio.Event`` that also calls plain callbacks when set, so
:func:`wait_either` can wake on either side with one future and no task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

__all__ = ["Flag", "settle_by", "wait_either"]


class Flag(asyncio.Event):
    """An ``asyncio.Event`` that also runs callbacks, once, when it is set."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def add_callback(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    def set(self) -> None:
        if self.is_set():
            return
        super().set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


async def wait_either(
    future: asyncio.Future[Any], flag: asyncio.Event, timeout: float | None = None
) -> None:
    """Return once ``future`` is done, ``flag`` is set or ``timeout`` seconds have passed.

    Neither is consumed or cancelled. A plain ``asyncio.Event`` works too, at the cost of a
    task; a :class:`Flag` needs none.
    """
    if future.done() or flag.is_set():
        return
    if not isinstance(flag, Flag):
        flag_waiter = asyncio.ensure_future(flag.wait())
        try:
            await asyncio.wait(
                {future, flag_waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            flag_waiter.cancel()
        return
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    future.add_done_callback(wake)
    flag.add_callback(wake)
    timer = loop.call_later(max(timeout, 0), wake) if timeout is not None else None
    try:
        await woken
    finally:
        future.remove_done_callback(wake)
        flag.remove_callback(wake)
        if timer is not None:
            timer.cancel()


async def settle_by(
    future: asyncio.Future[Any], flag: asyncio.Event, timeout: float | None = None
) -> None:
    """Wait for ``future``, resolving it with None if ``flag`` is set or ``timeout`` passes
    first (so that whoever would complete it sees it done and passes it by).

    The task wakes straight from ``future`` (one event-loop turn after it is completed, where
    :func:`wait_either` takes two). Read the outcome with ``future.result()``, which also
    raises the exception ``future`` was completed with.
    """
    if future.done():
        return
    if flag.is_set():
        future.set_result(None)
        return
    if not isinstance(flag, Flag):
        await wait_either(future, flag, timeout)
        if not future.done():
            future.set_result(None)
        return

    def give_up(_: object = None) -> None:
        if not future.done():
            future.set_result(None)

    flag.add_callback(give_up)
    loop = asyncio.get_running_loop()
    timer = loop.call_later(max(timeout, 0), give_up) if timeout is not None else None
    try:
        await future
    except Exception:  # the caller reads it with future.result()
        pass
    finally:
        flag.remove_callback(give_up)
        if timer is not None:
            timer.cancel()
