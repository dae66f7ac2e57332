"""The embedded ``message/http`` request (RH-27, RH-35..RH-39)."""

from __future__ import annotations

import re

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reversehttp_gateway.protocol.embedded_request import (
    HOP_BY_HOP,
    build_embedded_request,
    hop_by_hop_names,
)

# httpd.js's request-line regex (js:117-152): needs CRLF and an HTTP/d.d version.
HTTPD_JS_REQUEST_LINE = re.compile(rb"([^ ]+) ([^ ]+) HTTP/(\d+\.\d+)\r\n")


def build(
    method: str = "GET",
    target: bytes = b"/",
    http_version: str = "1.1",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    default_host: bytes = b"gw.example",
) -> bytes:
    return build_embedded_request(
        method=method,
        target=target,
        http_version=http_version,
        headers=[(b"host", b"demo.example")] if headers is None else headers,
        body=body,
        default_host=default_host,
    )


def test_rh27_rh35_get_with_query_is_byte_exact() -> None:
    """Section 11 item 21: the raw target and query are kept byte for byte."""
    data = build(
        target=b"/demo/a%2Fb?x=%20&y",
        headers=[(b"host", b"demo.example:8000"), (b"accept", b"*/*"), (b"user-agent", b"curl/8")],
    )
    assert data == (
        b"GET /demo/a%2Fb?x=%20&y HTTP/1.1\r\n"
        b"Host: demo.example:8000\r\n"
        b"Accept: */*\r\n"
        b"User-Agent: curl/8\r\n"
        b"\r\n"
    )
    assert HTTPD_JS_REQUEST_LINE.match(data)


def test_rh38_duplicate_headers_stay_separate_and_ordered() -> None:
    data = build(
        headers=[
            (b"x-dup", b"1"),
            (b"host", b"demo.example"),
            (b"cookie", b"a=1"),
            (b"x-dup", b"2"),
            (b"cookie", b"b=2"),
            (b"x-dup", b"3, 4"),
        ]
    )
    assert data == (
        b"GET / HTTP/1.1\r\n"
        b"X-Dup: 1\r\n"
        b"Host: demo.example\r\n"
        b"Cookie: a=1\r\n"
        b"X-Dup: 2\r\n"
        b"Cookie: b=2\r\n"
        b"X-Dup: 3, 4\r\n"
        b"\r\n"
    )


def test_rh37_chunked_post_gets_content_length() -> None:
    """The ASGI body is already de-chunked: Transfer-Encoding goes, Content-Length comes."""
    data = build(
        method="POST",
        target=b"/demo/upload",
        headers=[
            (b"host", b"demo.example"),
            (b"transfer-encoding", b"chunked"),
            (b"content-type", b"application/json"),
            (b"expect", b"100-continue"),
        ],
        body=b'{"a": [1, 2]}',
    )
    assert data == (
        b"POST /demo/upload HTTP/1.1\r\n"
        b"Host: demo.example\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 13\r\n"
        b"\r\n"
        b'{"a": [1, 2]}'
    )


@pytest.mark.parametrize("version", ["2", "3", "1.1", "2.0", ""])
def test_rh36_versions_other_than_1_0_become_http_1_1(version: str) -> None:
    data = build(http_version=version, headers=[(b"host", b"demo.example")])
    assert data == b"GET / HTTP/1.1\r\nHost: demo.example\r\n\r\n"


def test_rh36_http_1_0_is_kept() -> None:
    data = build(http_version="1.0", headers=[])
    assert data == b"GET / HTTP/1.0\r\nHost: gw.example\r\n\r\n"


def test_rh36_missing_host_is_added_first() -> None:
    data = build(
        method="DELETE",
        target=b"/demo/x",
        http_version="2",
        headers=[(b"accept", b"*/*"), (b"x-b", b"1")],
        default_host=b"demo.apps.example:8443",
    )
    assert data == (
        b"DELETE /demo/x HTTP/1.1\r\nHost: demo.apps.example:8443\r\nAccept: */*\r\nX-B: 1\r\n\r\n"
    )


