"""Registering a label on the gateway's Service URL, and deleting it again (RH-01..RH-11, RH-83).

Each poller needs its own chain of Request URLs, so the client registers once per poller:
the first POST creates the registration (201), the others refresh it (204) and each hands out a
fresh ``rel="first"`` Request URL. Re-registering after a 404, 409 or 410 is the same POST.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from ..protocol.links import parse_link_header
from .errors import ClientError, GatewayUnreachable, ProtocolViolation, RegistrationRefused
from .http1_client import Http1Error

__all__ = ["Registrar", "Registration", "delete_registration", "normalize_service_url"]

logger = logging.getLogger("reversehttp_gateway.client")

DEFAULT_SERVICE_PATH = "/reversehttp"
REGISTRATION_TIMEOUT = httpx.Timeout(15.0, connect=10.0)


def normalize_service_url(gateway: str) -> str:
    """The Service URL for ``gateway``: a bare ``http://host:port`` gets ``/reversehttp``."""
    gateway = gateway.strip()
    if "://" not in gateway:
        gateway = "http://" + gateway
    parts = urlsplit(gateway)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {gateway!r}")
    if parts.path in ("", "/"):
        return gateway.rstrip("/") + DEFAULT_SERVICE_PATH
    return gateway


def describe_transport_error(exc: httpx.TransportError | Http1Error) -> str:
    """A short description of a network failure, from the OS error behind it when there is one.

    anyio reports refused connections as "All connection attempts failed"; the
    ``ConnectionRefusedError`` it chains says more.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return os.strerror(cause.errno) if cause.errno and cause.errno > 0 else cause.strerror
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


def gateway_message(response: httpx.Response) -> str:
    """The first line of a plain-text error body (``"403 Bad token"``), else the status line."""
    fallback = f"{response.status_code} {response.reason_phrase}".strip()
    if not response.headers.get("content-type", "text/plain").startswith("text/plain"):
        return fallback
    lines = response.text.strip().splitlines()
    return lines[0][:300] if lines else fallback


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


@dataclass(frozen=True, slots=True)
class Registration:
    """The URLs handed out by one successful registration response (201 or 204)."""

    name: str
    first_url: str
    public_url: str
    private_url: str
    created: bool


def _parse_registration(name: str, service_url: str, response: httpx.Response) -> Registration:
    links = parse_link_header(", ".join(response.headers.get_list("link")))
    first, public = links.get("first"), links.get("related")
    private = response.headers.get("location")
    if not first or not public or not private:
        raise ProtocolViolation(
            f"registration answered {response.status_code} without Link rel=first, "
            "rel=related and Location"
        )
    return Registration(
        name=name,
        first_url=urljoin(service_url, first),
        public_url=urljoin(service_url, public),
        private_url=urljoin(service_url, private),
        created=response.status_code == 201,
    )


class Registrar:
    """Registers one label with fixed credentials; remembers the latest registration.

    ``token`` proves ownership of the label; when none is given a random one is made, so
    that the client can refresh and re-register its own label (the gateway would otherwise
    pick a random token it never tells us). ``access_token`` is sent as
    ``Authorization: Bearer`` for gateways that require enrolment tokens.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        service_url: str,
        name: str,
        *,
        token: str | None = None,
        access_token: str | None = None,
        lease: int | None = None,
    ) -> None:
        self._http = http
        self.service_url = normalize_service_url(service_url)
        self.name = name
        self.token = token or secrets.token_urlsafe(24)
        self._access_token = access_token
        self._lease = lease
        self.latest: Registration | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def register(self) -> Registration:
        """POST the registration form; returns the new URLs.

        Registrations are made one at a time, so :meth:`close` can wait for the one in flight.

        Raises:
            GatewayUnreachable: the Service URL could not be reached.
            RegistrationRefused: the gateway answered with an error status.
            ProtocolViolation: a 2xx answer without the required Link and Location headers.
            ClientError: :meth:`close` was called.
        """
        async with self._lock:
            if self._closed:
                raise ClientError("the client is stopping")
            registration = await self._post()
            self.latest = registration
            return registration

    async def renew(self, stale: Registration | None) -> Registration:
        """Register again because ``stale`` stopped working, unless that was done already.

        For transports whose connections all use the private URL (WebSocket, PTTH): when
        several find it gone at once, the first registers again and the others get its result.
        Raises like :meth:`register`.
        """
        async with self._lock:
            if self._closed:
                raise ClientError("the client is stopping")
            if self.latest is not None and self.latest is not stale:
                return self.latest
            registration = await self._post()
            self.latest = registration
            return registration

    async def _post(self) -> Registration:
        form = {"name": self.name, "token": self.token}
        if self._lease is not None:
            form["lease"] = str(self._lease)
        headers = {"Authorization": f"Bearer {self._access_token}"} if self._access_token else {}
        try:
            response = await self._http.post(
                self.service_url, data=form, headers=headers, timeout=REGISTRATION_TIMEOUT
            )
        except httpx.TransportError as exc:
            raise GatewayUnreachable(
                f"cannot reach the gateway at {self.service_url}: {describe_transport_error(exc)}"
            ) from exc
        if not response.is_success:
            raise RegistrationRefused(
                response.status_code,
                gateway_message(response),
                retry_after=_retry_after(response),
            )
        return _parse_registration(self.name, self.service_url, response)

    async def close(self, timeout: float) -> bool:
        """Refuse further registrations and wait for the one in flight, if any.

        Returns False when that registration did not finish within ``timeout`` seconds.
        """
        self._closed = True
        try:
            await asyncio.wait_for(self._lock.acquire(), timeout)
        except TimeoutError:
            return False
        self._lock.release()
        return True


async def delete_registration(
    http: httpx.AsyncClient, private_url: str, *, timeout: float = 5.0
) -> bool:
    """DELETE the private URL (RH-83): True if deleted, False if it was already gone (404/410).

    Raises:
        GatewayUnreachable: the gateway could not be reached.
        RegistrationRefused: any other answer.
    """
    try:
        response = await http.delete(private_url, timeout=timeout)
    except httpx.TransportError as exc:
        raise GatewayUnreachable(
            f"cannot reach the gateway to delete the registration: {describe_transport_error(exc)}"
        ) from exc
    if response.status_code in (404, 410):
        return False
    if response.is_success:
        return True
    raise RegistrationRefused(response.status_code, gateway_message(response))
