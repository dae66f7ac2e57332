"""The JSON long-poll encoding of Lentczner and Preston, for browser code (CJ-01..CJ-08).

A request event is a JSON object with ``message-id``, ``method``, ``request-uri``,
``http-version`` (the real ``HTTP/1.x``, CJ-06), ``headers`` as a list of ``[name, value]`` pairs
(order and duplicates kept, CJ-02), ``body`` and ``body-encoding`` (``"utf-8"`` or ``"base64"``,
CJ-07), plus ``requesting-client``. A reply echoes ``message-id`` and gives ``status``, ``reason``,
``headers`` and ``body`` (CJ-04, key names are our choice; readers are lenient).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from .embedded_request import split_embedded_request
from .embedded_response import ParsedResponse, parse_embedded_response

__all__ = ["InvalidReplyEvent", "request_event", "parse_reply_event"]

_FRAMING = {b"content-length", b"transfer-encoding"}


class InvalidReplyEvent(ValueError):
    """A JSON reply that cannot be relayed; str() is the 400 message for the application."""


def _encode_body(body: bytes) -> tuple[str, str]:
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"


def request_event(envelope: bytes, message_id: str, requesting_client: str) -> dict[str, Any]:
    """The JSON event for one embedded request (CJ-02, CJ-06, CJ-07)."""
    request = split_embedded_request(envelope)
    body, encoding = _encode_body(request.body)
    return {
        "message-id": message_id,
        "method": request.method,
        "request-uri": request.target.decode("latin-1"),
        "http-version": f"HTTP/{request.http_version}",
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.headers],
        "body": body,
        "body-encoding": encoding,
        "requesting-client": requesting_client,
    }


def _headers(value: Any) -> list[tuple[bytes, bytes]]:
    if value is None:
        return []
    pairs = value.items() if isinstance(value, dict) else value
    headers = []
    try:
        for name, item in pairs:
            if not isinstance(name, str) or not isinstance(item, str | int):
                raise InvalidReplyEvent("Invalid reply: header names and values must be strings")
            if any(c in f"{name}{item}" for c in "\r\n\0"):
                raise InvalidReplyEvent("Invalid reply: CR, LF or NUL in a header")
            headers.append((name.encode("latin-1"), str(item).encode("latin-1")))
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        if isinstance(exc, InvalidReplyEvent):
            raise
        raise InvalidReplyEvent("Invalid reply: headers must be [name, value] pairs") from exc
    return headers


def _body(event: dict[str, Any]) -> bytes:
    body = event.get("body", "")
    if not isinstance(body, str):
        raise InvalidReplyEvent("Invalid reply: body must be a string")
    encoding = event.get("body-encoding", "utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidReplyEvent("Invalid reply: body is not valid base64") from exc
    if encoding in ("utf-8", "text", None):
        return body.encode("utf-8")
    raise InvalidReplyEvent("Invalid reply: body-encoding must be utf-8 or base64")


def parse_reply_event(event: Any, *, request_method: str = "GET") -> ParsedResponse:
    """Validate a JSON reply and return it as a relayable response (raises InvalidReplyEvent).

    The reply is re-encoded as an HTTP/1.1 message and goes through the same parser as
    ``message/http`` replies, so both encodings obey the same rules (RH-48..RH-51).
    """
    if not isinstance(event, dict):
        raise InvalidReplyEvent("Invalid reply: expected a JSON object")
    status = event.get("status", 200)
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise InvalidReplyEvent("Invalid reply: status must be an integer from 100 to 599")
    reason = event.get("reason", "")
    if not isinstance(reason, str) or any(c in reason for c in "\r\n\0"):
        raise InvalidReplyEvent("Invalid reply: bad reason phrase")
    headers = [(n, v) for n, v in _headers(event.get("headers")) if n.lower() not in _FRAMING]
    body = _body(event)
    head = f"HTTP/1.1 {status} {reason}".rstrip().encode("latin-1", "replace") + b"\r\n"
    for name, value in headers:
        head += name + b": " + value + b"\r\n"
    head += b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    try:
        return parse_embedded_response(head + body, request_method=request_method)
    except ValueError as exc:
        raise InvalidReplyEvent(str(exc)) from exc
