"""HTTP/1.1 bytes for the lean client: request heads written, responses parsed, no I/O.

The grammar and the framing rules are h11's (the regular expressions are copied from
``h11/_abnf.py``; ``tests/client/test_http1_wire.py`` checks the parser against h11 on generated
responses), without h11's event objects and state machine, which cost about 40 µs per exchange:
as much as the rest of a relayed request's work in the tunnel client.

- :func:`request_head` validates the method, target and header fields (so nothing can split the
  request) and writes them as given.
- :class:`ResponseParser` takes bytes as they arrive and gives the head of the next final
  response (interim 1xx ones skipped), then the body in pieces. Framing as RFC 9112 and h11: no
  body for HEAD, 204 and 304; ``Transfer-Encoding: chunked`` (the only coding accepted), then
  ``Content-Length`` (one value, repeats must agree), else the body ends with the connection.
  ``keep_alive`` is false for HTTP/1.0, ``Connection: close`` and bodies read to the close.
"""

from __future__ import annotations

import re

__all__ = [
    "ProtocolError",
    "Request",
    "ResponseHead",
    "ResponseParser",
    "parse_request",
    "parse_requests",
    "request_head",
]

Headers = list[tuple[bytes, bytes]]

_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_REQUEST_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?")
_HEADER_FIELD = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*"
)
_OBS_FOLD = re.compile(rb"[ \t]+")
_CHUNK_HEADER = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_MAX_LENGTH_DIGITS = 20

# Parser states
_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _DONE = range(5)
# Chunked sub-states
_SIZE, _DATA, _CRLF, _TRAILER = range(4)


class ProtocolError(Exception):
    """Bytes that are not a valid HTTP/1.1 message (or a request that cannot be written)."""


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """``METHOD target HTTP/1.1``, the header fields as given, and the blank line.

    Raises:
        ProtocolError: an invalid method, target or field, or no ``Host`` field.
    """
    if _TOKEN.fullmatch(method) is None:
        raise ProtocolError(f"illegal method {method!r}")
    if _TARGET.fullmatch(target) is None:
        raise ProtocolError(f"illegal request target {target!r}")
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    host = False
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None:
            raise ProtocolError(f"illegal header name {name!r}")
        if _FIELD_VALUE.fullmatch(value) is None:
            raise ProtocolError(f"illegal header value {value!r}")
        host = host or name.lower() == b"host"
        parts += (name, b": ", value, b"\r\n")
    if not host:
        raise ProtocolError("missing mandatory Host header")
    parts.append(b"\r\n")
    return b"".join(parts)


class ResponseHead:
    """Status line and header fields (names in the peer's case, in order) of a response."""

    __slots__ = ("status", "reason", "http_version", "headers")

    def __init__(self, status: int, reason: bytes, http_version: bytes, headers: Headers) -> None:
        self.status = status
        self.reason = reason
        self.http_version = http_version
        self.headers = headers


def _lines(block: bytes) -> list[bytes]:
    """The lines of a head that ends with its blank line (``\\r\\n`` or bare ``\\n``)."""
    lines = block.split(b"\n")
    del lines[-2:]
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _fields(lines: list[bytes]) -> Headers:
    """Header field lines (obsolete line folding joined) as ``(name, value)``."""
    joined: list[bytes] = []
    for line in lines:
        fold = _OBS_FOLD.match(line)
        if fold is None:
            joined.append(line)
        elif not joined:
            raise ProtocolError("continuation line at start of headers")
        else:
            joined[-1] += b" " + line[fold.end() :]
    fields: Headers = []
    for line in joined:
        match = _HEADER_FIELD.fullmatch(line)
        if match is None:
            raise ProtocolError(f"illegal header line: {line!r}")
        fields.append((match.group(1), match.group(2)))
    return fields


def _framing_fields(headers: Headers) -> tuple[Headers, bytes | None, bool, bool]:
    """``(headers, Content-Length, chunked, Connection: close)``, checked and normalised as h11
    does: one Content-Length value (repeats must agree and are dropped), only
    ``Transfer-Encoding: chunked`` (lower-cased)."""
    kept: Headers = []
    length: bytes | None = None
    chunked = False
    close = False
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            values = {item.strip() for item in value.split(b",")}
            if len(values) != 1:
                raise ProtocolError("conflicting Content-Length headers")
            value = values.pop()
            if not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                raise ProtocolError("bad Content-Length")
            if length is not None:
                if value != length:
                    raise ProtocolError("conflicting Content-Length headers")
                continue
            length = value
        elif lower == b"transfer-encoding":
            if chunked:
                raise ProtocolError("multiple Transfer-Encoding headers")
            value = value.lower()
            if value != b"chunked":
                raise ProtocolError("only Transfer-Encoding: chunked is supported")
            chunked = True
        elif lower == b"connection":
            close = close or b"close" in [t.strip().lower() for t in value.split(b",")]
        kept.append((name, value))
    return kept, length, chunked, close


