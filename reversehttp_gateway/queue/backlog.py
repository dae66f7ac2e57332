"""Requests held in this process for its own busy pollers, before the shared queue.

When a public request arrives and every poller of its key in this process is busy (all of a
WebSocket's ``ready`` slots in flight, say), the Redis broker would push it through the shared
queue: a hash, a list push, a blocking pop by the dispatcher and a read back, for a request
that one of the same local pollers takes a millisecond later. The :class:`Backlog` keeps it
here instead, in arrival order, for at most ``hold`` seconds: a local poller that asks within
that time gets it with no Redis round trip; after it, the request *spills* to the shared queue,
where any process's pollers can take it (``spill`` callback), unless ``keep`` says that no
other process could take it sooner (none has pollers of the key waiting): then it stays held,
in its place, and ``keep`` is asked again ``recheck`` seconds later. Only keys with local
pollers active within ``serving_window`` seconds are held, so a process without pollers for a
key shares its requests at once, and held requests spill once the local pollers stop asking.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from .base import PublicRequest

__all__ = ["Backlog"]

Spill = Callable[[str, PublicRequest], None]
Keep = Callable[[str], bool]
_Held = collections.OrderedDict[str, tuple[PublicRequest, asyncio.TimerHandle]]


class Backlog:
    """Per key, the requests held for local pollers, oldest first, each with a spill timer."""

    def __init__(
        self,
        hold: float,
        spill: Spill,
        *,
        keep: Keep | None = None,
        recheck: float = 0.5,
        serving_window: float = 1.0,
    ) -> None:
        self.hold = hold
        self.serving_window = serving_window
        self._spill = spill
        self._keep = keep
        self._recheck = max(recheck, hold)
        self._held: dict[str, _Held] = {}
        self._serving: dict[str, float] = {}  # key -> monotonic time a local poller last asked

    def polled(self, key: str) -> None:
        """A local poller of ``key`` asks for work (it is being served here)."""
        self._serving[key] = time.monotonic()

    def serving(self, key: str, within: float | None = None) -> bool:
        """Whether a local poller of ``key`` asked within ``within`` (default: the window)."""
        last = self._serving.get(key)
        window = self.serving_window if within is None else within
        return last is not None and time.monotonic() - last < window

    def may_hold(self, key: str, limit: int | None) -> bool:
        """Whether :meth:`hold_request` would hold a request of ``key``: holding is on, ``key``
        has local pollers, and fewer than ``limit`` requests are held."""
        if self.hold <= 0 or not self.serving(key):
            return False
        return limit is None or len(self._held.get(key, ())) < limit

    def hold_request(self, key: str, request: PublicRequest, limit: int | None) -> bool:
        """Hold ``request`` for a local poller; False when it should go to the shared queue
        (see :meth:`may_hold`)."""
        if not self.may_hold(key, limit):
            return False
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held()
        timer = asyncio.get_running_loop().call_later(
            self.hold, self._expire, key, request.request_id
        )
        held[request.request_id] = (request, timer)
        return True

    def pop(self, key: str) -> PublicRequest | None:
        """The oldest request held for ``key``, or None."""
        held = self._held.get(key)
        if not held:
            return None
        _, (request, timer) = held.popitem(last=False)
        timer.cancel()
        if not held:
            del self._held[key]
        return request

    def remove(self, key: str, request_id: str) -> bool:
        """Withdraw one held request (its requestor left or timed out); True if it was held."""
        held = self._held.get(key)
        entry = held.pop(request_id, None) if held else None
        if entry is None:
            return False
        entry[1].cancel()
        if not held:
            del self._held[key]
        return True

    def drain(self, key: str) -> list[PublicRequest]:
        """Every request held for ``key`` (its registration is gone), oldest first."""
        held = self._held.pop(key, None) or {}
        for _, timer in held.values():
            timer.cancel()
        return [request for request, _ in held.values()]

    def held_keys(self) -> list[str]:
        return list(self._held)

    def count(self, key: str) -> int:
        return len(self._held.get(key, ()))

    def forget(self, key: str) -> None:
        """No local pollers any more (the registration is gone here)."""
        self._serving.pop(key, None)

    def _expire(self, key: str, request_id: str) -> None:
        held = self._held.get(key)
        entry = held.get(request_id) if held else None
        if entry is None:
            return
        if self._keep is not None and self.serving(key) and self._keep(key):
            timer = asyncio.get_running_loop().call_later(
                self._recheck, self._expire, key, request_id
            )
            held[request_id] = (entry[0], timer)  # same place in line
            return
        del held[request_id]
        if not held:
            del self._held[key]
        self._spill(key, entry[0])
