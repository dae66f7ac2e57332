"""The brokers' no-wait operations and ``relay_nowait`` (docs/direct-path.md), on both brokers.

The Redis broker runs against a real Redis. Requirement ids refer to shared/spec/PROTOCOL.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from reversehttp_gateway.queue import relay
from reversehttp_gateway.queue.base import (
    Broker,
    Handoff,
    PublicRequest,
    QueueFull,
    RegistrationGone,
    Reply,
    Taken,
    Ticket,
    now,
)
from reversehttp_gateway.queue.memory import MemoryBroker
from reversehttp_gateway.queue.redis_broker import RedisBroker
from reversehttp_gateway.waiting import Flag

pytestmark = pytest.mark.asyncio


def public_request(path: str = "/") -> PublicRequest:
    envelope = f"GET {path} HTTP/1.1\r\nHost: demo.gw.test\r\n\r\n".encode()
    return PublicRequest(envelope, "203.0.113.9:4000", "GET", now() + 10)


@contextlib.asynccontextmanager
async def running(
    kind: str, redis_url: str, prefix: str = "", **options: float
) -> AsyncIterator[Broker]:
    if kind == "memory":
        memory = MemoryBroker()
        yield memory
        await memory.close()
        return
    prefix = prefix or f"tn{uuid.uuid4().hex[:10]}"
    broker = RedisBroker(redis_url, prefix, **options)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()
        raw = aioredis.Redis.from_url(redis_url)
        keys = [key async for key in raw.scan_iter(f"{prefix}:*")]
        if keys:
            await raw.delete(*keys)
        await raw.aclose()


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Broker]:
    async with running(request.param, redis_url) as started:
        await started.activate("k", "demo")
        yield started


class Recorder:
    """A Handoff's callbacks, remembered."""

    def __init__(self) -> None:
        self.taken: list[Taken] = []
        self.failures: list[BaseException] = []

    def handoff(self) -> Handoff:
        return Handoff(
            lambda _, taken: self.taken.append(taken),
            lambda _, exc: self.failures.append(exc),
        )


async def test_handoffs_and_takes_are_served_in_arrival_order(broker):
    """RH-70: a callback waiter and a waiting take() share one FIFO."""
    recorder = Recorder()
    assert broker.poll_nowait("k", recorder.handoff()) is None
    take = asyncio.ensure_future(broker.take("k", 5, asyncio.Event()))
    await asyncio.sleep(0.05)  # the take() waits behind the handoff
    first = await broker.enqueue("k", public_request("/first"))
    second = await broker.enqueue("k", public_request("/second"))
    assert [t.request.request_id for t in recorder.taken] == [first.request_id]
    taken = await asyncio.wait_for(take, 3)
    assert taken is not None and taken.request.request_id == second.request_id


async def test_a_cancelled_handoff_takes_nothing(broker):
    recorder, other = Recorder(), Recorder()
    handoff = recorder.handoff()
    assert broker.poll_nowait("k", handoff) is None
    assert broker.poll_nowait("k", other.handoff()) is None
    assert handoff.cancel() and not handoff.cancel()
    await broker.enqueue("k", public_request())
    assert recorder.taken == [] and len(other.taken) == 1


async def test_a_request_at_hand_is_returned_at_once():
    """poll_nowait returns what is queued without registering (held ones: the Redis test
    below)."""
    broker = MemoryBroker()
    await broker.activate("k", "demo")
    ticket = await broker.enqueue("k", public_request())
    recorder = Recorder()
    taken = broker.poll_nowait("k", recorder.handoff())
    assert taken is not None and taken.request.request_id == ticket.request_id
    assert recorder.taken == []


async def test_deleted_registration_fails_waiting_handoffs(broker):
    """RH-24: a waiting callback poller learns at once, like a waiting take()."""
    recorder = Recorder()
    assert broker.poll_nowait("k", recorder.handoff()) is None
    await broker.deactivate("k", "demo")
    for _ in range(100):
        if recorder.failures:
            break
        await asyncio.sleep(0.01)
    assert [type(exc) for exc in recorder.failures] == [RegistrationGone]


async def test_local_request_is_bound_claimed_and_answered_without_io(broker):
    """The direct path of a connection-bound poller: bind, claim once (RH-47), route."""
    recorder = Recorder()
    broker.poll_nowait("k", recorder.handoff())
    ticket = broker.enqueue_nowait("k", public_request())
    assert ticket is not None and len(recorder.taken) == 1
    taken = recorder.taken[0]
    assert broker.bind_nowait("slot-a", taken) is True
    assert broker.bind_nowait("slot-a", taken) is False  # the slot is taken
    claimed = broker.claim_nowait("slot-a")
    assert claimed is not None and claimed.request_id == ticket.request_id
    assert broker.claim_nowait("slot-a") is None
    assert broker.route_reply_nowait(claimed, Reply(200, [], b"done"))
    assert (await asyncio.wait_for(ticket.reply, 1)).body == b"done"


