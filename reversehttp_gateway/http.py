"""Small raw-ASGI HTTP helpers shared by the gateway's endpoints (no Django on this path)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .queue.base import Reply
from .waiting import Flag

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request body exceeds the configured limit (413)."""


class ClientDisconnected(Exception):
    """The client went away while its body was being read."""


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def watch_disconnect(receive: Receive) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """An event set when the client disconnects; call only after the body was read."""
    gone = Flag()

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return

    return gone, asyncio.ensure_future(watch())


class ResponseAborted(Exception):
    """Raised to make an ASGI server drop a connection whose response cannot be completed."""


def abort_response(send: Send) -> None:
    """Drop the client's connection in the middle of a response, so that it sees the body is
    incomplete (a streamed body whose source broke off).

    Under Daphne ``send`` is bound to the request's Twisted protocol and the connection is
    aborted directly; under uvicorn ``send`` is a method of the request's cycle, whose asyncio
    transport is aborted and which is marked disconnected (later sends are dropped, and uvicorn
    logs no error for the unfinished response). Under other servers ResponseAborted is raised,
    which makes them close the connection.
    """
    protocol = send.args[0] if isinstance(send, functools.partial) and send.args else None
    transport = getattr(getattr(protocol, "channel", None), "transport", None)
    if transport is not None and hasattr(transport, "abortConnection"):
        transport.abortConnection()
        return
    cycle = getattr(send, "__self__", None)  # uvicorn: RequestResponseCycle.send
    transport = getattr(cycle, "transport", None)
    if transport is not None and hasattr(transport, "abort") and hasattr(cycle, "disconnected"):
        transport.abort()
        cycle.disconnected = True
        return
    raise ResponseAborted


async def respond(
    send: Send,
    status: int,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    *,
    head: bool = False,
) -> None:
    """Send a complete response with a Content-Length: that of ``body``, except that a reply
    to HEAD and a 304 keep the length ``headers`` declare (RH-51: what a GET would get)."""
    all_headers = [(n, v) for n, v in headers if n != b"content-length"]
    length = content_length(status, headers, body, head=head)
    if length is not None:
        all_headers.append((b"content-length", length))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def content_length(
    status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes, *, head: bool
) -> bytes | None:
    """The Content-Length value :func:`respond` sends; None: none (1xx, 204, 304 without one)."""
    if head or status == 304:
        declared = [value for name, value in headers if name == b"content-length"]
        if declared:
            return declared[0]
    if status >= 200 and status not in (204, 304):
        return str(len(body)).encode()
    return None


async def respond_error(
    send: Send,
    status: int,
    message: str,
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    retry_after: int | None = None,
) -> None:
    """A gateway-generated plain-text error, ``"<code> <explanation>"`` (RH-66)."""
    reply = Reply.error(status, message, retry_after=retry_after)
    await respond(send, reply.status, [*reply.headers, *headers], reply.body)
