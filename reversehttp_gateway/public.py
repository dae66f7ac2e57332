"""The public side: third-party requests to a label's public URL, relayed to its application.

Path mode serves ``/{label}/...``; vhost mode serves ``Host: {label}.{VHOST_DOMAIN}``. The
embedded request keeps the raw target, so path-mode applications see ``/{label}/...`` (RH-27).
"""

from __future__ import annotations

import logging
import time

from .conf import gateway_settings
from .http import (
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    respond,
    respond_error,
    watch_disconnect,
)
from .protocol.client_address import format_requesting_client
from .protocol.embedded_request import build_embedded_request
from .queue.base import Broker, PublicRequest, now
from .queue.relay import relay

access_log = logging.getLogger("reversehttp_gateway.access")


def _raw_target(scope: Scope) -> bytes:
    target = scope.get("raw_path") or scope["path"].encode("utf-8")
    query = scope.get("query_string", b"")
    return target + (b"?" + query if query else b"")


def _default_host(scope: Scope) -> bytes:
    server = scope.get("server")
    if server and server[1] is not None:
        return f"{server[0]}:{server[1]}".encode()
    return b"localhost"


async def handle(scope: Scope, receive: Receive, send: Send, broker: Broker, label: str) -> int:
    """Relay one public request for ``label``; returns the status sent (for the access log)."""
    started = time.monotonic()
    status = await _relay(scope, receive, send, broker, label)
    access_log.info(
        '%s "%s %s" %s %s %.1fms',
        format_requesting_client(scope.get("client")) or "-",
        scope["method"],
        _raw_target(scope).decode("latin-1"),
        label,
        status,
        (time.monotonic() - started) * 1000,
    )
    return status


async def _relay(scope: Scope, receive: Receive, send: Send, broker: Broker, label: str) -> int:
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
    method = scope["method"]
    if method == "CONNECT" or header(scope, b"upgrade") is not None:
        await respond_error(send, 501, "Upgrade and CONNECT cannot be relayed")  # RH-40
        return 501
    requesting_client = format_requesting_client(scope.get("client"))
    if requesting_client is None:
        await respond_error(send, 400, "Could not determine your IP address")  # RH-61
        return 400
    try:
        body = await read_body(scope, receive, gateway_settings.MAX_BODY_SIZE)
    except BodyTooLarge:
        await respond_error(
            send, 413, "Request body too large", headers=[(b"connection", b"close")]
        )
        return 413
    except ClientDisconnected:
        return 499
    try:
        envelope = build_embedded_request(
            method=method,
            target=_raw_target(scope),
            http_version=scope.get("http_version", "1.1"),
            headers=scope["headers"],
            body=body,
            default_host=_default_host(scope),
        )
    except ValueError as exc:
        await respond_error(send, 400, f"Request cannot be relayed: {exc}")
        return 400
    request = PublicRequest(
        envelope=envelope,
        requesting_client=requesting_client,
        method=method,
        deadline=now() + gateway_settings.REPLY_TIMEOUT,
    )
    gone, watcher = watch_disconnect(receive)
    runtime.in_flight += 1
    try:
        reply = await relay(
            broker,
            key,
            request,
            no_app_timeout=gateway_settings.NO_APP_TIMEOUT,
            reply_timeout=gateway_settings.REPLY_TIMEOUT,
            client_gone=gone,
        )
    finally:
        runtime.in_flight -= 1
        watcher.cancel()
    if reply is None:
        return 499
    await respond(send, reply.status, reply.headers, reply.body, head=method == "HEAD")
    return reply.status