class Request:
    """A request parsed whole by :func:`parse_request`; header names are lower-cased (as h11)."""

    __slots__ = ("method", "target", "http_version", "headers", "body")

    def __init__(
        self, method: bytes, target: bytes, http_version: bytes, headers: Headers, body: bytes
    ) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        self.body = body


def parse_request(data: bytes, *, head_only: bool = False) -> Request:
    """The one request at the start of ``data``, which must hold all of it (h11's server rules).

    With ``head_only`` the body is not looked for (it travels separately) and ``body`` is
    empty. Bytes after the request are ignored, as h11 does.

    Raises:
        ProtocolError: ``data`` does not start with one complete, valid HTTP/1.x request.
    """
    return _parse_at(data, 0, head_only=head_only, chunked_ok=True)[0]


def parse_requests(data: bytes) -> list[Request]:
    """Every request of an ``application/http`` pipeline, in order (RH-26).

    Each request's body is framed by ``Content-Length`` (or has none), as a gateway writes them.

    Raises:
        ProtocolError: ``data`` is empty, holds an invalid or incomplete request, or a chunked one.
    """
    requests: list[Request] = []
    start = 0
    while start < len(data) or not requests:
        request, start = _parse_at(data, start, head_only=False, chunked_ok=False)
        requests.append(request)
    return requests


def _parse_at(data: bytes, start: int, *, head_only: bool, chunked_ok: bool) -> tuple[Request, int]:
    """The request starting at ``data[start]`` and the offset just after it."""
    if data[start : start + 1] == b"\n" or data[start : start + 2] == b"\r\n":
        raise ProtocolError("no request line received")
    blank = _BLANK_LINE.search(data, start)
    if blank is None:
        raise ProtocolError("incomplete request head")
    end = blank.end()
    lines = _lines(data[start:end])
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise ProtocolError(f"illegal request line: {lines[0]!r}")
    method, target, version = match.groups()
    headers, length, chunked, _close = _framing_fields(_fields(lines[1:]))
    headers = [(name.lower(), value) for name, value in headers]
    hosts = sum(1 for name, _ in headers if name == b"host")
    if hosts > 1:
        raise ProtocolError("Found multiple Host: headers")
    if hosts == 0 and version == b"1.1":
        raise ProtocolError("Missing mandatory Host: header")
    body = b""
    if head_only:
        pass
    elif chunked:
        if not chunked_ok:
            raise ProtocolError("a chunked request in a pipeline")
        parser = ResponseParser()
        parser.feed(data[end:])
        parser.feed_eof()
        parser._state = _CHUNKED
        pieces = []
        while piece := parser.body():
            pieces.append(piece)
        if piece is None:  # pragma: no cover - at the end of the data the parser decides
            raise ProtocolError("incomplete chunked body")
        body = b"".join(pieces)
        end = len(data)
    elif length is not None:
        size = int(length)
        body = data[end : end + size]
        if len(body) < size:
            raise ProtocolError(
                f"incomplete request body (received {len(body)} bytes, expected {size})"
            )
        end += size
    return Request(method, target, version, headers, body), end


