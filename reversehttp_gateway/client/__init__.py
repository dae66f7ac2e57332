"""Python client for Reverse HTTP gateways: serve an app from behind NAT with outbound HTTP only.

Importable without Django: it uses httpx, h11, websockets, msgpack and the pure
``reversehttp_gateway.protocol``. Transports: long-poll (default), WebSocket and PTTH
(``transport="websocket"`` / ``transport="ptth", ptth_url="host:port"``).

    from reversehttp_gateway.client import GatewayClient
    GatewayClient("http://gw.example/reversehttp", "demo", wsgi_or_asgi_app).serve_forever()

See ``docs/client.md`` for the asyncio API, forward mode and the ``reversehttp`` command.
"""

from .envelope import AppResponse, EmbeddedRequest
from .errors import ClientError, GatewayUnreachable, ProtocolViolation, RegistrationRefused
from .handlers import (
    AsgiHandler,
    ForwardHandler,
    Handler,
    PublicSite,
    WsgiHandler,
    as_handler,
    is_asgi_app,
)
from .registration import Registration
from .runner import TRANSPORTS, AsyncGatewayClient, GatewayClient, serve_forever
from .streams import BufferedResponder, RequestBody, Responder

__all__ = [
    "AppResponse",
    "AsgiHandler",
    "AsyncGatewayClient",
    "BufferedResponder",
    "ClientError",
    "EmbeddedRequest",
    "ForwardHandler",
    "GatewayClient",
    "GatewayUnreachable",
    "Handler",
    "ProtocolViolation",
    "PublicSite",
    "Registration",
    "RegistrationRefused",
    "RequestBody",
    "Responder",
    "TRANSPORTS",
    "WsgiHandler",
    "as_handler",
    "is_asgi_app",
    "serve_forever",
]
