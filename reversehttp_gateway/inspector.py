"""The request inspector: recent public requests per registration, in the database (issue 7).

The hot path never touches the database. :meth:`PendingLog.observe`, an ``events`` observer,
cuts what it keeps of a :class:`~reversehttp_gateway.events.RelayRecord` to size and appends it
to a bounded in-memory queue (a full queue drops the record and counts it). The background task
:func:`keep_request_log`, started with the runtime, writes the queue with one ``executemany``
per second off the event loop and prunes old rows (``INSPECTOR_RETENTION``,
``INSPECTOR_MAX_PER_LABEL``) and old audit events (``AUDIT_RETENTION``).

Logged requests are shown in the admin (``admin.RequestLogAdmin``) and on the HTML variant of a
registration's private URL (:func:`status_page`); :func:`replay` sends one again to the
registration's application, from the admin.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connections, router, transaction
from django.db.models import BinaryField, Count, DateTimeField, Q
from django.template.loader import render_to_string
from django.utils import timezone

from . import events
from .conf import gateway_settings
from .dashboard import is_unknown_label
from .models import AuditEvent, RequestLog
from .protocol.embedded_request import build_embedded_request
from .queue.base import Broker, PublicRequest, QueueFull, Reply, StreamAborted, now
from .queue.relay import relay_with_settings
from .runtime import runtime

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_PENDING = 10_000  # records waiting to be written; more are dropped (and counted)
FLUSH_INTERVAL = 1.0  # seconds between two writes
BATCH_SIZE = 100  # rows per INSERT
# The writer thread lets go of the GIL every this many rows (and between INSERTs). Holding it,
# it kept the event loop's thread waiting a whole switch interval (5 ms) at a time while a
# second's rows were prepared: PTTH GET c=10 had a p99 of 17 to 24 ms against 7 to 8 with
# the request log off; 7 to 8.4 ms with these yields (docs/benchmarks.md).
YIELD_EVERY = 8
HEAD_LIMIT = 16 * 1024  # bytes of the request head kept
TARGET_LIMIT = 2000  # characters of the request target kept
REDACTED = "[redacted]"
RECENT_ON_STATUS_PAGE = 20
REPLAY_LIMIT = 10  # logged requests one admin action may replay (each waits for its reply)


# Capture: on the event loop, cheap ------------------------------------------------------------


@dataclass(slots=True)
class Captured:
    """What the request log keeps of one relayed request, cut to size on the event loop."""

    label: str
    started_at: float
    method: str
    target: str
    status: int
    transport: str
    duration: float
    requesting_client: str
    request_bytes: int
    response_bytes: int
    head: bytes
    head_truncated: bool
    body: bytes | None
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    response_body: bytes | None = None


def capture(record: events.RelayRecord, *, bodies: bool, limit: int) -> Captured:
    """Slice ``record``: the request head (at most ``HEAD_LIMIT``), bodies only if asked."""
    envelope = record.request_envelope
    end = envelope.find(b"\r\n\r\n")
    head = envelope if end < 0 else envelope[:end]
    head_truncated = len(head) > HEAD_LIMIT
    body = None
    if bodies and envelope:
        body = envelope[end + 4 : end + 4 + limit] if end >= 0 else b""
    return Captured(
        label=record.label,
        started_at=record.started_at,
        method=record.method[:32],
        target=record.target[:TARGET_LIMIT],
        status=record.status,
        transport=record.transport[:16],
        duration=record.duration,
        requesting_client=record.requesting_client[:64],
        request_bytes=record.request_bytes,
        response_bytes=record.response_bytes,
        head=head[:HEAD_LIMIT],
        head_truncated=head_truncated,
        body=body,
        response_headers=record.response_headers,
        response_body=record.response_body[:limit] if bodies else None,
    )


class PendingLog:
    """The bounded queue between the relay (producer) and the writer task (consumer)."""

    def __init__(self, capacity: int = MAX_PENDING) -> None:
        self.capacity = capacity
        self.dropped = 0
        self._items: collections.deque[Captured] = collections.deque()
        self.refresh_settings()

    def refresh_settings(self) -> None:
        """Read the capture settings (the writer does it every second, not every request)."""
        self.bodies = gateway_settings.INSPECTOR_CAPTURE_BODIES
        self.limit = gateway_settings.INSPECTOR_BODY_LIMIT

    def __len__(self) -> int:
        return len(self._items)

    def observe(self, record: events.RelayRecord) -> None:
        """The ``events`` observer: returns at once."""
        if is_unknown_label(record):
            return  # labels nobody registered are not logged: anyone can make them up
        if len(self._items) >= self.capacity:
            self.dropped += 1
            return
        self._items.append(capture(record, bodies=self.bodies, limit=self.limit))

    def take(self, count: int) -> list[Captured]:
        items = self._items
        return [items.popleft() for _ in range(min(count, len(items)))]

    def put_back(self, batch: list[Captured]) -> None:
        """Return a batch that could not be written to the front of the queue, room permitting."""
        room = self.capacity - len(self._items)
        kept = batch[:room] if room > 0 else []
        self.dropped += len(batch) - len(kept)
        self._items.extendleft(reversed(kept))


pending = PendingLog()
"""This process's queue of records to write."""


