"""What the connection-oriented transports (WebSocket, PTTH) share: registration, backoff, logs.

Both connect to the private URL of the client's one registration (the WebSocket at
``…/r/<label>/<secret>/ws``, PTTH with the private URL's path as the upgrade target), so they
share it: when the gateway no longer knows it (deleted, expired, a gateway that lost its state),
the first worker to notice registers again and the others pick up the result
(:meth:`~.registration.Registrar.renew`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .backoff import Backoff
from .envelope import AppResponse
from .errors import ClientError, RegistrationRefused
from .handlers import Handler, PublicSite
from .registration import Registrar, Registration
from .streams import Responder

__all__ = ["ConnectionWorker", "error_response"]

logger = logging.getLogger("reversehttp_gateway.client")


def error_response(status: int, message: str) -> AppResponse:
    body = f"{status} {message}\n".encode()
    return AppResponse(status, [(b"content-type", b"text/plain; charset=utf-8")], body)


class ConnectionWorker:
    """Base of :class:`~.websocket.WebSocketWorker` and :class:`~.ptth.PtthWorker`."""

    kind = "connection"

    def __init__(
        self,
        index: int,
        registrar: Registrar,
        handler: Handler,
        stopping: asyncio.Event,
        *,
        backoff: Backoff | None = None,
        stream_threshold: int = 256 * 1024,
    ) -> None:
        self.index = index
        self._registrar = registrar
        self._handler = handler
        self._stopping = stopping
        self._backoff = backoff or Backoff()
        self.stream_threshold = stream_threshold
        self._abort = asyncio.Event()
        self.relayed = 0

    def abort_wait(self) -> None:
        """Stop waiting for requests or for in-flight ones: the client is stopping for good."""
        self._abort.set()

    # Registration -----------------------------------------------------------------------------

    async def _registration(self) -> Registration | None:
        """The registration to connect with (registering if there is none); None if stopping."""
        latest = self._registrar.latest
        return latest if latest is not None else await self._renew(None)

    async def _renew(self, stale: Registration | None) -> Registration | None:
        """Register again after ``stale`` was refused; retries with backoff; None if stopping."""
        while not self._stopping.is_set():
            try:
                return await self._registrar.renew(stale)
            except RegistrationRefused as exc:
                await self._failed(f"registering failed: {exc}", at_least=exc.retry_after or 0.0)
            except ClientError as exc:
                await self._failed(f"registering failed: {exc}")
        return None

    async def _gone(self, stale: Registration, what: str) -> None:
        """The gateway does not know ``stale`` any more: register again (slowly if repeated)."""
        if self._stopping.is_set():
            return
        logger.info("%s %d: %s; registering again", self.kind, self.index, what)
        delay = self._backoff.next_delay()
        if self._backoff.failures > 1:  # not the first failure in a row: slow down
            await self._sleep(delay)
        await self._renew(stale)

    @staticmethod
    def site(registration: Registration) -> PublicSite:
        return PublicSite.from_url(registration.public_url)

    # Failures ---------------------------------------------------------------------------------

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if the client is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _failed(self, what: str, *, at_least: float = 0.0) -> None:
        delay = max(self._backoff.next_delay(), at_least)
        # One warning per streak of failures; the retries themselves are debug noise.
        log = logger.warning if self._backoff.failures == 1 else logger.debug
        log("%s %d: %s; retrying in %.1fs (and with backoff)", self.kind, self.index, what, delay)
        await self._sleep(delay)

    def _recovered(self) -> None:
        if self._backoff.failures:
            logger.info("%s %d: connected again", self.kind, self.index)
        self._backoff.reset()

    # Requests ---------------------------------------------------------------------------------

    def _log_request(self, method: str, path: str, responder: Responder, started: float) -> None:
        self.relayed += 1
        logger.info(
            "%s %s %s %.1fms",
            method,
            path,
            responder.status if responder.status is not None else "-",
            (time.monotonic() - started) * 1000,
        )
