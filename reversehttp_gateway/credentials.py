"""Tokens: generated with ``secrets``, stored as digests, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

# 24 random bytes = 192 bits; token_urlsafe uses only [A-Za-z0-9_-], safe in Link headers (RH-90).
CAPABILITY_BYTES = 24


def new_capability() -> str:
    """A fresh unguessable identifier for private URLs, Request URLs and access tokens."""
    return secrets.token_urlsafe(CAPABILITY_BYTES)


def digest(secret: str) -> str:
    """The stored form of a secret: a SHA-256 hex digest (the secret itself is never stored)."""
    return hashlib.sha256(
        b"reversehttp-gateway:" + secret.encode("utf-8", "surrogateescape")
    ).hexdigest()


def matches(secret: str, stored_digest: str) -> bool:
    """Whether ``secret`` hashes to ``stored_digest``, compared in constant time."""
    return hmac.compare_digest(digest(secret), stored_digest)