def test_rh36_host_in_original_position_is_kept() -> None:
    data = build(headers=[(b"accept", b"*/*"), (b"host", b"h")])
    assert data == b"GET / HTTP/1.1\r\nAccept: */*\r\nHost: h\r\n\r\n"


def test_rh39_hop_by_hop_and_connection_listed_headers_are_dropped() -> None:
    data = build(
        method="PUT",
        headers=[
            (b"host", b"demo.example"),
            (b"connection", b"keep-alive, X-Secret , ,Upgrade"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-connection", b"keep-alive"),
            (b"te", b"trailers"),
            (b"trailer", b"x-checksum"),
            (b"transfer-encoding", b"chunked"),
            (b"upgrade", b"h2c"),
            (b"expect", b"100-continue"),
            (b"proxy-authenticate", b"Basic"),
            (b"proxy-authorization", b"Basic Zm9vOmJhcg=="),
            (b"x-secret", b"1"),
            (b"content-length", b"999"),
            (b"authorization", b"Bearer t"),  # RH-67: forwarded unchanged
            (b"cookie", b"s=1"),
        ],
        body=b"abc",
    )
    assert data == (
        b"PUT / HTTP/1.1\r\n"
        b"Host: demo.example\r\n"
        b"Authorization: Bearer t\r\n"
        b"Cookie: s=1\r\n"
        b"Content-Length: 3\r\n"
        b"\r\n"
        b"abc"
    )


@pytest.mark.parametrize(
    ("method", "body", "length"),
    [
        ("POST", b"", b"0"),
        ("PUT", b"", b"0"),
        ("PATCH", b"", b"0"),
        ("GET", b"", None),
        ("HEAD", b"", None),
        ("DELETE", b"", None),
        ("OPTIONS", b"", None),
        ("DELETE", b"x", b"1"),
        ("GET", b"\r\n\r\n", b"4"),
        ("PROPFIND", b"<a/>", b"4"),
    ],
)
def test_rh37_content_length_when_body_or_body_method(
    method: str, body: bytes, length: bytes | None
) -> None:
    data = build(method=method, body=body)
    head = f"{method} / HTTP/1.1\r\nHost: demo.example\r\n".encode()
    if length is not None:
        head += b"Content-Length: " + length + b"\r\n"
    assert data == head + b"\r\n" + body


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        (b"content-type", b"Content-Type"),
        (b"x-foo-bar", b"X-Foo-Bar"),
        (b"www-authenticate", b"Www-Authenticate"),
        (b"etag", b"Etag"),
        (b"dnt", b"Dnt"),
        (b"x--y", b"X--Y"),
        (b"X-UPPER", b"X-Upper"),
        (b"sec-ch-ua", b"Sec-Ch-Ua"),
        (b"x_under", b"X_under"),
        (b"1st", b"1st"),
    ],
)
def test_rh38_header_names_are_title_cased(name: bytes, canonical: bytes) -> None:
    data = build(headers=[(b"host", b"h"), (name, b"v")])
    assert data == b"GET / HTTP/1.1\r\nHost: h\r\n" + canonical + b": v\r\n\r\n"


def test_rh38_mixed_case_host_counts_as_host() -> None:
    assert build(headers=[(b"Host", b"h")]) == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


def test_rh39_hop_by_hop_set() -> None:
    assert {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"proxy-authenticate",
        b"proxy-authorization",
    } == HOP_BY_HOP
    assert b"content-length" not in HOP_BY_HOP
    assert isinstance(HOP_BY_HOP, frozenset)


