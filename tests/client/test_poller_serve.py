"""``Poller._serve`` on its own: what a 200 delivered becomes as the POSTed reply (RH-26, RH-45).

The gateway side is a recording stand-in for the poller's ``GatewayHttp``; the live behaviour
is in test_pipeline.py and test_client_live.py.
"""

from __future__ import annotations

import asyncio

import pytest

from reversehttp_gateway.client.envelope import AppResponse, EmbeddedRequest
from reversehttp_gateway.client.gateway_http import GatewayAnswer
from reversehttp_gateway.client.handlers import PublicSite
from reversehttp_gateway.client.poller import Poller
from reversehttp_gateway.protocol.embedded_response import parse_embedded_responses

pytestmark = pytest.mark.asyncio

URL = "http://gw.test/reversehttp/r/demo/secret/slot"


class RecordingHttp:
    """Answers every POST 202 and keeps (url, body, headers)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, bytes, dict[str, str]]] = []

    async def post(
        self, url: str, content: bytes, *, headers: dict[str, str], timeout: float
    ) -> GatewayAnswer:
        self.posts.append((url, content, headers))
        return GatewayAnswer(url, 202, "Accepted", [], b"")


async def slow_echo(request: EmbeddedRequest, site: PublicSite) -> AppResponse:
    """Later requests answer first: the reply must still be in delivery order."""
    await asyncio.sleep(0.05 if request.target.endswith(b"/0") else 0)
    return AppResponse(200, [(b"x-path", request.target)], request.target)


def delivered(content: bytes, content_type: str) -> GatewayAnswer:
    headers = [(b"content-type", content_type.encode()), (b"requesting-client", b"1.2.3.4:5")]
    return GatewayAnswer(URL, 200, "OK", headers, content)


def poller(http: RecordingHttp) -> Poller:
    return Poller(0, http, None, slow_echo, asyncio.Event())  # type: ignore[arg-type]


async def test_a_batch_is_answered_concurrently_and_replied_to_in_order():
    http = RecordingHttp()
    batch = b"".join(b"GET /demo/%d HTTP/1.1\r\nHost: gw\r\n\r\n" % i for i in range(3))
    started = asyncio.get_running_loop().time()
    await poller(http)._serve(URL, delivered(batch, "application/http"))
    assert asyncio.get_running_loop().time() - started < 0.1  # not one after the other
    [(url, body, headers)] = http.posts
    assert url == URL and headers == {"Content-Type": "application/http"}
    responses = parse_embedded_responses(body, request_methods=["GET"] * 3)
    assert [r.body for r in responses] == [b"/demo/0", b"/demo/1", b"/demo/2"]


@pytest.mark.parametrize("content_type", ["message/http", "application/http"])
async def test_a_malformed_delivery_is_answered_400(content_type):
    """One error response: for a batch, the gateway then refuses it (502 to its requestors)."""
    http = RecordingHttp()
    await poller(http)._serve(URL, delivered(b"GET / HTTP/1.1\r\n", content_type))
    [(_, body, headers)] = http.posts
    assert headers == {"Content-Type": content_type}
    assert body.startswith(b"HTTP/1.1 400 ") and b"malformed request" in body


async def test_a_single_request_is_replied_to_as_message_http():
    http = RecordingHttp()
    await poller(http)._serve(URL, delivered(b"GET /demo/1 HTTP/1.1\r\nHost: gw\r\n\r\n", ""))
    [(_, body, headers)] = http.posts
    assert headers == {"Content-Type": "message/http"}
    assert body.endswith(b"\r\n\r\n/demo/1")


NEXT = "http://gw.test/reversehttp/r/demo/secret/next"


class AnsweringHttp(RecordingHttp):
    """Answers every POST with ``answer`` (a chained poll's, or a classic gateway's)."""

    def __init__(self, answer: GatewayAnswer) -> None:
        super().__init__()
        self.answer = answer

    async def post(
        self, url: str, content: bytes, *, headers: dict[str, str], timeout: float
    ) -> GatewayAnswer:
        await super().post(url, content, headers=headers, timeout=timeout)
        return self.answer


SINGLE_REQUEST = b"GET /demo/1 HTTP/1.1\r\nHost: gw\r\n\r\n"
NEXT_LINK = (b"link", f'<{NEXT}/2>; rel="next"'.encode())


@pytest.mark.parametrize("pipeline", [False, True])
async def test_a_reply_asks_for_the_next_request(pipeline):
    """Chained polls: the POST names the next URL and accepts what a GET of it would."""
    chained = GatewayAnswer(URL, 200, "OK", [NEXT_LINK], SINGLE_REQUEST)
    http = AnsweringHttp(chained)
    worker = Poller(0, http, None, slow_echo, asyncio.Event(), pipeline=pipeline)  # type: ignore[arg-type]
    polled = await worker._serve(URL, delivered(SINGLE_REQUEST, "message/http"), NEXT)
    assert polled is chained
    [(_, _, headers)] = http.posts
    accept = "application/http, message/http" if pipeline else "message/http"
    assert headers == {
        "Content-Type": "message/http",
        "Reversehttp-Poll": NEXT,
        "Accept": accept,
    }


@pytest.mark.parametrize(
    "answer",
    [
        GatewayAnswer(URL, 202, "Accepted", [], b""),  # a gateway without chained polls
        GatewayAnswer(URL, 200, "OK", [], b""),  # a 200 that is no poll answer: no rel=next
        GatewayAnswer(URL, 204, "No Content", [], b""),
    ],
)
async def test_an_answer_that_is_not_a_poll_is_not_taken_for_one(answer):
    http = AnsweringHttp(answer)
    polled = await poller(http)._serve(URL, delivered(SINGLE_REQUEST, "message/http"), NEXT)
    assert polled is None


async def test_no_chain_when_disabled_or_stopping():
    """``chain=False`` (``--no-chain``), and a stopping client, POST the classic reply."""
    chained = GatewayAnswer(URL, 204, "No Content", [NEXT_LINK], b"")
    http = AnsweringHttp(chained)
    worker = Poller(0, http, None, slow_echo, asyncio.Event(), chain=False)  # type: ignore[arg-type]
    assert await worker._serve(URL, delivered(SINGLE_REQUEST, "message/http"), NEXT) is None
    stopping = asyncio.Event()
    stopping.set()
    worker = Poller(0, http, None, slow_echo, stopping)  # type: ignore[arg-type]
    assert await worker._serve(URL, delivered(SINGLE_REQUEST, "message/http"), NEXT) is None
    assert [headers for _, _, headers in http.posts] == [{"Content-Type": "message/http"}] * 2
