"""The Redis broker's local handover and label cache, on a real Redis.

Two ``RedisBroker`` objects on one event loop stand for two gateway processes: each has its own
process id, reply channel and dispatchers, and they share only Redis. Requirement ids refer to
shared/spec/PROTOCOL.md; docs/architecture.md ("Local handover") has the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from reversehttp_gateway.queue import redis_broker
from reversehttp_gateway.queue.base import PublicRequest, RegistrationGone, Reply, Taken, Ticket
from reversehttp_gateway.queue.redis_broker import RedisBroker
from reversehttp_gateway.transports import longpoll

pytestmark = pytest.mark.asyncio

ENVELOPE = b"GET /hello HTTP/1.1\r\nHost: demo.gw.test\r\n\r\n"


def public_request(envelope: bytes = ENVELOPE, seconds: float = 10) -> PublicRequest:
    return PublicRequest(
        envelope=envelope,
        requesting_client="203.0.113.9",
        method="GET",
        deadline=redis_broker.now() + seconds,
    )


Pair = tuple[RedisBroker, RedisBroker, aioredis.Redis]


@contextlib.asynccontextmanager
async def broker_pair(redis_url: str, *, local_hold_a: float = 0.0) -> AsyncIterator[Pair]:
    """Brokers ``a`` and ``b`` ("two processes") sharing a fresh key prefix, and a raw client."""
    prefix = f"tb{uuid.uuid4().hex[:10]}"
    a = RedisBroker(redis_url, prefix, local_hold=local_hold_a)
    b = RedisBroker(redis_url, prefix)
    await a.start()
    await b.start()
    raw = aioredis.Redis.from_url(redis_url)
    try:
        yield a, b, raw
    finally:
        await a.close()
        await b.close()
        keys = [key async for key in raw.scan_iter(f"{prefix}:*")]
        if keys:
            await raw.delete(*keys)
        await raw.aclose()


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[Pair]:
    async with broker_pair(redis_url) as brokers:
        yield brokers


async def waiting_poller(broker: RedisBroker, key: str) -> asyncio.Task:
    """A poller of ``key`` waiting in ``broker`` (a ``take`` in progress)."""
    task = asyncio.ensure_future(broker.take(key, 5, asyncio.Event()))
    for _ in range(100):
        dispatcher = broker._dispatchers.get(key)
        if dispatcher is not None and dispatcher.has_waiters():
            return task
        await asyncio.sleep(0.01)
    raise AssertionError("the poller did not start waiting")


async def hand_over(
    poller_side: RedisBroker,
    requestor_side: RedisBroker,
    key: str,
    request: PublicRequest | None = None,
) -> tuple[Ticket, Taken]:
    """A poller of ``key`` in ``poller_side`` takes a request enqueued in ``requestor_side``."""
    poller = await waiting_poller(poller_side, key)
    ticket = await requestor_side.enqueue(key, request or public_request())
    return ticket, await asyncio.wait_for(poller, 3)


async def keys_of(raw: aioredis.Redis, broker: RedisBroker, kind: str) -> list[bytes]:
    return [key async for key in raw.scan_iter(broker._k(kind, "*"))]


async def answer_here(broker: RedisBroker, slot: str, taken: Taken, body: bytes) -> None:
    """Bind ``taken`` on ``slot`` as WebSocket and PTTH do, claim it and reply 200 ``body``."""
    assert await broker.bind(slot, taken, 10, answered_here=True)
    claimed = await broker.claim(slot)
    assert claimed is not None and claimed.request_id == taken.request.request_id
    await broker.route_reply(claimed, Reply(200, [], body))


async def test_local_handover_answered_here_touches_no_queue_or_record(pair):
    """WebSocket/PTTH: requestor and poller in one process, reply on the poller's connection."""
    a, _, raw = pair
    await a.activate("k1", "demo")
    ticket, taken = await hand_over(a, a, "k1")
    assert taken.local and taken.request.envelope == ENVELOPE
    assert await a.bind("slot-1", taken, 10, answered_here=True)
    assert await keys_of(raw, a, "req") == [] and await keys_of(raw, a, "slot") == []
    assert await raw.llen(a._k("q", "k1")) == 0
    assert await a.app_available("k1", grace=0)  # RH-64: a request is being answered
    claimed = await a.claim("slot-1")
    assert claimed is not None and claimed.request_id == ticket.request_id
    assert await a.claim("slot-1") is None  # RH-47: once
    await a.route_reply(claimed, Reply(200, [], b"hi"))
    assert (await asyncio.wait_for(ticket.reply, 1)).body == b"hi"


