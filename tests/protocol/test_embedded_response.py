"""The application's ``message/http`` reply (RH-45..RH-51); PROTOCOL.md section 11 item 13."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reversehttp_gateway.protocol.embedded_request import HOP_BY_HOP
from reversehttp_gateway.protocol.embedded_response import (
    MAX_HEAD_BYTES,
    MAX_HEADER_LINES,
    InvalidResponse,
    ParsedResponse,
    parse_embedded_response,
    parse_embedded_responses,
)

PYTHON_REPLY = (
    b"HTTP/1.0 200 OK\r\n"
    b"Server: BaseHTTP/0.3 Python/2.7\r\n"
    b"Content-type: text/plain\r\n"
    b"\r\n"
    b"This is response #0"
)


def invalid(data: bytes, match: str, **kwargs: object) -> InvalidResponse:
    with pytest.raises(InvalidResponse) as info:
        parse_embedded_response(data, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("Invalid reply: ")
    assert match in message
    assert "\r" not in message and "\n" not in message and len(message) < 120
    return info.value


# --- valid replies -------------------------------------------------------------------------


def test_rh49_python_basehttpserver_reply_body_is_the_rest() -> None:
    parsed = parse_embedded_response(PYTHON_REPLY)
    assert parsed == ParsedResponse(
        status=200,
        reason=b"OK",
        headers=[(b"server", b"BaseHTTP/0.3 Python/2.7"), (b"content-type", b"text/plain")],
        body=b"This is response #0",
    )
    assert parsed.asgi_headers() == [
        (b"server", b"BaseHTTP/0.3 Python/2.7"),
        (b"content-type", b"text/plain"),
        (b"content-length", b"19"),
    ]


def test_rh49_java_style_reply_without_content_length() -> None:
    data = b"HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\n\r\n<h1>nope</h1>\r\n"
    parsed = parse_embedded_response(data)
    assert (parsed.status, parsed.reason, parsed.body) == (404, b"Not Found", b"<h1>nope</h1>\r\n")


def test_rh49_httpd_js_object_object_reply_is_kept() -> None:
    """httpd.js's respond(500, {}, "...") bug: reason [object Object], headers named 0, 1, ..."""
    data = b"HTTP/1.1 500 [object Object]\r\n0: E\r\n1: r\r\n2: r\r\nContent-length: 5\r\n\r\nError"
    parsed = parse_embedded_response(data)
    assert parsed.status == 500
    assert parsed.reason == b"[object Object]"
    assert parsed.headers == [(b"0", b"E"), (b"1", b"r"), (b"2", b"r")]
    assert parsed.body == b"Error"


def test_rh49_content_length_framed() -> None:
    parsed = parse_embedded_response(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nhi")
    assert (parsed.status, parsed.body, parsed.headers) == (201, b"hi", [])
    assert parsed.asgi_headers() == [(b"content-length", b"2")]


def test_rh49_status_without_reason() -> None:
    parsed = parse_embedded_response(b"HTTP/1.1 200\r\n\r\nhi")
    assert (parsed.status, parsed.reason, parsed.body) == (200, b"", b"hi")


def test_rh49_lf_only_lines_are_accepted() -> None:
    parsed = parse_embedded_response(b"HTTP/1.1 200 OK\nX-A: b\nContent-Length: 4\n\nbody")
    assert (parsed.headers, parsed.body) == ([(b"x-a", b"b")], b"body")


def test_rh49_empty_body_and_empty_header_value() -> None:
    parsed = parse_embedded_response(b"HTTP/1.1 200 OK\r\nX-Empty:\r\n\r\n")
    assert (parsed.headers, parsed.body) == ([(b"x-empty", b"")], b"")
    assert parsed.asgi_headers() == [(b"x-empty", b""), (b"content-length", b"0")]


def test_rh50_valid_chunked_body_is_dechunked() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n"
        b"5;ext=1\r\nhello\r\n"
        b"7\r\n, world\r\n"
        b"0\r\n"
        b"X-Trailer: dropped\r\n"
        b"\r\n"
    )
    parsed = parse_embedded_response(data)
    assert parsed.body == b"hello, world"
    assert parsed.headers == [(b"content-type", b"text/plain")]
    assert parsed.asgi_headers()[-1] == (b"content-length", b"12")


