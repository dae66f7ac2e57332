"""The Redis broker's pipelined connection (queue/redis_link.py), against real Redis servers."""

from __future__ import annotations

import asyncio
import shutil
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from reversehttp_gateway.queue.redis_link import RedisLink, pack

from .gateway_process import free_port
from .live.test_redis_outage import start_redis


def test_commands_are_packed_as_resp_arrays() -> None:
    assert pack("SET", b"k", 5, 1.5) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n$3\r\n1.5\r\n"


@pytest.mark.asyncio
async def test_replies_reach_their_callers_in_order(redis_url):
    link = RedisLink(redis_url)
    key = f"link-{uuid.uuid4().hex}"
    try:
        counts = await asyncio.gather(*(link.call("INCR", key) for _ in range(50)))
        assert counts == list(range(1, 51))  # written in one turn, answered in order
        assert await link.call("GET", key) == b"50"
        assert await link.call("GET", key + "-missing") is None
        with pytest.raises(ResponseError):
            await link.call("LPUSH", key, "x")  # wrong type: the error goes to its caller only
        assert await link.call("EVAL", "return {KEYS[1], ARGV[1]}", 1, key, 7) == [
            key.encode(),
            b"7",
        ]
        assert await link.transaction([("SET", key, "a"), ("GET", key)]) == [b"OK", b"a"]
    finally:
        await link.call("DEL", key)
        link.close()


@pytest.mark.asyncio
async def test_the_selected_database_is_used(redis_url):
    other = redis_url.rsplit("/", 1)[0] + "/14"
    key = f"link-db-{uuid.uuid4().hex}"
    link, link14 = RedisLink(redis_url), RedisLink(other)
    try:
        await link14.call("SET", key, "in 14")
        assert await link.call("GET", key) is None
        assert await link14.call("GET", key) == b"in 14"
    finally:
        await link14.call("DEL", key)
        link.close()
        link14.close()


@pytest.mark.asyncio
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
async def test_a_lost_connection_fails_its_commands_and_the_next_reconnects(tmp_path):
    port = free_port()
    server = start_redis(port, tmp_path)
    link = RedisLink(f"redis://127.0.0.1:{port}/0")
    try:
        assert await link.call("SET", "k", "v") == b"OK"
        server.terminate()  # the Redis we started, by PID
        server.wait(10)
        with pytest.raises(RedisConnectionError):
            await link.call("GET", "k")
        with pytest.raises(RedisConnectionError):  # still down: connecting fails at once
            await link.call("GET", "k")
        server = start_redis(port, tmp_path)
        assert await asyncio.wait_for(link.call("GET", "k"), 5) is None  # a new, empty Redis
    finally:
        link.close()
        server.terminate()
        server.wait(10)
