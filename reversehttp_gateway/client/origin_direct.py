"""One request to the local server answered by callbacks, with ``httptools`` (llhttp) parsing.

Forward mode's general path (:meth:`.handlers.ForwardHandler.serve`) runs each request to the
local server in a task: the request is written, the task waits for the response head, then for
its body, and hands the response on. For the common case (a whole request, a small response
framed by ``Content-Length``, an idle keep-alive connection in the pool) that is several task
wake-ups and futures per request. :class:`DirectExchange` does the same work in the callbacks of
the connection's protocol: the request is written at once, the response is parsed by llhttp as
its bytes arrive, and the finished :class:`~.envelope.AppResponse` is handed to a callback in
the event-loop turn in which its last byte arrived. No task, no future.

It takes only what it can finish alone and hands the rest to the general path, never drops it:

- at the start (:func:`start`): no idle connection, a request the general path would write
  differently, or a HEAD request (llhttp cannot be told that a response has no body) → declined;
  the caller runs the general path;
- at the end of the response head: an interim (1xx) response, a status above 599 (the general
  path reports it), a version other than HTTP/1.1,
  a body framed by anything but one ``Content-Length`` no larger than ``max_body`` (chunked,
  read to the close, large: bodies that may need streaming) → the bytes received so far are fed
  to the connection's general parser and the caller's ``fallback`` gets a coroutine function
  that finishes the exchange on the general path (:meth:`.handlers.ForwardHandler.resume`);
- bytes llhttp refuses before the end of the head are handed over the same way, so the general
  parser (h11's grammar) gives its usual error;
- a reused connection that closes before any byte of the response: an idempotent request is
  sent again by the general path (as :class:`.http1_client.Http1Pool` does); others get 502.

Errors are the general path's: a local server that breaks off gives 502, one that does not
answer within ``timeout`` seconds (for the whole response here, per read on the general path;
the same for a response of at most ``max_body`` bytes in practice) gives 504.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httptools

from .envelope import AppResponse
from .http1_client import IDEMPOTENT, Http1Pool, _Connection
from .http1_wire import ProtocolError, request_head

__all__ = ["DirectExchange", "start"]

logger = logging.getLogger("reversehttp_gateway.client")

Headers = list[tuple[bytes, bytes]]
OnResponse = Callable[[AppResponse], None]
OnFailure = Callable[[str, BaseException | None], None]  # "unreachable" | "timeout" | "retry"
OnHandover = Callable[[_Connection], None]

_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})  # Content-Length: 0 when empty
_NO_BODY_STATUSES = (204, 304)


class _Handover(Exception):
    """Raised inside an llhttp callback: this response is for the general path."""


def start(
    pool: Http1Pool,
    method: bytes,
    target: bytes,
    headers: Headers,
    body: bytes,
    *,
    timeout: float,
    max_body: int,
    on_response: OnResponse,
    on_failure: OnFailure,
    on_handover: OnHandover,
) -> DirectExchange | None:
    """Send one request on an idle connection of ``pool`` and read its answer by callbacks.

    Returns None (nothing sent) when the general path must take the request. Otherwise exactly
    one of the callbacks is called later: ``on_response`` with the whole response,
    ``on_failure(kind, exc)`` with ``kind`` ``"unreachable"`` (502), ``"timeout"`` (504) or
    ``"retry"`` (nothing came back on a reused connection: send the request again on the
    general path), or ``on_handover(connection)`` (see the module docstring) — unless
    :meth:`DirectExchange.abort` is called first.
    """
    if method == b"HEAD":
        return None
    if body:
        headers = [*headers, (b"Content-Length", b"%d" % len(body))]
    elif method in _BODY_METHODS:
        headers = [*headers, (b"Content-Length", b"0")]
    try:
        data = request_head(method, target, headers) + body
    except ProtocolError:
        return None  # the general path reports it
    connection = pool.take_idle()
    if connection is None:
        return None
    exchange = DirectExchange(
        pool, connection, method, timeout, max_body, on_response, on_failure, on_handover
    )
    connection.busy = True
    connection.direct = exchange
    assert connection.transport is not None
    connection.transport.write(data)
    connection.sent = True
    return exchange


class DirectExchange:
    """The response to one request sent by :func:`start`; llhttp's callbacks build it."""

    __slots__ = (
        "_pool",
        "_connection",
        "_method",
        "_max_body",
        "_on_response",
        "_on_failure",
        "_on_handover",
        "_parser",
        "_raw",
        "_reason",
        "_headers",
        "_body",
        "_head_done",
        "_complete",
        "_extra",
        "_keep_alive",
        "_handover",
        "_finished",
        "_timer",
    )

    def __init__(
        self,
        pool: Http1Pool,
        connection: _Connection,
        method: bytes,
        timeout: float,
        max_body: int,
        on_response: OnResponse,
        on_failure: OnFailure,
        on_handover: OnHandover,
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._method = method
        self._max_body = max_body
        self._on_response = on_response
        self._on_failure = on_failure
        self._on_handover = on_handover
        self._parser = httptools.HttpResponseParser(self)
        self._raw: list[bytes] = []  # the bytes of the head, for a handover
        self._reason = b""
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._head_done = False
        self._complete = False
        self._extra = False  # bytes after the response: the connection is not reused
        self._keep_alive = False
        self._handover = False
        self._finished = False
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            timeout, self._timed_out
        )

    # Events from the connection ---------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the local server."""
        if self._finished:
            return
        if not self._head_done:
            self._raw.append(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._handover or not self._head_done:
                self._hand_over()
                return
            if self._complete:
                self._extra = True  # garbage after the response
            else:
                self._fail("unreachable", exc)
                return
        if self._complete:
            self._finish()

    def closed(self) -> None:
        """The local server closed the connection (or it was lost)."""
        if self._finished:
            return
        connection = self._connection
        if not connection.received and self._method in IDEMPOTENT:
            self._fail("retry", None)  # it closed the idle connection as we reused it
        else:
            self._fail("unreachable", ConnectionResetError("the server closed the connection"))

    def abort(self) -> None:
        """The answer is not wanted any more: drop the connection."""
        if not self._finished:
            self._end()
            self._connection.close()

    # llhttp callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            self._extra = True

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._complete:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        parser = self._parser
        status = parser.get_status_code()
        if (
            not 200 <= status <= 599
            or parser.get_http_version() != "1.1"
            or not self._framed(status)
        ):
            self._handover = True
            raise _Handover
        self._head_done = True
        self._raw = []

    def on_body(self, body: bytes) -> None:
        if not self._complete:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._complete:
            self._complete = True
            self._keep_alive = self._parser.should_keep_alive()

    # Internals --------------------------------------------------------------------------------

    def _framed(self, status: int) -> bool:
        """True if the body is one ``Content-Length`` of at most ``max_body`` (or none)."""
        length = None
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"content-length":
                if length is not None or not value.isdigit() or len(value) > 18:
                    return False
                length = int(value)
            elif lower == b"transfer-encoding":
                return False
        if status in _NO_BODY_STATUSES:
            return True
        return length is not None and length <= self._max_body

    def _end(self) -> None:
        self._finished = True
        self._connection.direct = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self) -> None:
        self._end()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        status = self._parser.get_status_code()
        self._pool.release_direct(self._connection, self._keep_alive and not self._extra)
        self._on_response(AppResponse(status, self._headers, body, self._reason))

    def _fail(self, kind: str, exc: BaseException | None) -> None:
        self._end()
        self._connection.close()
        self._on_failure(kind, exc)

    def _hand_over(self) -> None:
        self._end()
        connection = self._connection
        connection.parser.feed(b"".join(self._raw))
        self._raw = []
        self._on_handover(connection)

    def _timed_out(self) -> None:
        self._timer = None
        if not self._finished:
            self._fail("timeout", None)