async def test_local_handover_bound_for_longpoll_can_be_answered_by_another_process(pair):
    """RH-29, RH-47: a long-poll reply may reach any process; the record is written at bind,
    without the envelope, which the process re-delivering asks the requestor's process for."""
    a, b, raw = pair
    await a.activate("k2", "demo2")
    ticket, taken = await hand_over(a, a, "k2")
    assert taken.local
    assert await a.bind("slot-2", taken, 10)
    record = a._k("req", ticket.request_id)
    assert await raw.hget(record, "key") == b"k2" and not await raw.hexists(record, "env")
    again = await b.redeliver("slot-2")  # RH-29: the same request on a repeated poll
    assert again is not None and again.envelope == ENVELOPE
    assert again.request_id == ticket.request_id and again.origin == a.process_id
    assert (await a.redeliver("slot-2")).envelope == ENVELOPE  # and in its own process
    claimed = await b.claim("slot-2")
    assert claimed is not None and claimed.origin == a.process_id
    assert await a.claim("slot-2") is None
    await b.route_reply(claimed, Reply(201, [(b"x-from", b"b")], b"from b"))
    reply = await asyncio.wait_for(ticket.reply, 2)
    assert (reply.status, reply.body) == (201, b"from b")


async def test_requestor_gone_before_bind_leaves_nothing_to_claim(pair):
    """A withdrawn request is not answered later (RH-47), whichever way it was handed over."""
    a, b, raw = pair
    await a.activate("k3", "demo3")
    for answered_here, slot in ((True, "slot-3a"), (False, "slot-3b")):
        ticket, taken = await hand_over(a, a, "k3")
        assert not await a.withdraw(ticket)  # delivered already: not "never delivered"
        a.forget(ticket)  # what relay() does when its requestor leaves
        assert await a.bind(slot, taken, 10, answered_here=answered_here)
        assert await (a if answered_here else b).claim(slot) is None
    assert await keys_of(raw, a, "req") == []
    assert await raw.zcard(a._k("inflight", "k3")) == 0  # nothing counts as being answered


async def test_claim_batch_takes_a_pipeline_in_one_call_from_either_process(pair):
    """RH-26, RH-47: positions slot.0.. claimed in order, None where the requestor left, by the
    process that bound them (no reload) or by another (from the records); once."""
    a, b, raw = pair
    await a.activate("k9", "demo9")
    for claimer, slot in ((a, "slot-9a"), (b, "slot-9b")):
        handed = [await hand_over(a, a, "k9", public_request(b"GET /%d" % i)) for i in range(3)]
        for index, (_, taken) in enumerate(handed):
            assert await a.bind(f"{slot}.{index}", taken, 10)
        left, _ = handed[1]
        assert not await a.withdraw(left)  # its requestor hung up (as relay() does)
        a.forget(left)
        batch = await claimer.claim_batch(slot, 8)
        ids = [ticket.request_id for ticket, _ in handed]
        assert [r.request_id if r else None for r in batch] == [ids[0], None, ids[2]]
        assert {r.origin for r in batch if r} == {a.process_id}  # where to route the replies
        assert await claimer.claim_batch(slot, 8) == []  # once
        assert await a.claim_batch(slot, 8) == [] and await b.claim_batch(slot, 8) == []
    single_ticket, single = await hand_over(a, a, "k9")
    assert await a.bind("slot-9c", single, 10)
    claimed = await b.claim_batch("slot-9c", 8)
    assert [r.request_id for r in claimed] == [single_ticket.request_id]
    assert await keys_of(raw, a, "req") == [] and await keys_of(raw, a, "slot") == []


async def test_delivered_here_knows_local_deliveries_without_claiming_them(pair):
    """A long-poll reply reaching the process that delivered the request may answer its
    requestor before the claim's round trip; any other process must claim first."""
    a, b, _ = pair
    await a.activate("k8", "demo8")
    handed = [await hand_over(a, a, "k8", public_request(b"GET /%d" % i)) for i in range(2)]
    for index, (_, taken) in enumerate(handed):
        assert await a.bind(f"slot-8.{index}", taken, 10)
    here = a.delivered_here("slot-8", 8)
    assert [r.request_id for r in here or []] == [t.request.request_id for _, t in handed]
    assert b.delivered_here("slot-8", 8) is None  # not delivered by b
    assert len(await a.claim_batch("slot-8", 8)) == 2  # not claimed by delivered_here
    assert a.delivered_here("slot-8", 8) is None
    ticket, taken = await hand_over(b, a, "k8")  # requestor in a, poller in b
    assert await b.bind("slot-8x", taken, 10)
    assert b.delivered_here("slot-8x", 8) is None  # b does not hold the requestor
    assert [r.request_id for r in await b.claim_batch("slot-8x", 8)] == [ticket.request_id]