def test_rh50_hop_by_hop_headers_are_dropped_and_length_recomputed() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\n"
        b"Connection: close, X-Internal\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"X-Internal: secret\r\n"
        b"Set-Cookie: a=1\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authenticate: Basic\r\n"
        b"Trailer: x\r\n"
        b"Set-Cookie: b=2\r\n"
        b"Content-Length: 3\r\n"
        b"\r\n"
        b"abc"
    )
    parsed = parse_embedded_response(data)
    assert parsed.headers == [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
    assert parsed.asgi_headers() == [
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-length", b"3"),
    ]


def test_rh50_duplicate_equal_content_lengths_are_accepted() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi"
    assert parse_embedded_response(data).body == b"hi"


def test_rh50_trailing_crlf_after_a_framed_body_is_tolerated() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi\r\n\r\n\n"
    assert parse_embedded_response(data).body == b"hi"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\r\n"
    assert parse_embedded_response(chunked).body == b"hi"


def test_rh49_interim_responses_are_skipped() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    )
    parsed = parse_embedded_response(data)
    assert (parsed.status, parsed.headers, parsed.body) == (200, [], b"hi")


def test_rh49_minor_versions_of_http_1_are_accepted() -> None:
    assert parse_embedded_response(b"HTTP/1.0 200 OK\r\n\r\n").status == 200
    assert parse_embedded_response(b"HTTP/1.2 200 OK\r\n\r\n").status == 200


@pytest.mark.parametrize("status", [200, 299, 301, 418, 451, 500, 599])
def test_rh49_status_range(status: int) -> None:
    parsed = parse_embedded_response(f"HTTP/1.1 {status} X\r\n\r\n".encode())
    assert parsed.status == status


def test_rh49_reason_bytes_are_kept() -> None:
    data = b"HTTP/1.1 200 Tr\xe8s bien \t ok \r\n\r\n"
    assert parse_embedded_response(data).reason == b"Tr\xe8s bien \t ok "


def test_rh50_obs_text_in_header_values_is_kept() -> None:
    data = b"HTTP/1.1 200 OK\r\nX-Name: caf\xc3\xa9\r\n\r\n"
    assert parse_embedded_response(data).headers == [(b"x-name", b"caf\xc3\xa9")]


# --- bodiless replies (RH-51) ---------------------------------------------------------------


def test_rh51_204_with_a_body_ignores_it() -> None:
    data = b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello junk"
    parsed = parse_embedded_response(data)
    assert (parsed.status, parsed.body, parsed.no_body) == (204, b"", True)
    assert parsed.asgi_headers() == [(b"x-a", b"1")]


def test_rh51_304_keeps_the_declared_length() -> None:
    data = b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 5\r\n\r\nhello'
    parsed = parse_embedded_response(data)
    assert (parsed.body, parsed.declared_length) == (b"", 5)
    assert parsed.asgi_headers() == [(b"etag", b'"x"'), (b"content-length", b"5")]


def test_rh51_304_without_content_length_gets_none() -> None:
    parsed = parse_embedded_response(b"HTTP/1.1 304 Not Modified\r\n\r\nstray")
    assert parsed.declared_length is None
    assert parsed.asgi_headers() == []


def test_rh51_head_reply_with_a_body_ignores_it() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    parsed = parse_embedded_response(data, request_method="HEAD")
    assert (parsed.body, parsed.declared_length, parsed.no_body) == (b"", 5, True)
    assert parsed.asgi_headers() == [(b"content-type", b"text/plain"), (b"content-length", b"5")]


def test_rh51_head_reply_without_content_length_gets_none() -> None:
    parsed = parse_embedded_response(b"HTTP/1.0 200 OK\r\n\r\nbody", request_method="HEAD")
    assert (parsed.body, parsed.declared_length) == (b"", None)
    assert parsed.asgi_headers() == []


def test_rh51_head_method_is_case_insensitive_and_others_frame_like_get() -> None:
    assert parse_embedded_response(b"HTTP/1.1 200 OK\r\n\r\nx", request_method="head").body == b""
    for method in ("POST", "CONNECT", "M-SEARCH", "NOT A TOKEN"):
        data = b"HTTP/1.1 200 OK\r\n\r\nx"
        assert parse_embedded_response(data, request_method=method).body == b"x"


