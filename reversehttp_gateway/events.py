"""One record per relayed request, handed to in-process observers (metrics, inspector, logs).

``public.py`` publishes a :class:`RelayRecord` when a public request is finished. Observers are
plain callables that must return at once (put the record on a queue, bump a counter): they run
on the event loop, on the hot path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RelayRecord:
    """What happened to one public request."""

    label: str
    method: str
    target: str
    status: int
    transport: str  # "longpoll", "pipeline", "json", "websocket", "ptth", or "gateway"
    started_at: float  # epoch seconds
    duration: float  # seconds
    requesting_client: str
    request_bytes: int
    response_bytes: int
    request_envelope: bytes = field(default=b"", repr=False)
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list, repr=False)
    response_body: bytes = field(default=b"", repr=False)
    direct: bool = False  # relayed on the direct path (docs/direct-path.md)


Observer = Callable[[RelayRecord], None]
_observers: list[Observer] = []


def subscribe(observer: Observer) -> Callable[[], None]:
    """Call ``observer`` for every record from now on; returns a function that unsubscribes."""
    _observers.append(observer)
    return lambda: _observers.remove(observer) if observer in _observers else None


def publish(record: RelayRecord) -> None:
    for observer in list(_observers):
        try:
            observer(record)
        except Exception:  # an observer's bug must not fail the relay
            logger.exception("Relay observer %r failed", observer)
