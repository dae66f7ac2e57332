"""The shared broker: per-label Redis lists through redis-py (docs/architecture.md).

Layout, under ``<prefix>:``:

- ``label:<label>`` -> key and ``reg:<key>`` -> label: the live directory;
- ``q:<key>``: list of queued request ids (LPUSH, BLMOVE from the right: FIFO, RH-60);
- ``req:<id>``: hash with the envelope, origin process and deadline; deleting it cancels;
- ``taking:<proc>``: ids popped by this process and not yet handed over (put back on disconnect);
- ``slot:<slot>``: the request delivered on a Request URL, until answered (RH-29, RH-47);
- ``inflight:<key>`` and ``disp:<key>``: sorted sets of delivered requests and of processes with
  waiting pollers, scored by expiry; ``seen:<key>``: last poller activity (RH-07, RH-64);
- channels ``reply:<proc>`` (replies to the process holding the public socket), ``envelope:<proc>``
  (asks for the envelope of a request bound there, see below) and ``events``; ``envans:<id>``:
  the answer to one such ask (a list, popped with a timeout).

Blocking pops use server-side timeouts only and are never cancelled (notes P4, P9): one
dispatcher task per (process, key) pops while local pollers wait and hands items to them FIFO.

Local handover (docs/architecture.md, "Local handover"): a public request that arrives while a
poller of its key waits in this same process goes straight to that poller, without the queue,
the request hash or the dispatcher. If the poller answers on its own connection (WebSocket,
PTTH) nothing about it is written to Redis; otherwise ``bind`` writes the request hash and the
slot in one script, so that a reply reaching any process finds it (RH-29, RH-47). That hash has
no envelope (the request's body would cross Redis twice on the critical path): a process that
must re-deliver the request (RH-29) asks the process holding its requestor for it. A crash loses
nothing more than before: the requestor's connection dies with the process that held both.
Labels are cached per process for ``LABEL_CACHE_SECONDS``; ``gone`` events evict them at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
from collections.abc import Coroutine
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..ids import new_id
from ..waiting import settle_by
from .backlog import Backlog
from .base import (
    Activity,
    Broker,
    BrokerUnavailable,
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
from .memory import QUEUE_GONE_MESSAGE
from .redis_link import RedisLink

logger = logging.getLogger(__name__)

BLOCK_SECONDS = 1.0
HEARTBEAT_SECONDS = 1.0
INLINE_REPLY_LIMIT = 256 * 1024
RECORD_GRACE = 30
LABEL_CACHE_SECONDS = 1.0
SEEN_INTERVAL = 1.0
# ``seen:<key>`` expires a day after its last write: a deleted registration's may be written
# again by a poller or dispatcher finishing after the deletion. The lease sweep keeps the last
# poll in the database (leases.py), so nothing depends on an older one.
SEEN_TTL = 86_400
OTHERS_INTERVAL = 0.1
# How long a process re-delivering a request bound elsewhere waits for its envelope.
ENVELOPE_WAIT = 2.0


# Bind a taken request to its Request URL slot, once: SET NX, then the in-flight bookkeeping.
_BIND = """
if not redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('LREM', KEYS[3], 1, ARGV[1])
redis.call('SET', KEYS[4], ARGV[4], 'EX', SEEN_TTL)
return 1
""".replace("SEEN_TTL", str(SEEN_TTL))

# Bind a request handed over locally (never queued): the same, plus its hash for other
# processes (a long-poll reply may arrive at any of them), without the envelope, which stays
# in this process (_envelope_from_home). ARGV[5]: "1" unless the requestor
# already left, in which case the slot is bound to a request that no longer exists (RH-47) and
# nothing is in flight.
_BIND_LOCAL = """
if not redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then return 0 end
redis.call('SET', KEYS[4], ARGV[4], 'EX', SEEN_TTL)
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  redis.call('HSET', KEYS[3], unpack(ARGV, 6))
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
return 1
""".replace("SEEN_TTL", str(SEEN_TTL))

# Undo a binding: free the slot if it still names the request, drop its in-flight entry and,
# for a request handed over locally (ARGV[2] == '1'), the hash its binding wrote (put_back
# writes it again if the request goes to the shared queue). A queued request keeps its hash.
_UNBIND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == '1' then redis.call('DEL', KEYS[3]) end
return 1
"""

# Pop the next queued id into this process's taking list and read its hash, in one round trip
# (the dispatcher tries this before blocking in BLMOVE: under load the queue is rarely empty).
_POP = """
local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
if not id then return false end
local result = redis.call('HGETALL', ARGV[1] .. 'req:' .. id)
table.insert(result, 1, id)
return result
"""

# Claim a single delivery on ARGV[2], or else a pipeline's positions ARGV[4], ARGV[6]... in
# order until one is missing, once: GETDEL the slot, delete the request hash and its in-flight
# entry. ARGV[i + 1] is the key of a request this process bound there ('' if none: the fields
# of its hash that a reply needs are returned, not the envelope). Returns the flat list
# {n, id, deleted, #fields, field, value...} per claimed slot, n being its place among the
# candidates; deleted is 0 when the request was withdrawn.
_CLAIM_BATCH = """
local prefix = ARGV[1]
local fields = {'key', 'client', 'method', 'deadline', 'origin', 'stream', 'length'}
local out = {}
local function claim(n)
  local id = redis.call('GETDEL', prefix .. 'slot:' .. ARGV[2 * n])
  if not id then return false end
  local record = prefix .. 'req:' .. id
  local key = ARGV[2 * n + 1]
  local data = {}
  if key == '' then
    local values = redis.call('HMGET', record, unpack(fields))
    key = values[1]
    for i, field in ipairs(fields) do
      if values[i] then
        data[#data + 1] = field
        data[#data + 1] = values[i]
      end
    end
  end
  local deleted = redis.call('DEL', record)
  if key then redis.call('ZREM', prefix .. 'inflight:' .. key, id) end
  out[#out + 1] = n
  out[#out + 1] = id
  out[#out + 1] = deleted
  out[#out + 1] = #data
  for _, v in ipairs(data) do out[#out + 1] = v end
  return true
end
if claim(1) then return out end
local n = 2
while 2 * n + 1 <= #ARGV and claim(n) do n = n + 1 end
return out
"""


