"""Prometheus metrics: counters fed by the relay events, broker gauges computed at scrape time.

Enabled by the ``METRICS_TOKEN`` setting and served at ``/metrics`` by
``asgi.GatewayApplication`` (docs/metrics.md). :func:`install` subscribes one observer to
:mod:`events` when the runtime starts; the observer only bumps counters, so it is safe on the
event loop. Gauges (waiting pollers, queue depth, registrations) are read from the broker when
Prometheus scrapes, never from the database.

Label cardinality stays bounded: status class and code, transport, and (only with
``METRICS_PER_LABEL``) the registration's label. Each gateway process exposes its own metrics;
with ``PROMETHEUS_MULTIPROC_DIR`` set, every process serves the sum over all of them.
"""

from __future__ import annotations

import atexit
import gzip
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from . import events
from .conf import gateway_settings
from .http import Receive, Scope, Send, header, respond, respond_error
from .queue.base import Broker, BrokerUnavailable

METRICS_PATH = "/metrics"
PREFIX = "reversehttp_gateway"
# From a cached reply on loopback (0.5 ms) to the longest REPLY_TIMEOUT worth waiting for (60 s).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# The label value of requests to labels nobody registered (404), so that they add no series.
UNREGISTERED = "-"


@dataclass(slots=True)
class BrokerSnapshot:
    """What the broker holds now: active keys, this process's waiting pollers, queued requests."""

    keys: set[str]
    pollers: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # key -> label, with per-label metrics


async def snapshot(broker: Broker, *, with_labels: bool) -> BrokerSnapshot:
    """Read the gauges' values from ``broker`` (one Redis round trip for the counts).

    The ``Broker`` interface has no counting methods yet, so this reads the two brokers'
    bookkeeping directly; another broker reports its active registrations only.
    """
    from .queue.memory import MemoryBroker
    from .queue.redis_broker import RedisBroker

    keys = await broker.active_keys()
    result = BrokerSnapshot(keys)
    if isinstance(broker, MemoryBroker):
        for key in keys:
            result.pollers[key] = sum(not w.done() for w in broker._waiters.get(key, ()))
            result.queued[key] = len(broker._queues.get(key, ()))
            if with_labels:
                result.labels[key] = broker._keys.get(key, "")
    elif isinstance(broker, RedisBroker):
        ordered = sorted(keys)
        for key in ordered:  # waiting pollers are local to each process
            dispatcher = broker._dispatchers.get(key)
            waiters = dispatcher.waiters if dispatcher else ()
            result.pollers[key] = sum(not w.done() for w in waiters)
        if ordered:
            async with broker._guard(), broker._redis.pipeline(transaction=False) as pipe:
                for key in ordered:  # the queue is shared: the same count in every process
                    pipe.llen(broker._k("q", key))
                    if with_labels:
                        pipe.get(broker._k("reg", key))
                replies = await pipe.execute()
            step = 2 if with_labels else 1
            for index, key in enumerate(ordered):
                # the shared queue, plus what this process holds for its busy pollers
                result.queued[key] = int(replies[index * step]) + broker.local_queued(key)
                if with_labels:
                    label = replies[index * step + 1]
                    result.labels[key] = label.decode() if label else ""
    return result


