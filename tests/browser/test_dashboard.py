"""The staff dashboard (``/gateway/dashboard/``) on a live gateway, in headless Chromium.

A superuser is created in the gateway's database, logs in through ``/admin/login/`` with
Playwright and opens the dashboard; relayed traffic made with httpx (a long-poll application and
public requests) must show up live, pushed over the dashboard's WebSocket. The screenshot is
checked for content (many distinct colours, the label and count in the page's text).
Anonymous and non-staff users are refused, over HTTP and over the WebSocket.

Chromium is Debian's ``/usr/bin/chromium`` driven by Playwright's Python package (installed by
``scripts/test.sh``); no browser is downloaded. Every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ..gateway_process import ROOT, Gateway, make_gateway
from ..live.test_inspector import make_superuser
from ..rh import envelope, unique_label
from .conftest import TIMEOUT_MS

SCREENSHOT_DIR = Path(__file__).resolve().parent.parent.parent / "var" / "screenshots"


@pytest.fixture
def dashboard_gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    gateway = start_gateway("memory")
    make_superuser(gateway)
    return gateway


class Application(threading.Thread):
    """A long-poll application in a thread: answers every request until stopped."""

    def __init__(self, gateway: Gateway, label: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(timeout=15)
        registered = self.client.post(gateway.service_url, data={"name": label, "token": "t"})
        assert registered.status_code == 201
        self.first = registered.headers["Link"].split(">", 1)[0].lstrip("<")
        self.public = f"{gateway.url}/{label}/"
        self.stopping = threading.Event()
        self.served = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            poll = self.client.get(self.first)
            if poll.status_code != 200:
                continue
            request_line = poll.content.split(b"\r\n", 1)[0]
            status = "500 Oops" if b"/fail " in request_line else "200 OK"
            answer = envelope(f"HTTP/1.1 {status}", {"Content-Type": "text/plain"}, b"ok")
            self.client.post(self.first, content=answer)
            self.served += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        self.client.close()


def distinct_colours(browser: Any, png: bytes) -> int:
    """How many colours a PNG shows (sampled), decoded by the browser's own canvas."""
    page = browser.new_page()
    try:
        return page.evaluate(
            """async (data) => {
              const image = new Image();
              image.src = "data:image/png;base64," + data;
              await image.decode();
              const canvas = document.createElement("canvas");
              canvas.width = image.width;
              canvas.height = image.height;
              const context = canvas.getContext("2d");
              context.drawImage(image, 0, 0);
              const pixels = context.getImageData(0, 0, image.width, image.height).data;
              const seen = new Set();
              for (let i = 0; i < pixels.length; i += 4 * 3) {
                seen.add((pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2]);
              }
              return seen.size;
            }""",
            base64.b64encode(png).decode(),
        )
    finally:
        page.close()


def test_dashboard_shows_live_traffic(browser: Any, dashboard_gateway: Gateway) -> None:
    gw = dashboard_gateway
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        page.goto(gw.url + "/gateway/dashboard/")
        assert "/admin/login/" in page.url  # staff only: log in first
        page.fill("#id_username", "staff")
        page.fill("#id_password", "staff-pw")
        page.click("input[type=submit]")
        page.wait_for_url(gw.url + "/gateway/dashboard/")
        console.clear()  # the admin's CSS is not served here (rungateway --no-static)
        page.wait_for_selector("#connection.live")

        label = unique_label("dash")
        app = Application(gw, label)
        app.start()
        try:
            with httpx.Client(timeout=15) as client:
                for i in range(6):
                    path = "fail" if i == 5 else f"page{i}"
                    client.get(app.public + path)
            page.wait_for_function(
                """label => {
                  const cell = document.querySelector(
                    `tr[data-label="${label}"] td[data-field="requests"]`);
                  return cell !== null && Number(cell.textContent) >= 6;
                }""",
                arg=label,
            )
        finally:
            app.stop()
        row = page.locator(f'tr[data-label="{label}"]')
        row_text = row.inner_text()
        assert "16.7 %" in row_text, row_text  # 1 of 6 answered 5xx
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        shot = page.screenshot(path=str(SCREENSHOT_DIR / "dashboard.png"), full_page=True)
    finally:
        context.close()
    assert distinct_colours(browser, shot) > 20, "the screenshot looks blank"
    assert not [line for line in console if line.startswith(("error", "pageerror"))], console


