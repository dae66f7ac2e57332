"""The broker interface and the values that travel through it."""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import msgpack


class RegistrationGone(Exception):
    """The registration was deleted or expired while a poller waited (RH-24: 410)."""


class BrokerUnavailable(Exception):
    """The shared store (Redis) cannot be reached; callers answer 503."""


@dataclass(slots=True)
class PublicRequest:
    """A third-party request, already encoded as the ``message/http`` envelope (RH-35)."""

    envelope: bytes
    requesting_client: str
    method: str
    deadline: float
    request_id: str = ""
    origin: str = ""
    key: str = ""
    # A streamed body: the envelope is the head only (no Content-Length) and the body arrives
    # on the broker stream ``body_stream``; ``body_length`` is the declared length, if any.
    body_stream: str = ""
    body_length: int | None = None


@dataclass(slots=True)
class Reply:
    """What the public client gets: the application's answer, or a gateway error."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reason: bytes = b""
    # A streamed body: ``body`` is empty and the chunks arrive on this broker stream.
    stream: str = ""
    # The transport that delivered the answer ("" for gateway-generated errors).
    via: str = ""

    def pack(self) -> bytes:
        headers = [list(h) for h in self.headers]
        return msgpack.packb(
            [self.status, self.reason, headers, self.body, self.stream, self.via],
            use_bin_type=True,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Reply:
        status, reason, headers, body, stream, via = msgpack.unpackb(data, raw=False)
        pairs = [(bytes(n), bytes(v)) for n, v in headers]
        return cls(status, pairs, body, reason, stream, via)

    @classmethod
    def error(cls, status: int, message: str, *, retry_after: int | None = None) -> Reply:
        """A gateway-generated plain-text answer, ``"<code> <explanation>"`` (RH-66)."""
        body = f"{status} {message}\n".encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        return cls(status, headers, body)


class QueueFull(Exception):
    """The label already has ``max_queued`` undelivered requests (503)."""


class TooManyPollers(Exception):
    """The label already has the most waiting pollers this process accepts (429)."""


class StreamAborted(Exception):
    """The writer of a stream gave up; ``str()`` says why."""


@dataclass(slots=True)
class Taken:
    """A request handed to one poller, not yet bound to its Request URL.

    ``local``: handed over inside this process without passing through the shared store (the
    requestor and the poller are both held here); the broker decides what that saves.
    """

    key: str
    request: PublicRequest
    local: bool = False


@dataclass(slots=True)
class Ticket:
    """The public side's handle on a queued request."""

    key: str
    request_id: str
    reply: asyncio.Future[Reply] = field(repr=False)


@dataclass(slots=True)
class Activity:
    """Poller activity of one registration, for lease accounting (RH-07)."""

    pollers_waiting: bool
    last_seen: float | None


class Waiter(Protocol):
    """A poller waiting for its next request: an ``asyncio.Future[Taken]`` (``take``) or a
    :class:`Handoff` (the direct path). Brokers keep both in one FIFO (RH-70)."""

    def done(self) -> bool: ...

    def set_result(self, result: Taken, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...

    def cancel(self) -> bool: ...


class Handoff:
    """A :class:`Waiter` that calls back instead of waking a task (docs/direct-path.md).

    ``deliver(handoff, taken)`` runs inside the broker's handover, synchronously; it must not
    raise. ``fail(handoff, exception)`` gets ``RegistrationGone`` (RH-24). Once cancelled it
    takes nothing.
    """

    __slots__ = ("_deliver", "_fail", "_done")

    def __init__(
        self,
        deliver: Callable[[Handoff, Taken], None],
        fail: Callable[[Handoff, BaseException], None],
    ) -> None:
        self._deliver = deliver
        self._fail = fail
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Taken, /) -> None:
        self._done = True
        self._deliver(self, result)

    def set_exception(self, exception: BaseException, /) -> None:
        self._done = True
        self._fail(self, exception)

    def cancel(self) -> bool:
        was_waiting, self._done = not self._done, True
        return was_waiting