def test_rh51_head_reply_still_validates_content_length() -> None:
    invalid(
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        "bad Content-Length",
        request_method="HEAD",
    )


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (ParsedResponse(100, b"", [], b""), []),
        (ParsedResponse(204, b"", [(b"a", b"1")], b""), [(b"a", b"1")]),
        (ParsedResponse(200, b"", [], b""), [(b"content-length", b"0")]),
        (ParsedResponse(200, b"", [], b"abc"), [(b"content-length", b"3")]),
        (ParsedResponse(200, b"", [], b"", declared_length=7), [(b"content-length", b"7")]),
        (ParsedResponse(200, b"", [], b"", no_body=True), []),
        (ParsedResponse(304, b"", [], b""), []),
        (ParsedResponse(304, b"", [], b"", declared_length=9), [(b"content-length", b"9")]),
    ],
)
def test_rh50_asgi_headers(response: ParsedResponse, expected: list[tuple[bytes, bytes]]) -> None:
    assert response.asgi_headers() == expected
    assert response.headers is not response.asgi_headers()


def test_parsed_response_is_frozen() -> None:
    parsed = parse_embedded_response(PYTHON_REPLY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.status = 500  # type: ignore[misc]


# --- invalid replies (RH-48, RH-50; section 11 item 13) ----------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty body"),
        (b"HTTP/1.1 200 OK", "incomplete header block"),  # a lone status line
        (b"HTTP/1.1 200 OK\r\n", "incomplete header block"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n", "incomplete header block"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nhi", "incomplete header block"),
        (b"HTTP/1.1 abc\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 99 Low\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 099 Low\r\n\r\n", "bad status code"),
        (b"HTTP/1.1 600 High\r\n\r\n", "status code out of range"),
        (b"HTTP/1.1 999 High\r\n\r\n", "status code out of range"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
        (b"HTTP/2 200\r\n\r\n", "bad status line"),
        (b"HTTP/2.0 200 OK\r\n\r\n", "unsupported HTTP version"),
        (b"HTTP/0.9 200 OK\r\n\r\n", "unsupported HTTP version"),
        (b"http/1.1 200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1  200 OK\r\n\r\n", "bad status line"),
        (b"ICY 200 OK\r\n\r\n", "bad status line"),
        (b"<html>oops</html>", "incomplete header block"),
        (b"\r\nHTTP/1.1 200 OK\r\n\r\n", "no status line"),
        (b" HTTP/1.1 200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\n: no name\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nX-A: b\rc\r\n\r\n", "bare CR"),
        (b"HTTP/1.1 200 OK\rX-A: b\r\r\n\r\n", "bare CR"),
        (b"HTTP/1.1 200 OK\r\nX-A: b\nc\r\n\r\n", "bad header line"),  # LF inside a value
        (b"HTTP/1.1 200 OK\r\nX-A: b\x00c\r\n\r\n", "NUL"),
        (b"HTTP/1.1 200 OK\r\nX-\x00: b\r\n\r\n", "NUL"),
        (b"HTTP/1.1 200 O\x00K\r\n\r\n", "NUL"),
        (b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n", "obsolete line folding"),
        (b"HTTP/1.1 200 OK\r\nX-A: b\r\n\tc\r\n\r\n", "obsolete line folding"),
        (b"HTTP/1.1 200 OK\r\n folded: first\r\n\r\n", "obsolete line folding"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", "obsolete"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nhi",
            "both Content-Length and Transfer-Encoding",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi", "body shorter than Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nhi", "unexpected data after"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n \r\n", "unexpected data after"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nhi", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 21 + b"\r\n\r\n", "bad Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
            "conflicting Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhi", "unsupported Transfer-Encoding"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "unsupported Transfer-Encoding",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "multiple Transfer-Encoding",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "truncated chunked body"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            "truncated chunked body",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n",
            "truncated chunked body",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk header"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5", "truncated body"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1",
            "truncated body",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX0\r\n\r\n",
            "bad chunk framing",
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "no final response"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "unexpected 101"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEADER_LINES + 1) + b"\r\n", "too many"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD_BYTES + b"\r\n\r\n", "too large"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD_BYTES, "too large"),
    ],
)
def test_rh48_rh50_invalid_replies(data: bytes, match: str) -> None:
    invalid(data, match)


def test_rh50_two_responses_in_one_message_http_body() -> None:
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    second = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"
    invalid(first + second, "unexpected data after")
    # Without framing the second response is simply part of the first one's body.
    unframed = b"HTTP/1.1 200 OK\r\n\r\nhi" + second
    assert parse_embedded_response(unframed).body == b"hi" + second