# Writing and pruning: sync ORM code, run off the event loop -----------------------------------


@functools.lru_cache(maxsize=1024)
def _title_case(name: bytes) -> str:
    return "-".join(word.capitalize() for word in name.decode("latin-1").split("-"))


@functools.lru_cache(maxsize=1024)
def _is_redacted(name: bytes, names: frozenset[str]) -> bool:
    return name.strip().decode("latin-1").lower() in names


def redact_head(head: bytes, names: frozenset[str]) -> str:
    """The request head as text, with the values of headers named in ``names`` redacted."""
    if not names:
        return head.decode("latin-1")
    lower = head.lower()
    if not any(name.encode("latin-1") in lower for name in names):
        return head.decode("latin-1")  # none of them here (the common case): no line by line
    lines = head.split(b"\r\n")
    for i in range(1, len(lines)):
        name, colon, _ = lines[i].partition(b":")
        if colon and _is_redacted(name, names):
            lines[i] = name + b": " + REDACTED.encode()
    return b"\r\n".join(lines).decode("latin-1")


def headers_text(headers: Iterable[tuple[bytes, bytes]], names: frozenset[str]) -> str:
    """Response headers as ``Name: value`` lines, redacted like request heads."""
    return "\n".join(
        f"{_title_case(name)}: {REDACTED if _is_redacted(name, names) else value.decode('latin-1')}"
        for name, value in headers
    )


def row_values(item: Captured, redact: frozenset[str]) -> dict[str, Any]:
    """The ``RequestLog`` field values of ``item``, by field name."""
    return {
        "label": item.label,
        "started_at": datetime.fromtimestamp(item.started_at, tz=UTC),
        "method": item.method,
        "target": item.target,
        "status": item.status,
        "transport": item.transport,
        "duration_ms": round(item.duration * 1000, 3),
        "request_bytes": item.request_bytes,
        "response_bytes": item.response_bytes,
        "requesting_client": item.requesting_client,
        "request_head": redact_head(item.head, redact),
        "request_head_truncated": item.head_truncated,
        "request_body": item.body,
        "response_headers": headers_text(item.response_headers, redact),
        "response_body": item.response_body,
    }


def to_row(item: Captured, redact: frozenset[str]) -> RequestLog:
    return RequestLog(**row_values(item, redact))


_COLUMNS = tuple(f.name for f in RequestLog._meta.concrete_fields if not f.primary_key)


def _adapters(connection: Any) -> list[tuple[int, Callable[[Any], Any]]]:
    """The columns (by index) whose values need the database's adaptation, and how.

    Only the datetime and binary columns do; the others are plain ``str``/``int``/``float``/
    ``bool`` values that every driver takes as they are. The datetimes are aware UTC values,
    for which the field's own preparation comes down to the backend's adaptation.
    """
    adapters: list[tuple[int, Callable[[Any], Any]]] = []
    for index, name in enumerate(_COLUMNS):
        field_ = RequestLog._meta.get_field(name)
        if isinstance(field_, DateTimeField):
            adapters.append((index, connection.ops.adapt_datetimefield_value))
        elif isinstance(field_, BinaryField):
            prepare = functools.partial(field_.get_db_prep_save, connection=connection)
            adapters.append((index, prepare))
    return adapters


