"""Serving the gateway: startup and graceful shutdown shared by both servers, and Daphne.

``ServingBase`` holds what every server of ``rungateway`` does the same way: bind the PTTH
listener before serving, start the runtime once the server is ready, and on SIGTERM or SIGINT
drain. Draining stops taking public requests (503 with ``Retry-After`` and
``Connection: close``, so a load balancer fails over), keeps serving polls and replies so that
in-flight requests finish, then stops once none is left or ``SHUTDOWN_TIMEOUT`` has passed; a
second signal stops at once. ``GatewayServer`` is Daphne (the default);
``uvicorn_server.UvicornGatewayServer`` is uvicorn (``rungateway --server uvicorn``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

from .conf import gateway_settings
from .runtime import freeze_heap, runtime

if TYPE_CHECKING:
    from .transports.ptth import PtthListener

logger = logging.getLogger(__name__)


def _set_nodelay_on_accept(factory: Any) -> None:
    """Turn on TCP_NODELAY for every connection Daphne accepts.

    Twisted leaves Nagle's algorithm on; with a response written in pieces, a relay then waits
    ~40 ms for the peer's delayed ACK (shared/bench/README.md, every peer tunnel suffers it).
    """
    build = factory.buildProtocol

    def build_with_nodelay(addr: Any) -> Any:
        protocol = build(addr)
        made = protocol.connectionMade

        def connection_made() -> None:
            made()
            set_nodelay = getattr(protocol.transport, "setTcpNoDelay", None)
            if set_nodelay is not None:
                set_nodelay(True)

        protocol.connectionMade = connection_made
        return protocol

    factory.buildProtocol = build_with_nodelay


def _skip_form_parsing(factory: Any) -> None:
    """Stop Twisted from parsing POST bodies into ``request.args``, which Daphne never reads.

    ``twisted.web.http.Request`` parses the ``Content-Type`` of every POST with the ``email``
    package (7 % of the gateway's CPU on the long-poll path, whose replies are POSTs) and then
    decodes url-encoded and multipart bodies, a waste of CPU and memory on public uploads.
    Twisted's own switch for it is the ``parsePOSTFormSubmission`` argument of its requests.
    """
    from daphne.http_protocol import WebRequest

    class GatewayWebRequest(WebRequest):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("parsePOSTFormSubmission", False)
            super().__init__(*args, **kwargs)

    build = factory.buildProtocol

    def build_without_form_parsing(addr: Any) -> Any:
        protocol = build(addr)
        if protocol.requestFactory is WebRequest:
            protocol.requestFactory = GatewayWebRequest
        return protocol

    factory.buildProtocol = build_without_form_parsing


class ServingBase:
    """Startup, PTTH listener and graceful drain, whatever ASGI server runs ``application``.

    Subclasses implement ``run()`` (bind, call ``_bind_ptth()``, install ``_on_signal`` and
    serve; call ``_startup()`` on the serving loop once listening) and ``_stop_now()``.
    """

    server_name = "ASGI"

    def __init__(
        self,
        application: Any,
        host: str,
        port: int,
        *,
        verbosity: int = 1,
        ptth_listen: str | None = None,
    ) -> None:
        self.application = application
        self.host = host
        self.port = port
        self.verbosity = verbosity
        self._shutdown_started: float | None = None
        # "[host:]port" of the PTTH listener; None: the PTTH_LISTEN setting (None: no listener).
        self.ptth_listen = ptth_listen
        self.ptth: PtthListener | None = None

    def run(self) -> None:
        raise NotImplementedError

    def _stop_now(self) -> None:
        """Stop serving at once (ends ``run()``); called on the serving loop."""
        raise NotImplementedError

    def _bind_ptth(self) -> None:
        """Bind the PTTH port now, so that a conflict stops rungateway at once (PT-11)."""
        listen = self.ptth_listen or gateway_settings.PTTH_LISTEN
        if listen:
            from .transports.ptth import PtthListener

            self.ptth = PtthListener.from_address(listen)

    async def _startup(self) -> None:
        broker = await runtime.ensure_started()
        if self.ptth is not None:
            await self.ptth.start(broker)
        freeze_heap()
        logger.info(
            "Gateway listening on %s:%s (%s), service URL %s, %s broker",
            self.host,
            self.port,
            self.server_name,
            gateway_settings.SERVICE_URL,
            gateway_settings.BROKER,
        )

    def _begin_shutdown(self) -> None:
        """First signal: drain; a second one stops now. Runs on the serving loop."""
        if self._shutdown_started is not None:
            logger.info("Second signal: stopping now")
            self._stop_now()
            return
        logger.info(
            "Shutting down: refusing new public requests, finishing %d in flight", runtime.in_flight
        )
        runtime.draining = True
        self._shutdown_started = time.monotonic()
        asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        deadline = (self._shutdown_started or time.monotonic()) + gateway_settings.SHUTDOWN_TIMEOUT
        while runtime.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if runtime.in_flight:
            logger.warning("Shutdown timeout: %d requests still in flight", runtime.in_flight)
        if self.ptth is not None:
            await self.ptth.close()
        await runtime.stop()
        logger.info("Gateway stopped")
        self._stop_now()


class GatewayServer(ServingBase):
    """Runs ``application`` under Daphne on ``host``:``port`` until stopped."""

    server_name = "Daphne"

    def run(self) -> None:
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server
        from twisted.internet import reactor

        self.reactor = reactor
        endpoints = build_endpoint_description_strings(host=self.host, port=self.port)
        self.daphne = Server(
            application=self.application,
            endpoints=endpoints,
            signal_handlers=False,
            http_timeout=None,  # notes P16: deadlines are enforced by the gateway itself
            websocket_handshake_timeout=10,
            # A whole response may travel in one frame (docs/websocket.md): allow it.
            websocket_max_message_size=gateway_settings.MAX_BODY_SIZE + 65536,
            websocket_max_frame_size=gateway_settings.MAX_BODY_SIZE + 65536,
            application_close_timeout=gateway_settings.SHUTDOWN_TIMEOUT + 5,
            verbosity=self.verbosity,
            ready_callable=self._ready,
        )
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._bind_ptth()
        self.daphne.run()

    def _ready(self) -> None:
        # Slowloris: idle limit while a request head or body arrives, and between keep-alive
        # requests. Twisted suspends it while a request is being answered, so polls and
        # relays of any length are not cut.
        self.daphne.http_factory.timeOut = gateway_settings.IDLE_TIMEOUT
        _set_nodelay_on_accept(self.daphne.http_factory)
        _skip_form_parsing(self.daphne.http_factory)
        asyncio.ensure_future(self._startup())

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._begin_shutdown)

    def _stop_now(self) -> None:
        self.reactor.stop()
