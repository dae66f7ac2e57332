"""Fixtures for the client tests: a module-wide embedded gateway, a local HTTP server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ..conftest import FAST
from ..gateway_process import Gateway, make_gateway
from .apps import LocalServer


@pytest.fixture(scope="module")
def memory_gateway(
    tmp_path_factory: pytest.TempPathFactory, db_template: Path
) -> Iterator[Gateway]:
    """One embedded-broker gateway (no Redis) for a whole test module."""
    gateway = make_gateway(tmp_path_factory.mktemp("gw"), db_template, **FAST, BROKER="memory")
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    server = LocalServer().start()
    yield server
    server.stop()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 50 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


async def eventually(
    attempt: Callable[[], Awaitable[httpx.Response]],
    accept: Callable[[httpx.Response], bool],
    timeout: float,
    what: str,
) -> httpx.Response:
    """Repeat ``attempt`` (errors count as failures) until ``accept`` holds; fail on timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = await attempt()
            if accept(last):  # type: ignore[arg-type]
                return last  # type: ignore[return-value]
        except httpx.TransportError as exc:
            last = exc
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last result: {last!r}")
