"""Settings of the example site. Every value can be overridden from the environment.

RHGW_BROKER=redis and RHGW_REDIS_URL select the shared Redis broker; DATABASE_URL-style
settings are kept simple: RHGW_DB_PATH (SQLite file) or RHGW_PG_NAME (PostgreSQL on localhost).
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("RHGW_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-insecure-secret-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "reversehttp_gateway",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if os.environ.get("RHGW_PG_NAME"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["RHGW_PG_NAME"],
            "HOST": os.environ.get("RHGW_PG_HOST", "127.0.0.1"),
            "USER": os.environ.get("RHGW_PG_USER", "postgres"),
            "CONN_HEALTH_CHECKS": True,
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("RHGW_DB_PATH", str(VAR_DIR / "gateway.sqlite3")),
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL;",
            },
            "TEST": {"NAME": os.environ.get("RHGW_TEST_DB_PATH", str(VAR_DIR / "test.sqlite3"))},
        }
    }

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REVERSEHTTP_GATEWAY = {
    "BASE_URL": os.environ.get("RHGW_BASE_URL", "http://127.0.0.1:8000"),
    "PUBLIC_URL_MODE": os.environ.get("RHGW_PUBLIC_URL_MODE", "path"),
    "VHOST_DOMAIN": os.environ.get("RHGW_VHOST_DOMAIN") or None,
    "BROKER": os.environ.get("RHGW_BROKER", "memory"),
    "REDIS_URL": os.environ.get("RHGW_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "REDIS_PREFIX": os.environ.get("RHGW_REDIS_PREFIX", "rhgw"),
}
for _name, _cast in [
    ("POLL_TIMEOUT", float),
    ("NO_APP_TIMEOUT", float),
    ("LOCAL_QUEUE_SECONDS", float),
    ("REPLY_TIMEOUT", float),
    ("DEFAULT_LEASE", int),
    ("MIN_LEASE", int),
    ("MAX_BODY_SIZE", int),
    ("EXPIRY_INTERVAL", float),
    ("SHUTDOWN_TIMEOUT", float),
    ("STREAM_THRESHOLD", int),
    ("STREAM_CHUNK_SIZE", int),
    ("STREAM_WINDOW", int),
    ("MAX_STREAM_SIZE", int),
    ("PIPELINE_MAX", int),
    ("MAX_QUEUED_PER_LABEL", int),
    ("MAX_POLLERS_PER_LABEL", int),
    ("REGISTRATIONS_PER_MINUTE", int),
    ("MAX_HEADERS", int),
    ("MAX_HEADER_BYTES", int),
    ("MAX_HELD_CONNECTIONS", int),
    ("IDLE_TIMEOUT", float),
    ("ENROLMENT", str),
    ("HYPHEN_TOKEN", str),
]:
    if f"RHGW_{_name}" in os.environ:
        REVERSEHTTP_GATEWAY[_name] = _cast(os.environ[f"RHGW_{_name}"])
if os.environ.get("RHGW_PTTH_LISTEN"):  # e.g. "127.0.0.1:8001": serve PTTH upgrades there
    REVERSEHTTP_GATEWAY["PTTH_LISTEN"] = os.environ["RHGW_PTTH_LISTEN"]
if "RHGW_PTTH_FORWARDED" in os.environ:
    _forwarded = os.environ["RHGW_PTTH_FORWARDED"].strip().lower()
    REVERSEHTTP_GATEWAY["PTTH_FORWARDED"] = _forwarded not in ("0", "", "false", "no", "off")
if "RHGW_CORS_ALLOWED_ORIGINS" in os.environ:  # comma-separated, e.g. "http://localhost:3000"
    _origins = os.environ["RHGW_CORS_ALLOWED_ORIGINS"].split(",")
    REVERSEHTTP_GATEWAY["CORS_ALLOWED_ORIGINS"] = [o.strip() for o in _origins if o.strip()]
if os.environ.get("RHGW_METRICS_TOKEN"):  # enables GET /metrics with this bearer token
    from reversehttp_gateway.conf import DEFAULTS as _DEFAULTS

    REVERSEHTTP_GATEWAY["METRICS_TOKEN"] = os.environ["RHGW_METRICS_TOKEN"]
    REVERSEHTTP_GATEWAY.setdefault("RESERVED_LABELS", [*_DEFAULTS["RESERVED_LABELS"], "metrics"])
if "RHGW_METRICS_PER_LABEL" in os.environ:
    _per_label = os.environ["RHGW_METRICS_PER_LABEL"].strip().lower()
    REVERSEHTTP_GATEWAY["METRICS_PER_LABEL"] = _per_label not in ("0", "", "false", "no", "off")
if "RHGW_LOG_FORMAT" in os.environ:  # "json": one JSON object per log line
    REVERSEHTTP_GATEWAY["LOG_FORMAT"] = os.environ["RHGW_LOG_FORMAT"]
for _name in ("INSPECTOR_ENABLED", "INSPECTOR_CAPTURE_BODIES"):  # request inspector
    if f"RHGW_{_name}" in os.environ:
        _flag = os.environ[f"RHGW_{_name}"].strip().lower()
        REVERSEHTTP_GATEWAY[_name] = _flag not in ("0", "", "false", "no", "off")
for _name, _cast in [
    ("INSPECTOR_BODY_LIMIT", int),
    ("INSPECTOR_RETENTION", float),
    ("INSPECTOR_MAX_PER_LABEL", int),
    ("AUDIT_RETENTION", float),
]:
    if f"RHGW_{_name}" in os.environ:
        REVERSEHTTP_GATEWAY[_name] = _cast(os.environ[f"RHGW_{_name}"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {
            "()": "reversehttp_gateway.logformat.GatewayFormatter",  # JSON if LOG_FORMAT="json"
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "line"}},
    "loggers": {
        "reversehttp_gateway": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