async def test_deliveries_answered_elsewhere_or_abandoned_keep_no_body_here(pair):
    """With several processes a long-poll reply often reaches another one (RH-47): the process
    that delivered the request forgets the binding once the reply reaches its requestor, and
    a binding nobody answers (its requestor left) keeps no body until it expires. Each used to
    keep the request, body included, for REPLY_TIMEOUT + 30 s: a two-process group relaying
    64 KiB POSTs grew by ~75 MiB per process every 10 s of load (docs/benchmarks.md)."""
    a, b, _ = pair
    await a.activate("k10", "demo10")
    head = b"POST /up HTTP/1.1\r\nHost: demo10.gw.test\r\nContent-Length: 65536\r\n\r\n"
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(60):
            request = public_request(head + bytes([index]) * 65536)
            ticket, taken = await hand_over(a, a, "k10", request)
            slot = f"slot-10-{index}"
            assert await a.bind(slot, taken, 10)
            if index % 2:  # the requestor left; the application never answers
                assert not await a.withdraw(ticket)
                a.forget(ticket)
                continue
            claimed = await b.claim(slot)  # the reply reached the other process
            assert claimed is not None and claimed.request_id == ticket.request_id
            await b.route_reply(claimed, Reply(200, [], b"ok"))
            assert (await asyncio.wait_for(ticket.reply, 2)).body == b"ok"
            a.forget(ticket)
            assert a.delivered_here(slot, 8) is None  # answered: not a direct reply any more
        del request, ticket, taken, claimed
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 600_000, f"{kept} bytes kept for 60 requests of 64 KiB"


async def test_a_reply_collected_after_resubscribing_ends_the_binding_too(pair):
    """RH-47 across processes: a reply routed while its origin was not subscribed waits in
    ``resp:<id>`` (after a Redis restart, say); collecting it ends the binding like a published
    reply does."""
    a, b, raw = pair
    await a.activate("k11", "demo11")
    ticket, taken = await hand_over(a, a, "k11")
    assert await a.bind("slot-11", taken, 10)
    claimed = await b.claim("slot-11")
    assert claimed is not None
    await raw.set(a._k("resp", claimed.request_id), Reply(200, [], b"stored").pack(), ex=30)
    await a._collect_stranded_replies()  # what a resubscribed listener does first
    assert (await asyncio.wait_for(ticket.reply, 1)).body == b"stored"
    assert a.delivered_here("slot-11", 8) is None


async def test_a_deleted_registration_leaves_no_state_in_either_process(pair):
    """Registration churn (names created and deleted all day) must not grow a long-lived
    process or Redis: once a key's registration is gone, no per-key map of either broker holds
    it, and what Redis still has of it expires (``seen:<key>``, the poller activity behind
    RH-07 leases and RH-64, included)."""
    a, b, raw = pair
    for index in range(3):
        key = f"churn-{index}"
        await a.activate(key, f"churn{index}")
        ticket, taken = await hand_over(a, a, key)  # a poller, a delivery, a reply
        assert await a.bind(f"slot-churn-{index}", taken, 10)
        claimed = await b.claim(f"slot-churn-{index}")
        assert claimed is not None
        await b.route_reply(claimed, Reply(200, [], b"ok"))
        await asyncio.wait_for(ticket.reply, 2)
        a.forget(ticket)
        assert await b.lookup_label(f"churn{index}") == key
        await a.deactivate(key, f"churn{index}")
    # b hears the "gone" events; a's dispatchers end within their blocking pop (1 s).
    await asyncio.sleep(redis_broker.BLOCK_SECONDS + 0.3)
    left = [key async for key in raw.scan_iter(a._k("*churn*"))]
    assert left and all([await raw.ttl(key) > 0 for key in left]), left
    for broker in (a, b):
        maps = [*vars(broker).values(), *vars(broker._backlog).values()]
        kept = [m for m in maps if isinstance(m, dict) and any("churn" in str(k) for k in m)]
        assert kept == [], f"per-key state left in {broker.process_id}: {kept}"


async def test_put_back_of_a_local_request_queues_it_for_every_process(pair):
    """RH-30: a poller that left before handover; the request goes to the head of the queue."""
    a, b, _ = pair
    await a.activate("k4", "demo4")
    ticket, taken = await hand_over(a, a, "k4")
    await a.put_back(taken)  # no other poller waits in a: into Redis
    taken_b = await b.take("k4", 3, asyncio.Event())
    assert taken_b is not None and not taken_b.local
    assert taken_b.request.request_id == ticket.request_id
    await answer_here(b, "slot-4", taken_b, b"via b")
    assert (await asyncio.wait_for(ticket.reply, 2)).body == b"via b"


async def test_requests_from_another_process_still_go_through_the_queue(pair):
    """The local handover is only for requestors held here; b's request reaches a's poller."""
    a, b, _ = pair
    await a.activate("k5", "demo5")
    ticket, taken = await hand_over(a, b, "k5")
    assert not taken.local
    await answer_here(a, "slot-5", taken, b"to b")
    assert (await asyncio.wait_for(ticket.reply, 2)).body == b"to b"


async def test_streamed_bodies_are_never_handed_over_locally(pair):
    """A streamed body lives on a broker stream: its request goes through the shared queue."""
    a, _, raw = pair
    await a.activate("k6", "demo6")
    poller = await waiting_poller(a, "k6")
    request = public_request()
    request.body_stream, request.body_length = "s-k6", 10
    await a.enqueue("k6", request)
    taken = await asyncio.wait_for(poller, 3)
    assert not taken.local
    assert await keys_of(raw, a, "req") != []


