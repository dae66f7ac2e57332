"""Running a client: N pollers sharing one registration, graceful stop, asyncio and sync APIs.

Three transports (``transport=``): ``"longpoll"`` (the default; N long-poll loops, each with its
own chain of Request URLs), ``"websocket"`` (one multiplexed WebSocket serving N requests at
once, see :mod:`.websocket`) and ``"ptth"`` (N reversed sockets to the gateway's PTTH listener,
see :mod:`.ptth`).

HTTP goes through httpx (registration, DELETE, and whatever the lean client does not cover:
``https://``, proxies) because it offers, in one library, an asyncio API that the sync wrapper
can drive from a thread, keep-alive with a connection pool, streaming of bodies and separate
connect/read timeouts. The calls made for every relayed request (the long-poll's polls and
replies, forward mode's requests) go through the keep-alive client of :mod:`.http1_client`
where it fits (:mod:`.gateway_http`, :class:`~.handlers.ForwardHandler`), at a fraction of
httpx's CPU per call.

``TCP_NODELAY`` is set on every connection: httpx's async backend opens sockets through
asyncio, whose TCP transports always set it (``asyncio.base_events._set_nodelay``), httpcore's
sync backend sets it explicitly, and so does :mod:`.http1_client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import httpx

from .backoff import Backoff
from .errors import ClientError
from .gateway_http import GatewayHttp
from .handlers import Handler, as_handler
from .poller import Poller
from .ptth import PtthWorker, parse_ptth_address
from .registration import Registrar, Registration, delete_registration, normalize_service_url
from .websocket import WebSocketWorker

__all__ = ["AsyncGatewayClient", "GatewayClient", "serve_forever"]

logger = logging.getLogger("reversehttp_gateway.client")


def _version() -> str:
    try:
        return importlib.metadata.version("reversehttp-gateway")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0"


USER_AGENT = f"reversehttp-gateway-client/{_version()}"
TRANSPORTS = ("longpoll", "websocket", "ptth")


class AsyncGatewayClient:
    """Serve ``app`` under the label ``name`` of the gateway at ``gateway``, from asyncio.

    ``app`` is an ASGI application, a WSGI application (run in threads), a URL string such as
    ``"http://localhost:8000"`` (forward mode) or a :class:`~.handlers.Handler`. ``gateway`` is
    the Service URL (``http://gw.example/reversehttp``; a bare ``http://gw.example`` gets
    ``/reversehttp`` appended).

    ``pollers`` long-polls run concurrently, so up to that many requests are worked on at once.
    After failures (gateway down, 5xx) each poller retries with exponential backoff and jitter,
    at most ``max_backoff`` seconds apart, forever until stopped.

    ``transport`` is ``"longpoll"`` (default), ``"websocket"`` (one WebSocket carrying up to
    ``pollers`` requests at once; large bodies stream both ways) or ``"ptth"`` (``pollers``
    reversed sockets to the gateway's PTTH listener at ``ptth_url``, ``"host:port"``).
    ``pipeline`` (long-poll only) lets each poll take several queued requests at once as an
    ``application/http`` batch (RH-26), answered concurrently and replied to together.
    ``chain`` (long-poll only, default on): each reply also asks for the next request
    (``Reversehttp-Poll``); gateways without chained polls answer 202 as usual.
    ``stream_threshold`` is the response body size above which the WebSocket transport sends a
    whole response as a stream (and forward mode streams the local server's response).
    ``token`` proves ownership of the label across restarts (random if omitted);
    ``access_token`` is sent as ``Authorization: Bearer`` to gateways that require one.
    :meth:`stop` DELETEs the registration, so the public URL answers 404 right away.

    Use ``async with AsyncGatewayClient(...) as client:`` or :meth:`start` / :meth:`stop`, or
    :meth:`serve_forever`.
    """

    def __init__(
        self,
        gateway: str,
        name: str,
        app: object,
        *,
        token: str | None = None,
        access_token: str | None = None,
        lease: int | None = None,
        pollers: int = 4,
        poll_timeout: float = 90.0,
        shutdown_timeout: float = 10.0,
        strip_prefix: bool = True,
        max_backoff: float = 30.0,
        transport: str = "longpoll",
        ptth_url: str | None = None,
        stream_threshold: int = 256 * 1024,
        pipeline: bool = False,
        chain: bool = True,
    ) -> None:
        if pollers < 1:
            raise ValueError("pollers must be at least 1")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        if transport == "ptth" and not ptth_url:
            raise ValueError("the ptth transport needs ptth_url (the gateway's PTTH host:port)")
        if stream_threshold < 1:
            raise ValueError("stream_threshold must be positive")
        self.transport = transport
        self.ptth_address = parse_ptth_address(ptth_url) if ptth_url else None
        self.stream_threshold = stream_threshold
        self.pipeline = pipeline
        self.chain = chain
        self.service_url = normalize_service_url(gateway)
        self.name = name
        self.handler: Handler = as_handler(app, strip_prefix=strip_prefix)
        self.pollers = pollers
        self.poll_timeout = poll_timeout
        self.shutdown_timeout = shutdown_timeout
        self.max_backoff = max_backoff
        self._token = token
        self._access_token = access_token
        self._lease = lease
        self._http: httpx.AsyncClient | None = None
        self._gateway_http: GatewayHttp | None = None  # the long-poll's polls and replies
        self._registrar: Registrar | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._workers: list[Poller | WebSocketWorker | PtthWorker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._state = "new"

    # Information ------------------------------------------------------------------------------

    @property
    def registration(self) -> Registration | None:
        """The latest registration (its URLs change when the client had to register again)."""
        return self._registrar.latest if self._registrar else None

    @property
    def public_url(self) -> str:
        """Where third parties reach the application."""
        if self.registration is None:
            raise RuntimeError("the client is not registered yet")
        return self.registration.public_url

    @property
    def private_url(self) -> str:
        """The registration's private URL (GET for its state; DELETE to unregister)."""
        if self.registration is None:
            raise RuntimeError("the client is not registered yet")
        return self.registration.private_url

    @property
    def relayed(self) -> int:
        """How many requests have been answered so far (their replies sent or on their way)."""
        return sum(worker.relayed for worker in self._workers)

    # Life cycle -------------------------------------------------------------------------------

    async def start(self) -> str:
        """Register, start the pollers, and return the public URL.

        Raises:
            GatewayUnreachable: the gateway could not be reached.
            RegistrationRefused: the gateway refused the name (``status`` and ``message`` say
                why: 400 invalid name, 401 missing or bad access token, 403 name taken).
        """
        if self._state != "new":
            raise RuntimeError("a client can be started only once")
        self._state = "starting"
        self._http = httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=2 * self.pollers + 2
            ),
        )
        self._registrar = Registrar(
            self._http,
            self.service_url,
            self.name,
            token=self._token,
            access_token=self._access_token,
            lease=self._lease,
        )
        handler_started = False
        try:
            await self.handler.startup()
            handler_started = True
            firsts: list[Registration | None] = [await self._registrar.register()]
            # One registration per poller: each needs its own chain of Request URLs. A poller
            # whose registration fails here (e.g. 429, rate limited) registers later by itself.
            # WebSocket and PTTH connections all use the private URL of the one registration.
            for _ in range(self.pollers - 1 if self.transport == "longpoll" else 0):
                firsts.append(await self._extra_registration())
        except BaseException:
            self._state = "stopped"
            if self._registrar.latest is not None:
                with contextlib.suppress(ClientError):
                    await delete_registration(self._http, self._registrar.latest.private_url)
            if handler_started:
                await self.handler.shutdown()
            await self._http.aclose()
            self._stopped.set()
            raise
        for worker in self._make_workers(firsts):
            self._workers.append(worker)
            self._tasks.append(asyncio.create_task(self._supervise(worker)))
        self._state = "running"
        public_url = self.public_url
        logger.info(
            "serving %s with %d poller(s) (%s) at %s",
            self.name,
            self.pollers,
            self.transport,
            public_url,
        )
        return public_url

    def _make_workers(
        self, firsts: list[Registration | None]
    ) -> list[Poller | WebSocketWorker | PtthWorker]:
        assert self._http is not None and self._registrar is not None

        def backoff() -> Backoff:
            return Backoff(min(0.5, self.max_backoff), self.max_backoff)

        common: dict[str, Any] = {"backoff": backoff(), "stream_threshold": self.stream_threshold}
        if self.transport == "websocket":
            worker = WebSocketWorker(
                0, self._registrar, self.handler, self._stopping, concurrency=self.pollers, **common
            )
            return [worker]
        if self.transport == "ptth":
            assert self.ptth_address is not None
            return [
                PtthWorker(
                    index,
                    self._registrar,
                    self.handler,
                    self._stopping,
                    address=self.ptth_address,
                    backoff=backoff(),
                    stream_threshold=self.stream_threshold,
                )
                for index in range(self.pollers)
            ]
        self._gateway_http = GatewayHttp(
            self._http, user_agent=USER_AGENT, max_idle=2 * self.pollers + 2
        )
        return [
            Poller(
                index,
                self._gateway_http,
                self._registrar,
                self.handler,
                self._stopping,
                first=first,
                poll_timeout=self.poll_timeout,
                backoff=backoff(),
                pipeline=self.pipeline,
                chain=self.chain,
            )
            for index, first in enumerate(firsts)
        ]

    async def _extra_registration(self) -> Registration | None:
        assert self._registrar is not None
        try:
            return await self._registrar.register()
        except ClientError as exc:
            logger.warning("registering an extra poller failed (%s); it will retry", exc)
            return None

    async def _supervise(self, worker: Poller) -> None:
        """Run one poller; a bug in it is logged and the poller restarted, never fatal."""
        while not self._stopping.is_set():
            try:
                await worker.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s %d crashed; restarting it", _kind(worker), worker.index)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)

    async def stop(self) -> None:
        """Stop gracefully: no new polls, DELETE the registration, finish requests in hand.

        Requests already taken are answered (the gateway relays replies after a DELETE);
        anything still running after ``shutdown_timeout`` seconds is cancelled.

        With the WebSocket transport the order differs: the gateway closes the WebSocket of a
        deleted registration at once, failing the requests on it, so the client first answers
        the requests in hand (new arrivals get 503), closes the socket, and then DELETEs.
        """
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        if self._state == "stopping":
            await self._stopped.wait()
            return
        self._state = "stopping"
        self._stopping.set()
        assert self._http is not None and self._registrar is not None
        if self.transport == "websocket":
            await self._finish_workers()
            await self._unregister()
        else:
            deleted = await self._unregister()
            if not deleted:  # the gateway is unreachable: waiting polls would hang until timeout
                for worker in self._workers:
                    worker.abort_wait()
            await self._finish_workers()
        try:
            await self.handler.shutdown()
        finally:
            if self._gateway_http is not None:
                await self._gateway_http.aclose()
            await self._http.aclose()
            self._state = "stopped"
            self._stopped.set()
            logger.info("stopped serving %s", self.name)

    async def _finish_workers(self) -> None:
        """Wait up to ``shutdown_timeout`` for the workers to finish, then make them."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(self._tasks, timeout=self.shutdown_timeout)
        for worker in self._workers:
            worker.abort_wait()
        if pending:
            _done, pending = await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)

    async def _unregister(self) -> bool:
        """DELETE the private URL once no registration is in flight; False if that failed."""
        assert self._http is not None and self._registrar is not None
        closed = await self._registrar.close(timeout=5.0)
        latest = self._registrar.latest
        if latest is None:  # pragma: no cover - start() always registers first
            return True
        try:
            if await delete_registration(self._http, latest.private_url):
                logger.info("deleted the registration of %s", self.name)
        except ClientError as exc:
            logger.warning("could not delete the registration of %s: %s", self.name, exc)
            return False
        return closed

    async def serve_forever(self) -> None:
        """Start if needed, then serve until :meth:`stop` is called or this task is cancelled.

        On cancellation the client still stops gracefully (and DELETEs its registration).
        """
        if self._state == "new":
            await self.start()
        try:
            await self._stopped.wait()
        finally:
            if self._state != "stopped":
                await asyncio.shield(self.stop())

    async def __aenter__(self) -> AsyncGatewayClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class GatewayClient:
    """The synchronous API: an :class:`AsyncGatewayClient` on an event loop in its own thread.

    Takes the same arguments. ``start()`` blocks until registered and returns the public URL;
    ``stop()`` stops gracefully; ``serve_forever()`` blocks until Ctrl-C, SIGTERM (when called
    from the main thread) or :meth:`request_stop`. Also a context manager.
    """

    def __init__(self, gateway: str, name: str, app: object, **options: Any) -> None:
        self._arguments = (gateway, name, app)
        self._options = options
        normalize_service_url(gateway)  # fail early on a malformed URL
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: AsyncGatewayClient | None = None
        self._stop_requested = threading.Event()

    def _run(self, factory: Callable[[], Awaitable[Any]], timeout: float | None) -> Any:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(factory(), self._loop)  # type: ignore[arg-type]
        return future.result(timeout)

    @property
    def client(self) -> AsyncGatewayClient:
        if self._client is None:
            raise RuntimeError("the client is not started")
        return self._client

    @property
    def public_url(self) -> str:
        return self.client.public_url

    @property
    def private_url(self) -> str:
        return self.client.private_url

    def start(self, timeout: float | None = 60.0) -> str:
        """Register and start polling in a background thread; returns the public URL."""
        if self._loop is not None:
            raise RuntimeError("a client can be started only once")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="reversehttp-client", daemon=True
        )
        self._thread.start()

        async def create_and_start() -> str:
            self._client = AsyncGatewayClient(*self._arguments, **self._options)
            return await self._client.start()

        try:
            return self._run(create_and_start, timeout)
        except BaseException:
            self._close_loop()
            raise

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop gracefully (DELETE the registration) and end the background thread."""
        if self._loop is None or self._loop.is_closed():
            return
        try:
            if self._client is not None:
                self._run(self._client.stop, timeout)
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def request_stop(self) -> None:
        """Make :meth:`serve_forever` return (after stopping); safe from any thread."""
        self._stop_requested.set()

    def serve_forever(self) -> None:
        """Start if needed and serve until Ctrl-C, SIGTERM or :meth:`request_stop`."""
        if self._loop is None:
            self.start()
        previous: Any = None
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            previous = signal.signal(signal.SIGTERM, lambda *_: self._stop_requested.set())
        try:
            while not self._stop_requested.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)
            self.stop()

    def __enter__(self) -> GatewayClient:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _kind(worker: object) -> str:
    return getattr(worker, "kind", "poller")


def serve_forever(app: object, *, gateway: str, name: str, **options: Any) -> None:
    """Serve ``app`` (ASGI, WSGI, a URL to forward to, or a Handler) until Ctrl-C or SIGTERM.

    Blocking; prints nothing: configure logging for the ``reversehttp_gateway.client`` logger
    to see the public URL and one line per request.
    """
    GatewayClient(gateway, name, app, **options).serve_forever()
