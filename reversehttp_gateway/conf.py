"""The gateway's settings: one ``REVERSEHTTP_GATEWAY`` dict, read live with documented defaults."""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Absolute base URL of the gateway itself; every issued URL is built from it (RH-94).
    "BASE_URL": "http://localhost:8000",
    # Path of the Service URL (registration endpoint) below BASE_URL.
    "SERVICE_PATH": "/reversehttp",
    # "path": public URLs are {PUBLIC_BASE_URL}/{label}/; "vhost": {scheme}://{label}.{VHOST_DOMAIN}/.
    "PUBLIC_URL_MODE": "path",
    # Base of path-mode public URLs; None means BASE_URL (RH-93: use a separate host in production).
    "PUBLIC_BASE_URL": None,
    # Domain (optionally with :port) under which vhost-mode labels live, e.g. "gw.example".
    "VHOST_DOMAIN": None,
    # "memory" (one process, no Redis) or "redis" (any number of processes sharing REDIS_URL).
    "BROKER": "memory",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "REDIS_PREFIX": "rhgw",
    # Long-poll hold time before a 204 (RH-20).
    "POLL_TIMEOUT": 25.0,
    # T1: 504 when no application polled or worked within this time (RH-64).
    "NO_APP_TIMEOUT": 10.0,
    # Redis broker: a request whose pollers in this process are all busy waits here this long
    # for one of them before it goes to the shared queue (queue/backlog.py); 0: at once.
    "LOCAL_QUEUE_SECONDS": 0.05,
    # T2: 504 when the application took the request but did not answer in time (RH-65).
    "REPLY_TIMEOUT": 60.0,
    # Lease: default when omitted, and the clamp range (RH-06).
    "DEFAULT_LEASE": 90,
    "MIN_LEASE": 30,
    "MAX_LEASE": 86400,
    # Largest public request or application reply body, in bytes (RH-41, 413).
    "MAX_BODY_SIZE": 10 * 1024 * 1024,
    # Who may register: "open" (first come, first served), "token" (a valid AccessToken is
    # required), "claims" (open, but labels covered by a LabelClaim need their owner's token).
    "ENROLMENT": "open",
    # The well-known token "-" (RH-92): "shared" (an ordinary secret, like the reference),
    # "random" (treated as no token), "refuse" (400).
    "HYPHEN_TOKEN": "shared",
    # Bodies larger than this stream through the gateway in chunks instead of being buffered
    # whole (public requests, and responses on the WebSocket transport).
    "STREAM_THRESHOLD": 1024 * 1024,
    # Size of one streamed chunk, and how many chunks may wait per stream (flow control).
    "STREAM_CHUNK_SIZE": 64 * 1024,
    "STREAM_WINDOW": 16,
    # Largest streamed body, in bytes (413 for public requests, 502 for responses).
    "MAX_STREAM_SIZE": 1024 * 1024 * 1024,
    # Limits (issue 6). Queued, undelivered requests per label: beyond, 503 with Retry-After.
    "MAX_QUEUED_PER_LABEL": 1000,
    # Waiting pollers per label in one process: beyond, 429.
    "MAX_POLLERS_PER_LABEL": 100,
    # Registrations (POST to the Service URL) per client IP per minute: beyond, 429.
    "REGISTRATIONS_PER_MINUTE": 60,
    # Public request headers: count and total bytes; beyond, 431.
    "MAX_HEADERS": 100,
    "MAX_HEADER_BYTES": 32 * 1024,
    # Gateway requests (polls, public requests, WebSockets) held at once by one process: 503.
    "MAX_HELD_CONNECTIONS": 10000,
    # Seconds a connection may stay idle while a request head or body is being received, or
    # between keep-alive requests (slowloris); polls and relays in progress are not affected.
    "IDLE_TIMEOUT": 30.0,
    # Most requests one application/http poll may carry (RH-26); 1 disables pipelining.
    "PIPELINE_MAX": 8,
    # Labels nobody may register (RH-03).
    "RESERVED_LABELS": ["reversehttp", "static", "admin", "api", "www", "gateway"],
    # How often each process looks for dormant registrations whose lease ran out (RH-07).
    "EXPIRY_INTERVAL": 5.0,
    # Longest time rungateway waits for in-flight requests after SIGTERM.
    "SHUTDOWN_TIMEOUT": 30.0,
    # "[host:]port" of the PTTH listener (Upgrade: PTTH/1.0, PT-01..PT-12) that rungateway runs
    # next to Daphne; None: no PTTH listener. The host defaults to 127.0.0.1.
    "PTTH_LISTEN": None,
    # Add "Forwarded: for=..." with the requestor's address to requests sent over PTTH (PT-12).
    "PTTH_FORWARDED": True,
    # Origins whose pages may call the gateway endpoints (everything under SERVICE_PATH) from
    # another origin: ["https://app.example"], or ["*"] for any; [] sends no CORS headers.
    "CORS_ALLOWED_ORIGINS": [],
    # Bearer token that Prometheus sends to GET /metrics; None disables the endpoint (404).
    "METRICS_TOKEN": None,
    # Add a "label" dimension (the registration's label) to the per-request metrics and gauges.
    "METRICS_PER_LABEL": False,
    # "text" or "json": what reversehttp_gateway.logformat.GatewayFormatter writes.
    "LOG_FORMAT": "text",
    # Request inspector (docs/inspector.md): log every public request of a registration.
    "INSPECTOR_ENABLED": True,
    # Also store request and response bodies (cut at INSPECTOR_BODY_LIMIT bytes each).
    "INSPECTOR_CAPTURE_BODIES": False,
    "INSPECTOR_BODY_LIMIT": 4096,
    # Seconds a logged request is kept, and the most rows kept per label.
    "INSPECTOR_RETENTION": 7 * 86400,
    "INSPECTOR_MAX_PER_LABEL": 1000,
    # Header values stored as "[redacted]" (case-insensitive names); [] stores them as sent.
    "INSPECTOR_REDACT_HEADERS": ["Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie"],
    # Seconds audit events are kept; None keeps them forever.
    "AUDIT_RETENTION": 90 * 86400,
}

