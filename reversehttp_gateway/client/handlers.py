"""Adapters that answer an embedded request: an ASGI app, a WSGI app, or a local HTTP server.

Every handler has two entry points:

- ``await handler(request, site)``: an :class:`~.envelope.EmbeddedRequest` with its whole body,
  plus the :class:`PublicSite` it was addressed to, gives an :class:`~.envelope.AppResponse`
  (status, headers, whole body). The long-poll transport uses it: it frames both the delivered
  request and the reply by ``Content-Length``.
- ``await handler.serve(request, body, site, responder)``: the body is a
  :class:`~.streams.RequestBody` read as it arrives and the response goes to a
  :class:`~.streams.Responder`, which may stream it. The WebSocket and PTTH transports use it.
  ASGI apps and forward mode stream both ways; WSGI apps (and :class:`Handler` subclasses that
  only define ``__call__``) get the body whole and answer whole.

Path-mode gateways deliver targets like ``/<label>/hello``. With ``strip_prefix`` (the default)
the ``/<label>`` prefix is treated as the mount point: ASGI apps get it as ``root_path`` (and
``path`` keeps it, as the ASGI spec, Starlette and Django expect), WSGI apps as ``SCRIPT_NAME``
(``PATH_INFO`` is the rest), and forwarded requests lose it and carry ``X-Forwarded-Prefix``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import io
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.cookiejar import CookieJar
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes, urlsplit

import httpx

from ..protocol.embedded_request import HOP_BY_HOP
from .envelope import AppResponse, EmbeddedRequest, has_body
from .errors import ClientError
from .http1_client import Http1Error, Http1Pool, Http1Timeout, is_plain_target
from .http1_client import _Connection as _PoolConnection
from .origin_direct import DirectExchange
from .origin_direct import start as start_direct
from .registration import describe_transport_error
from .streams import BufferedResponder, RequestBody, Responder

__all__ = [
    "AsgiHandler",
    "ForwardHandler",
    "Handler",
    "PublicSite",
    "WsgiHandler",
    "as_handler",
    "is_asgi_app",
]

logger = logging.getLogger("reversehttp_gateway.client")

AsgiMessage = MutableMapping[str, Any]
AsgiReceive = Callable[[], Awaitable[AsgiMessage]]
AsgiSend = Callable[[AsgiMessage], Awaitable[None]]
AsgiApp = Callable[[MutableMapping[str, Any], AsgiReceive, AsgiSend], Awaitable[None]]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
GeneralPath = Callable[["Responder"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PublicSite:
    """Where third parties reach the application: parsed from the registration's public URL."""

    scheme: str
    host: str
    port: int
    prefix: str  # "/label" in path mode, "" in vhost mode

    @classmethod
    def from_url(cls, public_url: str) -> PublicSite:
        parts = urlsplit(public_url)
        scheme = parts.scheme or "http"
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(scheme, parts.hostname or "localhost", port, parts.path.rstrip("/"))

    def split(self, raw_path: bytes, *, strip_prefix: bool) -> tuple[bytes, bytes]:
        """Split a raw (percent-encoded) path into ``(mount prefix, rest)``.

        The prefix is taken from the request itself (matched case-insensitively), so that the
        rest plus the prefix is always exactly ``raw_path``.
        """
        prefix = self.prefix.encode("ascii", "replace")
        if not strip_prefix or not prefix:
            return b"", raw_path
        head = raw_path[: len(prefix)]
        tail = raw_path[len(prefix) :]
        if head.lower() == prefix.lower() and (not tail or tail.startswith(b"/")):
            return head, tail
        return b"", raw_path


class Handler:
    """Base class: answer one request; optional start-up and shut-down hooks."""

    async def startup(self) -> None:
        """Called once before the first request (after the registration succeeded)."""

    async def shutdown(self) -> None:
        """Called once after the last request."""

    async def __call__(self, request: EmbeddedRequest, site: PublicSite) -> AppResponse:
        raise NotImplementedError

    async def serve(
        self, request: EmbeddedRequest, body: RequestBody, site: PublicSite, responder: Responder
    ) -> None:
        """Answer ``request`` whose body is read from ``body``, writing to ``responder``.

        The default reads the body whole, calls :meth:`__call__` and sends its response whole
        (a streaming responder still sends a large body in chunks). Override it to stream.
        """
        data = await body.read_all()
        response = await self(dataclasses.replace(request, body=data), site)
        await responder.send(response)


