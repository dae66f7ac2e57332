"""The ``message/http`` request the gateway hands to the application (RH-27, RH-35..RH-39)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "HOP_BY_HOP",
    "EmbeddedRequest",
    "build_embedded_request",
    "hop_by_hop_names",
    "split_embedded_request",
    "with_content_length",
]

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
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
    }
)
"""Lower-case names never relayed (RH-39, RH-50). ``content-length`` is handled separately."""

_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_CRLF = b"\r\n"


def hop_by_hop_names(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Return :data:`HOP_BY_HOP` plus the lower-case names listed in any ``Connection`` header."""
    listed: set[bytes] | None = None
    for name, value in headers:
        if name.lower() == b"connection":
            listed = listed or set()
            listed.update(token.strip().lower() for token in value.split(b","))
    if not listed:
        return HOP_BY_HOP
    listed.discard(b"")
    return HOP_BY_HOP | listed


_canonical_names: dict[bytes, bytes] = {}


def _canonical_name(name: bytes) -> bytes:
    """``content-type`` -> ``Content-Type``: each dash-separated word capitalised (cached)."""
    known = _canonical_names.get(name)
    if known is None:
        known = b"-".join(word.capitalize() for word in name.split(b"-"))
        if len(_canonical_names) < 10_000:  # bounded: names come from anyone
            _canonical_names[name] = known
    return known


_CONTROL_RE = re.compile(rb"[\x00-\x20\x7f]")


def _check_value(what: str, value: bytes) -> None:
    if b"\r" in value or b"\n" in value or b"\0" in value:
        raise ValueError(f"{what} contains CR, LF or NUL")


def build_embedded_request(
    *,
    method: str,
    target: bytes,
    http_version: str,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
    default_host: bytes,
    streamed: bool = False,
) -> bytes:
    """Serialise a third-party request as the body of a ``message/http`` poll response.

    The request line keeps ``method`` and the raw ``target`` byte for byte (RH-27); any version
    but ``"1.0"`` is written as ``HTTP/1.1`` (RH-36). Header names are written in Title-Case,
    duplicates stay separate lines in their original order (RH-38), hop-by-hop headers and any
    incoming ``Content-Length`` are dropped (RH-39), ``Host: default_host`` is put first when no
    ``Host`` was given (RH-36), and ``Content-Length`` is added last when ``body`` is non-empty or
    the method is POST, PUT or PATCH (RH-37). Lines end with CRLF (RH-35). With
    ``streamed=True`` no ``Content-Length`` is written: the body follows separately and the
    transport adds the framing (:func:`with_content_length`).

    Raises:
        ValueError: ``method`` or a header name is not an HTTP token, ``target`` is empty or
            contains whitespace or control characters, or a header value or ``default_host``
            contains CR, LF or NUL.
    """
    method_bytes = method.encode("ascii", "replace")
    if _TOKEN_RE.fullmatch(method_bytes) is None:
        raise ValueError("method is not an HTTP token")
    if not target or _CONTROL_RE.search(target) is not None:
        raise ValueError("request target is empty or contains whitespace or control characters")
    headers = list(headers)
    dropped = hop_by_hop_names(headers)
    version = b"HTTP/1.0" if http_version == "1.0" else b"HTTP/1.1"
    lines = [method_bytes + b" " + target + b" " + version]
    has_host = False
    for name, value in headers:
        if _TOKEN_RE.fullmatch(name) is None:
            raise ValueError("header name is not an HTTP token")
        if b"\r" in value or b"\n" in value or b"\0" in value:
            raise ValueError(f"{name.decode('ascii')} header contains CR, LF or NUL")
        lower = name.lower()
        if lower in dropped or lower == b"content-length":
            continue
        if lower == b"host":
            has_host = True
        lines.append(_canonical_name(lower) + b": " + value)
    if not has_host:
        _check_value("default host", default_host)
        lines.insert(1, b"Host: " + default_host)
    if not streamed and (body or method in _BODY_METHODS):
        lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
    return _CRLF.join(lines) + _CRLF + _CRLF + body


def with_content_length(head: bytes, length: int) -> bytes:
    """Add ``Content-Length`` to a head built with ``streamed=True`` (ends with CRLF CRLF)."""
    return head[:-2] + b"Content-Length: " + str(length).encode("ascii") + _CRLF + _CRLF


class EmbeddedRequest(NamedTuple):
    """The parts of an envelope written by :func:`build_embedded_request`."""

    method: str
    target: bytes
    http_version: str
    headers: list[tuple[bytes, bytes]]
    body: bytes


def split_embedded_request(envelope: bytes) -> EmbeddedRequest:
    """Split an envelope this module built back into its parts (header names keep their case).

    Only for the gateway's own, already validated envelopes; raises ``ValueError`` otherwise.
    """
    head, separator, body = envelope.partition(_CRLF + _CRLF)
    if not separator:
        raise ValueError("envelope has no end of head")
    request_line, *lines = head.split(_CRLF)
    method, target, version = request_line.split(b" ")
    headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ValueError("envelope header without a colon")
        headers.append((name, value.strip()))
    return EmbeddedRequest(
        method.decode("ascii"), target, version.decode("ascii").removeprefix("HTTP/"), headers, body
    )
