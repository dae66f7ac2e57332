"""``waiting.wait_either`` and ``settle_by``: a future, unless a flag is set first, or a timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from reversehttp_gateway.waiting import Flag, settle_by, wait_either

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("make_flag", [Flag, asyncio.Event])
async def test_returns_when_the_future_is_done(make_flag):
    future = asyncio.get_running_loop().create_future()
    flag = make_flag()
    asyncio.get_running_loop().call_later(0.01, future.set_result, 7)
    await asyncio.wait_for(wait_either(future, flag, 5), 1)
    assert future.result() == 7 and not flag.is_set()


@pytest.mark.parametrize("make_flag", [Flag, asyncio.Event])
async def test_returns_when_the_flag_is_set_and_leaves_the_future_alone(make_flag):
    future = asyncio.get_running_loop().create_future()
    flag = make_flag()
    asyncio.get_running_loop().call_later(0.01, flag.set)
    await asyncio.wait_for(wait_either(future, flag, 5), 1)
    assert not future.done() and not future.cancelled()


@pytest.mark.parametrize("make_flag", [Flag, asyncio.Event])
async def test_returns_after_the_timeout(make_flag):
    future = asyncio.get_running_loop().create_future()
    started = time.monotonic()
    await wait_either(future, make_flag(), 0.05)
    assert 0.04 < time.monotonic() - started < 1 and not future.done()


async def test_no_callbacks_are_left_behind():
    """Thousands of waits on one connection's flag must not pile up callbacks."""
    flag = Flag()
    for _ in range(100):
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        await wait_either(future, flag, 1)  # done already: returns at once
        pending = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(pending.set_result, None)
        await wait_either(pending, flag, 1)
    waiter = asyncio.ensure_future(wait_either(asyncio.get_running_loop().create_future(), flag))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert flag._callbacks == []


async def test_flag_is_still_an_event():
    flag = Flag()
    waiter = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    flag.set()
    flag.set()  # twice: callbacks run once
    assert await asyncio.wait_for(waiter, 1) is True and flag.is_set()


@pytest.mark.parametrize("make_flag", [Flag, asyncio.Event])
async def test_settle_by_gives_the_result_or_resolves_the_future_with_none(make_flag):
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    loop.call_later(0.01, future.set_result, 7)
    await asyncio.wait_for(settle_by(future, make_flag(), 5), 1)
    assert future.result() == 7
    for flag, timeout in ((make_flag(), 0.02), (make_flag(), None)):
        future = loop.create_future()
        if timeout is None:
            loop.call_later(0.01, flag.set)
        await asyncio.wait_for(settle_by(future, flag, timeout), 1)
        assert future.done() and future.result() is None  # passed by whoever would complete it
    already = make_flag()
    already.set()
    future = loop.create_future()
    await settle_by(future, already, 5)
    assert future.result() is None


async def test_settle_by_wakes_one_turn_after_the_future_and_leaves_no_callbacks():
    """The task resumes in the turn after ``set_result`` (wait_either takes two)."""
    loop = asyncio.get_running_loop()
    future, flag = loop.create_future(), Flag()
    order: list[str] = []

    async def waiter() -> None:
        await settle_by(future, flag, 5)
        order.append("woken")

    task = asyncio.ensure_future(waiter())
    await asyncio.sleep(0)
    future.set_result(RuntimeError("handed over"))
    loop.call_soon(order.append, "next turn")
    await task
    await asyncio.sleep(0)
    assert order == ["woken", "next turn"]  # wait_either: ["next turn", "woken"]
    assert flag._callbacks == []
    failed = loop.create_future()
    loop.call_soon(failed.set_exception, LookupError("gone"))
    await settle_by(failed, Flag(), 5)
    with pytest.raises(LookupError):
        failed.result()