CHOICES: dict[str, tuple[str, ...]] = {
    "PUBLIC_URL_MODE": ("path", "vhost"),
    "BROKER": ("memory", "redis"),
    "ENROLMENT": ("open", "token", "claims"),
    "HYPHEN_TOKEN": ("shared", "random", "refuse"),
    "LOG_FORMAT": ("text", "json"),
}


class GatewaySettings:
    """Typed view of ``settings.REVERSEHTTP_GATEWAY`` with its defaults filled in.

    Each value is computed on first access and then kept as a plain attribute (the relay path
    reads a dozen values per request; settings access costs a ``LazyObject`` indirection), until
    Django's ``setting_changed`` signal, which ``override_settings`` sends, forgets them all.
    """

    def __init__(self) -> None:
        self._configured: dict[str, Any] | None = None

    def reload(self) -> None:
        """Forget every value: the next access reads ``settings`` again."""
        self.__dict__.clear()
        self._configured = None

    def _get(self, name: str) -> Any:
        configured = self._configured
        if configured is None:
            configured = getattr(settings, "REVERSEHTTP_GATEWAY", None) or {}
            self._configured = configured
        return configured.get(name, DEFAULTS[name])

    @property
    def configured_keys(self) -> set[str]:
        return set(getattr(settings, "REVERSEHTTP_GATEWAY", None) or {})

    @cached_property
    def BASE_URL(self) -> str:
        return str(self._get("BASE_URL")).rstrip("/")

    @cached_property
    def SERVICE_PATH(self) -> str:
        return "/" + str(self._get("SERVICE_PATH")).strip("/")

    @cached_property
    def SERVICE_URL(self) -> str:
        return self.BASE_URL + self.SERVICE_PATH

    @cached_property
    def PUBLIC_URL_MODE(self) -> str:
        return str(self._get("PUBLIC_URL_MODE"))

    @cached_property
    def PUBLIC_BASE_URL(self) -> str:
        return str(self._get("PUBLIC_BASE_URL") or self.BASE_URL).rstrip("/")

    @cached_property
    def VHOST_DOMAIN(self) -> str | None:
        value = self._get("VHOST_DOMAIN")
        return str(value).strip(".").lower() if value else None

    @cached_property
    def VHOST_HOSTNAME(self) -> str | None:
        """The vhost domain without its port, as matched against the Host header."""
        domain = self.VHOST_DOMAIN
        return urlsplit("//" + domain).hostname if domain else None

    @cached_property
    def BROKER(self) -> str:
        return str(self._get("BROKER"))

    @cached_property
    def REDIS_URL(self) -> str:
        return str(self._get("REDIS_URL"))

    @cached_property
    def REDIS_PREFIX(self) -> str:
        return str(self._get("REDIS_PREFIX"))

    @cached_property
    def POLL_TIMEOUT(self) -> float:
        return float(self._get("POLL_TIMEOUT"))

    @cached_property
    def NO_APP_TIMEOUT(self) -> float:
        return float(self._get("NO_APP_TIMEOUT"))

    @cached_property
    def LOCAL_QUEUE_SECONDS(self) -> float:
        return float(self._get("LOCAL_QUEUE_SECONDS"))

    @cached_property
    def REPLY_TIMEOUT(self) -> float:
        return float(self._get("REPLY_TIMEOUT"))

    @cached_property
    def DEFAULT_LEASE(self) -> int:
        return int(self._get("DEFAULT_LEASE"))

    @cached_property
    def MIN_LEASE(self) -> int:
        return int(self._get("MIN_LEASE"))

    @cached_property
    def MAX_LEASE(self) -> int:
        return int(self._get("MAX_LEASE"))

    @cached_property
    def MAX_BODY_SIZE(self) -> int:
        return int(self._get("MAX_BODY_SIZE"))

    @cached_property
    def ENROLMENT(self) -> str:
        return str(self._get("ENROLMENT"))

    @cached_property
    def HYPHEN_TOKEN(self) -> str:
        return str(self._get("HYPHEN_TOKEN"))

    @cached_property
    def STREAM_THRESHOLD(self) -> int:
        return int(self._get("STREAM_THRESHOLD"))

    @cached_property
    def STREAM_CHUNK_SIZE(self) -> int:
        return int(self._get("STREAM_CHUNK_SIZE"))

    @cached_property
    def STREAM_WINDOW(self) -> int:
        return int(self._get("STREAM_WINDOW"))

    @cached_property
    def MAX_STREAM_SIZE(self) -> int:
        return int(self._get("MAX_STREAM_SIZE"))

    @cached_property
    def MAX_QUEUED_PER_LABEL(self) -> int:
        return int(self._get("MAX_QUEUED_PER_LABEL"))

    @cached_property
    def MAX_POLLERS_PER_LABEL(self) -> int:
        return int(self._get("MAX_POLLERS_PER_LABEL"))

    @cached_property
    def REGISTRATIONS_PER_MINUTE(self) -> int:
        return int(self._get("REGISTRATIONS_PER_MINUTE"))

    @cached_property
    def MAX_HEADERS(self) -> int:
        return int(self._get("MAX_HEADERS"))

    @cached_property
    def MAX_HEADER_BYTES(self) -> int:
        return int(self._get("MAX_HEADER_BYTES"))

    @cached_property
    def MAX_HELD_CONNECTIONS(self) -> int:
        return int(self._get("MAX_HELD_CONNECTIONS"))

    @cached_property
    def IDLE_TIMEOUT(self) -> float:
        return float(self._get("IDLE_TIMEOUT"))

    @cached_property
    def PIPELINE_MAX(self) -> int:
        return int(self._get("PIPELINE_MAX"))

    @cached_property
    def RESERVED_LABELS(self) -> frozenset[str]:
        return frozenset(str(label).lower() for label in self._get("RESERVED_LABELS"))

    @cached_property
    def EXPIRY_INTERVAL(self) -> float:
        return float(self._get("EXPIRY_INTERVAL"))

    @cached_property
    def SHUTDOWN_TIMEOUT(self) -> float:
        return float(self._get("SHUTDOWN_TIMEOUT"))

    @cached_property
    def PTTH_LISTEN(self) -> str | None:
        value = self._get("PTTH_LISTEN")
        return str(value) if value not in (None, "") else None

    @cached_property
    def PTTH_FORWARDED(self) -> bool:
        return bool(self._get("PTTH_FORWARDED"))

    @cached_property
    def CORS_ALLOWED_ORIGINS(self) -> tuple[str, ...]:
        """Allowed origins, lower-cased; () when unset or malformed (check E008 reports it)."""
        value = self._get("CORS_ALLOWED_ORIGINS")
        if not isinstance(value, list | tuple):
            return ()
        return tuple(str(origin).strip().lower() for origin in value)

    @cached_property
    def METRICS_TOKEN(self) -> str | None:
        """The metrics token; None when unset or not a non-empty string (check E009)."""
        value = self._get("METRICS_TOKEN")
        return value if isinstance(value, str) and value else None

    @cached_property
    def METRICS_PER_LABEL(self) -> bool:
        return bool(self._get("METRICS_PER_LABEL"))

    @cached_property
    def LOG_FORMAT(self) -> str:
        return str(self._get("LOG_FORMAT"))

    @cached_property
    def INSPECTOR_ENABLED(self) -> bool:
        return bool(self._get("INSPECTOR_ENABLED"))

    @cached_property
    def INSPECTOR_CAPTURE_BODIES(self) -> bool:
        return bool(self._get("INSPECTOR_CAPTURE_BODIES"))

    @cached_property
    def INSPECTOR_BODY_LIMIT(self) -> int:
        return int(self._get("INSPECTOR_BODY_LIMIT"))

    @cached_property
    def INSPECTOR_RETENTION(self) -> float:
        return float(self._get("INSPECTOR_RETENTION"))

    @cached_property
    def INSPECTOR_MAX_PER_LABEL(self) -> int:
        return int(self._get("INSPECTOR_MAX_PER_LABEL"))

    @cached_property
    def INSPECTOR_REDACT_HEADERS(self) -> frozenset[str]:
        names = self._get("INSPECTOR_REDACT_HEADERS") or ()
        return frozenset(str(name).strip().lower() for name in names)

    @cached_property
    def AUDIT_RETENTION(self) -> float | None:
        value = self._get("AUDIT_RETENTION")
        return float(value) if value not in (None, "") else None

    def public_url(self, label: str) -> str:
        """The public URL of ``label`` in the configured mode (RH-13)."""
        if self.PUBLIC_URL_MODE == "vhost":
            scheme = urlsplit(self.BASE_URL).scheme or "http"
            return f"{scheme}://{label}.{self.VHOST_DOMAIN}/"
        return f"{self.PUBLIC_BASE_URL}/{label}/"


gateway_settings = GatewaySettings()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "REVERSEHTTP_GATEWAY":
        gateway_settings.reload()


setting_changed.connect(_on_setting_changed)