def _latin1(data: bytes) -> str:
    return data.decode("latin-1")


def _status_line(status: str) -> tuple[int, bytes]:
    code, _, reason = status.strip().partition(" ")
    if not (code.isdigit() and len(code) == 3):
        raise ValueError(f"bad WSGI status {status!r}")
    return int(code), reason.strip().encode("latin-1")


# ---------------------------------------------------------------------------------------- ASGI


def is_asgi_app(app: object) -> bool:
    """True for coroutine functions and objects whose ``__call__`` is async with 3 arguments.

    Anything else callable is taken to be a WSGI application.
    """
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 (we want the method itself)
    if call is None or not inspect.iscoroutinefunction(call):
        return False
    try:
        parameters = inspect.signature(call).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return True
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    variadic = any(p.kind is p.VAR_POSITIONAL for p in parameters)
    return len(positional) == 3 or (variadic and len(positional) <= 3)


class AsgiHandler(Handler):
    """Runs an ASGI 3 application in the client's event loop.

    ``lifespan`` is ``"auto"`` (run the lifespan protocol if the app supports it), ``"on"``
    (it must) or ``"off"``. The response goes back as soon as its last body chunk is sent;
    work the app does afterwards (background tasks) is awaited at shutdown.
    """

    def __init__(self, app: AsgiApp, *, strip_prefix: bool = True, lifespan: str = "auto") -> None:
        if lifespan not in ("auto", "on", "off"):
            raise ValueError("lifespan must be 'auto', 'on' or 'off'")
        self.app = app
        self.strip_prefix = strip_prefix
        self.lifespan = lifespan
        self._state: dict[str, Any] = {}
        self._lifespan_inbox: asyncio.Queue[AsgiMessage] = asyncio.Queue()
        self._lifespan_events: asyncio.Queue[AsgiMessage] = asyncio.Queue()
        self._lifespan_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # Lifespan ---------------------------------------------------------------------------------

    async def _run_lifespan(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = self._state
        await self.app(scope, self._lifespan_inbox.get, self._lifespan_events.put)

    async def _lifespan_step(self, send: str, expect: str) -> None:
        assert self._lifespan_task is not None
        await self._lifespan_inbox.put({"type": send})
        event = asyncio.ensure_future(self._lifespan_events.get())
        done, _ = await asyncio.wait(
            {event, self._lifespan_task}, return_when=asyncio.FIRST_COMPLETED
        )
        if event in done:
            message = event.result()
            if message["type"] == f"{expect}.failed":
                raise ClientError(f"ASGI {expect} failed: {message.get('message', '')}")
            return
        event.cancel()
        exc = self._lifespan_task.exception()
        self._lifespan_task = None
        if expect == "lifespan.startup" and self.lifespan == "auto":
            logger.debug("ASGI app does not support lifespan (%r); continuing without", exc)
            return
        raise ClientError(f"ASGI app ended during {expect}: {exc!r}")

    async def startup(self) -> None:
        if self.lifespan == "off":
            return
        self._lifespan_task = asyncio.ensure_future(self._run_lifespan())
        await self._lifespan_step("lifespan.startup", "lifespan.startup")

    async def shutdown(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=10)
        if self._lifespan_task is None:
            return
        try:
            await asyncio.wait_for(
                self._lifespan_step("lifespan.shutdown", "lifespan.shutdown"), timeout=10
            )
        except (ClientError, TimeoutError) as exc:
            logger.warning("ASGI lifespan shutdown: %s", exc or "timed out")
        finally:
            if self._lifespan_task is not None and not self._lifespan_task.done():
                self._lifespan_task.cancel()
            self._lifespan_task = None

    # Requests ---------------------------------------------------------------------------------

    def scope(self, request: EmbeddedRequest, site: PublicSite) -> dict[str, Any]:
        """The ASGI HTTP connection scope for ``request``."""
        prefix, _rest = site.split(request.raw_path, strip_prefix=self.strip_prefix)
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version,
            "method": request.method,
            "scheme": site.scheme,
            "path": unquote_to_bytes(request.raw_path).decode("utf-8", "replace"),
            "raw_path": request.raw_path,
            "query_string": request.query_string,
            "root_path": unquote_to_bytes(prefix).decode("utf-8", "replace"),
            "headers": list(request.headers),
            "client": list(request.requesting_client) if request.requesting_client else None,
            "server": [site.host, site.port],
            "state": dict(self._state),
        }

    async def __call__(self, request: EmbeddedRequest, site: PublicSite) -> AppResponse:
        responder = BufferedResponder()
        await self.serve(request, RequestBody.whole(request.body), site, responder)
        assert responder.response is not None
        return responder.response

    async def serve(
        self, request: EmbeddedRequest, body: RequestBody, site: PublicSite, responder: Responder
    ) -> None:
        """Run the app for one request: ``http.request`` messages carry the body as it arrives
        (``more_body`` until it is complete); the response is streamed to ``responder`` as soon
        as the app sends a body chunk with ``more_body=True`` (if the responder streams),
        otherwise sent whole."""
        scope = self.scope(request, site)
        complete = asyncio.Event()
        status: int | None = None
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        streaming = False
        first_message = True

        async def receive() -> AsgiMessage:
            nonlocal first_message
            if first_message or not body.complete:
                first_message = False
                chunk = await body.read()
                return {"type": "http.request", "body": chunk, "more_body": not body.complete}
            await complete.wait()
            return {"type": "http.disconnect"}

        async def send(message: AsgiMessage) -> None:
            nonlocal status, headers, streaming
            if complete.is_set():
                return  # ASGI: sends after the response is complete are ignored
            kind = message["type"]
            if kind == "http.response.start" and status is None:
                status = int(message["status"])
                headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", [])]
                return
            if kind != "http.response.body" or status is None:
                raise RuntimeError(f"unexpected ASGI message {kind!r}")
            chunk = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if not streaming and more and responder.streaming and has_body(request.method, status):
                streaming = True
                await responder.start(status, headers)
                if chunks:  # never, in practice: the first chunk with more_body starts the stream
                    await responder.write(b"".join(chunks))
                    chunks.clear()
            if streaming:
                if chunk:
                    await responder.write(chunk)
                if not more:
                    await responder.end()
                    complete.set()
            else:
                chunks.append(chunk)
                if not more:
                    await responder.send(AppResponse(status, headers, b"".join(chunks)))
                    chunks.clear()
                    complete.set()

        task = asyncio.ensure_future(self.app(scope, receive, send))
        finished = asyncio.ensure_future(complete.wait())
        try:
            await asyncio.wait({task, finished}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            finished.cancel()
        if complete.is_set():
            if not task.done():  # keep background work alive; awaited at shutdown
                self._background.add(task)
                task.add_done_callback(self._background_done)
            elif task.exception() is not None:
                logger.error("ASGI app raised after its response", exc_info=task.exception())
            return
        task.result()  # re-raises the app's exception
        raise RuntimeError("ASGI app returned without completing a response")

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("ASGI app raised after its response", exc_info=task.exception())


# ---------------------------------------------------------------------------------------- WSGI


class WsgiHandler(Handler):
    """Runs a WSGI (PEP 3333) application in a thread pool, one request per thread."""

    def __init__(
        self, app: WsgiApp, *, strip_prefix: bool = True, max_threads: int | None = None
    ) -> None:
        self.app = app
        self.strip_prefix = strip_prefix
        self._max_threads = max_threads
        self._executor: ThreadPoolExecutor | None = None

    async def startup(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._max_threads, thread_name_prefix="reversehttp-wsgi"
            )

    async def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def environ(self, request: EmbeddedRequest, site: PublicSite) -> dict[str, Any]:
        """The WSGI environ for ``request`` (strings are bytes decoded as latin-1)."""
        prefix, rest = site.split(request.raw_path, strip_prefix=self.strip_prefix)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": _latin1(unquote_to_bytes(prefix)),
            "PATH_INFO": _latin1(unquote_to_bytes(rest)),
            "QUERY_STRING": _latin1(request.query_string),
            "SERVER_NAME": site.host,
            "SERVER_PORT": str(site.port),
            "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
            "REQUEST_URI": _latin1(request.target),
            "RAW_URI": _latin1(request.target),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": site.scheme,
            "wsgi.input": io.BytesIO(request.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if request.requesting_client:
            environ["REMOTE_ADDR"], port = request.requesting_client
            environ["REMOTE_PORT"] = str(port)
        for name, value in request.headers:
            if b"_" in name:  # like gunicorn: ambiguous with "-" once in the environ
                continue
            text = _latin1(value)
            if name == b"content-type":
                environ["CONTENT_TYPE"] = text
                continue
            if name == b"content-length":
                environ["CONTENT_LENGTH"] = text
                continue
            key = "HTTP_" + _latin1(name).upper().replace("-", "_")
            environ[key] = f"{environ[key]},{text}" if key in environ else text
        environ.setdefault("CONTENT_LENGTH", str(len(request.body)) if request.body else "")
        return environ

    def call_app(self, request: EmbeddedRequest, site: PublicSite) -> AppResponse:
        """Run the application synchronously (in the calling thread)."""
        started: list[tuple[str, list[tuple[str, str]]]] = []
        chunks: list[bytes] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            if exc_info is not None and started and chunks:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [(status, list(headers))]
            return chunks.append

        result = self.app(self.environ(request, site), start_response)
        try:
            for chunk in result:
                if chunk:
                    chunks.append(bytes(chunk))
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not started:
            raise RuntimeError("WSGI app did not call start_response")
        status_text, raw_headers = started[0]
        code, reason = _status_line(status_text)
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in raw_headers]
        return AppResponse(code, headers, b"".join(chunks), reason)

    async def __call__(self, request: EmbeddedRequest, site: PublicSite) -> AppResponse:
        if self._executor is None:
            await self.startup()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.call_app, request, site)


