"""The ``message/http`` reply the application POSTs back (RH-45..RH-51).

Parsing is done by ``h11`` acting as the client of an imaginary connection; this module adds the
checks that a relaying gateway needs on top (RH-50): no obs-fold, no CR/LF/NUL in headers, not
both ``Content-Length`` and ``Transfer-Encoding``, no truncated or overlong bodies.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import h11

from .embedded_request import HOP_BY_HOP, hop_by_hop_names

__all__ = [
    "MAX_HEADER_LINES",
    "MAX_HEAD_BYTES",
    "InvalidResponse",
    "ParsedResponse",
    "parse_embedded_response",
    "parse_embedded_responses",
    "parse_first_response",
    "relayable_response",
]

MAX_HEAD_BYTES = 64 * 1024
"""Largest status line plus header block accepted, per response head."""

MAX_HEADER_LINES = 1000
"""Most header lines accepted, per response head."""

_INTERIM_STATUS_RE = re.compile(rb"HTTP/[0-9]\.[0-9] 1[0-9][0-9](?![0-9])")

# h11's error messages (which may quote the offending bytes) -> our short, data-free reasons.
_H11_REASONS: tuple[tuple[str, str], ...] = (
    ("illegal status line", "bad status line"),
    ("no response line received", "no status line"),
    ("illegal request line", "no status line"),
    ("InformationalResponse status_code", "bad status code"),
    ("illegal header line", "bad header line"),
    ("continuation line at start of headers", "bad header line"),
    ("peer unexpectedly closed connection", "incomplete header block (no blank line after it)"),
    ("Receive buffer too long", "incomplete header block (no blank line after it)"),
    ("can't handle event type ConnectionClosed", "no final response"),
    ("bad Content-Length", "bad Content-Length"),
    ("conflicting Content-Length headers", "conflicting Content-Length headers"),
    ("multiple Transfer-Encoding headers", "multiple Transfer-Encoding headers"),
    ("Only Transfer-Encoding: chunked", "unsupported Transfer-Encoding"),
    ("illegal chunk header", "bad chunk header"),
    ("malformed chunk footer", "bad chunk framing"),
    ("(incomplete chunked read)", "truncated chunked body"),
    ("without sending complete message body", "body shorter than Content-Length"),
    ("_SWITCH_UPGRADE", "unexpected 101 Switching Protocols"),
)


class InvalidResponse(ValueError):
    """The reply is not an acceptable HTTP response (RH-48); ``str()`` is the 400 body."""


@dataclass(frozen=True, slots=True)
class ParsedResponse:
    """A validated reply, re-framed for relaying (RH-50).

    ``headers`` are ``(lower-case name, value)`` pairs without hop-by-hop headers and without
    ``Content-Length``; ``body`` is de-chunked. ``declared_length`` is the application's
    ``Content-Length`` for a 304 or a reply to HEAD. ``no_body`` is true when the reply could not
    carry a body (a reply to HEAD, 204, 304).
    """

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    declared_length: int | None = None
    no_body: bool = False

    def asgi_headers(self) -> list[tuple[bytes, bytes]]:
        """Return ``headers`` plus a recomputed ``content-length`` for ``http.response.start``.

        1xx and 204 get none. A non-empty body gets its length; otherwise a 304 or a reply to HEAD
        keeps ``declared_length`` (none if the application sent none), and the rest get 0.
        """
        headers = list(self.headers)
        if self.status < 200 or self.status == 204:
            return headers
        length: int | None
        if self.body:
            length = len(self.body)
        elif self.declared_length is not None:
            length = self.declared_length
        elif self.no_body or self.status == 304:
            length = None
        else:
            length = 0
        if length is not None:
            headers.append((b"content-length", str(length).encode("ascii")))
        return headers


def _invalid(reason: str) -> InvalidResponse:
    return InvalidResponse(f"Invalid reply: {reason}")


def _check_heads(data: bytes) -> None:
    """Reject what h11 would silently repair or not bound in the raw head(s).

    h11 unfolds obs-fold lines and has no limit on a complete header block, so the status line
    and header lines are scanned first: through any 1xx interim heads, up to the final head.
    An incomplete head is left for h11 to report.
    """
    pos = 0
    while True:
        start = pos
        status_line: bytes | None = None
        header_lines = 0
        while True:
            newline = data.find(b"\n", pos)
            if newline < 0:
                if len(data) - start > MAX_HEAD_BYTES:
                    raise _invalid("header block too large")
                return
            line = data[pos:newline].removesuffix(b"\r")
            pos = newline + 1
            if pos - start > MAX_HEAD_BYTES:
                raise _invalid("header block too large")
            if b"\r" in line:
                raise _invalid("bare CR in the header block")
            if b"\0" in line:
                raise _invalid("NUL in the header block")
            if status_line is None:
                if not line:
                    return
                status_line = line
                continue
            if not line:
                break
            if line[:1] in (b" ", b"\t"):
                raise _invalid("obsolete line folding in headers")
            header_lines += 1
            if header_lines > MAX_HEADER_LINES:
                raise _invalid("too many headers")
        if _INTERIM_STATUS_RE.match(status_line) is None:
            return


def _describe(exc: h11.ProtocolError, *, in_body: bool) -> InvalidResponse:
    message = str(exc)
    if in_body and "peer unexpectedly closed connection" in message:
        return _invalid("truncated body")
    for needle, reason in _H11_REASONS:
        if needle in message:
            if reason == "body shorter than Content-Length" and "(received" in message:
                reason += " " + message[message.index("(received") :]
            return _invalid(reason)
    return _invalid(message.split(":", 1)[0][:80])


def _check_version(http_version: bytes) -> None:
    if not http_version.startswith(b"1."):
        raise _invalid("unsupported HTTP version")


# The grammar h11 0.16 applies (h11/_abnf.py), for the plain replies parsed without it.
_STATUS_LINE_RE = re.compile(rb"HTTP/1\.[0-9] ([2-5][0-9][0-9])(?: ((?:[ \t]|[^\x00\s])*))?")
_HEADER_LINE_RE = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*([^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?[ \t]*"
)
_DIGITS_RE = re.compile(rb"[0-9]{1,20}")


def _parse_plain(data: bytes, request_method: str) -> tuple[ParsedResponse, bytes] | None:
    """The common reply, parsed without an h11 connection (a few times faster); None if not.

    "Plain": CRLF line ends, a 2xx-5xx status other than 204 and 304 to a request other than
    HEAD, one ``Content-Length`` of digits, no ``Transfer-Encoding``, the whole body present.
    Anything else, including every invalid reply, is left to :func:`_parse_with_h11`, so the
    result is always what h11 gives (tests/protocol: a differential property test).
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 > MAX_HEAD_BYTES or request_method.upper() == "HEAD":
        return None
    lines = data[:end].split(b"\r\n")
    if len(lines) > MAX_HEADER_LINES + 1:
        return None
    status_match = _STATUS_LINE_RE.fullmatch(lines[0])
    if status_match is None:
        return None
    status = int(status_match[1])
    if status in (204, 304):
        return None
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    for line in lines[1:]:
        match = _HEADER_LINE_RE.fullmatch(line)
        if match is None:
            return None
        name, value = match[1].lower(), match[2] or b""
        if name == b"transfer-encoding" or (name == b"content-length" and length is not None):
            return None
        if name == b"content-length":
            if _DIGITS_RE.fullmatch(value) is None:
                return None
            length = int(value)
        headers.append((name, value))
    start = end + 4
    if length is None or len(data) - start < length:
        return None
    reason = status_match[2] or b""
    dropped = hop_by_hop_names(headers)
    parsed = ParsedResponse(
        status=status,
        reason=reason,
        headers=[
            (name, value)
            for name, value in headers
            if name not in dropped and name != b"content-length"
        ],
        body=data[start : start + length],
    )
    return parsed, data[start + length :]