class _Dispatcher:
    """This process's pollers of one key, fed by a single blocking pop."""

    __slots__ = ("waiters", "task", "last_heartbeat")

    def __init__(self) -> None:
        self.waiters: collections.deque[Waiter] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.last_heartbeat = 0.0

    def has_waiters(self) -> bool:
        while self.waiters and self.waiters[0].done():
            self.waiters.popleft()
        return bool(self.waiters)


class RedisBroker(Broker):
    """Queues and reply routing in Redis, shared by every gateway process."""

    def __init__(
        self,
        url: str,
        prefix: str = "rhgw",
        *,
        max_connections: int = 2000,
        stream_window: int = 16,
        stream_timeout: float = 60.0,
        dead_after: float = 15.0,
        local_hold: float = 0.0,
    ) -> None:
        self._dead_after = dead_after
        self._stream_window = stream_window
        self._stream_timeout = stream_timeout
        self._url = url
        self._prefix = prefix
        self._proc = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=None, socket_connect_timeout=2, max_connections=max_connections
        )
        # The commands of each relayed request, pipelined (redis_link.py); redis-py for the
        # rest: blocking pops, pub/sub, bookkeeping.
        self._link = RedisLink(url)
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        # Slots this process bound, until claimed here, answered through another process, or
        # expired: what a reply needs of the request, not its envelope (_remember_bound).
        self._bound: dict[str, PublicRequest] = {}
        self._bound_slot: dict[str, str] = {}  # request id -> its slot in _bound
        # Slots of requests handed over locally and answered here: never written to Redis.
        self._local_slots: dict[str, PublicRequest] = {}
        # Request id -> envelope of a request handed over locally and bound for long-poll,
        # while its requestor waits: its hash in Redis has none (_envelope_from_home).
        self._envelopes: dict[str, bytes] = {}
        self._labels: dict[str, tuple[str, float]] = {}  # label -> (key, cached until)
        self._seen_written: dict[str, float] = {}
        self._dispatchers: dict[str, _Dispatcher] = {}
        self._backlog = Backlog(
            local_hold, self._spill, keep=self._keep_held, recheck=OTHERS_INTERVAL
        )
        # Per key, whether another process had pollers of it waiting, and until when that
        # reading is used (_keep_held).
        self._others: dict[str, tuple[bool, float]] = {}
        self._background: set[asyncio.Task[None]] = set()  # held references (asyncio's advice)
        # Per key, requests of this process's requestors that went to the shared queue while the
        # key's pollers were served here: older than anything held, so served before it.
        self._shared: dict[str, set[str]] = {}
        # Keys whose shared queue held a request at this process's last pop: more may wait
        # there (another process's, say), older than any request arriving here now.
        self._queue_busy: set[str] = set()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closing = False

    # Keys -------------------------------------------------------------------------------
    def _k(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    @property
    def process_id(self) -> str:
        return self._proc

    # Life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen())
            try:
                await asyncio.wait_for(self._subscribed.wait(), timeout=5)
            except TimeoutError:
                logger.warning("Redis at %s did not answer; will keep retrying", self._url)

    async def close(self) -> None:
        self._closing = True
        for key in self._backlog.held_keys():
            self._answer_held(key, Reply.error(503, "The gateway is stopping", retry_after=2))
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        for dispatcher in self._dispatchers.values():
            for waiter in dispatcher.waiters:
                if not waiter.done():
                    waiter.cancel()
        self._link.close()
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    async def _listen(self) -> None:
        """Receive replies for this process, asks for envelopes kept here and registration
        events; reconnect forever."""
        reply_channel = self._k("reply", self._proc)
        envelope_channel = self._k("envelope", self._proc)
        events_channel = self._k("events")
        while not self._closing:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(reply_channel, envelope_channel, events_channel)
                self._labels.clear()  # events may have been missed while unsubscribed
                self._subscribed.set()
                await self._collect_stranded_replies()
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    channel = message["channel"].decode()
                    if channel == reply_channel:
                        await self._on_reply(message["data"])
                    elif channel == envelope_channel:
                        self._in_background(self._give_envelope(message["data"]))
                    else:
                        self._on_event(message["data"])
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                self._subscribed.clear()
                logger.warning("Redis subscription lost (%s); reconnecting", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _on_reply(self, data: bytes) -> None:
        request_id, inline, packed = msgpack.unpackb(data, raw=False)
        self._forget_bound(request_id)  # claimed by the process that routed the reply
        future = self._pending.get(request_id)
        if future is None or future.done():
            return
        if not inline:
            packed = await self._redis.getdel(self._k("resp", request_id))
            if packed is None:
                future.set_result(Reply.error(502, "The application's response was lost"))
                return
        future.set_result(Reply.unpack(packed))

    async def _collect_stranded_replies(self) -> None:
        """Replies routed while this process was not subscribed wait in keys (route_reply)."""
        waiting = [rid for rid, future in self._pending.items() if not future.done()]
        if not waiting:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for request_id in waiting:
                pipe.getdel(self._k("resp", request_id))
            stored = await pipe.execute()
        for request_id, packed in zip(waiting, stored, strict=True):
            if packed is None:
                continue
            self._forget_bound(request_id)  # claimed by the process that stored the reply
            future = self._pending.get(request_id)
            if future is not None and not future.done():
                future.set_result(Reply.unpack(packed))

    async def _give_envelope(self, data: bytes) -> None:
        """Answer another process's ask for the envelope of a request bound here (an empty
        answer: its requestor left)."""
        request_id, answer = msgpack.unpackb(data, raw=False)
        envelope = self._envelopes.get(request_id, b"")
        with contextlib.suppress(RedisError, OSError):
            await self._link.transaction(
                [("RPUSH", answer, envelope), ("EXPIRE", answer, int(ENVELOPE_WAIT) + 5)]
            )

    async def _envelope_from_home(self, request: PublicRequest) -> bytes | None:
        """The envelope of ``request``, bound for long-poll by the process holding its
        requestor (``request.origin``), which kept it; None if that requestor left, or that
        process is gone or does not answer within ``ENVELOPE_WAIT``."""
        if request.origin == self._proc:
            return self._envelopes.get(request.request_id)
        answer = self._k("envans", new_id())
        ask = msgpack.packb([request.request_id, answer], use_bin_type=True)
        if not await self._link.call("PUBLISH", self._k("envelope", request.origin), ask):
            return None  # nobody listens there: the process is gone
        popped = await self._redis.blpop([answer], timeout=ENVELOPE_WAIT)
        return popped[1] if popped and popped[1] else None

    def _on_event(self, data: bytes) -> None:
        kind, key = data.decode().split(" ", 1)
        if kind == "gone":
            self._forget_key(key)
            self._answer_held(key, Reply.error(503, QUEUE_GONE_MESSAGE, retry_after=5))
        if kind == "gone" and (dispatcher := self._dispatchers.get(key)) is not None:
            for waiter in dispatcher.waiters:
                if not waiter.done():
                    waiter.set_exception(RegistrationGone())

    def _forget_key(self, key: str) -> None:
        """Drop what this process keeps about ``key``, whose registration is gone: its label
        cache entry and readings (keys are not reused; with registration churn they would add
        up in a long-lived process)."""
        self._others.pop(key, None)
        self._seen_written.pop(key, None)
        self._queue_busy.discard(key)
        for label in [label for label, (cached, _) in self._labels.items() if cached == key]:
            del self._labels[label]

    # Directory --------------------------------------------------------------------------
    async def activate(self, key: str, label: str) -> None:
        async with self._guard(), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._k("label", label), key)
            pipe.set(self._k("reg", key), label)
            pipe.sadd(self._k("regs"), key)
            pipe.set(self._k("seen", key), repr(now()), ex=SEEN_TTL)
            await pipe.execute()
        self._labels.pop(label, None)

    async def deactivate(self, key: str, label: str) -> None:
        self._labels.pop(label, None)
        self._forget_key(key)
        self._answer_held(key, Reply.error(503, QUEUE_GONE_MESSAGE, retry_after=5))
        async with self._guard():
            queue = self._k("q", key)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lrange(queue, 0, -1)
                pipe.delete(queue, self._k("reg", key), self._k("seen", key))
                pipe.srem(self._k("regs"), key)
                queued, _, _ = await pipe.execute()
            # The label may already belong to a newer registration: delete it only if it is ours.
            await self._redis.eval(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end",
                1,
                self._k("label", label),
                key,
            )
            await self._redis.publish(self._k("events"), f"gone {key}")
            for request_id in queued:
                request = await self._load(request_id.decode())
                if request is not None:
                    await self._redis.delete(self._k("req", request.request_id))
                    await self.route_reply(
                        request, Reply.error(503, QUEUE_GONE_MESSAGE, retry_after=5)
                    )

    def lookup_label_nowait(self, label: str) -> str | None:
        cached = self._labels.get(label)
        return cached[0] if cached is not None and cached[1] > now() else None

    async def lookup_label(self, label: str) -> str | None:
        key = self.lookup_label_nowait(label)
        if key is not None:
            return key
        moment = now()
        async with self._guard():
            value = await self._link.call("GET", self._k("label", label))
        if not value:
            self._labels.pop(label, None)
            return None
        key = value.decode()
        if len(self._labels) >= 100_000:
            self._labels.clear()
        self._labels[label] = (key, moment + LABEL_CACHE_SECONDS)
        return key

    async def active_keys(self) -> set[str]:
        async with self._guard():
            return {member.decode() for member in await self._redis.smembers(self._k("regs"))}

    async def lookup_key(self, key: str) -> str | None:
        async with self._guard():
            value = await self._redis.get(self._k("reg", key))
        return value.decode() if value else None

    # Public side ------------------------------------------------------------------------
    async def enqueue(
        self, key: str, request: PublicRequest, *, max_queued: int | None = None
    ) -> Ticket:
        ticket = self.enqueue_nowait(key, request, max_queued=max_queued)
        if ticket is not None:
            return ticket
        request.request_id = new_id()
        request.origin = self._proc
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        try:
            async with self._guard():
                queued = await self._store_and_push(key, request)
                if max_queued is not None and queued > max_queued:
                    await self._unqueue(key, request.request_id)
                    raise QueueFull
        except BaseException:
            self._pending.pop(request.request_id, None)
            raise
        return Ticket(key, request.request_id, future)

    def enqueue_nowait(
        self, key: str, request: PublicRequest, *, max_queued: int | None = None
    ) -> Ticket | None:
        if request.body_stream:
            return None
        hand_over = self._may_hand_over(key)
        if not (hand_over or self._hold_here(key, max_queued)):
            return None
        request.request_id = new_id()
        request.origin = self._proc
        request.key = key
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        if not (hand_over and self._hand_over_locally(key, request)):
            self._backlog.hold_request(key, request, max_queued)
        return Ticket(key, request.request_id, future)

    def _hold_here(self, key: str, max_queued: int | None) -> bool:
        """Whether a request no local poller waits for is held for the local pollers (the
        backlog's rules). When another process had pollers of ``key`` waiting at the last
        reading, and the shared queue holds nothing for them yet, the oldest request held here
        goes to them now (spilled) rather than after its hold, and this one is held; with none
        held, this one goes (False). With several processes at moderate load, held requests
        used to wait out their hold while pollers elsewhere were idle."""
        if not self._backlog.may_hold(key, max_queued):
            return False
        # Also the reading the held request's spill decision uses (_keep_held).
        others = self._others_polling(key, unknown=False)
        if not others or key in self._queue_busy or self._shared_waiting(key):
            return True
        oldest = self._take_held(key)
        if oldest is None:
            return False
        self._spill(key, oldest.request)
        return True

    def _may_hand_over(self, key: str) -> bool:
        """Whether a request arriving now may go straight to a poller of ``key`` waiting here:
        one waits, and no older request waits for it in the shared queue (RH-60), neither one of
        ours nor, as far as the last pop knows, another process's. Otherwise the request is held
        and the dispatcher serves the queue first (then held requests, once it is empty)."""
        dispatcher = self._dispatchers.get(key)
        return (
            dispatcher is not None
            and key not in self._queue_busy
            and dispatcher.has_waiters()
            and not self._shared_waiting(key)
        )

    def _hand_over_locally(self, key: str, request: PublicRequest) -> bool:
        """Give ``request`` to a poller of ``key`` waiting in this process, if one is."""
        dispatcher = self._dispatchers.get(key)
        if dispatcher is None:
            return False
        while dispatcher.waiters:
            waiter = dispatcher.waiters.popleft()
            if not waiter.done():
                request.key = key
                waiter.set_result(Taken(key, request, local=True))
                return True
        return False

    async def _store_and_push(self, key: str, request: PublicRequest, *, head: bool = False) -> int:
        """Write the ``req:`` hash and queue the id: at the tail, or at the ``head`` (RH-30).
        Returns the queue's length; notes the request as waiting in the shared queue."""
        record = self._k("req", request.request_id)
        ttl = max(int(request.deadline - now()) + RECORD_GRACE, 1)
        fields = [x for pair in self._record(key, request).items() for x in pair]
        *_, length = await self._link.transaction(
            [
                ("HSET", record, *fields),
                ("EXPIRE", record, ttl),
                ("RPUSH" if head else "LPUSH", self._k("q", key), request.request_id),
            ]
        )
        self._note_shared(key, request)
        return int(length)

    async def _unqueue(self, key: str, request_id: str) -> bool:
        """Take a queued request out again; True if it was still in the queue."""
        removed, _ = await self._link.transaction(
            [("LREM", self._k("q", key), 1, request_id), ("DEL", self._k("req", request_id))]
        )
        return bool(removed)

    def _note_shared(self, key: str, request: PublicRequest) -> None:
        """``request`` (ours) waits in the shared queue; local pollers must not pass it by
        taking newer held requests first (no starvation under overload). Also when no local
        poller asked lately: at the start of a burst the pollers that waited idle take the
        first requests, the next ones queue here, and the pollers asking again get newer ones
        held for them."""
        self._shared.setdefault(key, set()).add(request.request_id)

    def _shared_waiting(self, key: str) -> bool:
        """Whether a request of ours that went to the shared queue for ``key`` still waits."""
        ids = self._shared.get(key)
        if not ids:
            return False
        for request_id in [i for i in ids if not self._is_pending(i)]:
            ids.discard(request_id)
        if not ids:
            del self._shared[key]
        return bool(ids)

    def _queue_emptied(self, key: str) -> None:
        """A pop found the shared queue of ``key`` empty: held requests are the oldest now."""
        self._shared.pop(key, None)
        self._queue_busy.discard(key)

    def _is_pending(self, request_id: str) -> bool:
        """Whether the requestor of ``request_id`` (held by this process) still waits."""
        future = self._pending.get(request_id)
        return future is not None and not future.done()

    def _keep_held(self, key: str) -> bool:
        """Whether a held request whose hold expired stays held: while no other process has
        pollers of ``key`` waiting, the shared queue would only bring it back here, later and
        at the cost of its round trips."""
        return not self._others_polling(key)

    def _others_polling(self, key: str, *, unknown: bool = True) -> bool:
        """Whether another process had pollers of ``key`` waiting (``disp:<key>``) at the last
        reading, taken in the background at most every ``OTHERS_INTERVAL`` seconds per key
        (``unknown`` until the first)."""
        cached = self._others.get(key)
        moment = now()
        if cached is None or cached[1] <= moment:
            if cached is None and len(self._others) >= 100_000:
                self._others.clear()
            cached = (cached[0] if cached else unknown, moment + OTHERS_INTERVAL)
            self._others[key] = cached
            self._in_background(self._read_others(key))
        return cached[0]

    async def _read_others(self, key: str) -> None:
        try:
            disp = self._k("disp", key)
            procs = await self._link.call("ZRANGEBYSCORE", disp, repr(now()), "+inf")
        except (RedisError, OSError):
            return  # the previous reading stands
        others = any(proc.decode() != self._proc for proc in procs)
        self._others[key] = (others, now() + OTHERS_INTERVAL)

    def _spill(self, key: str, request: PublicRequest) -> None:
        """A held request no local poller took in time: to the shared queue (backlog.py)."""
        if self._still_waiting(request):
            self._note_shared(key, request)  # local pollers look in the queue first from now
            self._in_background(self._push_spilled(key, request))

    async def _push_spilled(self, key: str, request: PublicRequest) -> None:
        try:
            await self._store_and_push(key, request)
            if not self._still_waiting(request):  # withdrawn while it was being written
                await self._unqueue(key, request.request_id)
        except (RedisError, OSError) as exc:
            logger.warning("Redis error while queueing a held request of %s: %s", key, exc)
            unavailable = Reply.error(503, "The gateway's queue is unavailable", retry_after=5)
            self._answer(request, unavailable)

    def _answer(self, request: PublicRequest, reply: Reply) -> None:
        """Answer a requestor held by this process, at once (no round trip through Redis)."""
        future = self._pending.get(request.request_id)
        if future is not None and not future.done():
            future.set_result(reply)

    def _answer_held(self, key: str, reply: Reply) -> None:
        self._backlog.forget(key)
        self._shared.pop(key, None)
        for request in self._backlog.drain(key):
            self._answer(request, reply)

    def local_queued(self, key: str) -> int:
        """Requests of ``key`` held in this process for its busy pollers (backlog.py)."""
        return self._backlog.count(key)

    def _next_held(self, key: str) -> Taken | None:
        """The oldest held request, unless the shared queue may hold older ones (ours, or, as
        far as the last pop knows, another process's): the dispatcher serves those first (then
        held ones, once the queue is empty)."""
        if key in self._queue_busy or self._shared_waiting(key):
            return None
        return self._take_held(key)

    def _take_held(self, key: str) -> Taken | None:
        """The oldest request held here for ``key`` whose requestor still waits."""
        while (request := self._backlog.pop(key)) is not None:
            if self._still_waiting(request):
                return Taken(key, request, local=True)
        return None

    def local_in_flight(self, key: str) -> int:
        """Requests of ``key`` handed over in this process and answered here, unanswered."""
        return sum(1 for request in self._local_slots.values() if request.key == key)

    def _record(
        self, key: str, request: PublicRequest, *, envelope: bool = True
    ) -> dict[str, str | bytes | int]:
        """The fields of the ``req:<id>`` hash (read back by :meth:`_from_hash`); without
        ``envelope``, the hash has no ``env`` (it stays in this process, see :meth:`bind`)."""
        fields: dict[str, str | bytes | int] = {
            "client": request.requesting_client,
            "method": request.method,
            "deadline": repr(request.deadline),
            "origin": request.origin,
            "key": key,
            "stream": request.body_stream,
            "length": "" if request.body_length is None else request.body_length,
        }
        if envelope:
            fields["env"] = request.envelope
        return fields

    async def app_available(self, key: str, grace: float) -> bool:
        if self._backlog.serving(key, grace) or self.local_in_flight(key):
            return True  # a poller asked here lately, or a request handed over here is open
        moment = now()
        async with self._guard(), self._redis.pipeline(transaction=False) as pipe:
            pipe.zcount(self._k("disp", key), moment, "+inf")
            pipe.zcount(self._k("inflight", key), moment, "+inf")
            pipe.get(self._k("seen", key))
            pollers, inflight, seen = await pipe.execute()
        return bool(pollers or inflight or (seen and moment - float(seen) < grace))

    def forget(self, ticket: Ticket) -> None:
        self._pending.pop(ticket.request_id, None)
        self._envelopes.pop(ticket.request_id, None)
        shared = self._shared.get(ticket.key)
        if shared is not None:
            shared.discard(ticket.request_id)
            if not shared:
                del self._shared[ticket.key]

    async def withdraw(self, ticket: Ticket) -> bool:
        if self._backlog.remove(ticket.key, ticket.request_id):
            return True
        async with self._guard():
            return await self._unqueue(ticket.key, ticket.request_id)

    # Poll side --------------------------------------------------------------------------
    async def take(self, key: str, timeout: float, disconnected: asyncio.Event) -> Taken | None:
        waiter: asyncio.Future[Taken] = asyncio.get_running_loop().create_future()
        held = self.poll_nowait(key, waiter)
        if held is not None:
            return held
        await settle_by(waiter, disconnected, timeout)
        taken = waiter.result()  # raises RegistrationGone
        if taken is None:  # timed out, or the poller left
            with contextlib.suppress(RedisError):
                await self._redis.set(self._k("seen", key), repr(now()), ex=SEEN_TTL)
            return None
        if disconnected.is_set():
            await self.put_back(taken)
            return None
        return taken

    def poll_nowait(self, key: str, waiter: Waiter) -> Taken | None:
        self._backlog.polled(key)
        held = self._next_held(key)
        if held is not None:
            return held
        dispatcher = self._dispatchers.get(key)
        if dispatcher is None:
            dispatcher = self._dispatchers[key] = _Dispatcher()
        waiters = dispatcher.waiters
        if len(waiters) >= self.max_pollers and waiting_count(waiters) >= self.max_pollers:
            raise TooManyPollers
        dispatcher.waiters.append(waiter)
        if dispatcher.task is None or dispatcher.task.done():
            dispatcher.task = asyncio.ensure_future(self._dispatch(key, dispatcher))
        return None

    async def take_nowait(self, key: str, *, shared: bool = True) -> Taken | None:
        held = self._next_held(key)
        if held is not None or not shared:
            return held
        queue, taking = self._k("q", key), self._k("taking", self._proc)
        async with self._guard():
            while True:
                request_id = await self._redis.lmove(queue, taking, "RIGHT", "LEFT")
                if request_id is None:
                    self._queue_emptied(key)
                    return self._take_held(key)
                request = await self._load(request_id.decode())
                if request is not None:
                    return Taken(key, request)
                await self._redis.lrem(taking, 1, request_id)

    async def _dispatch(self, key: str, dispatcher: _Dispatcher) -> None:
        """Pop ``q:<key>`` while local pollers wait; hand each live request to the oldest one."""
        queue, taking = self._k("q", key), self._k("taking", self._proc)
        try:
            while not self._closing:
                while dispatcher.has_waiters() and not self._closing:
                    await self._pop_and_hand_over(key, dispatcher, queue, taking)
                # Idle: withdraw this process from the key's pollers. A poller that arrived
                # meanwhile found this task still running, so look again before leaving.
                with contextlib.suppress(RedisError):
                    await self._redis.zrem(self._k("disp", key), self._proc)
                    await self._redis.set(self._k("seen", key), repr(now()), ex=SEEN_TTL)
                dispatcher.last_heartbeat = 0.0
                if not dispatcher.has_waiters():
                    break
        finally:
            # No await between the last check and this: take() cannot slip in between.
            if self._dispatchers.get(key) is dispatcher and not dispatcher.has_waiters():
                del self._dispatchers[key]

    async def _pop_and_hand_over(
        self, key: str, dispatcher: _Dispatcher, queue: str, taking: str
    ) -> None:
        try:
            await self._heartbeat(key, dispatcher)
            popped = await self._link.call("EVAL", _POP, 2, queue, taking, self._k(""))
            if popped:
                self._queue_busy.add(key)
                request_id, *flat = popped
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                request = self._from_hash(request_id.decode(), fields)
            else:
                # The shared queue is empty: none of ours waits there any more (some may be in
                # flight), so held requests are the oldest now and go straight to pollers
                # again (poll_nowait), also while this task blocks below.
                self._queue_emptied(key)
                if dispatcher.has_waiters() and (held := self._take_held(key)) is not None:
                    dispatcher.waiters.popleft().set_result(held)
                    return
                request_id = await self._redis.blmove(queue, taking, BLOCK_SECONDS, "RIGHT", "LEFT")
                if request_id is None:
                    return
                self._queue_busy.add(key)
                request = await self._load(request_id.decode())
            if request is None:
                await self._redis.lrem(taking, 1, request_id)
                return
            taken = Taken(key, request)
            while dispatcher.has_waiters():
                waiter = dispatcher.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(taken)
                    return
            await self._requeue(key, request.request_id)
        except RedisError as exc:
            logger.warning("Redis error while dispatching %s: %s", key, exc)
            await asyncio.sleep(0.5)

    async def _heartbeat(self, key: str, dispatcher: _Dispatcher) -> None:
        moment = now()
        if moment - dispatcher.last_heartbeat < HEARTBEAT_SECONDS:
            return
        dispatcher.last_heartbeat = moment
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._k("disp", key), {self._proc: moment + 3 * BLOCK_SECONDS})
            pipe.expire(self._k("disp", key), 60)
            pipe.set(self._k("seen", key), repr(moment), ex=SEEN_TTL)
            await pipe.execute()

    async def _load(self, request_id: str) -> PublicRequest | None:
        return self._from_hash(request_id, await self._read_hash(request_id))

    async def _read_hash(self, request_id: str) -> dict[bytes, bytes]:
        flat = await self._link.call("HGETALL", self._k("req", request_id))
        return dict(zip(flat[::2], flat[1::2], strict=True))

    @staticmethod
    def _from_hash(request_id: str, data: dict[bytes, bytes]) -> PublicRequest | None:
        """The request stored as ``data`` (see :meth:`_record`); None if gone or expired."""
        if not data:
            return None
        deadline = float(data[b"deadline"])
        if deadline <= now():
            return None
        return PublicRequest(
            envelope=data.get(b"env", b""),  # not read by claims
            requesting_client=data[b"client"].decode(),
            method=data[b"method"].decode(),
            deadline=deadline,
            request_id=request_id,
            origin=data[b"origin"].decode(),
            key=data[b"key"].decode(),
            body_stream=data.get(b"stream", b"").decode(),
            body_length=int(data[b"length"]) if data.get(b"length") else None,
        )

    async def _requeue(self, key: str, request_id: str) -> None:
        await self._link.transaction(
            [
                ("LREM", self._k("taking", self._proc), 1, request_id),
                ("RPUSH", self._k("q", key), request_id),
            ]
        )

    async def bind(
        self, slot: str, taken: Taken, reply_timeout: float, *, answered_here: bool = False
    ) -> bool:
        request = taken.request
        if answered_here:
            bound = self.bind_nowait(slot, taken)
            if bound is not None:
                return bound
        ttl = max(int(request.deadline - now()) + RECORD_GRACE, 1)
        moment = repr(now())
        if taken.local:
            keys = [
                self._k("slot", slot),
                self._k("inflight", taken.key),
                self._k("req", request.request_id),
                self._k("seen", taken.key),
            ]
            waiting = request.request_id in self._pending
            record = self._record(taken.key, request, envelope=False)
            fields = [x for pair in record.items() for x in pair]
            args = [request.request_id, ttl, repr(request.deadline), moment, int(waiting)]
            script = _BIND_LOCAL
            if waiting:  # before the round trip: forget() may come meanwhile
                self._envelopes[request.request_id] = request.envelope
        else:
            keys = [
                self._k("slot", slot),
                self._k("inflight", taken.key),
                self._k("taking", self._proc),
                self._k("seen", taken.key),
            ]
            fields = []
            args = [request.request_id, ttl, repr(request.deadline), moment]
            script = _BIND
        bound = 0
        try:
            async with self._guard():
                bound = await self._link.call("EVAL", script, 4, *keys, *args, *fields)
        finally:
            if taken.local and not (bound and self._is_pending(request.request_id)):
                self._envelopes.pop(request.request_id, None)
        if bound:
            self._remember_bound(slot, request)
            self._seen_written[taken.key] = now()
        return bool(bound)

    def _remember_bound(self, slot: str, request: PublicRequest) -> None:
        """Keep what a reply to ``slot`` received here needs of ``request`` (the direct reply
        path, a claim without reading its hash), never its envelope: with several processes
        the claim is often made by another one, and the entry then stays until the request
        expires (``housekeeping``), or until the reply reaches its requestor here
        (``_on_reply``)."""
        self._bound[slot] = dataclasses.replace(request, envelope=b"")
        self._bound_slot[request.request_id] = slot

    def _pop_bound(self, slot: str) -> PublicRequest | None:
        request = self._bound.pop(slot, None)
        if request is not None:
            self._bound_slot.pop(request.request_id, None)
        return request

    def _forget_bound(self, request_id: str) -> None:
        """Drop the binding of ``request_id``: its slot was claimed by another process."""
        slot = self._bound_slot.pop(request_id, None)
        if slot is not None:
            self._bound.pop(slot, None)

    def bind_nowait(self, slot: str, taken: Taken) -> bool | None:
        if not taken.local:
            return None  # popped from the shared queue: its slot must be visible in Redis
        if slot in self._local_slots:
            return False
        self._local_slots[slot] = taken.request
        self._touch_seen(taken.key)
        return True

    def _touch_seen(self, key: str) -> None:
        """Poller activity of ``key`` for other processes (RH-07, RH-64), once a second."""
        moment = now()
        if moment - self._seen_written.get(key, 0.0) < SEEN_INTERVAL:
            return
        self._seen_written[key] = moment
        self._in_background(self._write_seen(key, moment))

    async def _write_seen(self, key: str, moment: float) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._link.call("SET", self._k("seen", key), repr(moment), "EX", SEEN_TTL)

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` in a task this broker holds a reference to (asyncio's advice)."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def unbind(self, slot: str, taken: Taken) -> None:
        if self._local_slots.get(slot) is taken.request:
            del self._local_slots[slot]
            return
        self._pop_bound(slot)
        request_id = taken.request.request_id
        keys = [self._k("slot", slot), self._k("inflight", taken.key), self._k("req", request_id)]
        if taken.local:
            self._envelopes.pop(request_id, None)  # put_back stores it with the request again
        async with self._guard():
            await self._link.call("EVAL", _UNBIND, 3, *keys, request_id, int(taken.local))

    async def put_back(self, taken: Taken) -> None:
        request = taken.request
        if not taken.local:
            async with self._guard():
                await self._requeue(taken.key, request.request_id)
            return
        if request.request_id not in self._pending:
            return  # the requestor left meanwhile: nothing to deliver
        if self._hand_over_locally(taken.key, request):
            return
        # Never written to Redis: store it now, at the head of the queue (RH-30).
        async with self._guard():
            await self._store_and_push(taken.key, request, head=True)

    def _still_waiting(self, request: PublicRequest) -> bool:
        return self._is_pending(request.request_id) and request.deadline > now()

    async def redeliver(self, slot: str) -> PublicRequest | None:
        local = self._local_slots.get(slot)
        if local is not None:
            return local if self._still_waiting(local) else None
        async with self._guard():
            request_id = await self._link.call("GET", self._k("slot", slot))
            if not request_id:
                return None
            request_id = request_id.decode()
            data = await self._read_hash(request_id)
            request = self._from_hash(request_id, data)
            if request is None or b"env" in data:
                return request
            envelope = await self._envelope_from_home(request)  # bound for long-poll there
            if not envelope:
                return None
            request.envelope = envelope
            return request

    def claim_nowait(self, slot: str) -> PublicRequest | None:
        local_slot = self._local_slots.pop(slot, None)
        return local_slot if local_slot is not None and self._still_waiting(local_slot) else None

    async def claim(self, slot: str) -> PublicRequest | None:
        claimed = await self.claim_batch(slot, 0)  # limit 0: only ``slot`` itself
        return claimed[0] if claimed else None

    async def claim_batch(self, slot: str, limit: int) -> list[PublicRequest | None]:
        if slot in self._local_slots:
            single = self.claim_nowait(slot)
            return [single] if single is not None else []
        candidates = [slot] + [f"{slot}.{index}" for index in range(limit)]
        held = [self._pop_bound(candidate) for candidate in candidates]
        args = [x for c, h in zip(candidates, held, strict=True) for x in (c, h.key if h else "")]
        async with self._guard():
            result = await self._link.call("EVAL", _CLAIM_BATCH, 0, self._k(""), *args)
        batch: list[PublicRequest | None] = []
        position = 0
        while position < len(result):
            index, request_id, deleted, size = result[position : position + 4]
            flat = result[position + 4 : position + 4 + size]
            position += 4 + size
            request_id = request_id.decode()
            mine = held[index - 1]
            if not deleted:  # withdrawn: its requestor left or timed out (RH-47)
                batch.append(None)
            elif mine is not None:  # bound by this process: no reload
                batch.append(mine if mine.request_id == request_id else None)
            else:
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                batch.append(self._from_hash(request_id, fields))
        return batch if any(batch) else []

    def delivered_here(self, slot: str, limit: int) -> list[PublicRequest] | None:
        single = self._bound.get(slot)
        if single is not None:
            return [single] if single.origin == self._proc else None
        batch: list[PublicRequest] = []
        while len(batch) < limit and (request := self._bound.get(f"{slot}.{len(batch)}")):
            if request.origin != self._proc:
                return None
            batch.append(request)
        return batch or None

    def route_reply_nowait(self, request: PublicRequest, reply: Reply) -> bool:
        if request.origin != self._proc:
            return False
        self._answer(request, reply)  # the requestor is ours: no round trip through Redis
        return True

    async def route_reply(self, request: PublicRequest, reply: Reply) -> None:
        if self.route_reply_nowait(request, reply):
            return
        packed = reply.pack()
        channel, stored = self._k("reply", request.origin), self._k("resp", request.request_id)
        ttl = max(int(request.deadline - now()) + RECORD_GRACE, 1)
        async with self._guard():
            if len(packed) <= INLINE_REPLY_LIMIT:
                message = msgpack.packb([request.request_id, True, packed], use_bin_type=True)
                if await self._link.call("PUBLISH", channel, message) == 0:
                    # The origin is reconnecting (or gone): keep the reply for it to collect.
                    await self._link.call("SET", stored, packed, "EX", ttl)
            else:
                await self._link.call("SET", stored, packed, "EX", ttl)
                message = msgpack.packb([request.request_id, False, b""], use_bin_type=True)
                await self._link.call("PUBLISH", channel, message)

    async def activity(self, keys: list[str]) -> dict[str, Activity]:
        if not keys:
            return {}
        moment = now()
        async with self._guard(), self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zcount(self._k("disp", key), moment, "+inf")
                pipe.get(self._k("seen", key))
            results = await pipe.execute()
        return {
            key: Activity(
                pollers_waiting=bool(results[2 * i]),
                last_seen=float(results[2 * i + 1]) if results[2 * i + 1] else None,
            )
            for i, key in enumerate(keys)
        }

    async def housekeeping(self) -> None:
        """Heartbeat this process, and re-queue what crashed processes had taken (reaper)."""
        moment = now()
        for key in list(self._shared):  # drop the answered ones of keys nobody polls any more
            self._shared_waiting(key)
        for slot, request in list(self._local_slots.items()):
            if request.deadline < moment - RECORD_GRACE:
                del self._local_slots[slot]
        for slot, request in list(self._bound.items()):
            if request.deadline < moment - RECORD_GRACE:
                self._pop_bound(slot)
        procs = self._k("procs")
        async with self._guard():
            await self._redis.zadd(procs, {self._proc: moment})
            dead = await self._redis.zrangebyscore(procs, "-inf", moment - self._dead_after)
            for member in dead:
                if await self._redis.zrem(procs, member):  # only one process reaps it
                    await self._reap(member.decode())

    async def _reap(self, proc: str) -> None:
        taking = self._k("taking", proc)
        for request_id in await self._redis.lrange(taking, 0, -1):
            data = await self._redis.hmget(self._k("req", request_id.decode()), "key", "origin")
            key, origin = data
            if key is not None and origin is not None and origin.decode() != proc:
                # Never handed over: back to the head of its queue for the live pollers.
                await self._redis.rpush(self._k("q", key.decode()), request_id)
        await self._redis.delete(taking)
        logger.warning("Re-queued the requests held by the crashed gateway process %s", proc)

    async def hit(self, bucket: str, window: int, amount: int = 1) -> int:
        key = self._k("hits", bucket)
        async with self._guard(), self._redis.pipeline(transaction=True) as pipe:
            pipe.incrby(key, amount)
            pipe.expire(key, window, nx=True)
            count, _ = await pipe.execute()
        return int(count)

    async def stream_write(
        self, stream: str, chunk: bytes = b"", *, end: bool = False, abort: str = ""
    ) -> None:
        key = self._k("stream", stream)
        items = [b"D" + chunk] if chunk else []
        if end:
            items.append(b"E")
        if abort:
            items.append(b"A" + abort.encode())
        if not items:
            return
        ttl = int(self._stream_timeout) + RECORD_GRACE
        async with self._guard():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.exists(key + ":dropped")
                pipe.rpush(key, *items)
                pipe.expire(key, ttl)
                dropped, length, _ = await pipe.execute()
            if dropped:
                await self._redis.delete(key)
                raise StreamAborted("The reader left")
            # Flow control: return only once the reader is back under the window.
            deadline, pause = now() + self._stream_timeout, 0.002
            while length > self._stream_window:
                if now() > deadline:
                    raise TimeoutError(f"stream {stream} not read")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)
                length = await self._redis.llen(key)

    async def stream_read(self, stream: str, timeout: float) -> tuple[bytes, bool]:
        key = self._k("stream", stream)
        async with self._guard():
            popped = await self._redis.blpop([key], timeout=max(timeout, 0.01))
        if popped is None:
            raise TimeoutError(f"stream {stream} idle")
        value = popped[1]
        if value[:1] == b"D":
            return value[1:], False
        await self._redis.delete(key)
        if value[:1] == b"A":
            raise StreamAborted(value[1:].decode())
        return b"", True

    async def stream_discard(self, stream: str) -> None:
        key = self._k("stream", stream)
        async with self._guard(), self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.set(key + ":dropped", 1, ex=int(self._stream_timeout) + RECORD_GRACE)
            await pipe.execute()

    async def store_envelope(self, request: PublicRequest) -> None:
        async with self._guard():
            await self._redis.hset(
                self._k("req", request.request_id),
                mapping={"env": request.envelope, "stream": request.body_stream},
            )

    @contextlib.asynccontextmanager
    async def _guard(self):  # type: ignore[no-untyped-def]
        """Turn connection failures into BrokerUnavailable (answered with 503)."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc
