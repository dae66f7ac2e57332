"""The public side: third-party requests to a label's public URL, relayed to its application.

Path mode serves ``/{label}/...``; vhost mode serves ``Host: {label}.{VHOST_DOMAIN}``. The
embedded request keeps the raw target, so path-mode applications see ``/{label}/...`` (RH-27).
Bodies over ``STREAM_THRESHOLD`` are not buffered: they flow through a broker stream in chunks
(docs/streaming.md), and so do streamed responses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time

from django.core.signals import setting_changed

from . import events
from .conf import gateway_settings
from .http import (
    ClientDisconnected,
    Message,
    Receive,
    Scope,
    Send,
    abort_response,
    header,
    respond,
    respond_error,
    watch_disconnect,
)
from .ids import new_id
from .protocol.client_address import format_requesting_client
from .protocol.embedded_request import build_embedded_request
from .queue.base import Broker, PublicRequest, QueueFull, Reply, StreamAborted, now
from .queue.relay import relay_with_settings
from .waiting import Flag

access_log = logging.getLogger("reversehttp_gateway.access")
logger = logging.getLogger(__name__)

TOO_LARGE = "Request body too large"
QUEUE_FULL_MESSAGE = "Too many requests are waiting for this application"
READ_AHEAD_CHUNKS = 2  # streamed reply chunks read from the broker ahead of the requestor


class _TooLarge(Exception):
    pass


def _raw_target(scope: Scope) -> bytes:
    target = scope.get("raw_path") or scope["path"].encode("utf-8")
    query = scope.get("query_string", b"")
    return target + (b"?" + query if query else b"")


def _default_host(scope: Scope) -> bytes:
    server = scope.get("server")
    if server and server[1] is not None:
        return f"{server[0]}:{server[1]}".encode()
    return b"localhost"


def declared_length(scope: Scope) -> int | None:
    value = header(scope, b"content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


class Outcome:
    """What a relay did, for the access log and the relay observers (:func:`record`)."""

    __slots__ = (
        "status",
        "reply",
        "request",
        "request_bytes",
        "client",
        "started_at",
        "started",
        "direct",
    )

    def __init__(self, client: str | None, *, direct: bool = False) -> None:
        self.direct = direct
        self.status = 500
        self.reply: Reply | None = None
        self.request: PublicRequest | None = None
        self.request_bytes = 0
        self.client = client  # Requesting-Client, None when the peer address is unknown
        self.started_at = time.time()
        self.started = time.monotonic()


async def handle(scope: Scope, receive: Receive, send: Send, broker: Broker, label: str) -> int:
    """Relay one public request for ``label``; returns the status sent."""
    outcome = Outcome(format_requesting_client(scope.get("client")))
    try:
        outcome.status = await _relay(scope, receive, send, broker, label, outcome)
    finally:
        record(scope, label, outcome)
    return outcome.status


ACCESS_LOG_FORMAT = '%s "%s %s" label=%s status=%s transport=%s in=%d out=%d %.1fms'


def record(scope: Scope, label: str, outcome: Outcome) -> None:
    """The access log line and the relay record (metrics, inspector) of a finished request."""
    duration = time.monotonic() - outcome.started
    reply = outcome.reply
    client = outcome.client or "-"
    target = _raw_target(scope).decode("latin-1")
    transport = (reply.via if reply is not None else "") or "gateway"
    response_bytes = len(reply.body) if reply is not None else 0
    method = scope["method"]
    if access_log.isEnabledFor(logging.INFO):
        # Logger.info() would also walk the stack for the caller's file and line (a few µs per
        # request); the record is the same, with this function as its origin.
        args = (client, method, target, label, outcome.status, transport)
        args += (outcome.request_bytes, response_bytes, duration * 1000)
        extra = {  # fields of a JSON log line (logformat.py)
            "label": label,
            "method": method,
            "target": target,
            "status": outcome.status,
            "transport": transport,
            "duration_ms": round(duration * 1000, 1),
            "bytes_in": outcome.request_bytes,
            "bytes_out": response_bytes,
            "client": client,
        }
        access_log.handle(
            access_log.makeRecord(
                access_log.name,
                logging.INFO,
                __file__,
                0,
                ACCESS_LOG_FORMAT,
                args,
                None,
                "record",
                extra,
            )
        )
    events.publish(
        events.RelayRecord(
            label=label,
            method=method,
            target=target,
            status=outcome.status,
            transport=transport,
            started_at=outcome.started_at,
            duration=duration,
            requesting_client=client,
            request_bytes=outcome.request_bytes,
            response_bytes=response_bytes,
            request_envelope=outcome.request.envelope if outcome.request else b"",
            response_headers=reply.headers if reply is not None else [],
            response_body=reply.body if reply is not None else b"",
            direct=outcome.direct,
        )
    )


@functools.cache
def _gateway_cookie_names() -> frozenset[bytes]:
    """The gateway site's own cookies: never relayed to applications (RH-93).

    Cached; ``override_settings`` of either name clears it (``_on_setting_changed``).
    """
    from django.conf import settings

    return frozenset(
        name.encode("latin-1")
        for name in (settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME)
        if name
    )


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting in ("SESSION_COOKIE_NAME", "CSRF_COOKIE_NAME"):
        _gateway_cookie_names.cache_clear()


setting_changed.connect(_on_setting_changed)


def _without_gateway_cookie_header(
    headers: list[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]:
    """``Cookie`` headers minus the gateway's own session and CSRF cookies."""
    if not any(name == b"cookie" for name, _ in headers):
        return headers
    names = _gateway_cookie_names()
    kept: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == b"cookie":
            pairs = [p for p in value.split(b";") if p.strip().split(b"=", 1)[0] not in names]
            if not pairs:
                continue
            value = b";".join(pairs).strip()
        kept.append((name, value))
    return kept


def without_gateway_cookies(reply: Reply | None) -> Reply | None:
    """Drop ``Set-Cookie`` of the gateway's own cookie names (session fixation, RH-93)."""
    if reply is None or not reply.via:
        return reply
    names = _gateway_cookie_names()
    kept = [
        (n, v)
        for n, v in reply.headers
        if n != b"set-cookie" or v.split(b"=", 1)[0].strip() not in names
    ]
    if len(kept) != len(reply.headers):
        reply.headers = kept
    return reply


async def _read_head_of_body(receive: Receive, threshold: int) -> tuple[list[bytes], bool]:
    """Body chunks up to just past ``threshold`` bytes, and whether the body ended."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return chunks, True
        if size > threshold:
            return chunks, False


async def _pump_body(
    broker: Broker,
    stream: str,
    first: list[bytes],
    receive: Receive,
    gone: asyncio.Event,
    body_read: asyncio.Event,
) -> None:
    """Write the rest of a streamed request body to ``stream``, then watch for disconnect.

    ``body_read`` is set once the body has been read whole (or given up on).
    """
    try:
        whole = await _pump(broker, stream, first, receive, gone)
    finally:
        body_read.set()
    while whole:  # like http.watch_disconnect, once the body is through
        if (await receive())["type"] == "http.disconnect":
            gone.set()
            return


async def _pump(
    broker: Broker, stream: str, first: list[bytes], receive: Receive, gone: asyncio.Event
) -> bool:
    """The body part of :func:`_pump_body`; True when the whole body went to ``stream``."""
    chunk_size = gateway_settings.STREAM_CHUNK_SIZE
    limit = gateway_settings.MAX_STREAM_SIZE
    size = 0

    async def write(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise _TooLarge
        for start in range(0, len(data), chunk_size):
            await broker.stream_write(stream, data[start : start + chunk_size])

    try:
        for data in first:
            await write(data)
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                await broker.stream_write(stream, abort="The requestor disconnected")
                return False
            await write(message.get("body", b""))
            if not message.get("more_body", False):
                await broker.stream_write(stream, end=True)
                return True
    except _TooLarge:
        await broker.stream_write(stream, abort=TOO_LARGE)
        return False
    except (TimeoutError, StreamAborted):
        return False  # nobody reads the body (the request timed out or its reader left)


def refusal(scope: Scope, client: str | None) -> tuple[int, str] | None:
    """Why a public request cannot be relayed at all (status, message), judged by its head and
    its Requesting-Client value ``client``."""
    if scope["method"] == "CONNECT" or header(scope, b"upgrade") is not None:
        return 501, "Upgrade and CONNECT cannot be relayed"  # RH-40
    headers = scope["headers"]
    if (
        len(headers) > gateway_settings.MAX_HEADERS
        or sum(len(n) + len(v) + 4 for n, v in headers) > gateway_settings.MAX_HEADER_BYTES
    ):
        return 431, "Request header fields too large"
    if client is None:
        return 400, "Could not determine your IP address"  # RH-61
    declared = declared_length(scope)
    if declared is not None and declared > max(
        gateway_settings.MAX_STREAM_SIZE, gateway_settings.MAX_BODY_SIZE
    ):
        return 413, TOO_LARGE
    return None


def public_request(scope: Scope, body: bytes, client: str, *, ended: bool = True) -> PublicRequest:
    """The queued form of a public request from ``client`` whose body (or its first part) is
    ``body``.

    Raises:
        ValueError: the request cannot be written as a ``message/http`` envelope (400).
    """
    envelope = build_embedded_request(
        method=scope["method"],
        target=_raw_target(scope),
        http_version=scope.get("http_version", "1.1"),
        headers=_without_gateway_cookie_header(scope["headers"]),
        body=body if ended else b"",
        default_host=_default_host(scope),
        streamed=not ended,
    )
    return PublicRequest(
        envelope=envelope,
        requesting_client=client,
        method=scope["method"],
        deadline=now() + gateway_settings.REPLY_TIMEOUT,
        body_stream="" if ended else "q" + new_id(),
        body_length=None if ended else declared_length(scope),
    )


async def _relay(
    scope: Scope, receive: Receive, send: Send, broker: Broker, label: str, outcome: Outcome
) -> int:
    from .runtime import runtime

    if runtime.draining:
        await respond_error(
            send,
            503,
            "The gateway is restarting",
            retry_after=2,
            headers=[(b"connection", b"close")],
        )
        return 503
    key = await broker.lookup_label(label)
    if key is None:
        await respond_error(send, 404, "No application is registered at this address")  # RH-62
        return 404
    refused = refusal(scope, outcome.client)
    if refused is not None:
        status, message = refused
        close = [(b"connection", b"close")] if status == 413 else []
        await respond_error(send, status, message, headers=close)
        return status
    method = scope["method"]
    declared = declared_length(scope)
    try:
        chunks, ended = await _read_head_of_body(receive, gateway_settings.STREAM_THRESHOLD)
    except ClientDisconnected:
        return 499
    body = b"".join(chunks) if ended else b""
    outcome.request_bytes = len(body) if ended else (declared or 0)
    if ended and len(body) > gateway_settings.MAX_BODY_SIZE:
        await respond_error(send, 413, TOO_LARGE, headers=[(b"connection", b"close")])
        return 413
    try:
        assert outcome.client is not None  # refusal() answered 400 otherwise
        request = public_request(scope, body, outcome.client, ended=ended)
    except ValueError as exc:
        await respond_error(send, 400, f"Request cannot be relayed: {exc}")
        return 400
    outcome.request = request
    body_read: asyncio.Event | None = None
    if ended:
        gone, watcher = watch_disconnect(receive)
    else:
        gone, body_read = Flag(), asyncio.Event()
        watcher = asyncio.ensure_future(
            _pump_body(broker, request.body_stream, chunks, receive, gone, body_read)
        )
    runtime.in_flight += 1
    try:
        try:
            reply = await relay_with_settings(broker, key, request, gone)
        except QueueFull:
            await respond_error(send, 503, QUEUE_FULL_MESSAGE, retry_after=5)
            return 503
        reply = without_gateway_cookies(reply)
        if reply is None:
            return 499
        outcome.reply = reply
        if reply.stream:
            await send_streamed(
                send, broker, reply, gone, head=method == "HEAD", body_read=body_read
            )
        else:
            await respond(send, reply.status, reply.headers, reply.body, head=method == "HEAD")
        return reply.status
    finally:
        runtime.in_flight -= 1
        watcher.cancel()
        if request.body_stream:
            with contextlib.suppress(Exception):
                await broker.stream_discard(request.body_stream)


async def send_streamed(
    send: Send,
    broker: Broker,
    reply: Reply,
    gone: asyncio.Event,
    *,
    head: bool,
    body_read: asyncio.Event | None = None,
) -> None:
    """Send a reply whose body arrives on a broker stream, chunk by chunk.

    A reader task takes the chunks from the broker, at most ``READ_AHEAD_CHUNKS`` ahead of the
    requestor, except while the request's own body is still arriving (``body_read`` given and
    not set): then it reads on into memory. Most HTTP/1.1 clients read the response only once
    they have sent the whole body, so an application that answers while the body arrives (an
    echo) would otherwise wait for flow-control room the requestor never makes, and the upload
    would stall with it. (Under Daphne, which receives whole bodies first, it never happens.)
    """
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
    chunks: collections.deque[bytes] = collections.deque()
    arrived, room = asyncio.Event(), asyncio.Event()
    failure: list[BaseException] = []

    def reading_ahead_allowed() -> bool:
        return len(chunks) < READ_AHEAD_CHUNKS or (body_read is not None and not body_read.is_set())

    async def read() -> None:
        try:
            while True:
                while not reading_ahead_allowed():
                    room.clear()
                    await room.wait()
                chunk, last = await broker.stream_read(reply.stream, gateway_settings.REPLY_TIMEOUT)
                if last:
                    return
                chunks.append(chunk)
                arrived.set()
        except (TimeoutError, StreamAborted) as exc:
            failure.append(exc)
        finally:
            arrived.set()

    reader = asyncio.ensure_future(read())
    try:
        while True:
            if not chunks:
                if reader.done():
                    break
                arrived.clear()
                await arrived.wait()
                continue
            chunk = chunks.popleft()
            room.set()
            if gone.is_set():  # the requestor left: the application is told to stop
                raise StreamAborted("The requestor disconnected")
            if not head:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if failure:
            raise failure[0]
    except (TimeoutError, StreamAborted) as exc:
        # The status is sent already: drop the connection, which tells the client that the
        # body is incomplete (a short chunked body would look complete).
        logger.warning("Streamed response %s broke off: %s", reply.stream, exc)
        await broker.stream_discard(reply.stream)
        abort_response(send)
        return
    finally:
        reader.cancel()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