async def test_label_cache_is_evicted_by_gone_events_of_other_processes(pair, monkeypatch):
    """A label deleted in one process stops resolving in the others at once (RH-24)."""
    monkeypatch.setattr(redis_broker, "LABEL_CACHE_SECONDS", 3600)
    a, b, _ = pair
    await b.activate("k7", "cached")
    assert await a.lookup_label("cached") == "k7"
    await b.deactivate("k7", "cached")
    for _ in range(100):
        if await a.lookup_label("cached") is None:
            break
        await asyncio.sleep(0.01)
    assert await a.lookup_label("cached") is None
    await b.activate("k7-new", "cached")  # a new registration of the same label
    assert await a.lookup_label("cached") == "k7-new"


async def test_label_cache_expires_without_events(pair, monkeypatch):
    """Even a missed event cannot keep a stale label longer than LABEL_CACHE_SECONDS."""
    monkeypatch.setattr(redis_broker, "LABEL_CACHE_SECONDS", 0.2)
    a, _, raw = pair
    await a.activate("k8", "moving")
    assert await a.lookup_label("moving") == "k8"
    await raw.set(a._k("label", "moving"), "k8-other")  # changed behind a's back, no event
    assert await a.lookup_label("moving") == "k8"
    await asyncio.sleep(0.3)
    assert await a.lookup_label("moving") == "k8-other"


async def test_registration_gone_still_reaches_local_pollers(pair):
    """RH-24: deleting the registration ends the waiting polls with 410, cache or not."""
    a, b, _ = pair
    await a.activate("k9", "leaving")
    assert await a.lookup_label("leaving") == "k9"
    poller = await waiting_poller(a, "k9")
    await b.deactivate("k9", "leaving")
    with pytest.raises(RegistrationGone):
        await asyncio.wait_for(poller, 3)


async def test_queued_requests_are_popped_in_order_by_the_dispatcher(pair):
    """RH-60: FIFO, whether the dispatcher finds the queue full (one script) or waits on it."""
    a, b, raw = pair
    await a.activate("k10", "fifo")
    tickets = [
        await b.enqueue("k10", public_request(b"GET /%d HTTP/1.1\r\n\r\n" % i)) for i in range(3)
    ]
    assert await raw.llen(a._k("q", "k10")) == 3
    for i, ticket in enumerate(tickets):
        taken = await a.take("k10", 3, asyncio.Event())
        assert taken is not None and taken.request.request_id == ticket.request_id
        assert taken.request.envelope == b"GET /%d HTTP/1.1\r\n\r\n" % i
        assert await a.bind(f"slot-10-{i}", taken, 10, answered_here=True)
    assert await raw.llen(a._k("q", "k10")) == 0
    assert await raw.llen(a._k("taking", a.process_id)) == 0


# Local backlog (queue/backlog.py): requests held for this process's own busy pollers --------


@pytest.fixture
async def holding(redis_url: str) -> AsyncIterator[Pair]:
    """Like ``pair``, but ``a`` holds requests for its busy pollers for 0.3 s (b does not)."""
    async with broker_pair(redis_url, local_hold_a=0.3) as brokers:
        yield brokers


async def busy_poller(broker: RedisBroker, key: str) -> Taken:
    """A local poller of ``key`` that took one request and is now busy answering it."""
    _, taken = await hand_over(broker, broker, key)
    assert await broker.bind(f"busy-{uuid.uuid4().hex}", taken, 10, answered_here=True)
    return taken


async def test_requests_for_busy_local_pollers_are_held_in_process_in_order(holding):
    """Every local poller busy: the next requests wait here, FIFO (RH-60), not in Redis."""
    a, _, raw = holding
    await a.activate("h1", "held")
    await busy_poller(a, "h1")
    tickets = [
        await a.enqueue("h1", public_request(b"GET /%d HTTP/1.1\r\n\r\n" % i)) for i in range(3)
    ]
    assert a.local_queued("h1") == 3
    assert await raw.llen(a._k("q", "h1")) == 0 and await keys_of(raw, a, "req") == []
    for i, ticket in enumerate(tickets):
        taken = await a.take("h1", 1, asyncio.Event())  # the poller is free again
        assert taken is not None and taken.local
        assert taken.request.request_id == ticket.request_id
        assert taken.request.envelope == b"GET /%d HTTP/1.1\r\n\r\n" % i
        await answer_here(a, f"slot-h1-{i}", taken, b"%d" % i)
        assert (await asyncio.wait_for(ticket.reply, 1)).body == b"%d" % i
    assert a.local_queued("h1") == 0
    assert await keys_of(raw, a, "req") == [] and await keys_of(raw, a, "slot") == []


async def test_held_request_is_bound_for_longpoll_like_a_local_handover(holding):
    """RH-29, RH-47: a held request taken by a long-poll can be answered by another process."""
    a, b, _ = holding
    await a.activate("h2", "held2")
    await busy_poller(a, "h2")
    ticket = await a.enqueue("h2", public_request())
    taken = await a.take("h2", 1, asyncio.Event())
    assert taken is not None and taken.local
    assert await a.bind("slot-h2", taken, 10)
    claimed = await b.claim("slot-h2")
    assert claimed is not None and claimed.request_id == ticket.request_id
    await b.route_reply(claimed, Reply(200, [], b"from b"))
    assert (await asyncio.wait_for(ticket.reply, 2)).body == b"from b"


