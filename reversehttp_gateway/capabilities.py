"""Unguessable URLs derived from ``SECRET_KEY``: the private URL and the Request URLs (RH-90).

The private URL's secret is an HMAC of the registration's label and nonce, so the gateway can
hand the same URLs out again on a 204 refresh without storing the secret. A Request URL's slot
is a random part plus its own HMAC, so any slot the gateway issued is recognised without
storage, and a never-issued one is refused (RH-23: 404).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

from django.conf import settings

from .ids import new_id

_SLOT_RANDOM_BYTES = 12
_SLOT_RANDOM_CHARS = len(secrets.token_urlsafe(_SLOT_RANDOM_BYTES))  # 16: base64 of 12 bytes
_MAC_BYTES = 18


def _mac(*parts: str) -> str:
    return _keyed_mac(settings.SECRET_KEY, *parts)


@functools.lru_cache(maxsize=16)
def _keyed(key: str) -> hmac.HMAC:
    """An HMAC-SHA256 state keyed with ``key``, to copy: ``hmac.digest`` has OpenSSL 3 look the
    algorithm up on every call, about 14 µs per MAC in the gateway process (perf), 2.4 times
    what a copy of this state costs there (docs/benchmarks.md, "Where the time goes")."""
    return hmac.new(key.encode(), digestmod=hashlib.sha256)


def _keyed_mac(key: str, *parts: str) -> str:
    state = _keyed(key).copy()
    state.update("\x00".join(("reversehttp-gateway", *parts)).encode())
    return base64.urlsafe_b64encode(state.digest()[:_MAC_BYTES]).decode()


@functools.lru_cache(maxsize=8192)
def _registration_secret(key: str, label: str, nonce: str) -> str:
    return _keyed_mac(key, "registration", label, nonce)  # asked for on every poll and reply


def new_nonce() -> str:
    return secrets.token_hex(16)


def registration_secret(label: str, nonce: str) -> str:
    """The secret path segment of a registration's private URL (144-bit HMAC)."""
    return _registration_secret(settings.SECRET_KEY, label, nonce)


def registration_secret_matches(label: str, nonce: str, secret: str) -> bool:
    return hmac.compare_digest(registration_secret(label, nonce), secret)


def new_slot(broker_key: str) -> str:
    """A fresh Request URL slot for ``broker_key``: 96 random bits plus a 144-bit HMAC."""
    random_part = secrets.token_urlsafe(_SLOT_RANDOM_BYTES)
    return random_part + _mac("slot", broker_key, random_part)


def connection_slot() -> str:
    """A slot for a request answered on its poller's own connection (WebSocket, PTTH).

    It is never part of a URL, and only that connection may claim it, so it needs neither an
    HMAC nor randomness: an id unique like a slot must be (:func:`..ids.new_id`).
    """
    return "c" + new_id()


def slot_matches(broker_key: str, slot: str) -> bool:
    random_part, mac = slot[:_SLOT_RANDOM_CHARS], slot[_SLOT_RANDOM_CHARS:]
    return len(random_part) == _SLOT_RANDOM_CHARS and hmac.compare_digest(
        _mac("slot", broker_key, random_part), mac
    )
