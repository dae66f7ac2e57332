"""The client's message/http parsing and building, and app detection (no gateway needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reversehttp_gateway.client import AppResponse, PublicSite, is_asgi_app
from reversehttp_gateway.client.backoff import Backoff
from reversehttp_gateway.client.envelope import (
    InvalidEmbeddedRequest,
    build_reply,
    parse_embedded_request,
    parse_embedded_requests,
    parse_requesting_client,
)
from reversehttp_gateway.client.registration import normalize_service_url
from reversehttp_gateway.protocol.embedded_request import build_embedded_request
from reversehttp_gateway.protocol.embedded_response import parse_embedded_response


def test_parse_embedded_request_frames_by_content_length():
    data = (
        b"POST /demo/a%2Fb?x=1 HTTP/1.1\r\nHost: gw\r\nX-Dup: 1\r\nX-Dup: 2\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    request = parse_embedded_request(data, requesting_client="127.0.0.1:4242")
    assert request.method == "POST"
    assert request.target == b"/demo/a%2Fb?x=1"
    assert request.raw_path == b"/demo/a%2Fb" and request.query_string == b"x=1"
    assert request.headers[1:3] == [(b"x-dup", b"1"), (b"x-dup", b"2")]
    assert request.body == b"hello"
    assert request.requesting_client == ("127.0.0.1", 4242)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\n",  # no blank line
        b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nshort",
    ],
)
def test_parse_embedded_request_refuses_bad_envelopes(data):
    with pytest.raises(InvalidEmbeddedRequest):
        parse_embedded_request(data)


_HEADER_VALUES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8)
_DELIVERED = st.tuples(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]),
    st.sampled_from([b"/", b"/demo/a%2Fb?x=1", b"/x?y=%20&z", b"*"]),
    st.lists(
        st.tuples(st.sampled_from([b"X-A", b"Cookie", b"Accept"]), _HEADER_VALUES), max_size=3
    ),
    st.binary(max_size=300),
    st.tuples(st.integers(1, 255), st.integers(1, 65535)),
)


@given(st.lists(_DELIVERED, min_size=1, max_size=8))
def test_parse_embedded_requests_splits_what_the_gateway_pipelines(delivered):
    """RH-26: a pipeline of envelopes as the gateway builds them, split back request by request,
    each with its own Requesting-Client (RH-28)."""
    data = b"".join(
        build_embedded_request(
            method=method,
            target=target,
            http_version="1.1",
            headers=[(name, value.encode()) for name, value in headers],
            body=body,
            default_host=b"gw.test",
        )
        for method, target, headers, body, _ in delivered
    )
    clients = ", ".join(f"10.0.0.{host}:{port}" for *_, (host, port) in delivered)
    parsed = parse_embedded_requests(data, requesting_client=clients)
    assert len(parsed) == len(delivered)
    for request, (method, target, headers, body, (host, port)) in zip(
        parsed, delivered, strict=True
    ):
        assert (request.method, request.target, request.body) == (method, target, body)
        assert [(n, v) for n, v in request.headers if n not in (b"host", b"content-length")] == [
            (name.lower(), value.encode()) for name, value in headers
        ]
        assert request.requesting_client == (f"10.0.0.{host}", port)


def test_a_single_requesting_client_goes_to_the_first_request():
    data = b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\nGET /b HTTP/1.1\r\nHost: gw\r\n\r\n"
    first, second = parse_embedded_requests(data, requesting_client="1.2.3.4:5")
    assert (first.target, first.requesting_client) == (b"/a", ("1.2.3.4", 5))
    assert (second.target, second.requesting_client) == (b"/b", None)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\nGET /b HTTP/1.1\r\nHost: gw\r\n",
        b"POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabGET / HTTP/1.1\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n\r\n",
    ],
)
def test_parse_embedded_requests_refuses_broken_pipelines(data):
    with pytest.raises(InvalidEmbeddedRequest):
        parse_embedded_requests(data)


def test_requesting_client_forms():
    assert parse_requesting_client("[::1]:80") == ("::1", 80)
    assert parse_requesting_client("1.2.3.4") is None
    assert parse_requesting_client(None) is None


def test_build_reply_is_accepted_by_the_gateway_parser():
    response = AppResponse(
        201,
        [
            (b"Content-Type", b"text/plain"),
            (b"Content-Length", b"999"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"close, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Bad\r\nName", b"x"),
            (b"X-Evil", b"a\r\nInjected: yes"),
        ],
        b"body",
    )
    reply = build_reply(response)
    assert reply.startswith(b"HTTP/1.1 201 Created\r\n")
    assert reply.endswith(b"\r\nContent-Length: 4\r\n\r\nbody")
    parsed = parse_embedded_response(reply)
    assert parsed.status == 201 and parsed.body == b"body"
    assert parsed.headers == [(b"content-type", b"text/plain")]


def test_build_reply_without_body():
    assert build_reply(AppResponse(204, [], b"ignored")) == b"HTTP/1.1 204 No Content\r\n\r\n"
    head = build_reply(AppResponse(200, [(b"Content-Length", b"42")], b"x"), request_method="HEAD")
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"
    assert build_reply(AppResponse(299, [], b"")).startswith(b"HTTP/1.1 299 \r\n")
    with pytest.raises(ValueError):
        build_reply(AppResponse(1000))


def test_public_site_prefix():
    site = PublicSite.from_url("http://gw.example:8000/demo/")
    assert (site.scheme, site.host, site.port, site.prefix) == ("http", "gw.example", 8000, "/demo")
    assert site.split(b"/demo/x", strip_prefix=True) == (b"/demo", b"/x")
    assert site.split(b"/DEMO", strip_prefix=True) == (b"/DEMO", b"")
    assert site.split(b"/demox", strip_prefix=True) == (b"", b"/demox")
    assert site.split(b"/demo/x", strip_prefix=False) == (b"", b"/demo/x")
    assert PublicSite.from_url("https://demo.gw.example/").prefix == ""


def test_asgi_detection():
    async def asgi_function(scope, receive, send): ...

    class AsgiObject:
        async def __call__(self, scope, receive, send): ...

    class NotAsgi:
        async def __call__(self, request): ...

    def wsgi(environ, start_response): ...

    assert is_asgi_app(asgi_function)
    assert is_asgi_app(AsgiObject())
    assert not is_asgi_app(NotAsgi())
    assert not is_asgi_app(wsgi)


def test_service_url_defaults_to_reversehttp_path():
    assert normalize_service_url("http://gw:8000") == "http://gw:8000/reversehttp"
    assert normalize_service_url("gw:8000/") == "http://gw:8000/reversehttp"
    assert normalize_service_url("https://gw/rh") == "https://gw/rh"
    with pytest.raises(ValueError):
        normalize_service_url("ftp://gw")


def test_backoff_grows_with_jitter_and_resets():
    backoff = Backoff(0.5, 4.0)
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [0.5, 1, 2, 4, 4, 4], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 0.5