class ResponseParser:
    """The responses on one connection, parsed from bytes fed in as they arrive.

    Per response: :meth:`head` until it returns the head, then :meth:`body` until it returns
    ``b""``, then :meth:`reset` before the next request. ``None`` from either means "feed more".
    """

    __slots__ = (
        "_data",
        "_eof",
        "_search",
        "_state",
        "_chunk_state",
        "_remaining",
        "_max_head",
        "keep_alive",
    )

    def __init__(self, max_head: int = 100 * 1024) -> None:
        self._data = bytearray()
        self._eof = False
        self._search = 0  # where to resume looking for the blank line
        self._state = _HEAD
        self._chunk_state = _SIZE
        self._remaining = 0
        self._max_head = max_head
        self.keep_alive = True

    def feed(self, data: bytes) -> None:
        self._data += data

    def feed_eof(self) -> None:
        self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes received and not consumed yet (after a response: bytes nobody asked for)."""
        return len(self._data)

    def reset(self) -> None:
        """Expect the next response (after the previous one's body ended)."""
        self._state = _HEAD
        self._chunk_state = _SIZE
        self._remaining = 0
        self._search = 0

    # Head -------------------------------------------------------------------------------------

    def _block(self) -> bytes | None:
        """Everything up to and including the next blank line, or None if not there yet."""
        data = self._data
        match = _BLANK_LINE.search(data, self._search)
        if match is None:
            if len(data) > self._max_head:
                raise ProtocolError("response head too long")
            if self._eof:
                raise ProtocolError("the server closed the connection during the response head")
            self._search = max(0, len(data) - 2)
            return None
        end = match.end()
        block = bytes(data[:end])
        del data[:end]
        self._search = 0
        return block

    def head(self, method: bytes) -> ResponseHead | None:
        """The head of the next final response to a ``method`` request; None: feed more."""
        while True:
            data = self._data
            if data[:1] == b"\n" or data[:2] == b"\r\n":
                raise ProtocolError("no response line received")
            block = self._block()
            if block is None:
                return None
            lines = _lines(block)
            match = _STATUS_LINE.fullmatch(lines[0])
            if match is None:
                raise ProtocolError(f"illegal status line: {lines[0]!r}")
            version, code, reason = match.groups()
            status = int(code)
            headers = _fields(lines[1:])
            if status < 200:
                if status == 101:
                    raise ProtocolError("101 Switching Protocols to a request without Upgrade")
                continue  # 100 Continue, 103 Early Hints ...: the final response follows
            return self._frame(method, ResponseHead(status, reason or b"", version, headers))

    def _frame(self, method: bytes, head: ResponseHead) -> ResponseHead:
        """Normalise framing fields as h11 does and pick the body's framing."""
        kept, length, chunked, close = _framing_fields(head.headers)
        head.headers = kept
        self.keep_alive = not close and head.http_version >= b"1.1"
        status = head.status
        if status in (204, 304) or method == b"HEAD" or (method == b"CONNECT" and status < 300):
            self._state = _DONE
        elif chunked:
            self._state = _CHUNKED
            self._chunk_state = _SIZE
        elif length is not None:
            self._state = _LENGTH
            self._remaining = int(length)
        else:
            self._state = _UNTIL_CLOSE
            self.keep_alive = False
        return head

    # Body -------------------------------------------------------------------------------------

    def body(self) -> bytes | None:
        """The next piece of the body; ``b""`` at its end; None: feed more."""
        state = self._state
        data = self._data
        if state == _LENGTH:
            if self._remaining == 0:
                self._state = _DONE
                return b""
            if not data:
                if self._eof:
                    raise ProtocolError("the server closed the connection during the body")
                return None
            return self._take(self._remaining)
        if state == _CHUNKED:
            return self._chunked()
        if state == _UNTIL_CLOSE:
            if data:
                piece = bytes(data)
                data.clear()
                return piece
            if self._eof:
                self._state = _DONE
                return b""
            return None
        if state == _DONE:
            return b""
        raise ProtocolError("no response head read yet")

    def _take(self, limit: int) -> bytes:
        data = self._data
        if len(data) <= limit:
            piece = bytes(data)
            data.clear()
        else:
            piece = bytes(data[:limit])
            del data[:limit]
        self._remaining -= len(piece)
        return piece

    def _chunked(self) -> bytes | None:
        data = self._data
        while True:
            sub = self._chunk_state
            if sub == _DATA:
                if not data:
                    break
                piece = self._take(self._remaining)
                if self._remaining == 0:
                    self._chunk_state = _CRLF
                return piece
            if sub == _CRLF:
                if len(data) < 2:
                    if data and data[:1] != b"\r":
                        raise ProtocolError("malformed chunk footer")
                    break
                if data[:2] != b"\r\n":
                    raise ProtocolError("malformed chunk footer")
                del data[:2]
                self._chunk_state = _SIZE
            elif sub == _SIZE:
                end = data.find(b"\r\n")
                if end < 0:
                    if len(data) > self._max_head:
                        raise ProtocolError("chunk header too long")
                    break
                match = _CHUNK_HEADER.fullmatch(data, 0, end + 2)
                if match is None:
                    raise ProtocolError(f"illegal chunk header: {bytes(data[: end + 2])!r}")
                size = int(match.group(1), 16)
                del data[: end + 2]
                if size:
                    self._remaining = size
                    self._chunk_state = _DATA
                else:
                    self._chunk_state = _TRAILER
            else:  # trailer fields, then the blank line
                if data[:1] == b"\n" or data[:2] == b"\r\n":
                    del data[: 1 if data[:1] == b"\n" else 2]
                else:
                    block = self._block()
                    if block is None:
                        return None
                    _fields(_lines(block))  # validated, then dropped (as httpx does)
                self._state = _DONE
                return b""
        if self._eof:
            raise ProtocolError("the server closed the connection during a chunked body")
        return None
