"""PTTH in forward mode: whole requests parsed by ``httptools`` and answered in one write.

The reversed socket's general path (:mod:`.ptth`) parses each request with h11, runs the handler
in the worker's task and writes the response through h11's events: about half of the tunnel
client's CPU per PTTH request. The gateway writes one whole request at a time (PT-06), and in
forward mode most are small: :class:`RequestReader` parses such a request from the bytes read
with llhttp, :func:`.origin_direct.start` relays it to the local server by callbacks, and the
worker writes the reply (status line, headers, ``Content-Length``, body) in one write.

A request is taken only if it is whole in the bytes read (at most :data:`MAX_REQUEST` bytes),
HTTP/1.1 with a ``Host``, keep-alive, not HEAD, with no ``Transfer-Encoding``, ``Expect`` or
``Upgrade`` and nothing after it. Anything else — and anything llhttp refuses — is handed,
with every byte read so far, to h11 and the general path, which answers it exactly as before.
"""

from __future__ import annotations

import httptools

from .envelope import EmbeddedRequest

__all__ = ["MAX_REQUEST", "RequestReader"]

MAX_REQUEST = 64 * 1024 + 8 * 1024  # head and body held to look for a whole request
_REFUSED_HEADERS = frozenset({b"transfer-encoding", b"expect", b"upgrade"})


class _NotForUs(Exception):
    """Raised in an llhttp callback: the general path takes this request."""


class RequestReader:
    """Reads one request from the bytes fed to it: :meth:`feed` says whether it is whole yet.

    ``raw`` keeps every byte fed, for a handover to h11.
    """

    __slots__ = (
        "raw",
        "_size",
        "_parser",
        "_target",
        "_headers",
        "_body",
        "_complete",
        "_keep_alive",
        "_host",
    )

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self._size = 0
        self._parser = httptools.HttpRequestParser(self)
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._complete = False
        self._keep_alive = False
        self._host = False

    def feed(self, data: bytes) -> bool | None:
        """Feed bytes read from the socket: True once the request is whole, False while more
        bytes are needed, None if the general path must take it (then feed nothing more)."""
        self.raw.append(data)
        self._size += len(data)
        if self._complete or self._size > MAX_REQUEST:
            return None  # bytes after the request, or too much to hold
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None  # _NotForUs, bytes llhttp refuses, CONNECT
        if not self._complete:
            return False
        parser = self._parser
        if (
            parser.get_http_version() != "1.1"
            or not self._keep_alive
            or not self._host
            or parser.get_method() == b"HEAD"
        ):
            return None
        return True

    def request(self, requesting_client: tuple[str, int] | None) -> EmbeddedRequest:
        """The whole request (after :meth:`feed` returned True)."""
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        return EmbeddedRequest(
            method=self._parser.get_method().decode("ascii"),
            target=self._target,
            http_version="1.1",
            headers=self._headers,
            body=body,
            requesting_client=requesting_client,
        )

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return self._headers

    # llhttp callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise _NotForUs  # a second request in the same bytes

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _REFUSED_HEADERS:
            raise _NotForUs
        if name == b"host":
            self._host = True
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it afterwards
