"""``GatewayServer``: Daphne serving the gateway, with startup and graceful shutdown.

On SIGTERM or SIGINT the gateway stops taking public requests (503 with ``Retry-After`` and
``Connection: close``, so a load balancer fails over), keeps serving polls and replies so that
in-flight requests finish, then exits once none is left or ``SHUTDOWN_TIMEOUT`` has passed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from .conf import gateway_settings
from .runtime import runtime

logger = logging.getLogger(__name__)


class GatewayServer:
    """Runs ``application`` under Daphne on ``host``:``port`` until stopped."""

    def __init__(self, application: Any, host: str, port: int, *, verbosity: int = 1) -> None:
        self.application = application
        self.host = host
        self.port = port
        self.verbosity = verbosity
        self._shutdown_started: float | None = None

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
            application_close_timeout=gateway_settings.SHUTDOWN_TIMEOUT + 5,
            verbosity=self.verbosity,
            ready_callable=self._ready,
        )
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.daphne.run()

    def _ready(self) -> None:
        asyncio.ensure_future(self._startup())

    async def _startup(self) -> None:
        await runtime.ensure_started()
        logger.info(
            "Gateway listening on %s:%s, service URL %s, %s broker",
            self.host,
            self.port,
            gateway_settings.SERVICE_URL,
            gateway_settings.BROKER,
        )

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._begin_shutdown)

    def _begin_shutdown(self) -> None:
        if self._shutdown_started is not None:
            logger.info("Second signal: stopping now")
            self.reactor.stop()
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
        await runtime.stop()
        logger.info("Gateway stopped")
        self.reactor.stop()