async def answered_elsewhere(brokers: Pair, key: str, poller: asyncio.Task, ticket: Ticket) -> None:
    """``poller``, waiting in ``b``, gets the request ``a`` held for ``ticket`` through the
    shared queue and answers it; nothing stays held or queued."""
    a, b, raw = brokers
    taken = await asyncio.wait_for(poller, 3)
    assert not taken.local and taken.request.request_id == ticket.request_id
    assert a.local_queued(key) == 0
    await answer_here(b, f"slot-{key}", taken, b"elsewhere")
    assert (await asyncio.wait_for(ticket.reply, 2)).body == b"elsewhere"
    assert await raw.llen(a._k("q", key)) == 0


async def test_held_request_spills_to_the_shared_queue_for_other_processes(holding):
    """Not taken here within LOCAL_QUEUE_SECONDS: another process's poller gets it."""
    a, b, raw = holding
    await a.activate("h3", "spill")
    await busy_poller(a, "h3")
    poller_b = await waiting_poller(b, "h3")
    ticket = await a.enqueue("h3", public_request())
    assert a.local_queued("h3") == 1 and not poller_b.done()
    await answered_elsewhere(holding, "h3", poller_b, ticket)  # after the 0.3 s hold


async def test_withdrawn_held_request_is_never_delivered(holding):
    """A requestor that leaves (or times out at T1) takes its held request with it."""
    a, _, raw = holding
    await a.activate("h4", "gone")
    await busy_poller(a, "h4")
    ticket = await a.enqueue("h4", public_request())
    assert await a.withdraw(ticket)  # never delivered
    a.forget(ticket)
    assert a.local_queued("h4") == 0
    assert await a.take("h4", 0.4, asyncio.Event()) is None  # nothing spilled either
    assert await raw.llen(a._k("q", "h4")) == 0 and await keys_of(raw, a, "req") == []


async def test_registration_deleted_answers_held_requests_503(holding):
    """Deleted in another process: the requests held here get 503 at once, like queued ones."""
    a, b, _ = holding
    await a.activate("h5", "deleted")
    await busy_poller(a, "h5")
    ticket = await a.enqueue("h5", public_request())
    await b.deactivate("h5", "deleted")
    reply = await asyncio.wait_for(ticket.reply, 3)
    assert reply.status == 503 and b"deleted" in reply.body
    assert a.local_queued("h5") == 0


async def test_no_holding_without_local_pollers_or_beyond_the_queue_limit(holding):
    """A process that serves no poller of the key shares at once; the hold is bounded."""
    a, _, raw = holding
    await a.activate("h6", "nobody")
    await a.enqueue("h6", public_request())  # nobody polled h6 here
    assert a.local_queued("h6") == 0 and await raw.llen(a._k("q", "h6")) == 1
    await a.activate("h7", "limit")
    await busy_poller(a, "h7")
    for _ in range(3):
        await a.enqueue("h7", public_request(), max_queued=2)
    assert a.local_queued("h7") == 2 and len(await keys_of(raw, a, "req")) == 2  # h6's, h7's
    assert await a.app_available("h7", grace=5)  # RH-64: a local poller asked just now


async def another_process_polls(raw: aioredis.Redis, broker: RedisBroker, key: str) -> None:
    """Register a (pretend) other process with pollers of ``key`` waiting, as its dispatcher's
    heartbeat would (``disp:<key>``): spilling held requests can help now."""
    await raw.zadd(broker._k("disp", key), {"another-host:1:abcd": time.time() + 60})


async def others_stop_polling(raw: aioredis.Redis, broker: RedisBroker, key: str) -> None:
    """The other process of :func:`another_process_polls` stops polling, and ``broker`` has
    read so: its new requests of ``key`` are held again (none goes to the shared queue at once
    while a poller waits elsewhere)."""
    await raw.zrem(broker._k("disp", key), "another-host:1:abcd")
    broker._others.pop(key, None)
    broker._others_polling(key)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if broker._others[key][0] is False:
            return
    raise AssertionError("no reading")


async def one_spilled(brokers: Pair, key: str, envelope: bytes) -> Ticket:
    """A request ``a`` held for its busy poller of ``key`` and then spilled to the shared queue
    (after its hold: another process polls the key)."""
    a, _, raw = brokers
    await a.activate(key, f"label-{key}")
    await another_process_polls(raw, a, key)
    await busy_poller(a, key)
    ticket = await a.enqueue(key, public_request(envelope))
    for _ in range(100):
        if await raw.llen(a._k("q", key)):
            return ticket
        await asyncio.sleep(0.02)
    raise AssertionError("nothing spilled")


