"""Django system checks for the gateway's settings (ids ``reversehttp_gateway.E0xx``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import CHOICES, DEFAULTS, gateway_settings


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, parts.hostname, port


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Unknown keys, bad choices, bad URLs and inconsistent timeouts."""
    errors: list[CheckMessage] = []
    unknown = sorted(gateway_settings.configured_keys - set(DEFAULTS))
    if unknown:
        errors.append(
            Error(
                f"Unknown REVERSEHTTP_GATEWAY setting(s): {', '.join(unknown)}.",
                hint=f"Known settings: {', '.join(sorted(DEFAULTS))}.",
                id="reversehttp_gateway.E001",
            )
        )
    for name, allowed in CHOICES.items():
        value = gateway_settings._get(name)
        if value not in allowed:
            errors.append(
                Error(
                    f"REVERSEHTTP_GATEWAY['{name}'] is {value!r}.",
                    hint=f"Use one of: {', '.join(allowed)}.",
                    id="reversehttp_gateway.E002",
                )
            )
    base = urlsplit(gateway_settings.BASE_URL)
    if base.scheme not in ("http", "https") or not base.netloc or base.query or base.fragment:
        errors.append(
            Error(
                f"REVERSEHTTP_GATEWAY['BASE_URL'] is {gateway_settings.BASE_URL!r}.",
                hint="Give an absolute http(s) URL without query, e.g. 'https://gw.example'.",
                id="reversehttp_gateway.E003",
            )
        )
    if gateway_settings.PUBLIC_URL_MODE == "vhost" and not gateway_settings.VHOST_DOMAIN:
        errors.append(
            Error(
                "PUBLIC_URL_MODE is 'vhost' but VHOST_DOMAIN is not set.",
                hint="Set REVERSEHTTP_GATEWAY['VHOST_DOMAIN'] to the wildcard domain, "
                "e.g. 'gw.example'.",
                id="reversehttp_gateway.E004",
            )
        )
    try:
        timeouts_ok = (
            gateway_settings.POLL_TIMEOUT > 0
            and 0 < gateway_settings.NO_APP_TIMEOUT <= gateway_settings.REPLY_TIMEOUT
            and 0
            < gateway_settings.MIN_LEASE
            <= gateway_settings.DEFAULT_LEASE
            <= gateway_settings.MAX_LEASE
            and gateway_settings.MAX_BODY_SIZE > 0
            and gateway_settings.EXPIRY_INTERVAL > 0
            and gateway_settings.SHUTDOWN_TIMEOUT >= 0
        )
    except (TypeError, ValueError):
        timeouts_ok = False
    if not timeouts_ok:
        errors.append(
            Error(
                "Inconsistent timeouts, leases or body size in REVERSEHTTP_GATEWAY.",
                hint="Need POLL_TIMEOUT > 0, 0 < NO_APP_TIMEOUT <= REPLY_TIMEOUT, "
                "0 < MIN_LEASE <= DEFAULT_LEASE <= MAX_LEASE, MAX_BODY_SIZE > 0, "
                "EXPIRY_INTERVAL > 0 and SHUTDOWN_TIMEOUT >= 0.",
                id="reversehttp_gateway.E005",
            )
        )
    if gateway_settings.BROKER == "redis" and urlsplit(gateway_settings.REDIS_URL).scheme not in (
        "redis",
        "rediss",
        "unix",
    ):
        errors.append(
            Error(
                f"REVERSEHTTP_GATEWAY['REDIS_URL'] is {gateway_settings.REDIS_URL!r}.",
                hint="Use a redis://, rediss:// or unix:// URL.",
                id="reversehttp_gateway.E006",
            )
        )
    if gateway_settings.PUBLIC_URL_MODE == "path" and _origin(
        gateway_settings.PUBLIC_BASE_URL
    ) == _origin(gateway_settings.BASE_URL):
        errors.append(
            Warning(
                "Path-mode public URLs share the gateway's own origin (RH-93).",
                hint="For untrusted applications set PUBLIC_BASE_URL to a separate host, "
                "or use vhost mode; see docs/security.md.",
                id="reversehttp_gateway.W001",
            )
        )
    reserved = gateway_settings._get("RESERVED_LABELS")
    if isinstance(reserved, str) or not all(isinstance(label, str) for label in reserved):
        errors.append(
            Error(
                "REVERSEHTTP_GATEWAY['RESERVED_LABELS'] must be a list of labels.",
                hint='For example ["admin", "static"].',
                id="reversehttp_gateway.E007",
            )
        )
    return errors
