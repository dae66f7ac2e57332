"""The ``message/http`` envelopes on the application's side of the gateway.

A poll answers with one embedded HTTP request; the application POSTs back one HTTP response.
An ``application/http`` poll answer (RH-26) holds several requests, answered by the same number
of responses, concatenated in the same order.
Requests are parsed by :func:`.http1_wire.parse_request` with h11's server-side rules, so
framing, header syntax and the request line are checked exactly as a real HTTP server would.
Replies are always framed by ``Content-Length``, which every ReverseHttp gateway accepts
(PROTOCOL.md RH-49, RH-50).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from http import HTTPStatus

from ..protocol.embedded_request import HOP_BY_HOP
from .http1_wire import ProtocolError, Request, parse_request, parse_requests

__all__ = [
    "AppResponse",
    "EmbeddedRequest",
    "InvalidEmbeddedRequest",
    "build_head",
    "build_reply",
    "has_body",
    "parse_request_head",
    "reason_phrase",
    "relayed_headers",
    "status_line",
    "parse_embedded_request",
    "parse_embedded_requests",
    "parse_requesting_client",
]

logger = logging.getLogger("reversehttp_gateway.client")

# Framing and connection headers the client recomputes or that only concern one hop.
_NOT_RELAYED = HOP_BY_HOP | {b"content-length"}


class InvalidEmbeddedRequest(ValueError):
    """The body of a 200 poll response is not one valid HTTP/1.x request."""


@dataclass(frozen=True, slots=True)
class EmbeddedRequest:
    """A third-party request as delivered by the gateway.

    ``target`` is the raw request-target (``/label/a%2Fb?x=1``); header names are lower-case,
    in their original order, duplicates kept. ``requesting_client`` is the third party's
    ``(ip, port)`` from the ``Requesting-Client`` header, when the gateway sent one.
    """

    method: str
    target: bytes
    http_version: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    requesting_client: tuple[str, int] | None = None

    @property
    def raw_path(self) -> bytes:
        """The target without its query string, still percent-encoded."""
        return self.target.partition(b"?")[0]

    @property
    def query_string(self) -> bytes:
        return self.target.partition(b"?")[2]

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class AppResponse:
    """The application's answer: status, ``(name, value)`` headers and the whole body."""

    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    reason: bytes = b""


def parse_requesting_client(value: str | None) -> tuple[str, int] | None:
    """``"1.2.3.4:5678"`` or ``"[::1]:5678"`` -> ``(host, port)``; None if absent or malformed."""
    if not value:
        return None
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def parse_embedded_request(data: bytes, *, requesting_client: str | None = None) -> EmbeddedRequest:
    """Parse the body of a 200 poll response (one ``message/http`` request).

    Raises:
        InvalidEmbeddedRequest: ``data`` is not exactly one complete HTTP/1.x request.
    """
    try:
        request = parse_request(data)
    except ProtocolError as exc:
        raise InvalidEmbeddedRequest(str(exc)) from None
    return _embedded(request, requesting_client)


def parse_embedded_requests(
    data: bytes, *, requesting_client: str | None = None
) -> list[EmbeddedRequest]:
    """Parse the body of an ``application/http`` 200: requests in queue order (RH-26).

    ``requesting_client`` is the ``Requesting-Client`` header: this gateway lists one address
    per request, comma-separated; a gateway that sends one address gives it to the first.

    Raises:
        InvalidEmbeddedRequest: ``data`` is not a sequence of complete HTTP/1.x requests.
    """
    try:
        requests = parse_requests(data)
    except ProtocolError as exc:
        raise InvalidEmbeddedRequest(str(exc)) from None
    clients = [part.strip() for part in requesting_client.split(",")] if requesting_client else []
    return [
        _embedded(request, clients[index] if index < len(clients) else None)
        for index, request in enumerate(requests)
    ]


def parse_request_head(data: bytes, *, requesting_client: str | None = None) -> EmbeddedRequest:
    """Parse the head of a request whose body arrives separately (a streamed WebSocket request).

    The returned request's ``body`` is empty; a ``Content-Length`` in the head is kept.

    Raises:
        InvalidEmbeddedRequest: ``data`` does not start with a complete HTTP/1.x request head.
    """
    try:
        request = parse_request(data, head_only=True)
    except ProtocolError as exc:
        raise InvalidEmbeddedRequest(str(exc)) from None
    return _embedded(request, requesting_client)


