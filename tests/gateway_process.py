"""Start real gateway processes (``manage.py rungateway``) on loopback ports for the tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The ASGI server of every gateway the tests start, unless one asks for another:
# RHGW_TEST_SERVER=daphne runs the live tests under ``rungateway --server daphne``
# (scripts/test.sh runs tests/live a second time so); the default is rungateway's, uvicorn.
DEFAULT_SERVER = os.environ.get("RHGW_TEST_SERVER", "uvicorn")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"gateway did not listen on {port} within {timeout}s")


def migrated_database(directory: Path) -> Path:
    """An SQLite database with all migrations applied (made once, then copied)."""
    template = directory / "template.sqlite3"
    if not template.exists():
        env = {
            **os.environ,
            "RHGW_DB_PATH": str(template),
            "DJANGO_SETTINGS_MODULE": "project.settings",
        }
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=ROOT,
            env=env,
            check=True,
        )
    return template


@dataclass
class Gateway:
    """One running gateway process."""

    port: int
    db_path: Path
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    settings: dict[str, str] = field(default_factory=dict)
    server: str = DEFAULT_SERVER  # rungateway --server: daphne or uvicorn

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def service_url(self) -> str:
        return self.url + "/reversehttp"

    def start(self) -> Gateway:
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed with the process)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "rungateway",
                f"127.0.0.1:{self.port}",
                "--no-static",
                "--server",
                self.server,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for_port(self.port, self.process)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        """Signal the process we started (by PID) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def make_gateway(
    tmp: Path,
    template: Path,
    *,
    db_path: Path | None = None,
    server: str | None = None,
    **settings: str,
) -> Gateway:
    """A gateway (not yet started) whose issued URLs point at its own loopback port.

    ``server``: ``rungateway --server`` (default ``RHGW_TEST_SERVER`` or uvicorn).
    """
    port = free_port()
    if db_path is None:
        db_path = tmp / f"gateway-{port}.sqlite3"
        shutil.copy(template, db_path)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "RHGW_DB_PATH": str(db_path),
        "RHGW_BASE_URL": f"http://127.0.0.1:{port}",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({f"RHGW_{name}": str(value) for name, value in settings.items()})
    return Gateway(
        port,
        db_path,
        env,
        tmp / f"gateway-{port}.log",
        settings=settings,
        server=server or DEFAULT_SERVER,
    )