def test_invalid_messages_do_not_echo_the_reply() -> None:
    err = invalid(b"HTTP/1.1 200 OK\r\n<script>alert(1)</script>\r\n\r\n", "bad header line")
    assert "script" not in str(err)


def test_limits_allow_a_generous_head() -> None:
    data = b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * MAX_HEADER_LINES + b"\r\n"
    assert len(parse_embedded_response(data).headers) == MAX_HEADER_LINES


# --- several responses in one body (Java client, application/http) ---------------------------


def response(status: int, body: bytes, framing: str = "cl") -> bytes:
    head = f"HTTP/1.1 {status} X\r\n".encode()
    if framing == "cl":
        return head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    if framing == "chunked":
        chunks = f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b""
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return head + b"\r\n" + body


def test_java_client_concatenated_responses() -> None:
    data = response(200, b"one") + response(201, b"two", "chunked") + response(404, b"three", "eof")
    parsed = parse_embedded_responses(data, request_methods=["GET", "POST", "GET"])
    assert [(p.status, p.body) for p in parsed] == [(200, b"one"), (201, b"two"), (404, b"three")]


def test_crlf_between_responses_is_skipped() -> None:
    data = response(200, b"a") + b"\r\n" + response(200, b"b") + b"\r\n\r\n"
    parsed = parse_embedded_responses(data, request_methods=["GET", "GET"])
    assert [p.body for p in parsed] == [b"a", b"b"]


def test_head_and_204_in_the_middle_have_no_body() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
        + b"HTTP/1.1 204 No Content\r\n\r\n"
        + response(200, b"last", "eof")
    )
    parsed = parse_embedded_responses(data, request_methods=["HEAD", "DELETE", "GET"])
    assert [(p.status, p.body, p.declared_length) for p in parsed] == [
        (200, b"", 10),
        (204, b"", None),
        (200, b"last", None),
    ]


def test_single_response_matches_parse_embedded_response() -> None:
    assert parse_embedded_responses(PYTHON_REPLY, request_methods=["GET"]) == [
        parse_embedded_response(PYTHON_REPLY)
    ]


def test_no_responses_expected() -> None:
    assert parse_embedded_responses(b"", request_methods=[]) == []
    with pytest.raises(InvalidResponse, match="expected 0 responses"):
        parse_embedded_responses(response(200, b"x"), request_methods=[])


@pytest.mark.parametrize(
    ("data", "methods", "match"),
    [
        (b"", ["GET"], "empty body"),
        (response(200, b"a"), ["GET", "GET"], "expected 2 responses, got 1"),
        (response(200, b"a") + b"\r\n", ["GET", "GET"], "expected 2 responses, got 1"),
        (response(200, b"a") * 3, ["GET", "GET"], "expected 2 responses, got more"),
        (
            response(200, b"a", "eof") + response(200, b"b"),
            ["GET", "GET"],
            "only the last may omit Content-Length",
        ),
        (response(200, b"a") + b"junk", ["GET", "GET"], "incomplete header block"),
        (response(200, b"a") + response(600, b"b"), ["GET", "GET"], "status code out of range"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            ["HEAD", "GET"],
            "incomplete header block",
        ),
    ],
)
def test_concatenated_responses_invalid(data: bytes, methods: list[str], match: str) -> None:
    with pytest.raises(InvalidResponse, match=match):
        parse_embedded_responses(data, request_methods=methods)


def test_bytes_after_a_final_bodiless_response_are_ignored() -> None:
    data = response(200, b"a") + b"HTTP/1.1 204 No Content\r\n\r\ntrailing junk"
    parsed = parse_embedded_responses(data, request_methods=["GET", "GET"])
    assert [p.status for p in parsed] == [200, 204]


# --- properties ------------------------------------------------------------------------------

_PREFIXES = st.sampled_from(
    [
        b"",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.0 204 X\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 304 OK\r\nContent-Length: 3\r\n\r\n",
    ]
)
_FRAGMENTS = st.lists(
    st.sampled_from(
        [
            b"\r\n",
            b"\n",
            b"\r",
            b" ",
            b"\t",
            b":",
            b"\x00",
            b"HTTP/1.1 ",
            b"200 OK",
            b"Content-Length: ",
            b"Transfer-Encoding: chunked",
            b"Connection: x",
            b"0",
            b"5",
            b"ff",
            b"X-A",
            b"abc",
            b"\xff",
        ]
    )
    | st.binary(max_size=4),
    max_size=25,
).map(b"".join)


