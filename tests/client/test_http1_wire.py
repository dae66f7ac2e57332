"""The lean client's HTTP/1.1 parser and writer (reversehttp_gateway/client/http1_wire.py).

The parser claims h11's grammar and framing rules: generated responses, valid and not, fed in
random pieces, must give what h11 gives (or fail where h11 fails).
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reversehttp_gateway.client.http1_wire import (
    ProtocolError,
    ResponseParser,
    parse_request,
    request_head,
)

Outcome = tuple[object, ...]


def parse_with_h11(method: bytes, pieces: list[bytes], eof: bool) -> Outcome:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target=b"/", headers=[(b"Host", b"origin.test")]))
    conn.send(h11.EndOfMessage())
    head: h11.Response | None = None
    body = b""
    try:
        for piece in [*pieces, b""] if eof else pieces:
            conn.receive_data(piece)
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.InformationalResponse):
                continue
            else:
                return ("incomplete",) if head is None else ("incomplete body", body)
    except h11.ProtocolError:
        return ("error",)
    assert head is not None
    headers = [(bytes(n), bytes(v)) for n, v in head.headers.raw_items()]
    try:  # reusable: nothing more came, not even the end of the connection
        reusable = conn.their_state is h11.DONE and conn.next_event() is h11.NEED_DATA
    except h11.ProtocolError:
        reusable = False
    return ("ok", head.status_code, bytes(head.reason), headers, body, reusable)


def parse_with_wire(method: bytes, pieces: list[bytes], eof: bool) -> Outcome:
    parser = ResponseParser()
    head = None
    body = b""
    finished = False
    try:
        for index, piece in enumerate(pieces):
            parser.feed(piece)
            if eof and index == len(pieces) - 1:
                parser.feed_eof()
            if head is None:
                head = parser.head(method)
            while head is not None and not finished:
                chunk = parser.body()
                if chunk is None:
                    break
                if not chunk:
                    finished = True
                body += chunk
        if eof and not pieces:
            parser.feed_eof()
            head = parser.head(method)
    except ProtocolError:
        return ("error",)
    if head is None:
        return ("incomplete",)
    if not finished:
        return ("incomplete body", body)
    reusable = parser.keep_alive and not parser.buffered and not eof  # as Http1Pool decides
    return ("ok", head.status, head.reason, head.headers, body, reusable)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


GOOD_NAMES = [b"Content-Type", b"x-app", b"Set-Cookie", b"Connection", b"X-Empty"]
BAD_NAMES = [b"bad name", b"", b"Content-Length", b"Transfer-Encoding"]  # or badly placed
GOOD_VALUES = [b"text/plain", b"a=1", b"close", b"keep-alive", b"", b"x\ty", b"Upgrade, close"]
BAD_VALUES = [b"5", b"5, 5", b"5, 6", b"abc", b"chunked", b"gzip", b"CHUNKED", b"a\x01b"]
BODIES = st.sampled_from([b"", b"hello", b"0123456789" * 30])


def mostly(draw: st.DrawFn, usual: list[bytes], unusual: list[bytes]) -> bytes:
    """One of ``usual``, or one in five times one of ``unusual``."""
    pool = unusual if unusual and draw(st.integers(0, 4)) == 0 else usual
    return draw(st.sampled_from(pool))


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bytes, list[int], bool]:
    version = mostly(draw, [b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/2", b"HTTX/1.1"])
    status = mostly(draw, [b"200", b"204", b"304", b"404", b"299"], [b"2000", b"101", b"20"])
    reason = mostly(draw, [b" OK", b"", b" Fine Thanks"], [b" ", b" \xe9t\xe9", b" a\x00"])
    newline = mostly(draw, [b"\r\n"], [b"\n"])
    lines = [version + b" " + status + reason]
    if draw(st.integers(0, 4)) == 0:
        lines.insert(0, b"HTTP/1.1 100 Continue" + newline)
    for _ in range(draw(st.integers(0, 4))):
        lines.append(
            mostly(draw, GOOD_NAMES, BAD_NAMES) + b": " + mostly(draw, GOOD_VALUES, BAD_VALUES)
        )
    if draw(st.integers(0, 4)) == 0:
        lines.append(b" folded continuation")
    body = draw(BODIES)
    framing = draw(st.sampled_from(["length", "chunked", "close", "none"]))
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        size = draw(st.integers(1, 50))
        pieces = [body[i : i + size] for i in range(0, len(body), size)]
        extension = mostly(draw, [b"", b";ext=1"], [b"  ", b"x"])
        footer = mostly(draw, [b"\r\n"], [b"xy", b"\n"])
        payload = b"".join(b"%x%s\r\n%s%s" % (len(p), extension, p, footer) for p in pieces)
        payload += b"0\r\n" + mostly(draw, [b""], [b"Trailer-Field: 1\r\n", b"bad\r\n"]) + b"\r\n"
    else:
        payload = body
    data = newline.join(lines) + newline + newline + payload
    if draw(st.integers(0, 4)) == 0:
        data += draw(st.sampled_from([b"HTTP/1.1 200 OK\r\n\r\n", b"junk"]))  # pipelined bytes
    if draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(0, len(data)))]  # truncated
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
    cuts = draw(st.lists(st.integers(0, 10_000), max_size=6))
    return method, data, cuts, draw(st.booleans())


@settings(max_examples=2500, deadline=None)
@given(responses())
def test_the_parser_agrees_with_h11(case: tuple[bytes, bytes, list[int], bool]) -> None:
    method, data, cuts, eof = case
    pieces = split(data, cuts)
    expected = parse_with_h11(method, pieces, eof)
    got = parse_with_wire(method, pieces, eof)
    if expected[0] == "incomplete body" and got[0] == "incomplete body":
        return  # how much of a partial body was handed out differs by design
    assert got == expected


def test_chunked_body_comes_in_pieces_as_it_arrives() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    head = parser.head(b"GET")
    assert head is not None and head.status == 200
    assert parser.body() == b"hel"
    assert parser.body() is None
    parser.feed(b"lo\r\n0\r\n\r\n")
    assert parser.body() == b"lo"
    assert parser.body() == b""
    assert parser.keep_alive and parser.buffered == 0


def test_a_body_read_to_the_close_ends_with_it() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert parser.head(b"GET") is not None
    assert parser.body() == b"some"
    assert parser.body() is None
    parser.feed_eof()
    assert parser.body() == b""
    assert not parser.keep_alive


def test_a_head_that_never_ends_is_refused() -> None:
    parser = ResponseParser(max_head=1000)
    parser.feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 300)
    with pytest.raises(ProtocolError, match="too long"):
        parser.head(b"GET")


def test_request_head_writes_fields_as_given() -> None:
    head = request_head(b"POST", b"/a?b=1", [(b"Host", b"h"), (b"X-Case", b"Kept  inside")])
    assert head == b"POST /a?b=1 HTTP/1.1\r\nHost: h\r\nX-Case: Kept  inside\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        (b"GET", b"/", [(b"Host", b"h"), (b"X", b"a\r\nInjected: yes")]),
        (b"GET", b"/", [(b"Host", b"h"), (b"Bad Name", b"v")]),
        (b"GET", b"/", [(b"Host", b"h"), (b"X", b" leading space")]),
        (b"GET", b"/a b", [(b"Host", b"h")]),
        (b"GET", b"/\r\nX: y", [(b"Host", b"h")]),
        (b"G T", b"/", [(b"Host", b"h")]),
        (b"GET", b"/", [(b"X", b"no host")]),
    ],
)
def test_request_head_refuses_what_could_split_the_request(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(ProtocolError):
        request_head(method, target, headers)
    with pytest.raises(h11.LocalProtocolError):  # h11 refuses the same
        h11.Connection(h11.CLIENT).send(h11.Request(method=method, target=target, headers=headers))


# Requests (the envelopes the gateway delivers): parse_request must agree with h11's server role.


def request_with_h11(data: bytes, head_only: bool) -> Outcome:
    conn = h11.Connection(h11.SERVER)
    head: h11.Request | None = None
    body = b""
    try:
        conn.receive_data(data)
        if head_only:
            event = conn.next_event()
            if not isinstance(event, h11.Request):
                return ("error",)
            head = event
        else:
            conn.receive_data(b"")
            while True:
                event = conn.next_event()
                if isinstance(event, h11.Request):
                    head = event
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return ("error",)
    except h11.ProtocolError:
        return ("error",)
    assert head is not None
    headers = [(bytes(n), bytes(v)) for n, v in head.headers]
    return ("ok", head.method, head.target, head.http_version, headers, body)


def request_with_wire(data: bytes, head_only: bool) -> Outcome:
    try:
        request = parse_request(data, head_only=head_only)
    except ProtocolError:
        return ("error",)
    return (
        "ok",
        request.method,
        request.target,
        request.http_version,
        request.headers,
        request.body,
    )


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    method = mostly(draw, [b"GET", b"POST", b"PUT"], [b"G T", b"", b"\xe9"])
    target = mostly(draw, [b"/", b"/demo/a%2Fb?x=1", b"*"], [b"/a b", b""])
    version = mostly(draw, [b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/2", b"HTTX/1.1", b"HTTP/1.1 "])
    newline = mostly(draw, [b"\r\n"], [b"\n"])
    lines = [method + b" " + target + b" " + version]
    if draw(st.integers(0, 5)):
        lines.append(b"Host: gw")
    if draw(st.integers(0, 5)) == 0:
        lines.append(b"host: other")
    for _ in range(draw(st.integers(0, 4))):
        lines.append(
            mostly(draw, GOOD_NAMES, BAD_NAMES) + b": " + mostly(draw, GOOD_VALUES, BAD_VALUES)
        )
    if draw(st.integers(0, 5)) == 0:
        lines.append(b"\tfolded")
    body = draw(BODIES)
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        size = draw(st.integers(1, 50))
        footer = mostly(draw, [b"\r\n"], [b"xy"])
        pieces = [body[i : i + size] for i in range(0, len(body), size)]
        payload = b"".join(b"%x\r\n%s%s" % (len(p), p, footer) for p in pieces) + b"0\r\n\r\n"
    else:
        payload = b""
    data = mostly(draw, [b""], [b"\r\n"]) + newline.join(lines) + newline + newline + payload
    if draw(st.integers(0, 4)) == 0:
        data += b"trailing bytes"
    if draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data, draw(st.booleans())


@settings(max_examples=2500, deadline=None)
@given(requests())
def test_parse_request_agrees_with_h11(case: tuple[bytes, bool]) -> None:
    data, head_only = case
    assert request_with_wire(data, head_only) == request_with_h11(data, head_only)