def _parse_one(data: bytes, request_method: str) -> tuple[ParsedResponse, bytes, bool]:
    """Parse the response at the start of ``data``.

    Returns the response, the bytes left after it, and whether its body was delimited by the
    end of ``data`` (no Content-Length, not chunked).
    """
    if not data:
        raise _invalid("empty body")
    # A plain reply's lines matched the strict grammar, which admits no CR, NUL or folding, and
    # its head is within the limits: _check_heads could only pass it.
    plain = _parse_plain(data, request_method)
    if plain is not None:
        return plain[0], plain[1], False
    _check_heads(data)
    return _parse_with_h11(data, request_method)


def _parse_with_h11(data: bytes, request_method: str) -> tuple[ParsedResponse, bytes, bool]:
    """:func:`_parse_one` by an h11 client connection: every reply, valid or not."""
    head_request = request_method.upper() == "HEAD"
    conn = h11.Connection(our_role=h11.CLIENT)
    # Only HEAD changes the framing of a response; other methods are framed like GET.
    method = b"HEAD" if head_request else b"GET"
    conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"app")]))
    conn.send(h11.EndOfMessage())
    response: h11.Response | None = None
    chunks: list[bytes] = []
    try:
        conn.receive_data(data)
        conn.receive_data(b"")
        while True:
            event = conn.next_event()
            if isinstance(event, h11.InformationalResponse):
                _check_version(event.http_version)  # RH-49: interim responses are skipped
            elif isinstance(event, h11.Response):
                _check_version(event.http_version)
                if event.status_code > 599:
                    raise _invalid("status code out of range")
                names = {name for name, _ in event.headers}
                if b"content-length" in names and b"transfer-encoding" in names:
                    raise _invalid("both Content-Length and Transfer-Encoding")  # RH-50
                response = event
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # pragma: no cover - h11 raises instead once EOF has been given
                raise _invalid("incomplete response")
    except h11.ProtocolError as exc:
        raise _describe(exc, in_body=response is not None) from None
    if response is None:  # pragma: no cover - h11 always yields a Response first
        raise _invalid("no final response")

    names = {bytes(name) for name, _ in response.headers}
    parsed = relayable_response(response, b"".join(chunks), head_request=head_request)
    no_body = parsed.no_body
    eof_delimited = not no_body and not names & {b"content-length", b"transfer-encoding"}
    leftover, _closed = conn.trailing_data
    return parsed, bytes(leftover), eof_delimited


