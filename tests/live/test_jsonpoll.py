"""JSON long-poll (CJ-01..CJ-08) against a live gateway, mixed with message/http pollers."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from ..rh import envelope, register, unique_label

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=15) as c:
        yield c


async def test_event_reply_on_next_poll_and_empty_timeout(gateway, client):
    """CJ-01..CJ-04, CJ-06: event object, {} on timeout, the reply rides on the next poll."""
    reg = await register(client, gateway.service_url, unique_label())
    events = reg.private + "/json"
    empty = await client.post(events)
    assert empty.status_code == 200 and empty.json() == {}  # CJ-03
    poll = asyncio.ensure_future(client.post(events))
    await asyncio.sleep(0.2)
    public = asyncio.ensure_future(
        client.post(reg.public + "p?q=1", content=b"hi", headers={"X-A": "1", "x-a": "2"})
    )
    event = (await poll).json()
    label = reg.public.rstrip("/").rsplit("/", 1)[1]
    assert event["method"] == "POST"
    assert event["request-uri"] == f"/{label}/p?q=1"
    assert event["http-version"] == "HTTP/1.1"
    assert ["X-A", "1"] in event["headers"] and ["X-A", "2"] in event["headers"]
    assert event["body"] == "hi" and event["body-encoding"] == "utf-8"
    assert event["requesting-client"].startswith("127.0.0.1:")
    reply = {
        "message-id": event["message-id"],
        "status": 201,
        "reason": "Created",
        "headers": [["Content-Type", "text/plain"], ["Set-Cookie", "a=1"], ["Set-Cookie", "b=2"]],
        "body": "made",
    }
    next_poll = asyncio.ensure_future(client.post(events, json=reply))
    response = await public
    assert response.status_code == 201
    assert response.text == "made"
    assert response.headers.get_list("Set-Cookie") == ["a=1", "b=2"]
    assert (await next_poll).json() == {}
    # CJ-04: a repeated (already answered) message-id is ignored; the poll proceeds.
    assert (await client.post(events, json=reply)).json() == {}


async def test_binary_bodies_use_base64(gateway, client):
    """CJ-07: non-UTF-8 bodies travel as base64 both ways."""
    reg = await register(client, gateway.service_url, unique_label())
    events = reg.private + "/json"
    public = asyncio.ensure_future(client.put(reg.public, content=b"\xff\x00\xfe"))
    event = (await client.post(events)).json()
    assert event["body-encoding"] == "base64"
    assert base64.b64decode(event["body"]) == b"\xff\x00\xfe"
    reply = {
        "message-id": event["message-id"],
        "status": 200,
        "body-encoding": "base64",
        "body": base64.b64encode(b"\x00\x01").decode(),
    }
    asyncio.ensure_future(client.post(events, json=reply))
    response = await public
    assert response.content == b"\x00\x01"
    assert response.headers["Content-Length"] == "2"


async def test_invalid_json_reply_is_400_and_requestor_gets_502(gateway, client):
    """CJ-05: strict JSON; an invalid reply is 400 to the app and 502 to the requestor."""
    reg = await register(client, gateway.service_url, unique_label())
    events = reg.private + "/json"
    assert (await client.post(events, content=b"{'single': 'quotes'}")).status_code == 400
    public = asyncio.ensure_future(client.get(reg.public))
    event = (await client.post(events)).json()
    bad = await client.post(events, json={"message-id": event["message-id"], "status": 99})
    assert bad.status_code == 400
    assert (await public).status_code == 502


async def test_json_and_message_http_pollers_share_one_queue(gateway, client):
    """Transports drain the same per-name queue; each request goes to exactly one poller."""
    reg = await register(client, gateway.service_url, unique_label())
    json_poll = asyncio.ensure_future(client.post(reg.private + "/json"))
    http_poll = asyncio.ensure_future(client.get(reg.first))
    await asyncio.sleep(0.3)
    publics = [asyncio.ensure_future(client.get(reg.public + f"m{i}")) for i in range(2)]
    event = (await json_poll).json()
    delivered = await http_poll
    assert delivered.status_code == 200
    assert {event["request-uri"][-2:], delivered.content.split(b" ")[1][-2:].decode()} == {
        "m0",
        "m1",
    }
    asyncio.ensure_future(
        client.post(
            reg.private + "/json",
            json={"message-id": event["message-id"], "status": 200, "body": "json"},
        )
    )
    await client.post(reg.first, content=envelope(body=b"http"))
    assert sorted([(await p).text for p in publics]) == ["http", "json"]


async def test_json_poll_on_deleted_registration_is_410(gateway, client):
    reg = await register(client, gateway.service_url, unique_label())
    poll = asyncio.ensure_future(client.post(reg.private + "/json"))
    await asyncio.sleep(0.3)
    await client.delete(reg.private)
    assert (await poll).status_code == 410
    assert (await client.get(reg.private + "/json")).status_code in (404, 405)


async def test_json_poller_dying_after_taking_a_request(gateway, client):
    """The poller took the request and vanished: the requestor gets the no-reply 504 at T2,
    and the request is not handed to another poller (at most once after handover)."""
    reg = await register(client, gateway.service_url, unique_label())
    public = asyncio.ensure_future(client.get(reg.public + "orphan"))
    event = (await client.post(reg.private + "/json")).json()
    assert event["request-uri"].endswith("/orphan")
    other = asyncio.ensure_future(client.post(reg.private + "/json"))
    response = await public
    assert response.status_code == 504
    assert "Timeout waiting for the response" in response.text
    assert (await other).json() == {}