def _check_invariants(parsed: ParsedResponse) -> None:
    assert 200 <= parsed.status <= 599
    names = {name for name, _ in parsed.headers}
    assert not names & (HOP_BY_HOP | {b"content-length"})
    assert all(name == name.lower() and name for name in names)
    assert all(b"\r" not in v and b"\n" not in v and b"\0" not in v for _, v in parsed.headers)
    if parsed.no_body:
        assert parsed.body == b""
    lengths = [v for n, v in parsed.asgi_headers() if n == b"content-length"]
    assert len(lengths) <= 1


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from(["GET", "HEAD", "POST"]))
def test_rh48_arbitrary_bytes_raise_only_invalid_response(data: bytes, method: str) -> None:
    try:
        parsed = parse_embedded_response(data, request_method=method)
    except InvalidResponse as exc:
        assert str(exc).startswith("Invalid reply: ")
    else:
        _check_invariants(parsed)


@settings(deadline=None, max_examples=300)
@given(_PREFIXES, _FRAGMENTS, st.sampled_from(["GET", "HEAD"]))
def test_rh48_near_miss_replies_raise_only_invalid_response(
    prefix: bytes, rest: bytes, method: str
) -> None:
    try:
        parsed = parse_embedded_response(prefix + rest, request_method=method)
    except InvalidResponse:
        pass
    else:
        _check_invariants(parsed)


@settings(deadline=None)
@given(
    st.lists(st.tuples(_PREFIXES, _FRAGMENTS), max_size=3).map(
        lambda parts: b"".join(p + r for p, r in parts)
    ),
    st.lists(st.sampled_from(["GET", "HEAD"]), max_size=3),
)
def test_concatenated_arbitrary_bytes_raise_only_invalid_response(
    data: bytes, methods: list[str]
) -> None:
    try:
        parsed = parse_embedded_responses(data, request_methods=methods)
    except InvalidResponse:
        pass
    else:
        assert len(parsed) == len(methods)
        for item in parsed:
            _check_invariants(item)


_NAME = st.from_regex(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,12}", fullmatch=True).filter(
    lambda n: n.lower() not in HOP_BY_HOP | {b"content-length"}
)
_VALUE = st.from_regex(rb"([!-~]([ !-~]{0,20}[!-~])?)?", fullmatch=True)
_STATUS = st.integers(200, 599).filter(lambda s: s not in (204, 304))
_REASON = st.from_regex(rb"[ !-~]{0,20}", fullmatch=True)


@settings(deadline=None)
@given(
    status=_STATUS,
    reason=_REASON,
    headers=st.lists(st.tuples(_NAME, _VALUE), max_size=8),
    body=st.binary(max_size=200),
    framing=st.sampled_from(["cl", "chunked", "eof"]),
    version=st.sampled_from([b"1.0", b"1.1"]),
    eol=st.sampled_from([b"\r\n", b"\n"]),
)
def test_rh49_generated_replies_round_trip(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    framing: str,
    version: bytes,
    eol: bytes,
) -> None:
    lines = [b"HTTP/" + version + b" " + str(status).encode() + b" " + reason]
    lines += [name + b": " + value for name, value in headers]
    payload = body
    if framing == "cl":
        lines.append(b"Content-Length: " + str(len(body)).encode())
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        payload = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    data = eol.join(lines) + eol + eol + payload
    parsed = parse_embedded_response(data)
    assert parsed.status == status
    assert parsed.reason == reason
    assert parsed.headers == [(name.lower(), value) for name, value in headers]
    assert parsed.body == body
    assert parsed.asgi_headers()[-1] == (b"content-length", str(len(body)).encode())
    if framing != "eof":
        twice = parse_embedded_responses(data + data, request_methods=["GET", "GET"])
        assert twice == [parsed, parsed]


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=600),
    methods=st.lists(st.sampled_from(["GET", "HEAD", "POST"]), min_size=1, max_size=3),
)
def test_pipelines_of_arbitrary_bytes_raise_only_invalid_response(data, methods):
    """RH-26/RH-48: application/http replies from hostile applications never crash the parser."""
    try:
        responses = parse_embedded_responses(data, request_methods=methods)
    except InvalidResponse:
        return
    assert len(responses) == len(methods)