def relayable_response(
    response: h11.Response, body: bytes, *, head_request: bool
) -> ParsedResponse:
    """An h11 response and its body as relayed: hop-by-hop headers and Content-Length dropped,
    the declared length kept for HEAD and 304 (RH-50, RH-51)."""
    raw_headers = [(bytes(name), bytes(value)) for name, value in response.headers]
    status = response.status_code
    declared_length: int | None = None
    if head_request or status == 304:
        declared = [value for name, value in raw_headers if name == b"content-length"]
        # h11 has already checked it: 1-20 digits, duplicates equal and merged.
        declared_length = int(declared[0]) if declared else None
    dropped = hop_by_hop_names(raw_headers) | HOP_BY_HOP | {b"content-length"}
    return ParsedResponse(
        status=status,
        reason=bytes(response.reason),
        headers=[(name, value) for name, value in raw_headers if name not in dropped],
        body=body,
        declared_length=declared_length,
        no_body=head_request or status in (204, 304),  # RH-51
    )


def parse_embedded_response(data: bytes, *, request_method: str = "GET") -> ParsedResponse:
    """Parse the one HTTP response in a reply body (RH-48..RH-51).

    The body ends at Content-Length, at the end of a chunked body, or at the end of ``data`` when
    neither is given (RH-49: the Python and Java clients send no Content-Length). A reply to HEAD,
    or a 204 or 304, has no body and any bytes after its head are ignored (RH-51); 1xx interim
    responses are skipped. Bytes left after a framed body must be CR/LF only.

    Raises:
        InvalidResponse: ``data`` is empty or not a valid HTTP/1.x response, or is ambiguous.
    """
    parsed, leftover, _eof = _parse_one(data, request_method)
    if not parsed.no_body and leftover.strip(b"\r\n"):
        raise _invalid("unexpected data after the response (body longer than Content-Length?)")
    return parsed


def parse_first_response(
    data: bytes, *, request_method: str = "GET"
) -> tuple[ParsedResponse, bytes]:
    """The response at the start of ``data`` (a socket's bytes: PTTH) and the bytes after it,
    by the rules of :func:`parse_embedded_response`; a body with neither Content-Length nor
    chunked coding is the rest of ``data`` (it ended when the peer closed).

    Raises:
        InvalidResponse: ``data`` does not start with a valid HTTP/1.x response.
    """
    parsed, leftover, _eof = _parse_one(data, request_method)
    return parsed, leftover


def parse_embedded_responses(
    data: bytes, *, request_methods: Sequence[str]
) -> list[ParsedResponse]:
    """Parse one response per entry of ``request_methods``, concatenated in ``data``.

    Used for ``application/http`` and for the Java client, which POSTs all the responses to one
    poll in a single body. Every response but the last must be framed by Content-Length or
    chunked encoding (or have no body); CR/LF between responses is skipped.

    Raises:
        InvalidResponse: a response is invalid, or the number of responses differs.
    """
    expected = len(request_methods)
    results: list[ParsedResponse] = []
    rest = data
    for index, method in enumerate(request_methods):
        if index:
            rest = rest.lstrip(b"\r\n")
        if not rest:
            if not data:
                raise _invalid("empty body")
            raise _invalid(f"expected {expected} responses, got {index}")
        parsed, rest, eof_delimited = _parse_one(rest, method)
        if eof_delimited and index < expected - 1:
            raise _invalid(
                f"expected {expected} responses, got {index + 1}"
                " (only the last may omit Content-Length)"
            )
        results.append(parsed)
    if rest.strip(b"\r\n") and not (results and results[-1].no_body):
        raise _invalid(f"expected {expected} responses, got more")
    return results
