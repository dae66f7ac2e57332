"""The URLs the gateway issues, always built from configuration, never from Host (RH-94).

- Service URL: ``{BASE_URL}{SERVICE_PATH}``
- Private URL: ``{service}/r/{label}/{secret}``
- Request URL: ``{service}/r/{label}/{secret}/{slot}``
- Public URL: ``{PUBLIC_BASE_URL}/{label}/`` (path mode) or ``{scheme}://{label}.{VHOST_DOMAIN}/``
"""

from __future__ import annotations

from dataclasses import dataclass

from . import capabilities
from .conf import gateway_settings
from .protocol.links import format_link_header


@dataclass(frozen=True, slots=True)
class RegistrationAddress:
    """A registration's identity as it appears in its URLs."""

    label: str
    nonce: str

    @property
    def key(self) -> str:
        return f"{self.label}.{self.nonce}"

    @property
    def secret(self) -> str:
        return capabilities.registration_secret(self.label, self.nonce)

    @property
    def private_url(self) -> str:
        return f"{gateway_settings.SERVICE_URL}/r/{self.label}/{self.secret}"

    def request_url(self, slot: str) -> str:
        return f"{self.private_url}/{slot}"

    def new_request_url(self) -> str:
        return self.request_url(capabilities.new_slot(self.key))

    @property
    def public_url(self) -> str:
        return gateway_settings.public_url(self.label)

    def registration_headers(self) -> list[tuple[bytes, bytes]]:
        """``Link`` first/related and ``Location`` for a 201/204 (RH-11, RH-12)."""
        link = format_link_header([(self.new_request_url(), "first"), (self.public_url, "related")])
        return [(b"link", link.encode()), (b"location", self.private_url.encode())]

    @classmethod
    def from_key(cls, key: str) -> RegistrationAddress:
        label, _, nonce = key.partition(".")
        return cls(label, nonce)
