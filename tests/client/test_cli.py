"""The ``reversehttp`` command as a subprocess: expose, serve, signals, and clear errors."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ..gateway_process import free_port
from ..rh import unique_label

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests.client.apps is importable
SCRIPT = Path(sys.executable).parent / "reversehttp"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "reversehttp_gateway.client"]


class Cli:
    """A running ``reversehttp`` process whose output lines are read without blocking."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [*COMMAND, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        for stream in (self.process.stdout, self.process.stderr):
            threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """The first output line (stdout or stderr) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no line matching {pattern!r} within {timeout}s; got {self.seen}")
            try:
                line = self.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    pytest.fail(f"reversehttp exited ({self.process.returncode}): {self.seen}")
                continue
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> int:
        """Send ``sig`` to the process we started (by PID) and wait for its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            pytest.fail(f"reversehttp did not exit within {timeout}s after signal {sig}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_expose_prints_url_logs_requests_and_exits_cleanly_on_sigint(memory_gateway, local_server):
    name = unique_label("cli")
    cli = Cli(
        "expose", local_server.url, "--gateway", memory_gateway.url, "--name", name,
        "--pollers", "2",
    )  # fmt: skip
    try:
        public_url = cli.expect(r"Public URL: (\S+)").group(1)
        assert public_url == f"{memory_gateway.url}/{name}/"
        with httpx.Client(timeout=15) as http:
            response = http.get(public_url + "from-cli?x=1")
            assert response.status_code == 200
            assert response.json()["path"] == "/from-cli?x=1"
            cli.expect(rf"GET /{name}/from-cli 200 \d+\.\dms")
            assert cli.stop(signal.SIGINT) == 0
            assert http.get(public_url).status_code == 404  # the registration was deleted
    finally:
        cli.kill()


def test_serve_an_asgi_app_and_exit_cleanly_on_sigterm(memory_gateway):
    name = unique_label("srv")
    cli = Cli(
        "serve", "tests.client.apps:asgi_echo", "--app-dir", str(ROOT),
        "--gateway", memory_gateway.service_url, "--name", name, "--pollers", "1",
    )  # fmt: skip
    try:
        public_url = cli.expect(r"Public URL: (\S+)").group(1)
        cli.expect(r"Serving tests\.client\.apps:asgi_echo \(ASGI\) with 1 poller")
        with httpx.Client(timeout=15) as http:
            response = http.post(public_url + "x", content=b"abc")
            assert response.status_code == 201
            assert response.json()["route"] == "/x"
            cli.expect(rf"POST /{name}/x 201 ")
            assert cli.stop(signal.SIGTERM) == 0
            assert http.get(public_url).status_code == 404
    finally:
        cli.kill()


def test_serve_detects_a_wsgi_app(memory_gateway):
    cli = Cli(
        "serve", "tests.client.apps:wsgi_echo", "--app-dir", str(ROOT),
        "--gateway", memory_gateway.service_url, "--name", unique_label("w"), "-q",
    )  # fmt: skip
    try:
        public_url = cli.expect(r"Public URL: (\S+)").group(1)
        cli.expect(r"\(WSGI\)")
        with httpx.Client(timeout=15) as http:
            assert http.get(public_url).status_code == 202
        assert cli.stop() == 0
    finally:
        cli.kill()


def test_error_for_a_taken_name(memory_gateway):
    name = unique_label("taken")
    with httpx.Client(timeout=15) as http:
        owner = http.post(memory_gateway.service_url, data={"name": name, "token": "owner"})
        assert owner.status_code == 201
    result = run_cli(
        "expose", "http://127.0.0.1:9", "--gateway", memory_gateway.url, "--name", name,
        "--token", "intruder",
    )  # fmt: skip
    assert result.returncode == 4
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert "refused the name" in line and "403 Bad token" in line and "taken" in line


def test_error_for_an_invalid_name(memory_gateway):
    result = run_cli(
        "expose", "http://127.0.0.1:9", "--gateway", memory_gateway.url, "--name", "no_way!"
    )
    assert result.returncode == 4
    [line] = result.stderr.strip().splitlines()
    assert "400 Invalid label" in line


def test_error_for_an_unreachable_gateway():
    port = free_port()  # nothing listens there
    result = run_cli(
        "expose", "http://127.0.0.1:9", "--gateway", f"http://127.0.0.1:{port}", "--name", "x"
    )
    assert result.returncode == 3
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("reversehttp: error: cannot reach the gateway at ")
    assert f"127.0.0.1:{port}/reversehttp" in line


def test_error_for_a_bad_access_token(start_gateway):
    gateway = start_gateway("memory", ENROLMENT="token")
    result = run_cli(
        "expose", "http://127.0.0.1:9", "--gateway", gateway.url, "--name", unique_label(),
        "--access-token", "not-a-real-token",
    )  # fmt: skip
    assert result.returncode == 4
    [line] = result.stderr.strip().splitlines()
    assert "401 Invalid, expired or revoked access token" in line and "--access-token" in line


def test_usage_error_for_an_app_that_cannot_be_imported(memory_gateway):
    result = run_cli(
        "serve", "no_such_module_here:app", "--gateway", memory_gateway.url, "--name", "x"
    )
    assert result.returncode == 2
    assert "cannot import 'no_such_module_here'" in result.stderr


def test_serve_over_a_websocket(memory_gateway):
    name = unique_label("cws")
    cli = Cli(
        "serve", "tests.client.apps:asgi_echo", "--app-dir", str(ROOT),
        "--gateway", memory_gateway.service_url, "--name", name, "--pollers", "3",
        "--transport", "websocket",
    )  # fmt: skip
    try:
        public_url = cli.expect(r"Public URL: (\S+)").group(1)
        cli.expect(r"with 3 poller\(s\) over a WebSocket")
        with httpx.Client(timeout=15) as http:
            response = http.post(public_url + "over-ws?q=1", content=b"abc")
            assert response.status_code == 201
            assert response.json()["route"] == "/over-ws"
            assert response.json()["body_length"] == 3
            cli.expect(rf"POST /{name}/over-ws 201 \d+\.\dms")
            assert cli.stop(signal.SIGINT) == 0
            assert http.get(public_url).status_code == 404
    finally:
        cli.kill()


def test_usage_error_for_ptth_without_its_address():
    result = run_cli(
        "expose", "http://127.0.0.1:9", "--gateway", "http://127.0.0.1:9", "--name", "x",
        "--transport", "ptth",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--transport ptth needs --ptth HOST:PORT" in result.stderr


def test_loop_choice() -> None:
    import uvloop

    from reversehttp_gateway.client.cli import build_parser, loop_factory

    assert loop_factory("auto") is uvloop.new_event_loop  # installed with uvicorn[standard]
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None
    args = build_parser().parse_args(
        ["expose", "http://127.0.0.1:1", "--gateway", "http://g", "--name", "n"]
        + ["--loop", "asyncio"]
    )
    assert args.loop == "asyncio"


def test_request_lines_read_as_with_the_standard_formatter() -> None:
    """LineFormatter caches the time of day per second; the lines are what logging.Formatter
    with the same format wrote (docs/client.md shows them)."""
    import logging

    from reversehttp_gateway.client.cli import LineFormatter

    fast, standard = LineFormatter(), logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    start = time.time()
    for offset in (0.0, 0.4, 1.2, 61.0, 3600.5):
        line = {"msg": "%s %s %d %.1fms", "args": ("GET", "/a b", 200, 0.71)}
        record = logging.makeLogRecord(line | {"created": start + offset})
        assert fast.format(record) == standard.format(record)
        assert fast.format(record).endswith(" GET /a b 200 0.7ms")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.makeLogRecord({"msg": "failed", "exc_info": sys.exc_info()})
    assert "Traceback" in fast.format(failed) and "ValueError: boom" in fast.format(failed)
