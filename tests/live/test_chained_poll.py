"""Chained polls (docs/protocol.md, "Chained polls"): a reply POST naming the next Request URL in
``Reversehttp-Poll`` is answered as a GET of that URL would be, against a live gateway.

Every test runs once per broker (``redis``, ``memory``), under the suite's server (uvicorn, or
Daphne in the second run of scripts/test.sh).
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from ..rh import envelope, register, unique_label
from .test_metrics import AUTH, TOKEN, parse, value

pytestmark = pytest.mark.asyncio

CHAIN = "Reversehttp-Poll"


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=15) as c:
        yield c


def next_url(response: httpx.Response) -> str:
    match = re.fullmatch(r'<([^>]+)>; rel="next"', response.headers["Link"])
    assert match is not None, response.headers["Link"]
    return match[1]


async def delivered(client: httpx.AsyncClient, reg, path: str):  # noqa: ANN001, ANN201
    """A public GET of ``path`` and the poll that delivered it."""
    public = asyncio.ensure_future(client.get(reg.public + path))
    poll = await client.get(reg.first)
    assert poll.status_code == 200
    return public, poll


async def one_delivered_one_waiting(  # noqa: ANN201
    client: httpx.AsyncClient, service_url: str, *paths: str
):
    """A registration whose poller holds the delivery of ``first`` while ``second`` waits:
    the registration, that poll, and both public requests."""
    first, second = paths
    reg = await register(client, service_url, unique_label())
    first_public, poll = await delivered(client, reg, first)
    second_public = asyncio.ensure_future(client.get(reg.public + second))
    await asyncio.sleep(0.2)
    return reg, poll, first_public, second_public


async def test_an_accepted_reply_is_answered_with_the_next_request(gateway, client):
    """The chained answer is a poll's 200 (RH-21, RH-28): the first requestor has its reply,
    the second request comes back on the POST, and the chain goes on from its rel=next."""
    reg = await register(client, gateway.service_url, unique_label())
    first_public, poll = await delivered(client, reg, "one")
    nxt = next_url(poll)
    second_public = asyncio.ensure_future(client.get(reg.public + "two"))
    await asyncio.sleep(0.2)
    chained = await client.post(
        reg.first,
        content=envelope(body=b"1", headers={"Content-Length": "1"}),
        headers={CHAIN: nxt},
    )
    assert (await first_public).text == "1"
    assert chained.status_code == 200
    assert chained.headers["Content-Type"] == "message/http"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", chained.headers["Requesting-Client"])
    assert chained.content.startswith(b"GET /") and b"/two HTTP/1.1\r\n" in chained.content
    after = next_url(chained)
    assert after not in (reg.first, nxt)
    # The chained delivery is answered like any other, on the URL it was delivered on.
    final = await client.post(nxt, content=envelope(body=b"2", headers={"Content-Length": "1"}))
    assert final.status_code == 202
    assert (await second_public).text == "2"


async def test_nothing_arrives_204_with_the_same_url_next(gateway, client):
    """RH-22 for a chained poll: after POLL_TIMEOUT, 204 naming the polled URL as next."""
    reg = await register(client, gateway.service_url, unique_label())
    public, poll = await delivered(client, reg, "x")
    nxt = next_url(poll)
    chained = await client.post(reg.first, content=envelope(body=b"ok"), headers={CHAIN: nxt})
    assert chained.status_code == 204
    assert next_url(chained) == nxt
    assert (await public).text == "ok"
    # The URL is still the one to poll.
    later = asyncio.ensure_future(client.get(reg.public + "later"))
    again = await client.get(nxt)
    assert again.status_code == 200 and b"/later HTTP/1.1" in again.content
    await client.post(nxt, content=envelope(body=b"l"))
    assert (await later).text == "l"


async def test_a_chained_delivery_whose_answer_was_lost_is_delivered_again(gateway, client):
    """RH-29: the POST's 200 never reached the application; it GETs the next URL and gets
    the same request (after a retried POST of its reply is 404, RH-47)."""
    reg, poll, first_public, second_public = await one_delivered_one_waiting(
        client, gateway.service_url, "a", "b"
    )
    nxt = next_url(poll)
    chained = await client.post(reg.first, content=envelope(body=b"A"), headers={CHAIN: nxt})
    assert chained.status_code == 200
    retried = await client.post(reg.first, content=envelope(body=b"A"), headers={CHAIN: nxt})
    assert retried.status_code == 404
    again = await client.get(nxt)
    assert again.status_code == 200 and again.content == chained.content
    await client.post(nxt, content=envelope(body=b"B"))
    assert [(await first_public).text, (await second_public).text] == ["A", "B"]


@pytest.mark.parametrize(
    "value",
    [
        "not a url at all",
        "http://127.0.0.1/reversehttp/r/someoneelse/secret/slot",
        "/reversehttp/r/{label}/wrongsecret/slot",
        "{private}/json",
        "{private}/ws",
        "{private}",
        "\u00e9",
    ],
)
async def test_a_bad_poll_header_is_400_and_the_reply_stays_open(gateway, client, value):
    """Bad input: 400 before anything is read; the delivered request still waits for a reply,
    which a correct POST then gives."""
    reg = await register(client, gateway.service_url, unique_label())
    public, poll = await delivered(client, reg, "p")
    label = reg.public.rstrip("/").rsplit("/", 1)[1]
    header = value.format(label=label, private=reg.private).encode("utf-8")
    refused = await client.post(reg.first, content=envelope(body=b"no"), headers={CHAIN: header})
    assert refused.status_code == 400
    assert refused.text.startswith("400 Reversehttp-Poll must be a Request URL")
    assert not public.done()
    assert (await client.post(reg.first, content=envelope(body=b"yes"))).status_code == 202
    assert (await public).text == "yes"


async def test_a_refused_chain_is_answered_202(gateway, client):
    """A next URL the gateway never issued (RH-23), or a registration deleted while the
    chained poll waits (RH-24): the reply was accepted, so 202, as without the header."""
    reg = await register(client, gateway.service_url, unique_label())
    public, poll = await delivered(client, reg, "f")
    forged = reg.private + "/AAAAAAAAAAAAAAAAAAAAAA"
    answer = await client.post(reg.first, content=envelope(body=b"f"), headers={CHAIN: forged})
    assert answer.status_code == 202
    assert (await public).text == "f"

    public, poll = await delivered(client, reg, "g")
    chained = asyncio.ensure_future(
        client.post(poll.url, content=envelope(body=b"g"), headers={CHAIN: next_url(poll)})
    )
    assert (await public).text == "g"
    await asyncio.sleep(0.3)
    assert (await client.delete(reg.private)).status_code == 204
    assert (await chained).status_code == 202


async def test_duplicate_and_bad_replies_are_refused_without_polling(gateway, client):
    """RH-47 and RH-48 first: a chain only follows an accepted reply."""
    reg = await register(client, gateway.service_url, unique_label())
    public, poll = await delivered(client, reg, "d")
    nxt = next_url(poll)
    bad = await client.post(reg.first, content=b"garbage", headers={CHAIN: nxt})
    assert bad.status_code == 400
    assert (await public).status_code == 502
    duplicate = await client.post(reg.first, content=envelope(), headers={CHAIN: nxt})
    assert duplicate.status_code == 404


async def test_a_chained_pipeline_poll(gateway, client):
    """RH-26: the POST's Accept decides as a GET's would; queued requests come as a batch."""
    reg = await register(client, gateway.service_url, unique_label())
    first_public, poll = await delivered(client, reg, "s")
    publics = []
    for i in range(3):
        publics.append(asyncio.ensure_future(client.get(reg.public + f"q{i}")))
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    nxt = next_url(poll)
    batch = await client.post(
        reg.first,
        content=envelope(body=b"s"),
        headers={CHAIN: nxt, "Accept": "application/http"},
    )
    assert (await first_public).text == "s"
    assert batch.status_code == 200
    assert batch.headers["Content-Type"] == "application/http"
    assert batch.content.count(b" HTTP/1.1\r\n") == 3
    pipeline = b"".join(
        envelope(headers={"Content-Length": "1"}, body=str(i).encode()) for i in range(3)
    )
    assert (await client.post(nxt, content=pipeline)).status_code == 202
    assert [(await p).text for p in publics] == ["0", "1", "2"]


async def test_chained_polls_are_counted(start_gateway, client):
    """/metrics: reversehttp_gateway_chained_polls_total counts the answers given as polls."""
    gateway = start_gateway("redis", METRICS_TOKEN=TOKEN)

    async def count() -> float:
        text = (await client.get(gateway.url + "/metrics", headers=AUTH)).text
        return value(parse(text), "reversehttp_gateway_chained_polls_total")

    before = await count()
    reg = await register(client, gateway.service_url, unique_label())
    public, poll = await delivered(client, reg, "m")
    second = asyncio.ensure_future(client.get(reg.public + "n"))
    await asyncio.sleep(0.2)
    chained = await client.post(
        reg.first, content=envelope(body=b"m"), headers={CHAIN: next_url(poll)}
    )
    assert chained.status_code == 200
    await client.post(next_url(poll), content=envelope(body=b"n"))
    assert [(await public).text, (await second).text] == ["m", "n"]
    assert await count() == before + 1


async def test_a_reply_may_chain_to_its_own_url(gateway, client):
    """Polling the reply's own URL again is allowed (RH-22's reuse): the answered request is
    not delivered again, the next one is."""
    reg = await register(client, gateway.service_url, unique_label())
    first_public, poll = await delivered(client, reg, "same1")
    second_public = asyncio.ensure_future(client.get(reg.public + "same2"))
    await asyncio.sleep(0.2)
    chained = await client.post(reg.first, content=envelope(body=b"1"), headers={CHAIN: reg.first})
    assert (await first_public).text == "1"
    assert chained.status_code == 200 and b"/same2 HTTP/1.1\r\n" in chained.content
    assert (await client.post(reg.first, content=envelope(body=b"2"))).status_code == 202
    assert (await second_public).text == "2"


async def test_requests_held_for_the_busy_poller_are_delivered_once(start_gateway, client):
    """Requests held in the gateway process while its only poller is busy (the local backlog;
    LOCAL_QUEUE_SECONDS keeps them there through the test's pauses): a chained answer delivers
    them, a refused duplicate reply leaves them for the next poll, and none is lost or
    delivered twice (RH-29, RH-30, RH-47)."""
    gateway = start_gateway("redis", LOCAL_QUEUE_SECONDS="1.2")
    reg, poll, first_public, second_public = await one_delivered_one_waiting(
        client, gateway.service_url, "one", "two"
    )
    nxt = next_url(poll)
    chained = await client.post(reg.first, content=envelope(body=b"1"), headers={CHAIN: nxt})
    assert chained.status_code == 200 and b"/two HTTP/1.1\r\n" in chained.content
    after = next_url(chained)
    third_public = asyncio.ensure_future(client.get(reg.public + "three"))
    await asyncio.sleep(0.2)
    duplicate = await client.post(reg.first, content=envelope(body=b"1"), headers={CHAIN: after})
    assert duplicate.status_code == 404
    again = await client.post(nxt, content=envelope(body=b"2"), headers={CHAIN: after})
    assert again.status_code == 200 and b"/three HTTP/1.1\r\n" in again.content
    assert (await client.post(after, content=envelope(body=b"3"))).status_code == 202
    texts = [(await p).text for p in (first_public, second_public, third_public)]
    assert texts == ["1", "2", "3"]
    # A batch: held requests bound position by position (RH-26).
    public, poll = await delivered(client, reg, "b")
    held = [asyncio.ensure_future(client.get(reg.public + f"h{i}")) for i in range(3)]
    await asyncio.sleep(0.3)
    nxt = next_url(poll)
    batch = await client.post(
        poll.url, content=envelope(body=b"b"), headers={CHAIN: nxt, "Accept": "application/http"}
    )
    assert batch.status_code == 200 and batch.content.count(b" HTTP/1.1\r\n") == 3
    paths = re.findall(rb"GET /\S*(h\d) HTTP/1\.1", batch.content)
    pipeline = b"".join(envelope(headers={"Content-Length": "2"}, body=p) for p in paths)
    assert (await client.post(nxt, content=pipeline)).status_code == 202
    assert (await public).text == "b"
    assert [(await p).text for p in held] == ["h0", "h1", "h2"]  # each its own response