def _embedded(request: Request, requesting_client: str | tuple[str, int] | None) -> EmbeddedRequest:
    client = (
        requesting_client
        if isinstance(requesting_client, tuple)
        else parse_requesting_client(requesting_client)
    )
    return EmbeddedRequest(
        method=request.method.decode("ascii"),
        target=request.target,
        http_version=request.http_version.decode("ascii"),
        headers=request.headers,
        body=request.body,
        requesting_client=client,
    )


def reason_phrase(status: int, reason: bytes = b"") -> bytes:
    """``reason`` if it is safe to write, else the standard phrase for ``status`` (or empty)."""
    return _reason(status, reason)


def _reason(status: int, reason: bytes) -> bytes:
    if reason and not any(byte in reason for byte in b"\r\n\0"):
        return reason
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _safe(name: bytes, value: bytes) -> bool:
    """Header fields that could split the reply (CR, LF, NUL, a bad name) are never written."""
    bad_name = not name or any(byte in name for byte in b" \t\r\n\0:")
    if bad_name or any(byte in value for byte in b"\r\n\0"):
        logger.warning("dropping malformed response header %r", name[:40])
        return False
    return True


def has_body(request_method: str, status: int) -> bool:
    """Whether a response with ``status`` to ``request_method`` carries a body (RFC 9110)."""
    return request_method.upper() != "HEAD" and status >= 200 and status not in (204, 304)


def relayed_headers(
    headers: list[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    """The application's headers minus framing and hop-by-hop ones, and its ``Content-Length``.

    Fields named in ``Connection`` are dropped too, and so are fields that could split the
    message (CR, LF, NUL, a bad name). The declared ``Content-Length`` (the first one) is
    returned separately: each transport decides whether to keep it.
    """
    names_to_drop = set(_NOT_RELAYED)
    for name, value in headers:
        if name.lower() == b"connection":
            names_to_drop.update(token.strip().lower() for token in value.split(b","))
    kept: list[tuple[bytes, bytes]] = []
    declared: bytes | None = None
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length" and declared is None:
            declared = value.strip()
        if lower in names_to_drop or not _safe(name, value):
            continue
        kept.append((name, value))
    return kept, declared


def status_line(status: int, reason: bytes = b"") -> bytes:
    """``HTTP/1.1 <status> <reason>`` (the standard phrase when ``reason`` is empty or unsafe).

    Raises:
        ValueError: ``status`` is not a three-digit code from 100 to 599.
    """
    if not 100 <= status <= 599:
        raise ValueError(f"status code out of range: {status}")
    return b"HTTP/1.1 %d %s" % (status, _reason(status, reason))


def build_head(status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"") -> bytes:
    """The head of a streamed response (WebSocket ``response-start``): status line and headers.

    A ``Content-Length`` the application declared is kept (the gateway then relays the body with
    it instead of the chunked coding); other framing and hop-by-hop headers are dropped.
    """
    lines = [status_line(status, reason)]
    kept, declared = relayed_headers(headers)
    lines.extend(name + b": " + value for name, value in kept)
    if declared is not None and declared.isdigit() and status >= 200 and status != 204:
        lines.append(b"Content-Length: " + declared)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def build_reply(response: AppResponse, *, request_method: str = "GET") -> bytes:
    """Serialise ``response`` as the ``message/http`` reply body.

    ``HTTP/1.1 <status> <reason>``, the application's headers (minus framing and hop-by-hop
    ones), ``Content-Length: <len(body)>``, a blank line and the body. A 1xx or 204 has neither
    Content-Length nor body; a reply to HEAD or a 304 keeps the application's own
    Content-Length (the size of the representation) and has no body.
    """
    status = response.status
    lines = [status_line(status, response.reason)]
    kept, declared = relayed_headers(response.headers)
    lines.extend(name + b": " + value for name, value in kept)
    body = response.body
    if status < 200 or status == 204:
        body = b""
    elif request_method.upper() == "HEAD" or status == 304:
        body = b""
        if declared is not None and declared.isdigit():
            lines.append(b"Content-Length: " + declared)
    else:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