async def test_redis_broker_declines_what_needs_the_shared_store(redis_url):
    """Without a local poller or hold, enqueue needs Redis; a request popped from the shared
    queue must be bound in Redis; a reply for another process's requestor goes through it."""
    prefix = f"tn{uuid.uuid4().hex[:10]}"
    async with running("redis", redis_url, prefix) as a, running("redis", redis_url, prefix) as b:
        assert isinstance(a, RedisBroker) and isinstance(b, RedisBroker)
        await a.activate("k", "demo")
        assert a.enqueue_nowait("k", public_request()) is None  # nobody polls here
        ticket = await b.enqueue("k", public_request())  # b's requestor, via Redis
        taken = await a.take("k", 3, asyncio.Event())
        assert taken is not None and not taken.local
        assert a.bind_nowait("slot-b", taken) is None
        assert await a.bind("slot-b", taken, 10, answered_here=True)
        claimed = await a.claim("slot-b")
        assert claimed is not None and not a.route_reply_nowait(claimed, Reply(200, [], b""))
        await a.route_reply(claimed, Reply(200, [], b"from a"))
        assert (await asyncio.wait_for(ticket.reply, 2)).body == b"from a"


async def test_redis_broker_holds_for_busy_local_pollers_without_io(redis_url):
    """The local backlog takes a request for this process's busy pollers synchronously."""
    async with running("redis", redis_url, local_hold=0.5) as broker:
        assert isinstance(broker, RedisBroker)
        await broker.activate("k", "demo")
        recorder = Recorder()
        broker.poll_nowait("k", recorder.handoff())
        assert broker.enqueue_nowait("k", public_request("/one")) is not None  # handed over
        held = broker.enqueue_nowait("k", public_request("/two"))  # the poller is busy now
        assert held is not None and broker.local_queued("k") == 1
        taken = broker.poll_nowait("k", recorder.handoff())  # it asks again: gets it at once
        assert taken is not None and taken.request.request_id == held.request_id


def relay_now(
    broker: Broker,
    on_reply: Callable[[Reply | None], None] = lambda reply: None,
    *,
    no_app_timeout: float = 5,
    reply_timeout: float = 10,
    client_gone: Flag | None = None,
    max_queued: int | None = None,
) -> bool:
    """relay_nowait of a fresh request for key "k"."""
    return relay.relay_nowait(
        broker,
        "k",
        public_request(),
        on_reply,
        no_app_timeout=no_app_timeout,
        reply_timeout=reply_timeout,
        client_gone=client_gone or Flag(),
        max_queued=max_queued,
    )


def replies() -> tuple[list[Reply | None], asyncio.Event, Callable[[Reply | None], None]]:
    """What relay_nowait delivers: the replies so far, an event, and the callback."""
    got: list[Reply | None] = []
    event = asyncio.Event()

    def on_reply(reply: Reply | None) -> None:
        got.append(reply)
        event.set()

    return got, event, on_reply


async def test_relay_nowait_delivers_the_reply_by_callback(broker):
    recorder = Recorder()
    broker.poll_nowait("k", recorder.handoff())
    got, arrived, on_reply = replies()
    assert relay_now(broker, on_reply) and len(recorder.taken) == 1
    taken = recorder.taken[0]
    await broker.route_reply(taken.request, Reply(200, [], b"answer"))
    await asyncio.wait_for(arrived.wait(), 1)
    assert [r.body for r in got if r is not None] == [b"answer"]


async def test_relay_nowait_applies_t1_when_no_application_polls():
    """RH-64 on the direct path: the memory broker queues at once; T1 ends it with 504."""
    broker = MemoryBroker()
    await broker.activate("k", "demo")
    got, arrived, on_reply = replies()
    started = asyncio.get_running_loop().time()
    assert relay_now(broker, on_reply, no_app_timeout=0.2, reply_timeout=5)
    await asyncio.wait_for(arrived.wait(), 3)
    reply = got[0]
    assert reply is not None and reply.status == 504
    assert relay.NO_APP_MESSAGE.encode() in reply.body
    assert 0.15 < asyncio.get_running_loop().time() - started < 2
    assert await broker.take_nowait("k") is None  # withdrawn from the queue


