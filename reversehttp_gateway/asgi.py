"""The gateway's ASGI entry point: routes gateway traffic to raw handlers, the rest to Django.

``GatewayApplication(django_app)`` wraps the site's ASGI application. Service URL, private URLs,
Request URLs and public URLs are served without Django's request cycle (notes P2, §9); everything
else (admin, status pages, the site's own views) goes to ``django_app``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.db import DatabaseError

from . import cors
from .conf import gateway_settings
from .http import Receive, Scope, Send, header, respond_error
from .queue.base import BrokerUnavailable
from .runtime import runtime

logger = logging.getLogger(__name__)

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _public_label(scope: Scope) -> str | None:
    """The label a public request is addressed to, or None when it is not public traffic."""
    if gateway_settings.PUBLIC_URL_MODE == "vhost":
        domain = gateway_settings.VHOST_HOSTNAME
        host = (header(scope, b"host") or b"").decode("latin-1").lower()
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if domain and hostname.endswith("." + domain):
            label = hostname[: -len(domain) - 1]
            return label if _LABEL.fullmatch(label) else None
        return None
    first = scope["path"].lstrip("/").split("/", 1)[0].lower()
    if not _LABEL.fullmatch(first) or first in gateway_settings.RESERVED_LABELS:
        return None
    return first


def is_service_path(path: str) -> bool:
    """Whether ``path`` is the Service URL or below it (registration, private URLs)."""
    service_path = gateway_settings.SERVICE_PATH
    return path == service_path or path.startswith(service_path + "/")


def is_metrics(scope: Scope, label: str | None) -> bool:
    """``/metrics`` for Prometheus (metrics.py); in vhost mode only on the gateway's own host."""
    return (
        scope["path"] == "/metrics"
        and bool(gateway_settings.METRICS_TOKEN)
        and (label is None or gateway_settings.PUBLIC_URL_MODE == "path")
    )


def public_traffic_label(scope: Scope) -> str | None:
    """The label an HTTP request is public traffic for, or None (gateway endpoints, the site)."""
    if is_service_path(scope["path"]):
        return None
    label = _public_label(scope)
    return None if label is None or is_metrics(scope, label) else label


class GatewayApplication:
    """ASGI callable: lifespan, gateway HTTP endpoints, and fallback to the wrapped app."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "websocket" and is_service_path(scope["path"]):
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        path: str = scope["path"]
        service_path = gateway_settings.SERVICE_PATH
        is_service = is_service_path(path)
        label = None if is_service else _public_label(scope)
        if is_metrics(scope, label):
            from . import metrics

            await metrics.serve(scope, receive, send)
            return
        if not is_service and label is None:
            await self.fallback(scope, receive, send)
            return
        if is_service:  # CORS for browser clients on other origins (cors.py)
            if cors.is_preflight(scope):
                await cors.respond_preflight(scope, send)
                return
            send = cors.wrap_send(scope, send)
        if is_service and scope["method"] == "GET" and path.rstrip("/") == service_path:
            await self.fallback(scope, receive, send)  # RH-80: staff status page, a Django view
            return
        if runtime.held >= gateway_settings.MAX_HELD_CONNECTIONS:
            await respond_error(send, 503, "The gateway is at its connection limit", retry_after=5)
            return
        runtime.held += 1
        try:
            broker = await runtime.ensure_started()
            if is_service:
                from . import service

                await service.handle(scope, receive, send, broker, path[len(service_path) :])
            else:
                from . import public

                assert label is not None
                await public.handle(scope, receive, send, broker, label)
        except BrokerUnavailable as exc:
            logger.warning("Broker unavailable: %s", exc)
            await respond_error(send, 503, "The gateway's queue is unavailable", retry_after=5)
        except DatabaseError as exc:  # RH-15: registration changes need the database
            logger.warning("Database unavailable: %s", exc)
            await respond_error(send, 503, "The gateway's database is unavailable", retry_after=5)
        finally:
            runtime.held -= 1

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``…/r/<label>/<secret>/ws``: the multiplexed WebSocket transport."""
        parts = [p for p in scope["path"][len(gateway_settings.SERVICE_PATH) :].split("/") if p]
        try:
            broker = await runtime.ensure_started()
            address = None
            if len(parts) == 4 and parts[0] == "r" and parts[3] == "ws":
                from .resolution import resolve_private_url

                address = await resolve_private_url(broker, parts[1].lower(), parts[2])
        except (BrokerUnavailable, DatabaseError) as exc:
            logger.warning("WebSocket refused: %s", exc)
            address = None
        if address is None:
            await receive()  # websocket.connect
            # Accept, then close: a close before accepting reaches the client as HTTP 403.
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 4404})
            return
        from .transports import websocket

        await websocket.serve(scope, receive, send, broker, address)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await runtime.ensure_started()
                except Exception as exc:  # reported to the server, which refuses to start
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