def test_rh39_hop_by_hop_names_adds_connection_tokens() -> None:
    names = hop_by_hop_names(
        [(b"Connection", b"Close, X-A ,,x-b"), (b"connection", b"x-c"), (b"x-a", b"1")]
    )
    assert names == HOP_BY_HOP | {b"close", b"x-a", b"x-b", b"x-c"}
    assert hop_by_hop_names([]) == HOP_BY_HOP


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "GE T"},
        {"method": ""},
        {"method": "GET\r\n"},
        {"method": "G(E)T"},
        {"method": "GÉT"},
        {"target": b""},
        {"target": b"/a b"},
        {"target": b"/a\r\nX-Injected: 1"},
        {"target": b"/a\n"},
        {"target": b"/\x00"},
        {"target": b"/\t"},
        {"target": b"/\x7f"},
        {"headers": [(b"x-a\r\nx-b", b"1")]},
        {"headers": [(b"x-a:", b"1")]},
        {"headers": [(b"", b"1")]},
        {"headers": [(b"x a", b"1")]},
        {"headers": [(b"x-a\x00", b"1")]},
        {"headers": [(b"x-a", b"1\r\nX-Injected: 1")]},
        {"headers": [(b"x-a", b"1\n")]},
        {"headers": [(b"x-a", b"1\r")]},
        {"headers": [(b"x-a", b"\x00")]},
        {"headers": [], "default_host": b"h\r\nX-Injected: 1"},
    ],
)
def test_rh35_defensive_value_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build(**kwargs)  # type: ignore[arg-type]


def test_rh27_non_ascii_target_bytes_are_kept() -> None:
    data = build(target=b"/caf\xc3\xa9?q=\xff")
    assert data.startswith(b"GET /caf\xc3\xa9?q=\xff HTTP/1.1\r\n")


# --- round trips through a real HTTP/1.1 parser ----------------------------------------------

_TOKEN = st.from_regex(rb"[!#$%&'*+\-.^_`|~0-9a-z]{1,12}", fullmatch=True)
_VALUE = st.from_regex(rb"([!-~]([ !-~]{0,20}[!-~])?)?", fullmatch=True)
_TARGET = st.from_regex(rb"/[!-~]{0,40}", fullmatch=True)
_METHOD = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "M-SEARCH"])
_SKIPPED = HOP_BY_HOP | {b"content-length", b"host"}


@settings(deadline=None)
@given(
    method=_METHOD,
    target=_TARGET,
    version=st.sampled_from(["1.0", "1.1", "2", "3"]),
    headers=st.lists(st.tuples(_TOKEN, _VALUE), max_size=8),
    host=st.none() | st.from_regex(rb"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True),
    body=st.binary(max_size=64),
)
def test_rh35_rh38_round_trip_through_h11(
    method: str,
    target: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    host: bytes | None,
    body: bytes,
) -> None:
    relayed = [(n, v) for n, v in headers if n not in _SKIPPED]
    headers = list(relayed)
    if host is not None:
        headers.insert(len(headers) // 2, (b"host", host))
    data = build_embedded_request(
        method=method,
        target=target,
        http_version=version,
        headers=headers,
        body=body,
        default_host=b"gw.example",
    )
    assert HTTPD_JS_REQUEST_LINE.match(data)
    head = data[: data.index(b"\r\n\r\n")]
    assert b"\n" not in head.replace(b"\r\n", b"")

    conn = h11.Connection(our_role=h11.SERVER)
    conn.receive_data(data)
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    assert request.method == method.encode()
    assert request.target == target
    assert request.http_version == (b"1.0" if version == "1.0" else b"1.1")
    received = list(request.headers)
    expected_host = host if host is not None else b"gw.example"
    assert [v for n, v in received if n == b"host"] == [expected_host]
    assert [(n, v) for n, v in received if n not in _SKIPPED] == relayed
    chunks = []
    while True:
        event = conn.next_event()
        if isinstance(event, h11.EndOfMessage):
            break
        assert isinstance(event, h11.Data)
        chunks.append(bytes(event.data))
    assert b"".join(chunks) == body
    has_length = bool(body) or method in {"POST", "PUT", "PATCH"}
    assert [v for n, v in received if n == b"content-length"] == (
        [str(len(body)).encode()] if has_length else []
    )