# ------------------------------------------------------------------------------------- forward


_WHOLE_REQUEST_LIMIT = 64 * 1024  # a streamed body this small is read first and sent whole
_FORWARD_CHUNK = 64 * 1024
_MAX_IDLE = 20  # keep-alive connections kept per local server
# Whole responses read by callbacks for __call__ (long-poll); larger ones take serve(), whose
# timeout applies per read rather than to the whole response.
_DIRECT_RESPONSE_LIMIT = 256 * 1024


def _text_response(status: int, message: str) -> AppResponse:
    body = f"{status} {message}\n".encode()
    return AppResponse(status, [(b"content-type", b"text/plain; charset=utf-8")], body)


class _NoCookies(CookieJar):
    """Keeps no cookies: one third party's cookies must never reach another's requests."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def set_cookie(self, cookie: Any) -> None:
        pass


class _OriginResponse(Protocol):
    """The local server's response as :meth:`ForwardHandler._relay` reads it."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None: ...

    async def read(self) -> bytes: ...

    async def read_all(self) -> bytes: ...

    async def aclose(self) -> None: ...


class _HttpxResponse:
    """An httpx streaming response, read as an :class:`_OriginResponse` (https targets)."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.reason = bytes(response.extensions.get("reason_phrase", b""))
        self.headers = list(response.headers.raw)
        self._response = response
        self._chunks: AsyncIterator[bytes] | None = None

    def header(self, name: bytes) -> bytes | None:
        value = self._response.headers.get(name.decode("latin-1"))
        return None if value is None else value.encode("latin-1")

    async def read(self) -> bytes:
        if self._chunks is None:
            self._chunks = self._response.aiter_raw(_FORWARD_CHUNK).__aiter__()
        return await anext(self._chunks, b"")

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self._response.aiter_raw()])

    async def aclose(self) -> None:
        await self._response.aclose()


_TIMEOUTS = (Http1Timeout, httpx.TimeoutException)
_FAILURES = (Http1Error, httpx.TransportError)


class ForwardHandler(Handler):
    """Forwards each request to a local HTTP server, e.g. ``http://localhost:8000``.

    ``Host`` is rewritten to the target's (local development servers check it) unless
    ``preserve_host``; the public host, scheme, client address and stripped prefix travel in
    ``X-Forwarded-Host``, ``X-Forwarded-Proto``, ``X-Forwarded-For`` and
    ``X-Forwarded-Prefix``. The body is relayed as received (``Content-Encoding`` is not
    decoded), redirects are passed back, not followed, and no cookies are kept between
    requests. Unreachable targets give 502, timeouts 504.

    ``http://`` targets are reached with the lean keep-alive client of :mod:`.http1_client`;
    ``https://`` targets, targets with credentials and request targets that need normalising
    go through httpx.
    """

    def __init__(
        self,
        target: str,
        *,
        strip_prefix: bool = True,
        preserve_host: bool = False,
        timeout: float = 60.0,
    ) -> None:
        parts = urlsplit(target if "://" in target else "http://" + target)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {target!r}")
        self.target = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._target_host = parts.netloc.encode("idna")
        self._base_path = parts.path.rstrip("/").encode("utf-8")
        self._lean_address: tuple[str, int] | None = None
        try:
            if parts.scheme == "http" and parts.hostname and "@" not in parts.netloc:
                self._lean_address = (parts.hostname, parts.port or 80)
        except ValueError:  # a bad port: httpx reports it on the first request
            pass
        self.strip_prefix = strip_prefix
        self.preserve_host = preserve_host
        self.timeout = timeout
        self._pool: Http1Pool | None = None
        self._http: httpx.AsyncClient | None = None

    async def startup(self) -> None:
        if self._pool is None and self._lean_address is not None:
            host, port = self._lean_address
            self._pool = Http1Pool(host, port, connect_timeout=10.0, max_idle=_MAX_IDLE)

    def _httpx(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=10.0),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=_MAX_IDLE),
                follow_redirects=False,
                trust_env=False,
                cookies=_NoCookies(),
            )
            # Send only the third party's headers: no default Accept-Encoding, User-Agent ...
            self._http.headers = httpx.Headers()
        return self._http

    async def shutdown(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def outgoing_headers(
        self, request: EmbeddedRequest, site: PublicSite, prefix: bytes
    ) -> list[tuple[bytes, bytes]]:
        """The headers sent to the local server."""
        dropped = set(HOP_BY_HOP) | {b"content-length"}
        for name, value in request.headers:
            if name == b"connection":
                dropped.update(token.strip().lower() for token in value.split(b","))
        headers: list[tuple[bytes, bytes]] = []
        public_host = request.header(b"host") or site.host.encode("idna")
        forwarded_for = None
        for name, value in request.headers:
            if name in dropped or (name == b"host" and not self.preserve_host):
                continue
            if name == b"x-forwarded-for":
                forwarded_for = value
                continue
            headers.append((name, value))
        if not self.preserve_host:
            headers.insert(0, (b"host", self._target_host))
            headers.append((b"x-forwarded-host", public_host))
        if request.requesting_client:
            client = request.requesting_client[0].encode("ascii", "replace")
            forwarded_for = forwarded_for + b", " + client if forwarded_for else client
        if forwarded_for:
            headers.append((b"x-forwarded-for", forwarded_for))
        headers.append((b"x-forwarded-proto", site.scheme.encode("ascii")))
        if prefix:
            headers.append((b"x-forwarded-prefix", prefix))
        return headers

    async def __call__(self, request: EmbeddedRequest, site: PublicSite) -> AppResponse:
        """Relay one whole request; the response comes back whole (the long-poll's way).

        A small response on a kept connection is read by callbacks (:meth:`forward_nowait`);
        the rest takes :meth:`serve`.
        """
        if self._pool is None and self._lean_address is not None:
            await self.startup()
        responder = BufferedResponder()
        if self._pool is not None:
            done: asyncio.Future[AppResponse | GeneralPath] = (
                asyncio.get_running_loop().create_future()
            )
            exchange = self.forward_nowait(
                request,
                site,
                max_body=_DIRECT_RESPONSE_LIMIT,
                on_response=done.set_result,
                on_general=done.set_result,
            )
            if exchange is not None:
                try:
                    outcome = await done
                except asyncio.CancelledError:
                    exchange.abort()
                    raise
                if isinstance(outcome, AppResponse):
                    return outcome
                await outcome(responder)
                assert responder.response is not None
                return responder.response
        await self.serve(request, RequestBody.whole(request.body), site, responder)
        assert responder.response is not None
        return responder.response

    async def serve(
        self, request: EmbeddedRequest, body: RequestBody, site: PublicSite, responder: Responder
    ) -> None:
        """Relay one request to the local server, streaming where the transport allows.

        A request body still arriving is streamed to the local server (with the requestor's
        ``Content-Length`` when it declared one, else chunked). The local server's response is
        streamed to ``responder`` when it streams and the body is larger than its
        ``stream_threshold`` (or of unknown length); otherwise it is read whole.
        """
        if self._pool is None and self._lean_address is not None:
            await self.startup()
        prefix, rest = site.split(request.raw_path, strip_prefix=self.strip_prefix)
        headers = self.outgoing_headers(request, site, prefix)
        content: bytes | RequestBody
        if not body.streamed or (body.length is not None and body.length <= _WHOLE_REQUEST_LIMIT):
            content = await body.read_all()  # whole, or small: one write, no chunked coding
        else:
            if body.length is not None:  # sent instead of the chunked coding
                headers.append((b"content-length", str(body.length).encode("ascii")))
            content = body
        query = request.query_string
        target = self._base_path + (rest or b"/") + (b"?" + query if query else b"")
        try:
            if self._pool is not None and is_plain_target(target):
                if self.preserve_host and request.header(b"host") is None:
                    headers.insert(0, (b"host", self._target_host))
                method = request.method.encode("ascii")
                response: _OriginResponse = await self._pool.request(
                    method, target, headers, content, timeout=self.timeout
                )
            else:
                url = self.target + (_latin1(rest) or "/") + (f"?{_latin1(query)}" if query else "")
                http = self._httpx()
                outgoing = http.build_request(request.method, url, headers=headers, content=content)
                response = _HttpxResponse(await http.send(outgoing, stream=True))
        except (*_TIMEOUTS, *_FAILURES) as exc:
            await self._send_failure(exc, responder)
            return
        await self._relay_guarded(request, response, responder)

    async def _send_failure(self, exc: BaseException, responder: Responder) -> None:
        """504 for a local server that did not answer in time, 502 (logged) for one that could
        not be reached or broke off."""
        if isinstance(exc, _TIMEOUTS):
            await responder.send(self._timed_out())
            return
        logger.warning("cannot reach %s: %s", self.target, describe_transport_error(exc))
        await responder.send(self._unreachable())

    async def _relay_guarded(
        self, request: EmbeddedRequest, response: _OriginResponse, responder: Responder
    ) -> None:
        """:meth:`_relay`, with a broken or slow local server answered 502 or 504."""
        try:
            await self._relay(request, response, responder)
        except _TIMEOUTS:
            if responder.started:
                raise
            await responder.send(self._timed_out())
        except _FAILURES as exc:
            if responder.started:
                raise
            logger.warning(
                "the local server at %s broke off: %s", self.target, describe_transport_error(exc)
            )
            await responder.send(self._unreachable())
        finally:
            await response.aclose()

    def forward_nowait(
        self,
        request: EmbeddedRequest,
        site: PublicSite,
        *,
        max_body: int,
        on_response: Callable[[AppResponse], None],
        on_general: Callable[[GeneralPath], None],
    ) -> DirectExchange | None:
        """Relay a whole request by callbacks (:mod:`.origin_direct`), if it can be.

        Returns None when it cannot (the caller runs :meth:`serve`). Otherwise exactly one of
        the callbacks follows, unless the returned exchange is aborted first: ``on_response``
        with the local server's whole response (or the 502/504 the general path would have
        given), or ``on_general`` with a coroutine function that finishes the request on the
        general path given a :class:`~.streams.Responder` (a response that may need
        streaming, or a retry), to be run in a task.
        """
        pool = self._pool
        if pool is None:
            return None
        prefix, rest = site.split(request.raw_path, strip_prefix=self.strip_prefix)
        query = request.query_string
        target = self._base_path + (rest or b"/") + (b"?" + query if query else b"")
        if not is_plain_target(target):
            return None
        headers = self.outgoing_headers(request, site, prefix)
        if self.preserve_host and request.header(b"host") is None:
            headers.insert(0, (b"host", self._target_host))

        def on_failure(kind: str, exc: BaseException | None) -> None:
            if kind == "retry":
                on_general(
                    lambda responder: self.serve(
                        request, RequestBody.whole(request.body), site, responder
                    )
                )
            elif kind == "timeout":
                on_response(self._timed_out())
            else:
                logger.warning(
                    "the local server at %s broke off: %s",
                    self.target,
                    describe_transport_error(exc) if exc is not None else "closed",
                )
                on_response(self._unreachable())

        def on_handover(connection: _PoolConnection) -> None:
            on_general(lambda responder: self.resume(request, connection, responder))

        return start_direct(
            pool,
            request.method.encode("ascii"),
            target,
            headers,
            request.body,
            timeout=self.timeout,
            max_body=max_body,
            on_response=on_response,
            on_failure=on_failure,
            on_handover=on_handover,
        )

    async def resume(
        self, request: EmbeddedRequest, connection: _PoolConnection, responder: Responder
    ) -> None:
        """Finish on the general path a request whose response :mod:`.origin_direct` handed
        over (its first bytes are in ``connection``'s parser already)."""
        assert self._pool is not None
        try:
            response = await self._pool.resume(
                connection, request.method.encode("ascii"), self.timeout
            )
        except (*_TIMEOUTS, *_FAILURES) as exc:
            await self._send_failure(exc, responder)
            return
        await self._relay_guarded(request, response, responder)

    async def _relay(
        self, request: EmbeddedRequest, response: _OriginResponse, responder: Responder
    ) -> None:
        declared = response.header(b"content-length") or b""
        threshold = responder.stream_threshold
        stream = (
            responder.streaming
            and threshold is not None
            and has_body(request.method, response.status)
            and not (declared.isdigit() and int(declared) <= threshold)
        )
        if not stream:
            data = await response.read_all()
            await responder.send(
                AppResponse(response.status, response.headers, data, response.reason)
            )
            return
        await responder.start(response.status, response.headers, response.reason)
        while chunk := await response.read():
            await responder.write(chunk)
        await responder.end()

    def _timed_out(self) -> AppResponse:
        return _text_response(504, f"The local server at {self.target} did not answer in time")

    def _unreachable(self) -> AppResponse:
        return _text_response(502, f"Cannot reach the local server at {self.target}")


# ------------------------------------------------------------------------------------ dispatch


def as_handler(target: object, *, strip_prefix: bool = True) -> Handler:
    """A handler for ``target``: a :class:`Handler` as is, an ``http(s)://`` URL string
    (forward), an ASGI application, or else a WSGI application."""
    if isinstance(target, Handler):
        return target
    if isinstance(target, str):
        return ForwardHandler(target, strip_prefix=strip_prefix)
    if not callable(target):
        raise TypeError(f"cannot serve {target!r}: not a URL, handler or application")
    if is_asgi_app(target):
        return AsgiHandler(target, strip_prefix=strip_prefix)  # type: ignore[arg-type]
    return WsgiHandler(target, strip_prefix=strip_prefix)  # type: ignore[arg-type]
