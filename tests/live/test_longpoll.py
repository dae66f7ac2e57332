"""ReverseHttp long-poll conformance against a live gateway (Daphne on loopback, real Redis).

Every test runs once per broker: ``redis`` (shared, multi-process) and ``memory`` (embedded).
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from ..rh import envelope, register, unique_label

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=15) as c:
        yield c


async def test_register_201_then_204_with_links_and_location(gateway, client):
    """RH-01, RH-10, RH-09, RH-11, RH-12: one Link header, quoted rels, absolute URLs."""
    name = unique_label()
    first = await client.post(gateway.service_url, data={"name": name, "token": "s3cret"})
    assert first.status_code == 201
    raw_names = [n for n, _ in first.headers.raw]
    assert raw_names.count(b"Link") == 1  # spelled exactly "Link" (Java client)
    link = first.headers["Link"]
    assert re.fullmatch(
        r'<http://127\.0\.0\.1:\d+/reversehttp/r/[^>]+>; rel="first", '
        r"<http://127\.0\.0\.1:\d+/" + name + r'/>; rel="related"',
        link,
    )
    assert first.headers["Location"].startswith(gateway.service_url + f"/r/{name}/")
    assert first.content == b""
    again = await client.post(gateway.service_url, data={"name": name, "token": "s3cret"})
    assert again.status_code == 204
    assert again.headers["Location"] == first.headers["Location"]
    assert 'rel="first"' in again.headers["Link"] and 'rel="related"' in again.headers["Link"]
    other = await client.post(gateway.service_url, data={"name": name, "token": "other"})
    assert other.status_code == 403
    assert other.text.startswith("403 Bad token")


async def test_registration_form_in_any_content_type_and_query(gateway, client):
    """RH-02: the body is parsed as a form whatever its type; query params are merged."""
    name = unique_label()
    response = await client.post(
        gateway.service_url + f"?lease=40&name=ignored{name}",
        content=f"name={name}&token=-".encode(),
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )
    assert response.status_code == 201
    assert f"/{name}/" in response.headers["Link"]


async def test_round_trip(gateway, client):
    """RH-21, RH-27, RH-28, RH-35, RH-46, RH-49: request delivered, reply relayed."""
    reg = await register(client, gateway.service_url, unique_label())
    poll = asyncio.ensure_future(client.get(reg.first))
    await asyncio.sleep(0.2)
    public = asyncio.ensure_future(client.get(reg.public + "a%2Fb?x=%20&y", headers={"X-Dup": "1"}))
    delivered = await poll
    assert delivered.status_code == 200
    assert delivered.headers["Content-Type"] == "message/http"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", delivered.headers["Requesting-Client"])
    assert 'rel="next"' in delivered.headers["Link"]
    label = reg.public.rstrip("/").rsplit("/", 1)[1]
    request_line, _, rest = delivered.content.partition(b"\r\n")
    assert request_line == f"GET /{label}/a%2Fb?x=%20&y HTTP/1.1".encode()
    assert b"\r\nX-Dup: 1\r\n" in b"\r\n" + rest
    assert delivered.content.endswith(b"\r\n\r\n")
    # A Python BaseHTTPServer-style reply: HTTP/1.0, no Content-Length, body to the end.
    answer = await client.post(
        reg.first,
        content=b"HTTP/1.0 201 Made\r\nServer: BaseHTTP/0.3\r\nContent-type: text/plain\r\n"
        b"X-App: yes\r\n\r\nThis is response #0",
        headers={"Content-Type": "message/http"},
    )
    assert answer.status_code == 202
    response = await public
    assert response.status_code == 201
    assert response.content == b"This is response #0"
    assert response.headers["X-App"] == "yes"
    assert response.headers["Content-Length"] == "19"


async def test_204_then_same_url_is_still_valid(gateway, client):
    """RH-22: the 204 carries rel=next; re-GET of the same URL (what real clients do) works."""
    reg = await register(client, gateway.service_url, unique_label())
    empty = await client.get(reg.first)
    assert empty.status_code == 204
    assert empty.headers["Link"] == f'<{reg.first}>; rel="next"'
    poll = asyncio.ensure_future(client.get(reg.first))
    await asyncio.sleep(0.2)
    public = asyncio.ensure_future(client.get(reg.public))
    delivered = await poll
    assert delivered.status_code == 200
    await client.post(reg.first, content=envelope(body=b"ok", headers={"Content-Length": "2"}))
    assert (await public).content == b"ok"


async def test_re_get_of_unanswered_url_redelivers(gateway, client):
    """RH-29: the 200 was lost in transit; a re-GET delivers the same request again."""
    reg = await register(client, gateway.service_url, unique_label())
    public = asyncio.ensure_future(client.post(reg.public + "x", content=b"payload"))
    first = await client.get(reg.first)
    second = await client.get(reg.first)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert first.content.endswith(b"\r\n\r\npayload")
    assert b"Content-Length: 7\r\n" in first.content
    await client.post(reg.first, content=envelope(body=b"done"))
    assert (await public).content == b"done"


async def test_unknown_request_url_is_404(gateway, client):
    """RH-23: a Request URL the gateway never issued is refused."""
    reg = await register(client, gateway.service_url, unique_label())
    forged = reg.first[:-4] + ("AAAA" if not reg.first.endswith("AAAA") else "BBBB")
    assert (await client.get(forged)).status_code == 404
    wrong_secret = reg.first.replace(reg.private, reg.private[:-3] + "xyz")
    assert (await client.get(wrong_secret)).status_code == 404


async def test_duplicate_and_unsolicited_replies_are_404(gateway, client):
    """RH-47: a reply to an already answered, or never delivered, Request URL is 404."""
    reg = await register(client, gateway.service_url, unique_label())
    assert (await client.post(reg.first, content=envelope())).status_code == 404
    public = asyncio.ensure_future(client.get(reg.public))
    await client.get(reg.first)
    assert (await client.post(reg.first, content=envelope(body=b"1"))).status_code == 202
    assert (await client.post(reg.first, content=envelope(body=b"2"))).status_code == 404
    assert (await public).content == b"1"


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"garbage",
        b"HTTP/1.1 abc\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
)
async def test_invalid_reply_is_400_and_requestor_gets_502(gateway, client, bad):
    """RH-48, RH-50: bad replies are refused to the app and reported to the requestor."""
    reg = await register(client, gateway.service_url, unique_label())
    public = asyncio.ensure_future(client.get(reg.public))
    await client.get(reg.first)
    answer = await client.post(reg.first, content=bad)
    assert answer.status_code == 400
    assert answer.text.startswith("400 ")
    response = await public
    assert response.status_code == 502
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"


async def test_unknown_label_is_404(gateway, client):
    """RH-62."""
    response = await client.get(f"{gateway.url}/{unique_label('nobody')}/")
    assert response.status_code == 404
    assert response.text.startswith("404 ")


async def test_no_application_times_out_with_its_own_504(gateway, client):
    """RH-64: nobody polls -> 504 "no application" after T1, not after T2."""
    reg = await register(client, gateway.service_url, unique_label())
    await asyncio.sleep(1.6)  # the registration's own "seen" grace (T1) has passed
    started = asyncio.get_running_loop().time()
    response = await client.get(reg.public)
    elapsed = asyncio.get_running_loop().time() - started
    assert response.status_code == 504
    assert "No application" in response.text
    assert elapsed < 3.5


async def test_silent_application_times_out_with_a_different_504(gateway, client):
    """RH-65: delivered but never answered -> 504 after T2, with other wording."""
    reg = await register(client, gateway.service_url, unique_label())
    public = asyncio.ensure_future(client.get(reg.public))
    assert (await client.get(reg.first)).status_code == 200
    response = await public
    assert response.status_code == 504
    assert "Timeout waiting for the response" in response.text
    # The late reply is refused (RH-47).
    assert (await client.post(reg.first, content=envelope())).status_code == 404


async def test_fifo_order_of_queued_requests(gateway, client):
    """RH-60, RH-71: requests queued before any poll are delivered in arrival order."""
    reg = await register(client, gateway.service_url, unique_label())
    publics = []
    for i in range(4):
        publics.append(asyncio.ensure_future(client.get(reg.public + f"n{i}")))
        await asyncio.sleep(0.05)
    url = reg.first
    for i in range(4):
        delivered = await client.get(url)
        assert delivered.content.split(b" ")[1].endswith(f"/n{i}".encode())
        await client.post(url, content=envelope(body=str(i).encode()))
        url = httpx.Headers(delivered.headers)["Link"].split(">")[0][1:]
    assert [(await p).text for p in publics] == ["0", "1", "2", "3"]


async def test_waiting_pollers_share_the_work(gateway, client):
    """RH-70: with two pollers waiting, two requests go one to each."""
    reg = await register(client, gateway.service_url, unique_label())
    second_url = (
        await client.post(
            gateway.service_url, data={"name": reg.public.split("/")[-2], "token": "secret"}
        )
    ).headers["Link"]
    second_first = second_url.split(">")[0][1:]
    polls = [
        asyncio.ensure_future(client.get(reg.first)),
        asyncio.ensure_future(client.get(second_first)),
    ]
    await asyncio.sleep(0.3)
    publics = [asyncio.ensure_future(client.get(reg.public + f"p{i}")) for i in range(2)]
    results = await asyncio.gather(*polls)
    assert [r.status_code for r in results] == [200, 200]
    targets = sorted(r.content.split(b" ")[1] for r in results)
    assert targets[0].endswith(b"/p0") and targets[1].endswith(b"/p1")
    for url in (reg.first, second_first):
        await client.post(url, content=envelope(body=b"x"))
    assert [(await p).status_code for p in publics] == [200, 200]


async def test_poller_that_left_does_not_lose_the_request(gateway, client):
    """RH-30: a poller that disconnected before handover; the next poller gets the request."""
    reg = await register(client, gateway.service_url, unique_label())
    with pytest.raises(httpx.ReadTimeout):
        await client.get(reg.first, timeout=0.3)
    await asyncio.sleep(0.2)
    public = asyncio.ensure_future(client.get(reg.public + "kept"))
    delivered = await client.get(reg.first)
    assert delivered.status_code == 200
    assert b"/kept HTTP/1.1" in delivered.content
    await client.post(reg.first, content=envelope(body=b"kept"))
    assert (await public).text == "kept"


async def test_delete_private_url_gives_410_to_waiting_pollers(gateway, client):
    """RH-24, RH-83: DELETE -> 204; waiting pollers get 410; a second DELETE is 404."""
    reg = await register(client, gateway.service_url, unique_label())
    poll = asyncio.ensure_future(client.get(reg.first))
    await asyncio.sleep(0.3)
    assert (await client.delete(reg.private)).status_code == 204
    gone = await poll
    assert gone.status_code == 410
    assert (await client.delete(reg.private)).status_code == 404
    assert (await client.get(reg.public)).status_code == 404


async def test_private_url_get_and_put(gateway, client):
    """RH-81: state as a form with name and lease; RH-82: PUT changes lease and token."""
    name = unique_label()
    reg = await register(client, gateway.service_url, name, lease="45")
    state = await client.get(reg.private)
    assert state.status_code == 200
    assert state.headers["Content-Type"] == "application/x-www-form-urlencoded"
    fields = dict(httpx.QueryParams(state.text))
    assert fields["name"] == name and fields["lease"] == "45"
    as_json = await client.get(reg.private, headers={"Accept": "application/json"})
    assert as_json.json()["name"] == name
    html = await client.get(reg.private, headers={"Accept": "text/html"})
    assert "<table" in html.text and name in html.text
    put = await client.put(reg.private, data={"lease": "120", "token": "new", "name": "zzz"})
    assert put.status_code == 204
    fields = dict(httpx.QueryParams((await client.get(reg.private)).text))
    assert fields["name"] == name and fields["lease"] == "120"
    assert (
        await client.post(gateway.service_url, data={"name": name, "token": "new"})
    ).status_code == 204


async def test_head_request_gets_no_body(gateway, client):
    """RH-51: the reply to a HEAD request carries no body downstream."""
    reg = await register(client, gateway.service_url, unique_label())
    public = asyncio.ensure_future(client.head(reg.public))
    delivered = await client.get(reg.first)
    assert delivered.content.startswith(b"HEAD ")
    await client.post(reg.first, content=envelope(headers={"Content-Length": "5"}))
    response = await public
    assert response.status_code == 200
    assert response.content == b""


async def test_links_ignore_a_spoofed_host(gateway, client):
    """RH-94: issued URLs come from configuration, never from the Host header."""
    response = await client.post(
        gateway.service_url, data={"name": unique_label()}, headers={"Host": "evil.example"}
    )
    assert response.status_code == 201
    assert "evil" not in response.headers["Link"] + response.headers["Location"]


async def test_oversized_public_body_is_413(start_gateway, client):
    """RH-41: bodies over MAX_BODY_SIZE get 413 without reaching the application."""
    gw = start_gateway("memory", MAX_BODY_SIZE="1000")
    reg = await register(client, gw.service_url, unique_label())
    response = await client.post(reg.public, content=b"x" * 1001)
    assert response.status_code == 413
    assert (await client.get(reg.first)).status_code == 204


async def test_replies_still_relayed_after_delete_and_queued_requests_get_503(gateway, client):
    """RH-52, RH-83: in-flight replies survive DELETE; queued, undelivered requests get 503."""
    reg = await register(client, gateway.service_url, unique_label())
    in_flight = asyncio.ensure_future(client.get(reg.public + "in-flight"))
    assert (await client.get(reg.first)).status_code == 200
    queued = asyncio.ensure_future(client.get(reg.public + "queued"))
    await asyncio.sleep(0.3)
    assert (await client.delete(reg.private)).status_code == 204
    response = await queued
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert (
        await client.post(reg.first, content=envelope(body=b"late but fine"))
    ).status_code == 202
    assert (await in_flight).text == "late but fine"


async def test_credentials_forwarded_hop_by_hop_dropped(gateway, client):
    """RH-67: Authorization and Cookie reach the app unchanged; RH-39: hop-by-hop removed."""
    reg = await register(client, gateway.service_url, unique_label())
    public = asyncio.ensure_future(
        client.get(
            reg.public,
            headers={"Authorization": "Basic dTpw", "Cookie": "a=1", "Keep-Alive": "timeout=5"},
        )
    )
    delivered = await client.get(reg.first)
    assert b"\r\nAuthorization: Basic dTpw\r\n" in delivered.content
    assert b"\r\nCookie: a=1\r\n" in delivered.content
    assert b"Keep-Alive" not in delivered.content
    await client.post(reg.first, content=envelope(headers={"Connection": "close", "X-A": "1"}))
    response = await public
    assert response.headers["X-A"] == "1"


async def test_upgrade_and_relay_endpoint_are_refused(gateway, client):
    """RH-40: an Upgrade request cannot be tunnelled (501); RH-96: no _relay endpoint."""
    reg = await register(client, gateway.service_url, unique_label())
    upgrade = await client.get(reg.public, headers={"Upgrade": "foo/1", "Connection": "Upgrade"})
    assert upgrade.status_code == 501
    relay = await client.post(gateway.service_url + "/_relay/127.0.0.1:6379", content=b"PING")
    assert relay.status_code == 404


async def test_application_http_pipeline(gateway, client):
    """RH-26, RH-72: asked for explicitly, one poll carries the queued requests in order and
    one pipelined reply answers them in the same order; */* alone gets message/http."""
    reg = await register(client, gateway.service_url, unique_label())
    publics = []
    for i in range(3):
        publics.append(asyncio.ensure_future(client.get(reg.public + f"s{i}")))
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    accept = {"Accept": "application/http, message/http;q=0.5"}
    batch = await client.get(reg.first, headers=accept)
    assert batch.status_code == 200
    assert batch.headers["Content-Type"] == "application/http"
    # RH-28 per request: one address each, in the batch's order.
    assert re.fullmatch(
        r"127\.0\.0\.1:\d+(, 127\.0\.0\.1:\d+){2}", batch.headers["Requesting-Client"]
    )
    assert [
        line.split(b" ")[1][-2:]
        for line in batch.content.split(b"\r\n")
        if line.startswith(b"GET ")
    ] == [b"s0", b"s1", b"s2"]
    again = await client.get(reg.first, headers=accept)  # RH-29 for a whole batch
    assert again.content == batch.content
    pipeline = b"".join(
        envelope(headers={"Content-Length": "1"}, body=str(i).encode()) for i in range(3)
    )
    assert (await client.post(reg.first, content=pipeline)).status_code == 202
    assert [(await p).text for p in publics] == ["0", "1", "2"]
    # */* is not an explicit request for application/http.
    single = asyncio.ensure_future(client.get(reg.public + "one"))
    nxt = batch.headers["Link"].split(">")[0][1:]
    delivered = await client.get(nxt, headers={"Accept": "*/*"})
    assert delivered.headers["Content-Type"] == "message/http"
    await client.post(nxt, content=envelope(body=b"x"))
    assert (await single).text == "x"


