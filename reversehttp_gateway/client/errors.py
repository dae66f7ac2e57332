"""Exceptions raised by the client when the gateway cannot be used."""

from __future__ import annotations

__all__ = ["ClientError", "GatewayUnreachable", "ProtocolViolation", "RegistrationRefused"]


class ClientError(Exception):
    """Base class of the client's errors; ``str()`` is a one-line explanation."""


class GatewayUnreachable(ClientError):
    """The Service URL could not be reached (connection refused, DNS failure, timeout)."""


class RegistrationRefused(ClientError):
    """The gateway answered the registration with an error status (400, 401, 403, 5xx ...).

    ``status`` is the HTTP status and ``message`` the gateway's plain-text explanation, e.g.
    ``"403 Bad token"`` when the name is taken with another token. ``retry_after`` is the
    ``Retry-After`` delay in seconds, when the gateway sent one (429, 503).
    """

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        self.status = status
        self.message = message.strip() or f"{status} (no explanation given)"
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def permanent(self) -> bool:
        """True for 4xx answers other than 429: repeating the same registration will not help."""
        return 400 <= self.status < 500 and self.status != 429


class ProtocolViolation(ClientError):
    """The gateway answered something the ReverseHttp protocol does not allow."""
