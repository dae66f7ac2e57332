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
            and 0 <= gateway_settings.LOCAL_QUEUE_SECONDS < gateway_settings.NO_APP_TIMEOUT
        )
    except (TypeError, ValueError):
        timeouts_ok = False
    if not timeouts_ok:
        errors.append(
            Error(
                "Inconsistent timeouts, leases or body size in REVERSEHTTP_GATEWAY.",
                hint="Need POLL_TIMEOUT > 0, 0 < NO_APP_TIMEOUT <= REPLY_TIMEOUT, "
                "0 < MIN_LEASE <= DEFAULT_LEASE <= MAX_LEASE, MAX_BODY_SIZE > 0, "
                "EXPIRY_INTERVAL > 0, SHUTDOWN_TIMEOUT >= 0 and "
                "0 <= LOCAL_QUEUE_SECONDS < NO_APP_TIMEOUT.",
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
    listen = gateway_settings.PTTH_LISTEN
    if listen is not None:
        from .transports.ptth import parse_listen

        try:
            parse_listen(listen)
        except ValueError:
            errors.append(
                Error(
                    f"REVERSEHTTP_GATEWAY['PTTH_LISTEN'] is {listen!r}.",
                    hint='Use "[host:]port", e.g. "127.0.0.1:8001" or "8001", or None.',
                    id="reversehttp_gateway.E010",
                )
            )
    return errors


def _is_origin(value: object) -> bool:
    """``scheme://host[:port]`` exactly as a browser sends it in ``Origin``, or ``"*"``."""
    if value == "*":
        return True
    if not isinstance(value, str) or not value or value != value.strip():
        return False
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return False
    return bool(
        parts.scheme
        and parts.hostname
        and "@" not in parts.netloc
        and not parts.path
        and not parts.query
        and not parts.fragment
        and value == f"{parts.scheme}://{parts.netloc}"
    )


@register(Tags.security)
def check_cors(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """CORS_ALLOWED_ORIGINS must be a list of origins (browser clients, docs/browser.md)."""
    value = gateway_settings._get("CORS_ALLOWED_ORIGINS")
    if isinstance(value, list | tuple) and all(_is_origin(origin) for origin in value):
        return []
    return [
        Error(
            f"REVERSEHTTP_GATEWAY['CORS_ALLOWED_ORIGINS'] is {value!r}.",
            hint="Give a list of origins without path or trailing slash, e.g. "
            '["https://app.example", "http://localhost:3000"], or ["*"] for any origin.',
            id="reversehttp_gateway.E008",
        )
    ]


@register(Tags.security)
def check_metrics(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """METRICS_TOKEN: None, or the non-empty string Prometheus sends (docs/metrics.md)."""
    value = gateway_settings._get("METRICS_TOKEN")
    if value is None:
        return []
    if not isinstance(value, str) or not value.strip():
        return [
            Error(
                f"REVERSEHTTP_GATEWAY['METRICS_TOKEN'] is {value!r}.",
                hint='Set a long random string (e.g. from `python -c "import secrets; '
                'print(secrets.token_urlsafe(32))"`), or None to disable /metrics.',
                id="reversehttp_gateway.E009",
            )
        ]
    try:
        reserved = gateway_settings.RESERVED_LABELS
    except TypeError:  # malformed: E007
        reserved = frozenset()
    if gateway_settings.PUBLIC_URL_MODE == "path" and "metrics" not in reserved:
        return [
            Warning(
                "/metrics is enabled in path mode, but the label 'metrics' can be registered; "
                "its public URL would be shadowed by the metrics endpoint.",
                hint="Add 'metrics' to REVERSEHTTP_GATEWAY['RESERVED_LABELS'].",
                id="reversehttp_gateway.W002",
            )
        ]
    return []