async def test_no_holding_while_another_process_has_pollers_waiting(holding):
    """A poller waiting in another process serves a request sooner than a busy one here: once
    a reading of ``disp:<key>`` says one waits, requests go to the shared queue at once instead
    of waiting out LOCAL_QUEUE_SECONDS here (two and four processes behind a balancer at c=10
    had a p99 of about the hold, 50 ms)."""
    a, b, raw = holding
    await a.activate("h14", "waiting-elsewhere")
    await another_process_polls(raw, a, "h14")
    await busy_poller(a, "h14")
    poller_b = await waiting_poller(b, "h14")
    a._others_polling("h14")  # the reading, in the background
    await asyncio.sleep(0.05)
    started = time.monotonic()
    ticket = await a.enqueue("h14", public_request())
    assert a.local_queued("h14") == 0
    await answered_elsewhere(holding, "h14", poller_b, ticket)
    assert time.monotonic() - started < 0.25  # not after the 0.3 s hold


async def test_the_oldest_held_request_goes_first_to_pollers_waiting_elsewhere(holding):
    """RH-60 with the previous test: requests already held here, the oldest one goes to the
    shared queue (for the pollers waiting elsewhere) and the new one is held behind the rest;
    local pollers, too, then take the spilled one first."""
    a, _, raw = holding
    await a.activate("h15", "oldest-first")
    await busy_poller(a, "h15")
    older = await a.enqueue("h15", public_request(b"GET /older HTTP/1.1\r\n\r\n"))
    assert a.local_queued("h15") == 1  # nobody else polls (no reading yet): held
    await another_process_polls(raw, a, "h15")
    a._others.pop("h15", None)
    a._others_polling("h15")
    await asyncio.sleep(0.05)
    newer = await a.enqueue("h15", public_request(b"GET /newer HTTP/1.1\r\n\r\n"))
    assert a.local_queued("h15") == 1  # the newer one; the older one is on its way to Redis
    for _ in range(50):
        if await raw.llen(a._k("q", "h15")):
            break
        await asyncio.sleep(0.01)
    assert await raw.llen(a._k("q", "h15")) == 1
    for ticket in (older, newer):
        taken = await a.take("h15", 2, asyncio.Event())
        assert taken is not None and taken.request.request_id == ticket.request_id


async def test_held_requests_stay_held_while_no_other_process_polls(holding):
    """The shared queue would only bring them back here, later and at the cost of its round
    trips: held past LOCAL_QUEUE_SECONDS, in order, then taken here (RH-60)."""
    a, _, raw = holding
    await a.activate("h10", "alone")
    await busy_poller(a, "h10")
    tickets = [await a.enqueue("h10", public_request(b"GET /%d" % i)) for i in range(2)]
    await asyncio.sleep(0.8)  # more than twice the 0.3 s hold
    assert a.local_queued("h10") == 2 and await raw.llen(a._k("q", "h10")) == 0
    for ticket in tickets:
        taken = await a.take("h10", 1, asyncio.Event())
        assert taken is not None and taken.local
        assert taken.request.request_id == ticket.request_id


async def test_kept_requests_spill_once_another_process_polls(holding):
    """Kept while alone; a poller that starts waiting in another process gets them within
    about a second (the next reading of ``disp:<key>`` and the next look at the request)."""
    a, b, raw = holding
    await a.activate("h12", "joined")
    await busy_poller(a, "h12")
    ticket = await a.enqueue("h12", public_request(b"GET /kept"))
    await asyncio.sleep(0.6)
    assert a.local_queued("h12") == 1  # kept: nobody else polls
    await answered_elsewhere(holding, "h12", await waiting_poller(b, "h12"), ticket)


async def test_held_requests_go_to_pollers_while_the_dispatcher_blocks(holding):
    """A request of ours taken from the shared queue and still in flight does not keep the
    local pollers from held requests once the queue is empty: no wait for the dispatcher's
    blocking pop (BLOCK_SECONDS) or a spill."""
    a, _, raw = holding
    older = await one_spilled(holding, "h11", b"GET /spilled")
    await others_stop_polling(raw, a, "h11")
    first = await a.take("h11", 2, asyncio.Event())  # from the shared queue; left in flight
    assert first is not None and first.request.request_id == older.request_id
    poller = await waiting_poller(a, "h11")  # the queue is empty: the dispatcher blocks
    await asyncio.sleep(0.05)
    direct = await a.enqueue("h11", public_request(b"GET /direct"))  # handed to that poller
    assert (await asyncio.wait_for(poller, 1)).request.request_id == direct.request_id
    held = await a.enqueue("h11", public_request(b"GET /held"))
    assert a.local_queued("h11") == 1
    started = time.monotonic()
    taken = await a.take("h11", 2, asyncio.Event())
    assert taken is not None and taken.request.request_id == held.request_id
    assert time.monotonic() - started < 0.15