def now() -> float:
    return time.time()


def waiting_count(waiters: Iterable[Waiter]) -> int:
    """How many of ``waiters`` still wait (the others were served, cancelled or failed)."""
    return sum(1 for waiter in waiters if not waiter.done())


class Broker(abc.ABC):
    """Queue of public requests per registration key, and routing of replies back.

    Guarantees (docs/architecture.md): each request goes to exactly one poller; a request whose
    poller left before handover goes to the next poller; a reply is accepted once.
    """

    max_pollers: int = 100

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    # Directory: which labels are live (a mirror of the database, kept off the hot path).
    @abc.abstractmethod
    async def activate(self, key: str, label: str) -> None: ...

    @abc.abstractmethod
    async def deactivate(self, key: str, label: str) -> None:
        """Forget the registration: waiting pollers get RegistrationGone, queued requests 503."""

    @abc.abstractmethod
    async def lookup_label(self, label: str) -> str | None: ...

    @abc.abstractmethod
    async def active_keys(self) -> set[str]:
        """Every key currently activated (for reconciling with the database)."""

    @abc.abstractmethod
    async def lookup_key(self, key: str) -> str | None: ...

    # Public side.
    @abc.abstractmethod
    async def enqueue(
        self, key: str, request: PublicRequest, *, max_queued: int | None = None
    ) -> Ticket:
        """Queue ``request`` (FIFO); raises QueueFull when ``max_queued`` are waiting already."""

    @abc.abstractmethod
    async def app_available(self, key: str, grace: float) -> bool:
        """A poller waits, a request is being worked on, or a poll ended within ``grace`` s."""

    @abc.abstractmethod
    def forget(self, ticket: Ticket) -> None:
        """Drop local bookkeeping for a finished ticket (idempotent)."""

    @abc.abstractmethod
    async def withdraw(self, ticket: Ticket) -> bool:
        """Stop waiting for ``ticket``; True if it was still queued (never handed out)."""

    # Poll side.
    @abc.abstractmethod
    async def take(self, key: str, timeout: float, disconnected: asyncio.Event) -> Taken | None:
        """Wait up to ``timeout`` for the next request; None on timeout or disconnect.

        Raises TooManyPollers when ``max_pollers`` of this process wait on ``key`` already.
        """

    @abc.abstractmethod
    async def take_nowait(self, key: str, *, shared: bool = True) -> Taken | None:
        """The next queued request of ``key`` if there is one now (for pipelines, RH-26).

        ``shared=False``: only a request this process holds, without I/O (the shared queue is
        left to the dispatcher).
        """

    @abc.abstractmethod
    async def bind(
        self, slot: str, taken: Taken, reply_timeout: float, *, answered_here: bool = False
    ) -> bool:
        """Record that ``taken`` is delivered on Request URL ``slot``.

        False when another request is already pending on ``slot`` (two pollers sharing one
        Request URL); the caller then puts ``taken`` back. ``answered_here``: the reply can
        only come back through this process (on the poller's own connection: WebSocket,
        PTTH), so nothing about ``slot`` needs to be visible to other processes.
        """

    @abc.abstractmethod
    async def unbind(self, slot: str, taken: Taken) -> None:
        """Undo :meth:`bind` of ``taken`` on ``slot`` before it was delivered: the slot is
        free again and the request still waits (for :meth:`put_back`)."""

    @abc.abstractmethod
    async def put_back(self, taken: Taken) -> None:
        """Return a request whose poller left before handover to the head of its queue."""

    @abc.abstractmethod
    async def redeliver(self, slot: str) -> PublicRequest | None:
        """The request delivered on ``slot`` and still unanswered, if any (RH-29)."""

    @abc.abstractmethod
    async def claim(self, slot: str) -> PublicRequest | None:
        """Claim the request delivered on ``slot``, once; None if nothing is pending (RH-47).

        What a reply needs of it (id, origin, method...): its envelope may be left empty."""

    @abc.abstractmethod
    async def claim_batch(self, slot: str, limit: int) -> list[PublicRequest | None]:
        """Claim what was delivered on ``slot``, once (RH-47, RH-53).

        ``[request]`` for a single delivery on ``slot``; for a pipeline (RH-26), one entry per
        position ``slot.0``, ``slot.1``... (at most ``limit``), in order, None where the
        requestor left meanwhile. Empty when nothing is pending or every requestor left.
        As for :meth:`claim`, the envelopes may be left empty.
        """

    @abc.abstractmethod
    async def route_reply(self, request: PublicRequest, reply: Reply) -> None:
        """Send ``reply`` to the process holding the public connection of ``request``."""

    @abc.abstractmethod
    async def activity(self, keys: list[str]) -> dict[str, Activity]: ...

    # No-wait forms (docs/direct-path.md): complete at once without I/O, or decline.
    def lookup_label_nowait(self, label: str) -> str | None:
        """The key of ``label`` if known without I/O; None: unknown here (ask lookup_label)."""
        return None

    def enqueue_nowait(
        self, key: str, request: PublicRequest, *, max_queued: int | None = None
    ) -> Ticket | None:
        """:meth:`enqueue` when it needs no I/O (a local poller, the local hold); None
        otherwise. Raises QueueFull like enqueue."""
        return None

    def poll_nowait(self, key: str, waiter: Waiter) -> Taken | None:
        """The next request of ``key`` if one is at hand without I/O; otherwise register
        ``waiter`` (it gets the next one, like a ``take`` in progress) and return None.

        Raises TooManyPollers as :meth:`take` does. Cancel ``waiter`` to stop waiting.
        """
        raise NotImplementedError

    def bind_nowait(self, slot: str, taken: Taken) -> bool | None:
        """:meth:`bind` with ``answered_here`` when it needs no I/O; None otherwise."""
        return None

    def claim_nowait(self, slot: str) -> PublicRequest | None:
        """:meth:`claim` of a slot bound by :meth:`bind_nowait` (no I/O)."""
        raise NotImplementedError

    def route_reply_nowait(self, request: PublicRequest, reply: Reply) -> bool:
        """:meth:`route_reply` when the requestor is held here; False otherwise."""
        return False

    def delivered_here(self, slot: str, limit: int) -> list[PublicRequest] | None:
        """What this process delivered on ``slot`` and still holds the requestors of (as
        :meth:`claim_batch` would return it), without I/O and without claiming; None if not
        known here. A reply may be routed to them before the claim's round trip completes:
        a requestor is answered once whatever else happens (the first reply wins)."""
        return None

    # Streams: a bounded byte channel per streamed body, between any two processes.
    @abc.abstractmethod
    async def stream_write(
        self, stream: str, chunk: bytes = b"", *, end: bool = False, abort: str = ""
    ) -> None:
        """Append ``chunk`` (then the end mark, or an abort) to ``stream``.

        Waits while ``STREAM_WINDOW`` chunks are unread; raises ``TimeoutError`` when the
        reader does not catch up within ``timeout`` seconds of stream inactivity.
        """

    @abc.abstractmethod
    async def stream_read(self, stream: str, timeout: float) -> tuple[bytes, bool]:
        """The next chunk and whether it was the last; raises ``TimeoutError`` or
        ``StreamAborted``."""

    @abc.abstractmethod
    async def stream_discard(self, stream: str) -> None:
        """Drop what is left of ``stream`` (its reader or writer gave up)."""

    @abc.abstractmethod
    async def store_envelope(self, request: PublicRequest) -> None:
        """Replace the stored envelope of a taken request (after a transport buffered its
        streamed body), so that a re-delivery (RH-29) sends the whole request again."""

    @abc.abstractmethod
    async def hit(self, bucket: str, window: int, amount: int = 1) -> int:
        """Count ``amount`` events in ``bucket`` for a fixed window of ``window`` seconds and
        return the count so far (``amount=0`` only reads it). For rate limits."""

    async def housekeeping(self) -> None:  # noqa: B027 (optional hook)
        """Periodic clean-up (called by the lease keeper); nothing by default."""
