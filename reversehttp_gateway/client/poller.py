"""One long-poll loop: take requests from the gateway, answer them, forever until stopped.

- ``GET`` the Request URL and wait. **200**: parse the embedded request, let the handler answer,
  ``POST`` the reply as ``message/http`` to the *same* URL, then continue with the 200's
  ``rel="next"`` URL (RH-21, RH-45). **204**: nothing arrived; re-GET the 204's ``rel="next"``
  URL, or the same one if it has none (RH-22).
- **404/410** (registration unknown or deleted) and **409** (the URL is in use by another
  poller): register again and start over from the new ``rel="first"`` URL.
- Network errors, 5xx and 429: wait with exponential backoff and jitter, then retry the same URL;
  a gateway that lost our 200 in transit delivers the same request again (RH-29).

A reply names the ``rel="next"`` URL in ``Reversehttp-Poll`` (a chained poll, on by default): a
gateway that supports it answers the POST as it would the GET of that URL, 200 or 204 with
``rel="next"``, and the loop goes on with that answer instead of a GET; any other gateway
answers 202 and the loop GETs the URL itself. One HTTP exchange per request instead of two.

With ``pipeline`` the GET asks for ``application/http`` as well (RH-26): a gateway with a backlog
may then deliver several queued requests in one 200; they are answered concurrently and replied
to in one POST, in the same order. Fewer polls and replies per request under load; the cost is
that the batch's replies leave together, when its slowest request is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable
from urllib.parse import urljoin

from ..protocol.links import parse_link_header
from .backoff import Backoff
from .envelope import (
    AppResponse,
    EmbeddedRequest,
    InvalidEmbeddedRequest,
    build_reply,
    parse_embedded_request,
    parse_embedded_requests,
)
from .errors import ClientError, RegistrationRefused
from .gateway_http import TRANSPORT_ERRORS, GatewayAnswer, GatewayHttp
from .handlers import Handler, PublicSite
from .registration import Registrar, Registration, describe_transport_error

__all__ = ["Poller"]

logger = logging.getLogger("reversehttp_gateway.client")

REPLY_ATTEMPTS = 4
REPLY_TIMEOUT = 30.0  # reading the answer to a reply (connecting: 10 s)
CHAIN_HEADER = "Reversehttp-Poll"
SINGLE = "message/http"
PIPELINE = "application/http"


# One link as the gateway writes it (protocol/links.format_link_header), with an absolute
# http(s) URL that urljoin() would return unchanged (no parameters, query or fragment).
_CANONICAL_LINK = re.compile(r'<(https?://[!$-+\--:=@-~]+)>; rel="([a-z]+)"', re.ASCII)


def _next_link(response: GatewayAnswer) -> str | None:
    """The absolute ``rel="next"`` URL of a poll answer, if any."""
    value = ", ".join(response.header_list("link"))
    for link in value.split(", "):  # the canonical form first: no tokenising, no urljoin
        match = _CANONICAL_LINK.fullmatch(link)
        if match is None:
            break
        if match[2] == "next":
            return match[1]
    links = parse_link_header(value)
    next_url = links.get("next")
    return urljoin(response.url, next_url) if next_url else None


def _error_response(status: int, message: str) -> AppResponse:
    body = f"{status} {message}\n".encode()
    return AppResponse(status, [(b"content-type", b"text/plain; charset=utf-8")], body)


class Poller:
    """One chain of Request URLs, served by one long-poll loop (see the module docstring).

    ``first`` is the registration to start from; without one the poller registers itself.
    ``poll_timeout`` bounds one GET and must exceed the gateway's hold time (25 s by default).
    ``pipeline``: accept ``application/http`` batches; ``chain``: chained polls (see the module
    docstring).
    """

    def __init__(
        self,
        index: int,
        http: GatewayHttp,
        registrar: Registrar,
        handler: Handler,
        stopping: asyncio.Event,
        *,
        first: Registration | None = None,
        poll_timeout: float = 90.0,
        backoff: Backoff | None = None,
        pipeline: bool = False,
        chain: bool = True,
    ) -> None:
        self.index = index
        self._http = http
        self._registrar = registrar
        self._handler = handler
        self._stopping = stopping
        self._first = first
        self._poll_timeout = poll_timeout
        self._accept = f"{PIPELINE}, {SINGLE}" if pipeline else SINGLE
        self._chain = chain
        self._backoff = backoff or Backoff()
        self._site: PublicSite | None = None
        self._waiting: asyncio.Future[GatewayAnswer] | None = None
        self._aborted = False
        self.relayed = 0

    # Loop -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until ``stopping`` is set (requests already taken are still answered)."""
        url = self._adopt(self._first) if self._first else None
        self._first = None  # after a crash and restart, register afresh
        chained: GatewayAnswer | None = None  # a reply's answer that polled ``url`` already
        while chained is not None or not self._stopping.is_set():
            if url is None:
                url = await self._register()
                continue
            if chained is not None:
                response, chained = chained, None
            else:
                try:
                    response = await self._get(url)
                except TRANSPORT_ERRORS as exc:
                    await self._failed(f"polling failed: {describe_transport_error(exc)}")
                    continue
            if response is None:  # aborted by stop()
                return
            status = response.status
            if status in (200, 204):
                self._recovered()
                next_url = _next_link(response)
                if status == 200:
                    chained = await self._serve(url, response, next_url)
                    if next_url is None:
                        logger.warning(
                            "poller %d: a 200 without rel=next; registering again", self.index
                        )
                    url = next_url
                else:
                    url = next_url or url
            elif status in (404, 410, 409) or (400 <= status < 500 and status != 429):
                if self._stopping.is_set():
                    return  # our own DELETE (stop) ended the poll
                what = {404: "unknown", 410: "deleted", 409: "in use by another poller"}
                logger.info(
                    "poller %d: Request URL %s (%d); registering again",
                    self.index,
                    what.get(status, "refused"),
                    status,
                )
                delay = self._backoff.next_delay()
                if self._backoff.failures > 1:  # not the first failure in a row: slow down
                    await self._sleep(delay)
                url = None
            else:
                await self._failed(f"poll answered {status} {response.reason}")

    def abort_wait(self) -> None:
        """Cancel a GET that is waiting for a request (used when the gateway is unreachable)."""
        if self._waiting is not None and not self._waiting.done():
            self._aborted = True
            self._waiting.cancel()

    def _adopt(self, registration: Registration) -> str:
        self._site = PublicSite.from_url(registration.public_url)
        return registration.first_url

    async def _register(self) -> str | None:
        while not self._stopping.is_set():
            try:
                registration = await self._registrar.register()
            except RegistrationRefused as exc:
                await self._failed(f"registering failed: {exc}", at_least=exc.retry_after or 0.0)
                continue
            except ClientError as exc:
                await self._failed(f"registering failed: {exc}")
                continue
            return self._adopt(registration)
        return None

    async def _get(self, url: str) -> GatewayAnswer | None:
        return await self._abortable(
            self._http.get(url, headers={"Accept": self._accept}, timeout=self._poll_timeout)
        )

    async def _abortable(self, call: Awaitable[GatewayAnswer]) -> GatewayAnswer | None:
        """``call``, which :meth:`abort_wait` may cancel (then None)."""
        self._aborted = False
        self._waiting = asyncio.ensure_future(call)
        try:
            return await self._waiting
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._aborted and not (current and current.cancelling()):
                return None
            raise
        finally:
            self._waiting = None

    # Failures ---------------------------------------------------------------------------------

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if the client is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _failed(self, what: str, *, at_least: float = 0.0) -> None:
        delay = max(self._backoff.next_delay(), at_least)
        # One warning per streak of failures; the retries themselves are debug noise.
        log = logger.warning if self._backoff.failures == 1 else logger.debug
        log("poller %d: %s; retrying in %.1fs (and with backoff)", self.index, what, delay)
        await self._sleep(delay)

    def _recovered(self) -> None:
        if self._backoff.failures:
            logger.info("poller %d: polling again", self.index)
        self._backoff.reset()

    # Serving ----------------------------------------------------------------------------------

    async def _serve(
        self, url: str, delivered: GatewayAnswer, next_url: str | None = None
    ) -> GatewayAnswer | None:
        """Answer what a 200 delivered (one request, or an ``application/http`` batch answered
        concurrently) and POST the reply, in order, to the same URL.

        Returns the gateway's answer to a chained poll of ``next_url``, if it gave one."""
        started = time.monotonic()
        content_type = (delivered.header("content-type") or "").partition(";")[0].strip().lower()
        pipelined = content_type == PIPELINE
        client = delivered.header("requesting-client")
        try:
            if pipelined:
                requests = parse_embedded_requests(delivered.content, requesting_client=client)
            else:
                requests = [parse_embedded_request(delivered.content, requesting_client=client)]
        except InvalidEmbeddedRequest as exc:
            # For a batch one error response makes the gateway refuse it: every requestor then
            # gets a 502 at once rather than a timeout.
            logger.warning("poller %d: bad embedded request (%s); answering 400", self.index, exc)
            answer = _error_response(400, "The gateway delivered a malformed request")
            self._log_when_sent(started, [("-", "-", 400)])
            self.relayed += 1
            body = build_reply(answer)
            return await self._reply(url, body, "-", "-", content_type or SINGLE, next_url)
        if pipelined:
            answers = await asyncio.gather(*(self._answer(request) for request in requests))
        else:
            answers = [await self._answer(requests[0])]
        replies = [self._reply_body(a, r.method) for r, a in zip(requests, answers, strict=True)]
        first = requests[0]
        path = first.raw_path.decode("latin-1")
        body = b"".join(reply for reply, _ in replies)
        content_type = PIPELINE if pipelined else SINGLE
        if logger.isEnabledFor(logging.INFO):
            lines = [
                (request.method, request.raw_path.decode("latin-1"), status)
                for request, (_, status) in zip(requests, replies, strict=True)
            ]
            self._log_when_sent(started, lines)
        self.relayed += len(requests)  # now, not after a chained poll's answer
        return await self._reply(url, body, first.method, path, content_type, next_url)

    @staticmethod
    def _log_when_sent(started: float, lines: list[tuple[str, str, int]]) -> None:
        """One access line per request (method, path, status, milliseconds until the reply
        left), written in the next turn of the loop: after the reply's POST is written, not
        after its answer, which for a chained poll comes with the next request."""

        def log() -> None:
            elapsed = (time.monotonic() - started) * 1000
            for method, path, status in lines:
                logger.info("%s %s %d %.1fms", method, path, status, elapsed)

        asyncio.get_running_loop().call_soon(log)

    def _reply_body(self, answer: AppResponse, method: str) -> tuple[bytes, int]:
        """``answer`` as ``message/http`` bytes and its status; a 502 if it cannot be sent."""
        try:
            return build_reply(answer, request_method=method), answer.status
        except ValueError as exc:
            logger.error("poller %d: cannot send the response: %s", self.index, exc)
            invalid = _error_response(502, "The application's response was invalid")
            return build_reply(invalid, request_method=method), invalid.status

    async def _answer(self, request: EmbeddedRequest) -> AppResponse:
        site = self._site or PublicSite("http", "localhost", 80, "")
        try:
            return await self._handler(request, site)
        except asyncio.CancelledError:
            raise
        except Exception:  # the application's bug: answer 500, keep serving, log the traceback
            logger.exception(
                "poller %d: the application failed on %s %s",
                self.index,
                request.method,
                request.raw_path.decode("latin-1"),
            )
            return _error_response(500, "Internal Server Error")

    async def _reply(
        self,
        url: str,
        body: bytes,
        method: str,
        path: str,
        content_type: str = SINGLE,
        poll: str | None = None,
    ) -> GatewayAnswer | None:
        """POST the reply to the URL that delivered the request (RH-45), retrying briefly.

        With ``poll`` (the next Request URL) the POST asks for a chained poll of it; the
        gateway's answer as a poll (200 or 204 with ``rel="next"``) is returned, else None."""
        headers = {"Content-Type": content_type}
        timeout = REPLY_TIMEOUT
        chained = poll is not None and self._chain and not self._stopping.is_set()
        if chained:
            assert poll is not None
            headers |= {CHAIN_HEADER: poll, "Accept": self._accept}
            timeout = self._poll_timeout  # the gateway holds it as long as a GET
        backoff = Backoff(0.2, 2.0)
        for attempt in range(REPLY_ATTEMPTS):
            last = attempt == REPLY_ATTEMPTS - 1
            try:
                call = self._http.post(url, content=body, headers=headers, timeout=timeout)
                response = await (self._abortable(call) if chained else call)
            except TRANSPORT_ERRORS as exc:
                if last:
                    logger.warning(
                        "poller %d: could not send the reply to %s %s: %s",
                        self.index,
                        method,
                        path,
                        describe_transport_error(exc),
                    )
                    return None
                await asyncio.sleep(backoff.next_delay())
                continue
            if response is None:  # aborted by stop(): the next GET (if any) finds out
                return None
            if chained and response.status in (200, 204) and _next_link(response):
                return response
            if response.is_success:
                return None
            if response.status >= 500 and not last:
                await asyncio.sleep(backoff.next_delay())
                continue
            if response.status == 404 and attempt:
                return None  # an earlier attempt got through; only its answer was lost
            logger.warning(
                "poller %d: the gateway refused the reply to %s %s: %s",
                self.index,
                method,
                path,
                response.text.strip() or response.status,
            )
            return None
        return None