class GatewayMetrics:
    """The gateway's metric objects, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None, *, per_label: bool) -> None:
        self.per_label = per_label
        extra = ("label",) if per_label else ()
        self.relayed = Counter(
            f"{PREFIX}_relayed_requests",
            "Public requests relayed (or answered by the gateway), by status and transport.",
            ("status_class", "code", "transport", *extra),
            registry=registry,
        )
        self.direct = Counter(
            f"{PREFIX}_direct_requests",
            "Public requests relayed on the direct path (no ASGI task; docs/direct-path.md).",
            ("transport", *extra),
            registry=registry,
        )
        self.direct_replies = Counter(
            f"{PREFIX}_direct_replies",
            "Long-poll replies answered on the direct path (no ASGI task; docs/direct-path.md).",
            registry=registry,
        )
        self.chained_polls = Counter(
            f"{PREFIX}_chained_polls",
            "Long-poll replies answered with the next request(s) or a 204 (Reversehttp-Poll).",
            registry=registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_relay_duration_seconds",
            "Time from a public request's arrival until its response was sent.",
            ("transport", "status_class", *extra),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_bytes = Counter(
            f"{PREFIX}_request_bytes",
            "Body bytes of public requests.",
            ("transport", *extra),
            registry=registry,
        )
        self.response_bytes = Counter(
            f"{PREFIX}_response_bytes",
            "Body bytes of buffered responses sent to public clients (streamed bodies excluded).",
            ("transport", *extra),
            registry=registry,
        )
        self.registrations = Gauge(
            f"{PREFIX}_registrations_active",
            "Registrations the broker currently routes to (all processes).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.pollers = Gauge(
            f"{PREFIX}_pollers_waiting",
            "Long-poll requests of this process waiting for a public request.",
            extra,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.queued = Gauge(
            f"{PREFIX}_queue_depth",
            "Public requests queued and not yet taken by a poller (shared by all processes "
            "with the redis broker).",
            extra,
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.in_flight = Gauge(
            f"{PREFIX}_requests_in_flight",
            "Public requests this process is relaying now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.broker_up = Gauge(
            f"{PREFIX}_broker_up",
            "1 when the broker answered the last scrape, 0 when it was unavailable.",
            registry=registry,
            multiprocess_mode="livemin",
        )

    def observe(self, record: events.RelayRecord) -> None:
        """Count one relayed request (an ``events`` observer: returns at once)."""
        status_class = f"{record.status // 100}xx"
        extra: tuple[str, ...] = ()
        if self.per_label:
            unknown = record.transport == "gateway" and record.status == 404
            extra = (UNREGISTERED if unknown else record.label,)
        self.relayed.labels(status_class, str(record.status), record.transport, *extra).inc()
        if record.direct:
            self.direct.labels(record.transport, *extra).inc()
        self.duration.labels(record.transport, status_class, *extra).observe(record.duration)
        self.request_bytes.labels(record.transport, *extra).inc(record.request_bytes)
        self.response_bytes.labels(record.transport, *extra).inc(record.response_bytes)

    async def refresh(self, broker: Broker, in_flight: int) -> None:
        """Set the scrape-time gauges from ``broker``."""
        self.in_flight.set(in_flight)
        try:
            state = await snapshot(broker, with_labels=self.per_label)
        except BrokerUnavailable:
            self.broker_up.set(0)
            return
        self.broker_up.set(1)
        self.registrations.set(len(state.keys))
        if not self.per_label:
            self.pollers.set(sum(state.pollers.values()))
            self.queued.set(sum(state.queued.values()))
            return
        self.pollers.clear()
        self.queued.clear()
        for key in state.keys:
            label = state.labels.get(key) or UNREGISTERED
            self.pollers.labels(label).set(state.pollers.get(key, 0))
            self.queued.labels(label).set(state.queued.get(key, 0))


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class _State:
    metrics: GatewayMetrics | None = None
    registry: CollectorRegistry | None = None
    unsubscribe: Callable[[], None] | None = None


_state = _State()


def install() -> GatewayMetrics | None:
    """Create the metrics and subscribe them to the relay events, once per process.

    Does nothing while ``METRICS_TOKEN`` is unset (the endpoint is disabled).
    """
    if _state.metrics is not None or not gateway_settings.METRICS_TOKEN:
        return _state.metrics
    # No "<name>_created" series next to every counter and histogram: they would double the
    # series count (prometheus-client switches them off for the whole process).
    disable_created_metrics()
    registry = CollectorRegistry(auto_describe=True)
    if _multiprocess():  # values live in PROMETHEUS_MULTIPROC_DIR, read back at scrape time
        MultiProcessCollector(registry)
        atexit.register(mark_process_dead, os.getpid())  # drop this process's live gauges
        metrics = GatewayMetrics(None, per_label=gateway_settings.METRICS_PER_LABEL)
    else:
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        metrics = GatewayMetrics(registry, per_label=gateway_settings.METRICS_PER_LABEL)
    _state.metrics, _state.registry = metrics, registry
    _state.unsubscribe = events.subscribe(metrics.observe)
    return metrics


def count_direct_reply() -> None:
    """One long-poll reply answered on the direct path (``reply_direct.py``)."""
    if _state.metrics is not None:
        _state.metrics.direct_replies.inc()


def count_chained_poll() -> None:
    """One reply POST answered as a poll of the next Request URL (``Reversehttp-Poll``)."""
    if _state.metrics is not None:
        _state.metrics.chained_polls.inc()


def authorized(scope: Scope) -> bool:
    """``Authorization: Bearer <METRICS_TOKEN>``, compared in constant time."""
    token = gateway_settings.METRICS_TOKEN
    value = header(scope, b"authorization") or b""
    scheme, _, given = value.partition(b" ")
    return bool(
        token
        and scheme.lower() == b"bearer"
        and secrets.compare_digest(given.strip(), token.encode("utf-8"))
    )


async def serve(scope: Scope, receive: Receive, send: Send) -> None:
    """The ``/metrics`` endpoint (raw ASGI): 401 without the token, else the exposition."""
    from .runtime import runtime

    if not authorized(scope):
        await respond_error(
            send,
            401,
            "A valid metrics token is required",
            headers=[(b"www-authenticate", b'Bearer realm="metrics"')],
        )
        return
    if scope["method"] not in ("GET", "HEAD"):
        await respond_error(send, 405, "Use GET", headers=[(b"allow", b"GET, HEAD")])
        return
    broker = await runtime.ensure_started()
    metrics = install()
    assert metrics is not None and _state.registry is not None  # the token is set
    await metrics.refresh(broker, runtime.in_flight)
    accept = (header(scope, b"accept") or b"").decode("latin-1")
    encoder, content_type = choose_encoder(accept)
    body = encoder(_state.registry)
    headers = [(b"content-type", content_type.encode()), (b"cache-control", b"no-store")]
    if gzip_accepted((header(scope, b"accept-encoding") or b"").decode("latin-1")):
        body = gzip.compress(body)
        headers.append((b"content-encoding", b"gzip"))
    await respond(send, 200, headers, body, head=scope["method"] == "HEAD")