async def test_short_pipeline_reply_is_400_and_all_requestors_get_502(gateway, client):
    """RH-48 for pipelines: fewer responses than requests fails the whole batch clearly."""
    reg = await register(client, gateway.service_url, unique_label())
    publics = [asyncio.ensure_future(client.get(reg.public + f"b{i}")) for i in range(2)]
    await asyncio.sleep(0.3)
    batch = await client.get(reg.first, headers={"Accept": "application/http"})
    assert batch.content.count(b" HTTP/1.1\r\n") == 2
    short = envelope(headers={"Content-Length": "1"}, body=b"0")
    assert (await client.post(reg.first, content=short)).status_code == 400
    assert [(await p).status_code for p in publics] == [502, 502]


async def test_pipeline_reply_reaches_the_requestors_still_waiting(gateway, client):
    """RH-26, RH-47: a requestor of a batch who left does not cost the others their answers;
    its position is still answered (and its response dropped)."""
    reg = await register(client, gateway.service_url, unique_label())
    host, port = gateway.service_url.split("//")[1].split("/")[0].split(":")
    target = reg.public.split(f"{port}", 1)[1]
    publics = []
    leaving: asyncio.StreamWriter | None = None
    for i in range(3):
        if i == 1:  # a requestor who hangs up while its request is delivered
            _, leaving = await asyncio.open_connection(host, int(port))
            leaving.write(f"GET {target}w1 HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            await leaving.drain()
        else:
            publics.append(asyncio.ensure_future(client.get(reg.public + f"w{i}")))
        await asyncio.sleep(0.1)
    batch = await client.get(reg.first, headers={"Accept": "application/http"})
    assert batch.content.count(b" HTTP/1.1\r\n") == 3
    assert leaving is not None
    leaving.close()
    await asyncio.sleep(0.5)  # the gateway notices and withdraws it
    pipeline = b"".join(
        envelope(headers={"Content-Length": "1"}, body=str(i).encode()) for i in range(3)
    )
    assert (await client.post(reg.first, content=pipeline)).status_code == 202
    assert [(await p).text for p in publics] == ["0", "2"]
    again = await client.post(reg.first, content=pipeline)
    assert again.status_code == 404  # RH-47: answered once


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data; boundary=x", "application/x-www-form-urlencoded"],
)
async def test_form_bodies_are_relayed_as_opaque_bytes(gateway, client, content_type):
    """RH-35: the envelope carries the body as sent, even a form body that does not parse
    (the server in front of the gateway must not parse, reject or rewrite it)."""
    reg = await register(client, gateway.service_url, unique_label())
    body = b"--x\r\nnot really a part\r\n&a=%ZZ&=="
    public = asyncio.ensure_future(
        client.post(reg.public, content=body, headers={"Content-Type": content_type})
    )
    delivered = await client.get(reg.first)
    assert delivered.status_code == 200
    assert delivered.content.endswith(b"\r\n\r\n" + body)
    assert b"content-type: " + content_type.encode() in delivered.content.lower()
    await client.post(reg.first, content=envelope(headers={"Content-Length": "2"}, body=b"ok"))
    answer = await public
    assert (answer.status_code, answer.content) == (200, b"ok")
