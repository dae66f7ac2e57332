"""The embedded broker: all state in this process, same semantics as the Redis broker."""

from __future__ import annotations

import asyncio
import collections

from ..ids import new_id
from ..waiting import settle_by
from .base import (
    Activity,
    Broker,
    PublicRequest,
    QueueFull,
    RegistrationGone,
    Reply,
    StreamAborted,
    Taken,
    Ticket,
    TooManyPollers,
    Waiter,
    now,
    waiting_count,
)

QUEUE_GONE_MESSAGE = "The application's registration was deleted"
SLOT_GRACE = 30.0  # seconds a slot outlives its request (as the Redis broker's records)
_DATA, _END, _ABORT = 0, 1, 2


class MemoryBroker(Broker):
    """In-process queues: one deque of requests and one deque of waiting pollers per key."""

    def __init__(self, *, stream_window: int = 16, stream_timeout: float = 60.0) -> None:
        self._stream_window = stream_window
        self._stream_timeout = stream_timeout
        self._streams: dict[str, asyncio.Queue[tuple[bytes, int]]] = {}
        self._dropped: dict[str, float] = {}
        self._hits: dict[str, tuple[int, float]] = {}
        self._labels: dict[str, str] = {}
        self._keys: dict[str, str] = {}
        self._queues: dict[str, collections.deque[PublicRequest]] = collections.defaultdict(
            collections.deque
        )
        self._waiters: dict[str, collections.deque[Waiter]] = collections.defaultdict(
            collections.deque
        )
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._live: dict[str, PublicRequest] = {}
        self._slots: dict[str, str] = {}
        # When each slot may be forgotten: kept past its request's deadline, so that a reply
        # still finds the positions of a batch whose requestors left (RH-26, RH-47).
        self._slot_expiry: dict[str, float] = {}
        self._inflight: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self._seen: dict[str, float] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.cancel()

    async def activate(self, key: str, label: str) -> None:
        self._labels[label] = key
        self._keys[key] = label
        self._seen[key] = now()

    async def deactivate(self, key: str, label: str) -> None:
        if self._labels.get(label) == key:
            del self._labels[label]
        self._keys.pop(key, None)
        for waiter in self._waiters.pop(key, ()):
            if not waiter.done():
                waiter.set_exception(RegistrationGone())
        for request in self._queues.pop(key, ()):
            await self.route_reply(request, Reply.error(503, QUEUE_GONE_MESSAGE, retry_after=5))
            self._live.pop(request.request_id, None)
        self._seen.pop(key, None)

    async def lookup_label(self, label: str) -> str | None:
        return self._labels.get(label)

    def lookup_label_nowait(self, label: str) -> str | None:
        return self._labels.get(label)

    async def lookup_key(self, key: str) -> str | None:
        return self._keys.get(key)

    async def active_keys(self) -> set[str]:
        return set(self._keys)

    async def enqueue(
        self, key: str, request: PublicRequest, *, max_queued: int | None = None
    ) -> Ticket:
        return self.enqueue_nowait(key, request, max_queued=max_queued)

    def enqueue_nowait(
        self, key: str, request: PublicRequest, *, max_queued: int | None = None
    ) -> Ticket:
        if max_queued is not None and len(self._queues.get(key, ())) >= max_queued:
            raise QueueFull
        request.request_id = new_id()
        request.key = key
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        self._live[request.request_id] = request
        if not self._hand_to_waiter(key, request):
            self._queues[key].append(request)
        return Ticket(key, request.request_id, future)

    def _hand_to_waiter(self, key: str, request: PublicRequest) -> bool:
        waiters = self._waiters.get(key)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(Taken(key, request))
                return True
        return False

    async def app_available(self, key: str, grace: float) -> bool:
        if any(not w.done() for w in self._waiters.get(key, ())):
            return True
        moment = now()
        if any(deadline > moment for deadline in self._inflight.get(key, {}).values()):
            return True
        return moment - self._seen.get(key, 0.0) < grace

    def forget(self, ticket: Ticket) -> None:
        self._pending.pop(ticket.request_id, None)

    async def withdraw(self, ticket: Ticket) -> bool:
        request = self._live.pop(ticket.request_id, None)
        queue = self._queues.get(ticket.key)
        if request is not None and queue is not None and request in queue:
            queue.remove(request)
            return True
        return False

    async def take(self, key: str, timeout: float, disconnected: asyncio.Event) -> Taken | None:
        waiter: asyncio.Future[Taken] = asyncio.get_running_loop().create_future()
        taken = self.poll_nowait(key, waiter)
        if taken is not None:
            return taken
        try:
            await settle_by(waiter, disconnected, timeout)
        finally:
            self._seen[key] = now()
        taken = waiter.result()  # raises RegistrationGone
        if taken is None:  # timed out, or the poller left
            return None
        if disconnected.is_set():
            await self.put_back(taken)
            return None
        return taken

    def poll_nowait(self, key: str, waiter: Waiter) -> Taken | None:
        self._seen[key] = now()
        queue = self._queues.get(key)
        while queue:
            request = queue.popleft()
            if self._is_live(request):
                return Taken(key, request)
        waiters = self._waiters[key]
        if len(waiters) >= self.max_pollers and waiting_count(waiters) >= self.max_pollers:
            raise TooManyPollers
        waiters.append(waiter)
        return None

    async def take_nowait(self, key: str, *, shared: bool = True) -> Taken | None:
        queue = self._queues.get(key)
        while queue:
            request = queue.popleft()
            if self._is_live(request):
                return Taken(key, request)
        return None

    def _is_live(self, request: PublicRequest) -> bool:
        return request.request_id in self._live and request.deadline > now()

    async def bind(
        self, slot: str, taken: Taken, reply_timeout: float, *, answered_here: bool = False
    ) -> bool:
        return self.bind_nowait(slot, taken)

    def bind_nowait(self, slot: str, taken: Taken) -> bool:
        current = self._slots.get(slot)
        if current is not None and current in self._live:
            return False
        self._slots[slot] = taken.request.request_id
        self._slot_expiry[slot] = taken.request.deadline + SLOT_GRACE
        self._inflight[taken.key][taken.request.request_id] = taken.request.deadline
        self._seen[taken.key] = now()
        return True

    async def unbind(self, slot: str, taken: Taken) -> None:
        if self._slots.get(slot) == taken.request.request_id:
            del self._slots[slot]
            self._slot_expiry.pop(slot, None)
            self._inflight[taken.key].pop(taken.request.request_id, None)

    async def put_back(self, taken: Taken) -> None:
        if not self._is_live(taken.request) or taken.key not in self._keys:
            return
        if not self._hand_to_waiter(taken.key, taken.request):
            self._queues[taken.key].appendleft(taken.request)

    async def redeliver(self, slot: str) -> PublicRequest | None:
        request_id = self._slots.get(slot)
        request = self._live.get(request_id) if request_id else None
        return request if request is not None and self._is_live(request) else None

    async def claim(self, slot: str) -> PublicRequest | None:
        return self.claim_nowait(slot)

    def claim_nowait(self, slot: str) -> PublicRequest | None:
        request_id = self._slots.pop(slot, None)
        self._slot_expiry.pop(slot, None)
        if request_id is None:
            return None
        request = self._live.pop(request_id, None)
        for inflight in self._inflight.values():
            inflight.pop(request_id, None)
        return request

    async def claim_batch(self, slot: str, limit: int) -> list[PublicRequest | None]:
        if slot in self._slots:
            single = self.claim_nowait(slot)
            return [single] if single is not None else []
        batch: list[PublicRequest | None] = []
        while len(batch) < limit and f"{slot}.{len(batch)}" in self._slots:
            batch.append(self.claim_nowait(f"{slot}.{len(batch)}"))
        return batch if any(batch) else []

    def delivered_here(self, slot: str, limit: int) -> list[PublicRequest] | None:
        names = [slot] if slot in self._slots else [f"{slot}.{i}" for i in range(limit)]
        batch: list[PublicRequest] = []
        for name in names:
            request_id = self._slots.get(name)
            if request_id is None:
                break
            request = self._live.get(request_id)
            if request is None:
                return None  # its requestor left: claim_batch() knows the positions
            batch.append(request)
        return batch or None

    async def route_reply(self, request: PublicRequest, reply: Reply) -> None:
        self.route_reply_nowait(request, reply)

    def route_reply_nowait(self, request: PublicRequest, reply: Reply) -> bool:
        future = self._pending.get(request.request_id)
        if future is not None and not future.done():
            future.set_result(reply)
        return True

    async def activity(self, keys: list[str]) -> dict[str, Activity]:
        return {
            key: Activity(
                pollers_waiting=any(not w.done() for w in self._waiters.get(key, ())),
                last_seen=self._seen.get(key),
            )
            for key in keys
        }

    async def hit(self, bucket: str, window: int, amount: int = 1) -> int:
        moment = now()
        count, resets = self._hits.get(bucket, (0, moment + window))
        if moment >= resets:
            count, resets = 0, moment + window
        self._hits[bucket] = (count + amount, resets)
        return count + amount

    def _stream(self, name: str) -> asyncio.Queue[tuple[bytes, int]]:
        queue = self._streams.get(name)
        if queue is None:
            queue = self._streams[name] = asyncio.Queue(maxsize=self._stream_window)
        return queue

    async def stream_write(
        self, stream: str, chunk: bytes = b"", *, end: bool = False, abort: str = ""
    ) -> None:
        if stream in self._dropped:
            raise StreamAborted("The reader left")
        queue = self._stream(stream)
        items = [(chunk, _DATA)] if chunk else []
        if end:
            items.append((b"", _END))
        if abort:
            items.append((abort.encode(), _ABORT))
        for item in items:
            await asyncio.wait_for(queue.put(item), self._stream_timeout)

    async def stream_read(self, stream: str, timeout: float) -> tuple[bytes, bool]:
        data, kind = await asyncio.wait_for(self._stream(stream).get(), timeout)
        if kind == _DATA:
            return data, False
        self._streams.pop(stream, None)
        if kind == _ABORT:
            raise StreamAborted(data.decode())
        return b"", True

    async def stream_discard(self, stream: str) -> None:
        self._streams.pop(stream, None)
        self._dropped[stream] = now()

    async def store_envelope(self, request: PublicRequest) -> None:
        return None  # the queued object is the caller's object

    async def housekeeping(self) -> None:
        moment = now()
        self._hits = {b: hit for b, hit in self._hits.items() if hit[1] > moment}
        for stream, dropped_at in list(self._dropped.items()):
            if dropped_at < moment - self._stream_timeout:
                del self._dropped[stream]
        for request_id, request in list(self._live.items()):
            if request.deadline < moment - 5:
                del self._live[request_id]
        for slot, expiry in list(self._slot_expiry.items()):
            if expiry < moment:
                del self._slot_expiry[slot]
                self._slots.pop(slot, None)
        for key, inflight in list(self._inflight.items()):
            for request_id, deadline in list(inflight.items()):
                if deadline < moment:
                    del inflight[request_id]
            if not inflight:
                del self._inflight[key]
