"""System checks of the REVERSEHTTP_GATEWAY settings (``reversehttp_gateway/checks.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import ERROR, WARNING
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from reversehttp_gateway.checks import check_settings

# Path mode on a separate public host: nothing to report.
GOOD = {"BASE_URL": "https://gw.example", "PUBLIC_BASE_URL": "https://apps.example"}
GOOD_VHOST = {
    "BASE_URL": "https://gw.example",
    "PUBLIC_URL_MODE": "vhost",
    "VHOST_DOMAIN": "apps.example:8443",
    "BROKER": "redis",
    "REDIS_URL": "rediss://cache.internal:6380/1",
    "ENROLMENT": "claims",
    "HYPHEN_TOKEN": "refuse",
}


def check_ids(config: dict[str, Any]) -> list[str]:
    with override_settings(REVERSEHTTP_GATEWAY=config):
        return sorted(message.id for message in check_settings())


def test_good_path_config_has_no_messages() -> None:
    assert check_ids(GOOD) == []


def test_good_vhost_config_has_no_messages() -> None:
    assert check_ids(GOOD_VHOST) == []


def test_messages_carry_level_and_hint() -> None:
    with override_settings(REVERSEHTTP_GATEWAY={"BOGUS": 1, "ENROLMENT": "closed"}):
        messages = check_settings()
    by_id = {message.id: message for message in messages}
    assert by_id["reversehttp_gateway.E001"].level == ERROR
    assert "BOGUS" in by_id["reversehttp_gateway.E001"].msg
    assert by_id["reversehttp_gateway.E002"].level == ERROR
    assert "'closed'" in by_id["reversehttp_gateway.E002"].msg
    assert by_id["reversehttp_gateway.W001"].level == WARNING  # defaults: path mode, one origin
    assert all(message.hint for message in messages)


def test_e001_unknown_key() -> None:
    assert check_ids({**GOOD, "POLL_TIMEOUTS": 10}) == ["reversehttp_gateway.E001"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PUBLIC_URL_MODE", "subdomain"),
        ("BROKER", "memcached"),
        ("ENROLMENT", "closed"),
        ("HYPHEN_TOKEN", "ignore"),
        ("HYPHEN_TOKEN", None),
    ],
)
def test_e002_bad_choice(name: str, value: object) -> None:
    assert check_ids({**GOOD, name: value}) == ["reversehttp_gateway.E002"]


@pytest.mark.parametrize(
    "base_url",
    ["gw.example", "ftp://gw.example", "https://", "https://gw.example/?x=1", "http://gw#top"],
)
def test_e003_bad_base_url(base_url: str) -> None:
    assert check_ids({**GOOD, "BASE_URL": base_url}) == ["reversehttp_gateway.E003"]


def test_e003_accepts_a_base_url_with_a_path_and_trailing_slash() -> None:
    assert check_ids({**GOOD, "BASE_URL": "https://example.org/gateway/"}) == []


def test_e004_vhost_without_domain() -> None:
    config = {**GOOD_VHOST, "VHOST_DOMAIN": None}
    assert check_ids(config) == ["reversehttp_gateway.E004"]
    assert check_ids({**config, "VHOST_DOMAIN": ""}) == ["reversehttp_gateway.E004"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"POLL_TIMEOUT": 0},
        {"NO_APP_TIMEOUT": 0},
        {"NO_APP_TIMEOUT": 61, "REPLY_TIMEOUT": 60},
        {"MIN_LEASE": 0},
        {"MIN_LEASE": 100, "DEFAULT_LEASE": 90},
        {"DEFAULT_LEASE": 90000, "MAX_LEASE": 86400},
        {"MAX_BODY_SIZE": 0},
        {"POLL_TIMEOUT": "soon"},
        {"MAX_LEASE": None},
    ],
)
def test_e005_inconsistent_timeouts(overrides: dict[str, Any]) -> None:
    assert check_ids({**GOOD, **overrides}) == ["reversehttp_gateway.E005"]


def test_e005_accepts_equal_bounds() -> None:
    config = {
        **GOOD,
        "NO_APP_TIMEOUT": 5,
        "REPLY_TIMEOUT": 5,
        "MIN_LEASE": 60,
        "DEFAULT_LEASE": 60,
        "MAX_LEASE": 60,
    }
    assert check_ids(config) == []


@pytest.mark.parametrize("redis_url", ["http://cache:6379", "cache:6379", ""])
def test_e006_bad_redis_url(redis_url: str) -> None:
    config = {**GOOD, "BROKER": "redis", "REDIS_URL": redis_url}
    assert check_ids(config) == ["reversehttp_gateway.E006"]


def test_e006_only_with_the_redis_broker() -> None:
    assert check_ids({**GOOD, "BROKER": "memory", "REDIS_URL": "http://cache"}) == []
    assert check_ids({**GOOD, "BROKER": "redis", "REDIS_URL": "unix:///run/redis.sock"}) == []


@pytest.mark.parametrize(
    "config",
    [
        {},  # every default: path mode on BASE_URL
        {"BASE_URL": "https://gw.example"},
        {"BASE_URL": "https://gw.example", "PUBLIC_BASE_URL": "https://gw.example/"},
        {"BASE_URL": "https://gw.example", "PUBLIC_BASE_URL": None},
    ],
)
def test_w001_path_mode_sharing_the_origin(config: dict[str, Any]) -> None:
    assert check_ids(config) == ["reversehttp_gateway.W001"]


@pytest.mark.parametrize(
    "public_base_url", ["https://gw.example/apps", "HTTPS://GW.example", "https://gw.example:443"]
)
def test_w001_same_origin_under_another_spelling(public_base_url: str) -> None:
    config = {"BASE_URL": "https://gw.example", "PUBLIC_BASE_URL": public_base_url}
    assert check_ids(config) == ["reversehttp_gateway.W001"]


def test_w001_not_in_vhost_mode() -> None:
    assert "reversehttp_gateway.W001" not in check_ids({**GOOD_VHOST, "PUBLIC_BASE_URL": None})


def test_check_command_fails_on_an_error() -> None:
    with (
        override_settings(REVERSEHTTP_GATEWAY={**GOOD, "BROKER": "memcached"}),
        pytest.raises(SystemCheckError, match=r"reversehttp_gateway\.E002"),
    ):
        call_command("check")


def test_check_command_passes_a_good_config() -> None:
    """Runs every check of the project too, including the admin's ModelAdmin checks."""
    with override_settings(REVERSEHTTP_GATEWAY=GOOD_VHOST):
        call_command("check", fail_level="WARNING")


@pytest.mark.parametrize("interval", [0, -1])
def test_e005_expiry_interval_must_be_positive(interval: int) -> None:
    assert "reversehttp_gateway.E005" in check_ids({"EXPIRY_INTERVAL": interval})


@pytest.mark.parametrize("hold", [-0.1, 10, "soon"])
def test_e005_local_queue_seconds_must_be_below_no_app_timeout(hold: object) -> None:
    """The local backlog must hand a request to the shared queue well before T1 (RH-64)."""
    config = {"LOCAL_QUEUE_SECONDS": hold, "NO_APP_TIMEOUT": 10}
    assert "reversehttp_gateway.E005" in check_ids(config)
    assert "reversehttp_gateway.E005" not in check_ids({**config, "LOCAL_QUEUE_SECONDS": 0})


@pytest.mark.parametrize("reserved", ["admin", ["admin", 3]])
def test_e007_reserved_labels_must_be_a_list_of_labels(reserved: object) -> None:
    assert "reversehttp_gateway.E007" in check_ids({"RESERVED_LABELS": reserved})
