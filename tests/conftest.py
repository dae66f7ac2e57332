"""Shared fixtures: real gateway processes on loopback, a real Redis, HTTP clients."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from .gateway_process import Gateway, make_gateway, migrated_database

REDIS_URL = os.environ.get("RHGW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# Short timeouts so that timeout behaviour is observable within a test.
FAST = {
    "POLL_TIMEOUT": "2",
    "NO_APP_TIMEOUT": "1.5",
    "REPLY_TIMEOUT": "4",
    "EXPIRY_INTERVAL": "0.5",
    "SHUTDOWN_TIMEOUT": "10",
}


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:  # the test script starts Redis; say so clearly
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}. Run scripts/test.sh.")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(scope="session")
def db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_database(tmp_path_factory.mktemp("db"))


GatewayFactory = Callable[..., Gateway]


def _factory(tmp: Path, template: Path, redis_url: str) -> tuple[GatewayFactory, list[Gateway]]:
    started: list[Gateway] = []

    def start(
        broker: str = "redis",
        *,
        prefix: str | None = None,
        server: str | None = None,
        **settings: str,
    ) -> Gateway:
        merged = {**FAST, "BROKER": broker, "REDIS_URL": redis_url, **settings}
        merged.setdefault("REDIS_PREFIX", prefix or f"t{uuid.uuid4().hex[:12]}")
        db_path = merged.pop("DB_PATH", None)
        gateway = make_gateway(
            tmp, template, db_path=Path(db_path) if db_path else None, server=server, **merged
        )
        started.append(gateway.start())
        return gateway

    return start, started


@pytest.fixture
def start_gateway(tmp_path: Path, db_template: Path, redis_url: str) -> Iterator[GatewayFactory]:
    """Factory: ``start_gateway(broker, server=None, **settings)`` starts a gateway, stopped
    after the test (``server``: ``rungateway --server``, default ``RHGW_TEST_SERVER``/uvicorn)."""
    start, started = _factory(tmp_path, db_template, redis_url)
    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module", params=["redis", "memory"])
def gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    db_template: Path,
    redis_url: str,
) -> Iterator[Gateway]:
    """One gateway per test module and broker, with the FAST settings."""
    start, started = _factory(tmp_path_factory.mktemp("gw"), db_template, redis_url)
    yield start(request.param)
    for gw in started:
        gw.stop()