async def test_relay_nowait_withdraws_when_the_client_leaves():
    broker = MemoryBroker()
    await broker.activate("k", "demo")
    got, arrived, on_reply = replies()
    gone = Flag()
    assert relay_now(broker, on_reply, client_gone=gone)
    gone.set()
    await asyncio.wait_for(arrived.wait(), 2)
    assert got == [None]
    assert await broker.take_nowait("k") is None


async def test_relay_nowait_declines_or_refuses_like_relay(redis_url):
    """False when the broker needs I/O (relay() then); QueueFull as relay() raises it."""
    async with running("redis", redis_url) as redis_broker:
        await redis_broker.activate("k", "demo")
        assert not relay_now(redis_broker)
    memory = MemoryBroker()
    await memory.activate("k", "demo")
    await memory.enqueue("k", public_request())
    with pytest.raises(QueueFull):
        relay_now(memory, max_queued=1)


async def test_settled_first_waits_do_not_pile_up():
    """Thousands of answered requests leave the shared deadline heap bounded."""
    broker = MemoryBroker()
    await broker.activate("k", "demo")
    deadlines = relay._deadlines
    for _ in range(5000):
        recorder = Recorder()
        broker.poll_nowait("k", recorder.handoff())
        assert relay_now(broker, no_app_timeout=30, reply_timeout=60)
        taken = recorder.taken[0]
        assert broker.route_reply_nowait(taken.request, Reply(200, [], b""))
    await asyncio.sleep(0)  # the done callbacks run
    assert len(deadlines._heap) <= 256 + 4 * max(deadlines._live, 1)


async def delivered_and_answered(broker: Broker, ticket: Ticket) -> None:
    """The next poll of "k" gets ``ticket``'s request; bound, claimed and answered, its
    requestor has the reply."""
    again = await broker.take("k", 2, asyncio.Event())
    assert again is not None and again.request.request_id == ticket.request_id
    assert await broker.bind("slot-again", again, 10)
    claimed = await broker.claim("slot-again")
    assert claimed is not None
    await broker.route_reply(claimed, Reply(200, [], b"answered"))
    assert (await asyncio.wait_for(ticket.reply, 2)).body == b"answered"


async def test_an_undone_binding_leaves_the_request_waiting(broker):
    """``unbind``: a request bound but never delivered (its poller left, or a batch position
    found its slot taken) frees the slot and still waits; put back, it is delivered and
    answered as any other (RH-30). (A claim instead would have dropped it.)"""
    await broker.activate("k", "demo")
    ticket = await broker.enqueue("k", public_request("/undone"))
    taken = await broker.take("k", 2, asyncio.Event())
    assert taken is not None and await broker.bind("slot-u", taken, 10)
    await broker.unbind("slot-u", taken)
    assert await broker.redeliver("slot-u") is None
    assert await broker.claim("slot-u") is None
    await broker.put_back(taken)
    await delivered_and_answered(broker, ticket)


async def test_an_undone_local_binding_on_redis_is_queued_again(redis_url):
    """The same for a request handed over in this process, whose binding wrote its hash for
    other processes (RH-47): put back with no local poller, it goes to the shared queue."""
    async with running("redis", redis_url, local_hold=0.5) as broker:
        await broker.activate("k", "demo")
        recorder = Recorder()
        broker.poll_nowait("k", recorder.handoff())
        ticket = broker.enqueue_nowait("k", public_request("/held"))
        assert ticket is not None and recorder.taken and recorder.taken[0].local
        taken = recorder.taken[0]
        assert await broker.bind("slot-l", taken, 10)
        await broker.unbind("slot-l", taken)
        assert await broker.redeliver("slot-l") is None
        await broker.put_back(taken)
        await delivered_and_answered(broker, ticket)


async def test_the_broker_interface_declares_what_both_brokers_offer():
    """Every public operation both brokers implement is part of ``Broker`` (documented there,
    with its no-wait default where one exists), and the ones without a default are abstract:
    callers may rely on the interface, not on one broker."""
    shared = {
        name
        for name in vars(MemoryBroker).keys() & vars(RedisBroker).keys()
        if not name.startswith("_") and callable(getattr(MemoryBroker, name))
    }
    assert shared <= set(vars(Broker)), sorted(shared - set(vars(Broker)))
    assert {"route_reply", "activity", "claim", "claim_batch"} <= Broker.__abstractmethods__
    for name in ("enqueue_nowait", "bind_nowait", "lookup_label_nowait", "delivered_here"):
        assert getattr(Broker, name).__doc__, name
