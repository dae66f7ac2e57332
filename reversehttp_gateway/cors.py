"""CORS for the gateway endpoints (everything under ``SERVICE_PATH``), for browser clients.

A page on another origin (``CORS_ALLOWED_ORIGINS``) may register, poll, reply and delete through
``fetch()``. Preflights are answered here; actual responses get their CORS headers added by a
wrapped ``send``, so every endpoint and every error path is covered without knowing about CORS.
Public URLs are the applications' business: their OPTIONS requests are relayed, never answered here.
No credentials mode: cookies are never needed by the gateway endpoints, and allowing them would let
any allowed origin act with a staff member's session on the status page.
"""

from __future__ import annotations

from .conf import gateway_settings
from .http import Message, Scope, Send, header, respond_error

__all__ = [
    "ALLOW_HEADERS",
    "ALLOW_METHODS",
    "EXPOSE_HEADERS",
    "MAX_AGE",
    "allowed_origin",
    "is_preflight",
    "respond_preflight",
    "wrap_send",
]

ALLOW_METHODS = b"GET, POST, PUT, DELETE, OPTIONS"
ALLOW_HEADERS = b"Content-Type, Authorization, Accept, Reversehttp-Poll"
# What browser code must read: Link (first/next/related), Location (private URL) and the
# requestor's address on polls (PROTOCOL.md §9.2).
EXPOSE_HEADERS = b"Link, Location, Requesting-Client"
MAX_AGE = b"600"


def allowed_origin(scope: Scope) -> bytes | None:
    """The request's ``Origin`` when CORS_ALLOWED_ORIGINS allows it, else None."""
    origin = header(scope, b"origin")
    if not origin:
        return None
    allowed = gateway_settings.CORS_ALLOWED_ORIGINS
    if "*" in allowed or origin.decode("latin-1").lower() in allowed:
        return origin
    return None


def is_preflight(scope: Scope) -> bool:
    """An OPTIONS request with ``Origin`` and ``Access-Control-Request-Method`` (Fetch spec)."""
    return (
        scope["method"] == "OPTIONS"
        and header(scope, b"origin") is not None
        and header(scope, b"access-control-request-method") is not None
    )


def _vary_origin(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``Origin`` added to ``Vary`` (merged into an existing one)."""
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            names = {v.strip().lower() for v in value.split(b",")}
            if b"origin" not in names and b"*" not in names:
                headers[index] = (name, value + b", Origin")
            return headers
    headers.append((b"vary", b"Origin"))
    return headers


async def respond_preflight(scope: Scope, send: Send) -> None:
    """204 with the allow headers for an allowed origin; 403 plain text otherwise."""
    origin = allowed_origin(scope)
    if origin is None:
        await respond_error(send, 403, "Origin not allowed", headers=[(b"vary", b"Origin")])
        return
    headers = [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-methods", ALLOW_METHODS),
        (b"access-control-allow-headers", ALLOW_HEADERS),
        (b"access-control-max-age", MAX_AGE),
        (b"vary", b"Origin"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def wrap_send(scope: Scope, send: Send) -> Send:
    """``send`` adding CORS headers to the response start; ``send`` itself when CORS is off.

    With CORS configured, every response gets ``Vary: Origin`` (it depends on the Origin), and a
    response to an allowed origin also ``Access-Control-Allow-Origin`` and
    ``Access-Control-Expose-Headers``.
    """
    if not gateway_settings.CORS_ALLOWED_ORIGINS:
        return send
    origin = allowed_origin(scope)

    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (bytes(n), bytes(v))
                for n, v in message.get("headers", ())
                if bytes(n).lower()
                not in (b"access-control-allow-origin", b"access-control-expose-headers")
            ]
            if origin is not None:
                headers.append((b"access-control-allow-origin", origin))
                headers.append((b"access-control-expose-headers", EXPOSE_HEADERS))
            message = {**message, "headers": _vary_origin(headers)}
        await send(message)

    return cors_send