def write(batch: list[Captured]) -> int:
    """Insert ``batch`` in one transaction (synchronous); returns the number of rows.

    One ``executemany`` of a prepared ``INSERT``: ``bulk_create`` builds a model instance and
    compiles SQL per row, and on a busy gateway that was most of the request log's cost, taken
    from the same GIL as the relay (docs/benchmarks.md).
    """
    if not batch:
        return 0
    redact = gateway_settings.INSPECTOR_REDACT_HEADERS
    connection = connections[router.db_for_write(RequestLog)]
    quote = connection.ops.quote_name
    columns = [RequestLog._meta.get_field(name).column for name in _COLUMNS]
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        quote(RequestLog._meta.db_table),
        ", ".join(quote(column) for column in columns),
        ", ".join(["%s"] * len(columns)),
    )
    adapters = _adapters(connection)
    params = []
    for count, item in enumerate(batch, 1):
        if count % YIELD_EVERY == 0:
            time.sleep(0)  # let the event loop's thread have the GIL (see YIELD_EVERY)
        values = row_values(item, redact)
        row = [values[name] for name in _COLUMNS]
        for index, adapt in adapters:
            if row[index] is not None:
                row[index] = adapt(row[index])
        params.append(row)
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        for start in range(0, len(params), BATCH_SIZE):
            time.sleep(0)
            cursor.executemany(sql, params[start : start + BATCH_SIZE])
    return len(batch)


def _trim_label(label: str, limit: int) -> int:
    """Delete all but the ``limit`` newest rows of ``label``."""
    rows = RequestLog.objects.filter(label=label)
    newest = rows.order_by("-started_at", "-id").values_list("started_at", "id")[limit - 1 : limit]
    if not newest:
        return 0
    started_at, row_id = newest[0]
    older = Q(started_at__lt=started_at) | Q(started_at=started_at, id__lt=row_id)
    return rows.filter(older).delete()[0]


def prune(labels: Iterable[str] | None = None, *, moment: datetime | None = None) -> int:
    """Apply the retention settings; returns the number of request log rows deleted.

    ``labels``: check the per-label limit for these labels only (those written since the last
    pass); None checks every label.
    """
    moment = moment or timezone.now()
    deleted = 0
    retention = gateway_settings.INSPECTOR_RETENTION
    if retention > 0:
        cutoff = moment - timedelta(seconds=retention)
        deleted += RequestLog.objects.filter(started_at__lt=cutoff).delete()[0]
    limit = gateway_settings.INSPECTOR_MAX_PER_LABEL
    if limit > 0:
        if labels is None:
            counts = RequestLog.objects.values("label").annotate(rows=Count("id"))
            crowded = list(counts.filter(rows__gt=limit).values_list("label", flat=True))
        else:
            crowded = [
                label
                for label in set(labels)
                if RequestLog.objects.filter(label=label).count() > limit
            ]
        for label in crowded:
            deleted += _trim_label(label, limit)
    audit_retention = gateway_settings.AUDIT_RETENTION
    if audit_retention is not None and audit_retention > 0:
        cutoff = moment - timedelta(seconds=audit_retention)
        AuditEvent.objects.filter(at__lt=cutoff).delete()
    return deleted


def _off_loop(function: Callable[..., T]) -> Callable[..., Any]:
    """``function`` in a worker thread with its own short-lived connection (notes P18).

    Not the thread that serialises the gateway's other ORM work: a slow batch must not hold up
    registrations.
    """

    def call(*args: Any, **kwargs: Any) -> T:
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()  # this worker thread's connections only

    return sync_to_async(call, thread_sensitive=False)


async def flush(queue: PendingLog | None = None) -> set[str]:
    """Write everything queued now (not what arrives meanwhile: under load the queue is never
    empty, and writing on until it is made a thread hop and a connection per few rows);
    returns the labels written. A failed batch is put back."""
    queue = queue or pending
    queue.refresh_settings()
    labels: set[str] = set()
    remaining = len(queue)
    while remaining > 0:
        batch = queue.take(min(remaining, BATCH_SIZE * 4))
        remaining -= len(batch)
        try:
            await _off_loop(write)(batch)
        except Exception:
            queue.put_back(batch)
            raise
        labels.update(item.label for item in batch)
    return labels