async def test_spilled_requests_are_not_passed_by_newer_held_ones(holding):
    """RH-60 under overload: once a held request spilled to the shared queue (another process
    polls the key), the local pollers take it before requests held after it (they would
    otherwise starve it while held requests keep coming), and then the held ones."""
    a, _, raw = holding
    older = await one_spilled(holding, "h8", b"GET /older HTTP/1.1\r\n\r\n")
    assert a.local_queued("h8") == 0 and await raw.llen(a._k("q", "h8")) == 1
    await others_stop_polling(raw, a, "h8")
    newer = await a.enqueue("h8", public_request(b"GET /newer HTTP/1.1\r\n\r\n"))
    assert a.local_queued("h8") == 1
    first = await a.take("h8", 2, asyncio.Event())
    assert first is not None and first.request.request_id == older.request_id
    await answer_here(a, "slot-h8-1", first, b"older")
    second = await a.take("h8", 2, asyncio.Event())  # the queue is empty: the held one now
    assert second is not None and second.request.request_id == newer.request_id
    await answer_here(a, "slot-h8-2", second, b"newer")
    assert (await asyncio.wait_for(older.reply, 1)).body == b"older"
    assert (await asyncio.wait_for(newer.reply, 1)).body == b"newer"


async def test_requests_queued_before_a_burst_are_not_passed_by_held_ones(holding):
    """RH-60 at the start of a burst: pollers that waited idle for more than the serving window
    take the first requests; the next ones go to the shared queue (no local poller asked
    lately), and once the pollers ask again newer requests are held for them. The queued ones
    come first: they used to wait, under sustained load, until no request was held any more
    (WebSocket GET c=50: requests answered only when the load stopped, after seconds)."""
    a, _, raw = holding
    await a.activate("h9", "label-h9")
    idle = await waiting_poller(a, "h9")
    await asyncio.sleep(a._backlog.serving_window + 0.1)  # the pollers wait, idle
    first = await a.enqueue("h9", public_request(b"GET /first HTTP/1.1\r\n\r\n"))
    assert (await asyncio.wait_for(idle, 1)).request.request_id == first.request_id
    older = await a.enqueue("h9", public_request(b"GET /older HTTP/1.1\r\n\r\n"))
    assert await raw.llen(a._k("q", "h9")) == 1  # nobody asked here lately: shared
    # A poller asks again; a request arriving in the same turn does not pass the queued one.
    asked: asyncio.Future[Taken] = asyncio.get_running_loop().create_future()
    assert a.poll_nowait("h9", asked) is None
    middle = a.enqueue_nowait("h9", public_request(b"GET /middle HTTP/1.1\r\n\r\n"))
    assert middle is not None and not asked.done()
    newer = await a.enqueue("h9", public_request(b"GET /newer HTTP/1.1\r\n\r\n"))
    assert a.local_queued("h9") == 2  # held: a poller asked here just now
    taken = await asyncio.wait_for(asked, 2)
    assert taken.request.request_id == older.request_id
    for ticket in (middle, newer):
        taken = await a.take("h9", 2, asyncio.Event())
        assert taken is not None and taken.request.request_id == ticket.request_id


async def test_a_waiting_poller_gets_another_process_queued_request_before_a_newer_local_one(
    holding,
):
    """RH-60 across processes: while this process's last pop found the shared queue in use,
    a request arriving here does not go straight to a local poller waiting for that queue,
    passing older requests another process queued there; it is held and served after them.
    (Behind a balancer, such passing gave two gateway processes twice the p99 of one.)"""
    a, b, raw = holding
    await a.activate("h13", "label-h13")
    queued = [
        await b.enqueue("h13", public_request(b"GET /b%d HTTP/1.1\r\n\r\n" % i)) for i in range(2)
    ]
    assert await raw.llen(a._k("q", "h13")) == 2  # b has no pollers: the shared queue
    taken = await a.take("h13", 2, asyncio.Event())
    assert taken is not None and taken.request.request_id == queued[0].request_id
    # The dispatcher may have left (no poller waited): a new poller and, in the same turn, a
    # request arriving here.
    asked: asyncio.Future[Taken] = asyncio.get_running_loop().create_future()
    assert a.poll_nowait("h13", asked) is None
    local = a.enqueue_nowait("h13", public_request(b"GET /a HTTP/1.1\r\n\r\n"))
    assert local is not None and not asked.done() and a.local_queued("h13") == 1
    taken = await asyncio.wait_for(asked, 2)
    assert taken.request.request_id == queued[1].request_id
    taken = await a.take("h13", 2, asyncio.Event())  # the queue is empty now: the held one
    assert taken is not None and taken.local and taken.request.request_id == local.request_id
    assert not a._queue_busy  # the empty pop ended it: requests go straight to pollers again
    poller = await waiting_poller(a, "h13")
    direct = a.enqueue_nowait("h13", public_request(b"GET /direct HTTP/1.1\r\n\r\n"))
    assert direct is not None and a.local_queued("h13") == 0
    assert (await asyncio.wait_for(poller, 1)).request.request_id == direct.request_id