# Refusals ----------------------------------------------------------------------------------------


def ws_url(gw: Gateway) -> str:
    return gw.url.replace("http://", "ws://") + "/gateway/dashboard/ws/"


def session_of(gw: Gateway, username: str, *, staff: bool) -> str:
    """A logged-in session for a (new) user in the gateway's database; returns its key."""
    code = (
        "import django; django.setup();"
        "from django.contrib.auth import get_user_model, SESSION_KEY, BACKEND_SESSION_KEY,"
        " HASH_SESSION_KEY;"
        "from django.contrib.sessions.backends.db import SessionStore;"
        f"u = get_user_model().objects.create_user({username!r}, password='pw',"
        f" is_staff={staff!r});"
        "s = SessionStore();"
        "s[SESSION_KEY] = str(u.pk);"
        "s[BACKEND_SESSION_KEY] = 'django.contrib.auth.backends.ModelBackend';"
        "s[HASH_SESSION_KEY] = u.get_session_auth_hash();"
        "s.save(); print(s.session_key)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=gw.env, check=True, capture_output=True
    )
    return result.stdout.decode().strip()


def test_dashboard_page_redirects_anonymous_users_to_login(start_gateway) -> None:
    gw = start_gateway("memory")
    with httpx.Client(timeout=15) as client:
        response = client.get(gw.url + "/gateway/dashboard/")
        assert response.status_code == 302
        assert response.headers["Location"] == "/admin/login/?next=/gateway/dashboard/"
        plain = session_of(gw, "plain", staff=False)
        client.cookies.set("sessionid", plain)
        response = client.get(gw.url + "/gateway/dashboard/")
        assert response.status_code == 302


@pytest.mark.parametrize("who", ["anonymous", "non-staff"])
def test_dashboard_websocket_refuses_non_staff(start_gateway, who: str) -> None:
    gw = start_gateway("memory")
    headers = {}
    if who == "non-staff":
        headers["Cookie"] = "sessionid=" + session_of(gw, "plain", staff=False)
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(gw), origin=gw.url, additional_headers=headers, open_timeout=10)
    assert refused.value.response.status_code == 403


def test_dashboard_websocket_serves_staff(start_gateway) -> None:
    gw = start_gateway("memory")
    session = session_of(gw, "operator", staff=True)
    with connect(
        ws_url(gw), origin=gw.url, additional_headers={"Cookie": f"sessionid={session}"}
    ) as socket:
        snapshot = json.loads(socket.recv(timeout=10))
    assert snapshot["broker"] == "memory"
    assert set(snapshot["totals"]) >= {"registrations", "rps", "error_rate", "queued"}


def test_dashboard_websocket_checks_the_origin(tmp_path: Path, db_template: Path) -> None:
    """AllowedHostsOriginValidator: a page of another site cannot read the dashboard."""
    gw = make_gateway(tmp_path, db_template, BROKER="memory")
    gw.env["DJANGO_ALLOWED_HOSTS"] = "127.0.0.1,localhost"  # the example site allows "*"
    gw.start()
    try:
        session = session_of(gw, "operator", staff=True)
        cookie = {"Cookie": f"sessionid={session}"}
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(gw), origin="http://evil.example", additional_headers=cookie)
        assert refused.value.response.status_code == 403
        with connect(ws_url(gw), origin=gw.url, additional_headers=cookie) as socket:
            assert "totals" in json.loads(socket.recv(timeout=10))
    finally:
        gw.stop()
