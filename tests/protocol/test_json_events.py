"""JSON long-poll encoding (CJ-02..CJ-07) and splitting the gateway's own envelopes."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reversehttp_gateway.protocol.embedded_request import (
    build_embedded_request,
    split_embedded_request,
)
from reversehttp_gateway.protocol.json_events import (
    InvalidReplyEvent,
    parse_reply_event,
    request_event,
)


def _envelope(body: bytes = b"", method: str = "POST") -> bytes:
    return build_embedded_request(
        method=method,
        target=b"/demo/a%2Fb?x=1",
        http_version="1.1",
        headers=[(b"host", b"gw"), (b"x-a", b"1"), (b"x-a", b"2")],
        body=body,
        default_host=b"gw",
    )


def test_split_round_trips_the_envelope() -> None:
    parts = split_embedded_request(_envelope(b"body\r\n\r\nmore"))
    assert parts.method == "POST" and parts.target == b"/demo/a%2Fb?x=1"
    assert parts.http_version == "1.1"
    assert parts.headers[:3] == [(b"Host", b"gw"), (b"X-A", b"1"), (b"X-A", b"2")]
    assert parts.body == b"body\r\n\r\nmore"


def test_request_event_cj02_cj06() -> None:
    event = request_event(_envelope(b"hi"), "m1", "127.0.0.1:5")
    assert event["message-id"] == "m1" and event["method"] == "POST"
    assert event["request-uri"] == "/demo/a%2Fb?x=1"
    assert event["http-version"] == "HTTP/1.1"
    assert event["headers"][:3] == [["Host", "gw"], ["X-A", "1"], ["X-A", "2"]]
    assert (event["body"], event["body-encoding"]) == ("hi", "utf-8")


def test_request_event_binary_body_is_base64_cj07() -> None:
    event = request_event(_envelope(b"\xff"), "m", "c")
    assert event["body-encoding"] == "base64" and base64.b64decode(event["body"]) == b"\xff"


def test_reply_event_becomes_a_relayable_response() -> None:
    parsed = parse_reply_event(
        {
            "message-id": "m",
            "status": "404",
            "reason": "Nope",
            "headers": {"Content-Type": "text/plain", "Content-Length": "999"},
            "body": "x",
        }
    )
    assert (parsed.status, parsed.reason, parsed.body) == (404, b"Nope", b"x")
    assert (b"content-length", b"1") in parsed.asgi_headers()


def test_reply_to_head_has_no_body() -> None:
    parsed = parse_reply_event({"status": 200, "body": "ignored"}, request_method="HEAD")
    assert parsed.body == b""


@pytest.mark.parametrize(
    "event",
    [
        [],
        {"status": 99},
        {"status": 600},
        {"status": True},
        {"status": 200, "reason": "a\r\nb"},
        {"status": 200, "headers": [["X", "a\r\nSet-Cookie: x"]]},
        {"status": 200, "headers": [["bad name", "v"]]},
        {"status": 200, "headers": "nope"},
        {"status": 200, "body": 5},
        {"status": 200, "body": "!!", "body-encoding": "base64"},
        {"status": 200, "body-encoding": "rot13"},
    ],
)
def test_invalid_reply_events(event: object) -> None:
    with pytest.raises(InvalidReplyEvent):
        parse_reply_event(event)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
def test_arbitrary_json_raises_only_invalid_reply_event(event: object) -> None:
    with contextlib.suppress(InvalidReplyEvent):
        parse_reply_event(event)
