"""Registrations in the database: enrolment policy, tokens, leases (RH-01..RH-10, RH-80..RH-92).

Synchronous ORM code; async callers wrap it with ``sync_to_async``. Keeping the broker's mirror
in step is the caller's job (``service.py``), so this module stays free of I/O besides the DB.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from . import capabilities, credentials
from .conf import gateway_settings
from .models import AccessToken, LabelClaim, Registration
from .protocol.labels import normalize_label, parse_lease

HYPHEN = "-"


class RegistrationError(Exception):
    """A refused registration request, with the status and plain-text message to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Enrolled:
    registration: Registration
    created: bool


def _token_for(raw: str | None) -> str:
    """The token to store: a random one when omitted (RH-08), "-" per policy (RH-92)."""
    if raw is None or raw == "":
        return credentials.new_capability()
    if raw == HYPHEN:
        policy = gateway_settings.HYPHEN_TOKEN
        if policy == "refuse":
            raise RegistrationError(400, "The token '-' is not accepted here; choose a secret")
        if policy == "random":
            return credentials.new_capability()
    return raw


def _lease_seconds(raw: str | None) -> int:
    """The lease asked for, clamped (RH-05, RH-06); 400 when it is not a number."""
    try:
        return parse_lease(
            raw,
            default=gateway_settings.DEFAULT_LEASE,
            minimum=gateway_settings.MIN_LEASE,
            maximum=gateway_settings.MAX_LEASE,
        )
    except ValueError as exc:
        raise RegistrationError(400, str(exc)) from exc


def _restart_lease(registration: Registration) -> None:
    """Mark active and start the lease clock from now (the lease keeper takes it from there)."""
    now = timezone.now()
    registration.status = Registration.Status.ACTIVE
    registration.refreshed_at = now
    registration.dormant_since = now
    registration.expires_at = now + timedelta(seconds=registration.lease_seconds)


def authenticate_bearer(authorization: str | None) -> AccessToken | None:
    """The usable AccessToken named by an ``Authorization: Bearer`` value; 401 if it is bad."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise RegistrationError(401, "Unsupported Authorization scheme; use Bearer <token>")
    token = AccessToken.objects.filter(token_digest=credentials.digest(value.strip())).first()
    if token is None or not token.is_usable():
        raise RegistrationError(401, "Invalid, expired or revoked access token")
    return token


def _check_enrolment(label: str, access: AccessToken | None) -> None:
    policy = gateway_settings.ENROLMENT
    if policy == "token" and access is None:
        raise RegistrationError(401, "An access token is required to register")
    if access is not None and not access.allows_label(label):
        raise RegistrationError(403, "This access token may not register that label")
    if policy in ("token", "claims"):
        for claim in LabelClaim.objects.select_related("access_token"):
            if claim.covers(label) and not claim.is_owned_by(access):
                raise RegistrationError(403, "That label is claimed by someone else")


def register(
    *,
    name: str | None,
    token: str | None,
    lease: str | None,
    authorization: str | None = None,
    client_ip: str | None = None,
) -> Enrolled:
    """Create (201) or refresh (204) the registration of ``name`` (RH-01..RH-10)."""
    try:
        label = normalize_label(name, gateway_settings.RESERVED_LABELS)
    except ValueError as exc:
        raise RegistrationError(400, str(exc)) from exc
    lease_seconds = _lease_seconds(lease)
    access = authenticate_bearer(authorization)
    _check_enrolment(label, access)
    secret_token = _token_for(token)
    now = timezone.now()
    try:
        with transaction.atomic():
            existing = Registration.objects.select_for_update().filter(label=label).first()
            if existing is not None and credentials.matches(secret_token, existing.token_digest):
                created = existing.status == Registration.Status.EXPIRED
                existing.lease_seconds = lease_seconds
                _restart_lease(existing)
                existing.save()
                return Enrolled(existing, created)
            if existing is not None and existing.status == Registration.Status.ACTIVE:
                raise RegistrationError(403, "Bad token")
            if existing is not None:  # an expired tombstone of someone else: the label is free
                existing.delete()
            registration = Registration(
                label=label,
                nonce=capabilities.new_nonce(),
                token_digest=credentials.digest(secret_token),
                lease_seconds=lease_seconds,
                access_token=access,
                registered_from=client_ip,
            )
            _restart_lease(registration)
            registration.save(force_insert=True)
    except IntegrityError as exc:  # a concurrent registration of the same label won
        raise RegistrationError(403, "Bad token") from exc
    if access is not None:
        AccessToken.objects.filter(pk=access.pk).update(last_used_at=now)
    return Enrolled(registration, True)


def find(label: str, secret: str) -> Registration | None:
    """The registration whose private URL is ``label``/``secret``, active or expired."""
    registration = Registration.objects.filter(label=label.lower()).first()
    if registration is None:
        return None
    if not capabilities.registration_secret_matches(registration.label, registration.nonce, secret):
        return None
    return registration


def revive(label: str, secret: str) -> Registration | None:
    """Re-create an expired registration from its old URLs while its label is free (RH-23)."""
    with transaction.atomic():
        registration = find(label, secret)
        if registration is None:
            return None
        if registration.status == Registration.Status.EXPIRED:
            if gateway_settings.ENROLMENT != "open":  # the policy may have changed meanwhile
                access = registration.access_token
                try:
                    _check_enrolment(
                        registration.label, access if access and access.is_usable() else None
                    )
                except RegistrationError:
                    return None
            _restart_lease(registration)
            registration.save()
        return registration


def reconfigure(registration: Registration, *, token: str | None, lease: str | None) -> None:
    """PUT on the private URL: new lease and token; a supplied name is ignored (RH-82)."""
    if lease is not None:
        registration.lease_seconds = _lease_seconds(lease)
    if token is not None:
        registration.token_digest = credentials.digest(_token_for(token))
    _restart_lease(registration)
    registration.save()


def extend_lease(registration: Registration, seconds: int) -> None:
    """Admin action: push the expiry back by ``seconds`` from now."""
    registration.lease_seconds = max(registration.lease_seconds, seconds)
    _restart_lease(registration)
    registration.save()