async def keep_request_log() -> None:
    """The runtime's background task: write the queue every second, prune every
    ``EXPIRY_INTERVAL`` (at least every second), until cancelled; then write what is left.

    Also subscribes the dashboard's traffic window (``dashboard.traffic``) for the same lifetime.
    """
    from .dashboard import traffic

    unsubscribe = [events.subscribe(traffic.observe)]
    if gateway_settings.INSPECTOR_ENABLED:
        unsubscribe.append(events.subscribe(pending.observe))
    touched: set[str] | None = None  # None: the first pass checks every label
    next_prune = time.monotonic()
    dropped = 0
    try:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                written = await flush()
                if touched is not None:
                    touched |= written
                if time.monotonic() >= next_prune:
                    await _off_loop(prune)(touched)
                    touched = set()
                    next_prune = time.monotonic() + max(gateway_settings.EXPIRY_INTERVAL, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Request log: writing or pruning failed; will retry")
            if pending.dropped != dropped:
                logger.warning(
                    "Request log: %d record(s) dropped so far (queue full or database down)",
                    pending.dropped,
                )
                dropped = pending.dropped
    finally:
        for stop in unsubscribe:
            stop()
        with contextlib.suppress(Exception):
            await flush()


# Reading: the private URL's HTML page ---------------------------------------------------------


def recent(label: str, count: int = RECENT_ON_STATUS_PAGE) -> list[RequestLog]:
    """The latest logged requests of ``label``, newest first (without bodies)."""
    rows = RequestLog.objects.filter(label=label).defer("request_body", "response_body")
    return list(rows.order_by("-started_at", "-id")[:count])


def _render_status_page(context: dict[str, Any]) -> str:
    close_old_connections()
    context["requests"] = recent(context["label"])
    return render_to_string("reversehttp_gateway/registration.html", context)


async def status_page(broker: Broker, key: str, state: dict[str, Any]) -> str:
    """The HTML variant of GET on a private URL (RH-81): state, queue, recent requests."""
    from .dashboard import UNKNOWN, queue_gauges, traffic

    gauge = (await queue_gauges(broker, [key])).get(key, UNKNOWN)
    context = {
        "label": state["name"],
        "state": state,
        "gauge": gauge,
        "traffic": traffic.stats(state["name"]),
        "inspector_enabled": gateway_settings.INSPECTOR_ENABLED,
        "capture_bodies": gateway_settings.INSPECTOR_CAPTURE_BODIES,
    }
    return await sync_to_async(_render_status_page)(context)


# Replay: from the admin, through this process's broker ----------------------------------------


class ReplayRefused(Exception):
    """The logged request cannot be sent again; ``str()`` says why."""


@dataclass(slots=True)
class ReplayResult:
    status: int
    duration: float
    reply: Reply
    body: bytes
    log: RequestLog


def rebuild_envelope(log: RequestLog) -> tuple[bytes, list[str]]:
    """The ``message/http`` request to send again, and the redacted headers left out of it."""
    if not log.request_head:
        raise ReplayRefused("the request never reached the application's queue")
    if log.request_head_truncated:
        raise ReplayRefused("its head was too large to be logged whole")
    if not log.body_complete:
        raise ReplayRefused(
            "its body was not stored (INSPECTOR_CAPTURE_BODIES is off, or the body was longer "
            "than INSPECTOR_BODY_LIMIT)"
        )
    lines = log.request_head.encode("latin-1").split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    target, _, version = rest.rpartition(b" ")
    headers: list[tuple[bytes, bytes]] = []
    left_out: list[str] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        value = value.strip()
        if value == REDACTED.encode():
            left_out.append(name.decode("latin-1"))
            continue
        headers.append((name.strip().lower(), value))
    try:
        envelope = build_embedded_request(
            method=method.decode("latin-1"),
            target=target,
            http_version="1.0" if version == b"HTTP/1.0" else "1.1",
            headers=headers,
            body=bytes(log.request_body or b""),
            default_host=b"localhost",
        )
    except ValueError as exc:
        raise ReplayRefused(f"the logged head is not a valid request: {exc}") from exc
    return envelope, left_out


async def _read_stream(broker: Broker, stream: str, limit: int) -> tuple[bytes, int]:
    """Drain a streamed reply body: the first ``limit`` bytes, and the total length."""
    kept: list[bytes] = []
    size = 0
    try:
        while True:
            chunk, last = await broker.stream_read(stream, gateway_settings.REPLY_TIMEOUT)
            if last:
                break
            if size < limit:
                kept.append(chunk[: limit - size])
            size += len(chunk)
    except (TimeoutError, StreamAborted):
        with contextlib.suppress(Exception):
            await broker.stream_discard(stream)
    return b"".join(kept), size


def replay(log: RequestLog, *, actor: Any = None, actor_ip: str | None = None) -> ReplayResult:
    """Send ``log``'s request again to its label's application and wait for the answer.

    Synchronous, for the admin: runs on this process's gateway loop (``runtime.run_from_thread``)
    and blocks up to ``REPLY_TIMEOUT``. The answer is logged as a new row (transport "replay")
    and an audit event. Raises :class:`ReplayRefused` when it cannot be sent.
    """
    envelope, left_out = rebuild_envelope(log)
    client = log.requesting_client if log.requesting_client not in ("", "-") else "127.0.0.1:0"
    limit = gateway_settings.INSPECTOR_BODY_LIMIT
    outcome: dict[str, Any] = {}

    async def send(broker: Broker) -> None:
        key = await broker.lookup_label(log.label)
        if key is None:
            outcome["refused"] = f"no application is registered at “{log.label}” now"
            return
        request = PublicRequest(
            envelope=envelope,
            requesting_client=client,
            method=log.method,
            deadline=now() + gateway_settings.REPLY_TIMEOUT,
        )
        started = time.monotonic()
        try:
            reply = await relay_with_settings(broker, key, request, asyncio.Event())
        except QueueFull:
            outcome["refused"] = "too many requests are waiting for this application"
            return
        assert reply is not None  # only None when the requestor leaves; this one never does
        body, size = reply.body[:limit], len(reply.body)
        if reply.stream:
            body, size = await _read_stream(broker, reply.stream, limit)
        outcome.update(reply=reply, body=body, size=size, duration=time.monotonic() - started)

    started_at = timezone.now()
    try:
        ran = runtime.run_from_thread(send, timeout=gateway_settings.REPLY_TIMEOUT + 10)
    except Exception as exc:  # the broker is unreachable, or something broke on the loop
        raise ReplayRefused(f"the gateway could not send it: {exc}") from exc
    if not ran:
        raise ReplayRefused(
            "no gateway loop runs in this admin process (serve the admin with rungateway)"
        )
    if "refused" in outcome:
        raise ReplayRefused(outcome["refused"])
    reply: Reply = outcome["reply"]
    redact = gateway_settings.INSPECTOR_REDACT_HEADERS
    bodies = gateway_settings.INSPECTOR_CAPTURE_BODIES
    head_end = envelope.find(b"\r\n\r\n")
    row = RequestLog.objects.create(
        label=log.label,
        started_at=started_at,
        method=log.method,
        target=log.target,
        status=reply.status,
        transport="replay",
        duration_ms=round(outcome["duration"] * 1000, 3),
        request_bytes=log.request_bytes,
        response_bytes=outcome["size"],
        requesting_client=log.requesting_client,
        request_head=redact_head(envelope[:head_end], redact),
        request_body=log.request_body if bodies else None,
        response_headers=headers_text(reply.headers, redact),
        response_body=outcome["body"] if bodies else None,
    )
    AuditEvent.record(
        AuditEvent.Action.REPLAYED,
        label=log.label,
        actor=actor,
        actor_ip=actor_ip,
        request_log=log.pk,
        replay_log=row.pk,
        status=reply.status,
        left_out_headers=left_out,
    )
    return ReplayResult(reply.status, outcome["duration"], reply, outcome["body"], row)


def status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)