async def test_take_nowait_serves_the_queue_first_then_held_requests(holding):
    """RH-60, RH-26: a pipeline's further requests come from the shared queue while it is in
    use (another process's, older), then, once it is found empty, from those held here."""
    a, b, raw = holding
    await a.activate("h16", "label-h16")
    queued = await b.enqueue("h16", public_request(b"GET /b HTTP/1.1\r\n\r\n"))
    busy = await a.take("h16", 2, asyncio.Event())  # b's request: the queue was in use
    assert busy is not None and busy.request.request_id == queued.request_id
    assert await a.bind("busy-h16", busy, 10)  # this poller is busy answering it now
    assert "h16" in a._queue_busy
    queued_too = await b.enqueue("h16", public_request(b"GET /b2 HTTP/1.1\r\n\r\n"))
    held = a.enqueue_nowait("h16", public_request(b"GET /a HTTP/1.1\r\n\r\n"))
    assert held is not None and a.local_queued("h16") == 1
    first = await a.take_nowait("h16")
    assert first is not None and first.request.request_id == queued_too.request_id
    second = await a.take_nowait("h16")  # the queue is empty now
    assert second is not None and second.local and second.request.request_id == held.request_id
    assert await a.take_nowait("h16") is None


async def test_pipeline_of_held_requests_ends_before_a_busy_position(holding):
    """RH-26, RH-30: held requests join a pipeline bound in one round trip; a position already
    bound elsewhere (another poller on the same URL) ends the batch, and the requests from there
    on go back to the queue, none lost."""
    a, _, raw = holding
    await a.activate("h9", "held9")
    await busy_poller(a, "h9")
    tickets = [await a.enqueue("h9", public_request(b"GET /%d" % i)) for i in range(4)]
    first = await a.take_nowait("h9", shared=False)
    assert first is not None and first.request.request_id == tickets[0].request_id
    await raw.set(a._k("slot", "p9.2"), "someone-else")
    batch = await longpoll._take_more_held(a, "h9", "p9")
    assert [t.request.request_id for t in batch] == [tickets[1].request_id]
    assert await raw.get(a._k("slot", "p9.3")) is None  # bound behind the gap: taken back
    rest = [await a.take("h9", 1, asyncio.Event()) for _ in range(2)]
    # Back at the head of the queue (their order there can race with the dispatcher's pop).
    assert {t.request.request_id for t in rest if t} == {t.request_id for t in tickets[2:]}


async def test_a_large_body_bound_for_longpoll_stays_out_of_redis_until_redelivered(pair):
    """RH-29: a 1 MiB request handed over locally and bound for long-poll writes no body to
    Redis; a re-delivery by another process gets it whole from the requestor's process, which
    lets it go once the requestor is answered."""
    a, b, raw = pair
    await a.activate("k20", "demo20")
    body = bytes(range(256)) * 4096
    envelope = b"POST /up HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    ticket, taken = await hand_over(a, a, "k20", public_request(envelope))
    assert await a.bind("slot-20", taken, 10)
    info = await raw.memory_usage(a._k("req", ticket.request_id))
    assert info is not None and info < 4096
    again = await b.redeliver("slot-20")
    assert again is not None and again.envelope == envelope
    assert await keys_of(raw, a, "envans") == []  # the answer was popped
    claimed = await b.claim("slot-20")
    assert claimed is not None
    await b.route_reply(claimed, Reply(200, [], b"stored"))
    assert (await asyncio.wait_for(ticket.reply, 2)).body == b"stored"
    a.forget(ticket)
    assert ticket.request_id not in a._envelopes


async def test_no_redelivery_elsewhere_once_the_requestor_left(pair):
    """RH-29, RH-47: the requestor's process answers an ask for a request whose requestor left
    with nothing, at once; the poll then waits for new requests instead."""
    a, b, _ = pair
    await a.activate("k21", "demo21")
    ticket, taken = await hand_over(a, a, "k21")
    assert await a.bind("slot-21", taken, 10)
    a.forget(ticket)  # the public client left
    started = time.monotonic()
    assert await b.redeliver("slot-21") is None
    assert time.monotonic() - started < redis_broker.ENVELOPE_WAIT / 2
    assert await a.redeliver("slot-21") is None


async def test_no_redelivery_elsewhere_when_the_requestors_process_is_gone(redis_url):
    """RH-29: nobody listens for the envelope of a request whose process stopped (its
    requestor's connection went with it): no re-delivery, and no wait for an answer."""
    async with broker_pair(redis_url) as (a, b, _):
        await a.activate("k22", "demo22")
        _, taken = await hand_over(a, a, "k22")
        assert await a.bind("slot-22", taken, 10)
        await a.close()
        started = time.monotonic()
        assert await b.redeliver("slot-22") is None
        assert time.monotonic() - started < redis_broker.ENVELOPE_WAIT / 2


async def test_an_envelope_kept_for_redelivery_goes_with_its_binding(pair):
    """A local binding undone (the poller left before its delivery was written) drops the
    envelope kept for it; put back, the request is stored whole for the shared queue (RH-30)."""
    a, _, raw = pair
    await a.activate("k23", "demo23")
    ticket, taken = await hand_over(a, a, "k23")
    assert await a.bind("slot-23", taken, 10)
    assert a._envelopes == {ticket.request_id: ENVELOPE}
    await a.unbind("slot-23", taken)
    assert a._envelopes == {}
    await a.put_back(taken)
    assert await raw.hget(a._k("req", ticket.request_id), "env") == ENVELOPE