# --- the plain-reply fast path agrees with h11 ---------------------------------------------


def _mostly(usual: list[bytes], unusual: list[bytes]) -> st.SearchStrategy[bytes]:
    """Draw from ``usual`` four times in five, else from ``unusual``."""
    return st.sampled_from(usual * 4 * max(1, len(unusual)) + unusual * len(usual))


_NAMES = _mostly(
    [b"Content-Type", b"Server", b"X-A", b"Connection", b"Keep-Alive", b"date"],
    [b"Content-Length", b"content-length", b"Transfer-Encoding", b"X A", b"X@", b"", b"\xe9"],
)
_SEPARATORS = _mostly([b": ", b":"], [b":\t", b" :", b":  "])
_VALUES = _mostly(
    [b"text/plain", b"close", b"keep-alive, X-A", b"a  b", b"x\ty", b"\xff\xfe", b""],
    [
        b"5",
        b"0",
        b" 5 ",
        b"5,5",
        b"05",
        b"-1",
        b"chunked",
        b"\t",
        b" ",
        b"\x0b",
        b"\x00",
        b"99999999999999999999999",
    ],
)


@st.composite
def plain_like_replies(draw: st.DrawFn) -> tuple[bytes, str]:
    """Replies near the fast path's edges: most are plain, many are just outside it."""
    version = draw(_mostly([b"1.1", b"1.0"], [b"1.9", b"2.0", b"0.9", b"1.x"]))
    status = draw(
        _mostly([b"200", b"201", b"404", b"599"], [b"204", b"304", b"600", b"100", b"20", b"2000"])
    )
    reason = draw(
        _mostly(
            [b"OK", b"[object Object]", b"a\tb", b"\xc3\xa9t\xc3\xa9"],
            [b"", b" lead", b"bad\x00", b"trail ", b"-"],
        )
    )
    status_line = b"HTTP/" + version + b" " + status
    if reason != b"-":
        status_line += b" " + reason
    lines = [status_line]
    for _ in range(draw(st.integers(0, 4))):
        trailing = draw(_mostly([b""], [b" ", b"\t"]))
        lines.append(draw(_NAMES) + draw(_SEPARATORS) + draw(_VALUES) + trailing)
    body = draw(st.binary(max_size=20))
    if draw(_mostly([b"yes"], [b"no"])) == b"yes":
        delta = int(draw(_mostly([b"0"], [b"-1", b"1"])))
        lines.insert(draw(st.integers(1, len(lines))), b"Content-Length: %d" % (len(body) + delta))
    tail = draw(_mostly([b""], [b"\r\n", b"x", b"HTTP/1.1 200 OK\r\n\r\n"]))
    end = draw(_mostly([b"\r\n\r\n"], [b"\n\n", b"\r\n", b"\r\n\n"]))
    method = draw(st.sampled_from(["GET", "GET", "GET", "POST", "HEAD", "head"]))
    return b"\r\n".join(lines) + end + body + tail, method


@settings(max_examples=1500, deadline=None)
@given(plain_like_replies())
def test_plain_fast_path_gives_exactly_what_h11_gives(reply):
    """RH-48..RH-51: a reply the fast path accepts parses the same with h11, framing included."""
    from reversehttp_gateway.protocol import embedded_response as er

    data, method = reply
    try:
        er._check_heads(data)
    except InvalidResponse:
        return  # rejected before either parser runs
    plain = er._parse_plain(data, method)
    if plain is None:
        return
    assert er._parse_with_h11(data, method) == (plain[0], plain[1], False)


def test_plain_fast_path_takes_the_usual_replies():
    """The replies the clients send (Content-Length framed) do not need an h11 connection."""
    from reversehttp_gateway.protocol import embedded_response as er

    usual = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n"
        b"connection: keep-alive, x-hop\r\nx-hop: 1\r\nx-kept: 2\r\n\r\nhello"
    )
    plain = er._parse_plain(usual, "GET")
    assert plain is not None
    assert plain[0] == ParsedResponse(
        200, b"OK", [(b"content-type", b"text/plain"), (b"x-kept", b"2")], b"hello"
    )
    assert er._parse_plain(PYTHON_REPLY, "GET") is None  # no Content-Length: h11 decides
    assert er._parse_plain(usual, "HEAD") is None
