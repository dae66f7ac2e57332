"""Which live registration a poller serves: by private URL (RH-23) or by its token (PT-09).

Shared by the transports: the long-poll service resolves the private URL in a Request URL, the
PTTH listener resolves the target of an upgrade request. Both revive an expired registration
while its label is free, so a client that outlived its lease keeps working (RH-23).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from . import capabilities, credentials, registry
from .addresses import RegistrationAddress
from .models import Registration
from .queue.base import Broker

T = TypeVar("T")


class BadToken(Exception):
    """The registration exists but the presented token is not its token (403)."""


def run_db(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> Awaitable[T]:
    """Run ORM code off the event loop, with fresh connections (notes P18)."""

    def call() -> T:
        close_old_connections()
        return function(*args, **kwargs)

    return sync_to_async(call)()


async def _activate(broker: Broker, registration: Registration) -> RegistrationAddress:
    address = RegistrationAddress(registration.label, registration.nonce)
    await registration.arecord_revival()  # audit log: an expired registration came back (RH-23)
    await broker.activate(address.key, address.label)
    return address


async def resolve_private_url(
    broker: Broker, label: str, secret: str
) -> RegistrationAddress | None:
    """The live registration behind a private URL; revives an expired one (RH-23)."""
    key = await broker.lookup_label(label)
    if key is not None:
        address = RegistrationAddress.from_key(key)
        if capabilities.registration_secret_matches(address.label, address.nonce, secret):
            return address
    registration = await run_db(registry.revive, label, secret)
    if registration is None:
        return None
    return await _activate(broker, registration)


def _registration_with_token(label: str, token: str) -> Registration | None:
    registration = Registration.objects.filter(label=label.lower()).first()
    if registration is None:
        return None
    if not credentials.matches(token, registration.token_digest):
        raise BadToken
    if registration.status == Registration.Status.EXPIRED:
        secret = capabilities.registration_secret(registration.label, registration.nonce)
        return registry.revive(registration.label, secret)
    return registration


async def resolve_token(broker: Broker, label: str, token: str) -> RegistrationAddress | None:
    """The registration of ``label`` if ``token`` is its registration token (PT-09).

    None when there is no such registration (or an expired one may not be revived under the
    current enrolment policy); raises :class:`BadToken` when the token does not match.
    """
    registration = await run_db(_registration_with_token, label, token)
    if registration is None:
        return None
    return await _activate(broker, registration)
