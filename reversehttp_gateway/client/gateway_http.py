"""The long-poll's HTTP calls to the gateway (polls and replies), on the cheapest client that fits.

Every relayed request costs a long-poll client one reply (``POST``), which with chained polls
also polls for the next request, and otherwise one poll (``GET``) as well. To a
plain ``http://`` gateway reached without a proxy they go through the keep-alive client of
:mod:`.http1_client`, at a fraction of httpx's CPU per call; ``https://`` gateways, URLs that
need normalising and HTTP proxies from the environment (``HTTP_PROXY``, ``ALL_PROXY``: httpx
honours them) go through the client's httpx ``AsyncClient`` as before. Both give a
:class:`GatewayAnswer` with the whole body.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from .http1_client import Http1Error, Http1Pool, is_plain_target

__all__ = ["TRANSPORT_ERRORS", "GatewayAnswer", "GatewayHttp"]

#: What a failed call raises: httpx's errors, or the lean client's.
TRANSPORT_ERRORS = (httpx.TransportError, Http1Error)
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class GatewayAnswer:
    """A response of the gateway, read whole; ``url`` is the URL that was requested."""

    url: str
    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]
    content: bytes

    def header_list(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for n, v in self.headers if n.lower() == key]

    def header(self, name: str) -> str | None:
        """The values of header ``name`` joined with ``", "`` (as httpx does), or None."""
        values = self.header_list(name)
        return ", ".join(values) if values else None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


class GatewayHttp:
    """``get`` and ``post`` to the gateway (see the module docstring).

    ``http`` is the client's httpx client, used where the lean client does not fit;
    ``user_agent`` is sent by the lean client (httpx sends its own default headers).
    """

    def __init__(self, http: httpx.AsyncClient, *, user_agent: str, max_idle: int = 10) -> None:
        self._http = http
        self._user_agent = user_agent.encode("latin-1")
        self._max_idle = max_idle
        proxies = urllib.request.getproxies() if http.trust_env else {}
        self._lean = not (proxies.get("http") or proxies.get("all"))
        self._pools: dict[tuple[str, int], Http1Pool] = {}
        self._routes: dict[str, tuple[Http1Pool, bytes] | None] = {}  # by URL authority

    async def get(self, url: str, *, headers: dict[str, str], timeout: float) -> GatewayAnswer:
        """``GET url``, waiting up to ``timeout`` for the answer (a long poll holds it)."""
        return await self._call("GET", url, b"", headers, timeout)

    async def post(
        self, url: str, content: bytes, *, headers: dict[str, str], timeout: float
    ) -> GatewayAnswer:
        return await self._call("POST", url, content, headers, timeout)

    async def aclose(self) -> None:
        """Close the lean client's connections (the httpx client belongs to the caller)."""
        pools, self._pools = list(self._pools.values()), {}
        self._routes = {}
        for pool in pools:
            await pool.aclose()

    async def _call(
        self, method: str, url: str, content: bytes, headers: dict[str, str], timeout: float
    ) -> GatewayAnswer:
        lean = self._lean_route(url)
        if lean is None:
            response = await self._http.request(
                method,
                url,
                content=content or None,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
            )
            return GatewayAnswer(
                url,
                response.status_code,
                response.reason_phrase,
                list(response.headers.raw),
                response.content,
            )
        pool, netloc, target = lean
        fields = [(b"Host", netloc), (b"User-Agent", self._user_agent)]
        fields.extend(
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
        )
        answer = await pool.request(
            method.encode("ascii"), target, fields, content, timeout=timeout
        )
        try:
            body = await answer.read_all()
        finally:
            answer.close()
        reason = answer.reason.decode("latin-1")
        return GatewayAnswer(url, answer.status, reason, answer.headers, body)

    def _lean_route(self, url: str) -> tuple[Http1Pool, bytes, bytes] | None:
        """The pool, ``Host`` and request target for ``url``; None where httpx must go."""
        if not self._lean or not url.startswith("http://"):
            return None
        authority, slash, rest = url[7:].partition("/")
        if authority in self._routes:
            route = self._routes[authority]
        else:
            route = self._routes[authority] = self._route(authority)
        if route is None:
            return None
        target = (slash + rest).partition("#")[0] or "/"  # httpx drops the fragment too
        if not target.isascii() or not is_plain_target(encoded := target.encode("ascii")):
            return None
        return route[0], route[1], encoded

    def _route(self, authority: str) -> tuple[Http1Pool, bytes] | None:
        """The pool and ``Host`` for ``http://<authority>``; None if the lean client cannot go."""
        if any(char in authority for char in "?#@") or not authority.isascii():
            return None
        parts = urlsplit("http://" + authority)
        try:
            port = parts.port or 80
        except ValueError:
            return None
        if not parts.hostname:
            return None
        key = (parts.hostname, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Http1Pool(
                parts.hostname, port, connect_timeout=CONNECT_TIMEOUT, max_idle=self._max_idle
            )
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        authority = host if port == 80 else f"{host}:{port}"  # httpx omits the default port
        return pool, authority.encode("ascii")
