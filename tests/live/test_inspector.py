"""The request inspector and the audit log on a live gateway (issue 7, issue 6).

Each test relays real requests through a ``rungateway`` process and reads the gateway's SQLite
database directly (read-only), as an operator's SQL would: rows are written by the gateway's
background writer about once a second, so every check waits for them with a deadline.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from ..gateway_process import ROOT, Gateway
from ..rh import Registered, envelope, register, unique_label

pytestmark = pytest.mark.asyncio

WAIT = 8.0  # seconds a row may take to appear (written every second)


def query(gw: Gateway, sql: str, *params: Any) -> list[sqlite3.Row]:
    """Rows from the gateway's database, opened read-only."""
    connection = sqlite3.connect(f"file:{gw.db_path}?mode=ro", uri=True, timeout=10)
    connection.row_factory = sqlite3.Row
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def logged(gw: Gateway, label: str) -> list[sqlite3.Row]:
    return query(
        gw,
        "SELECT * FROM reversehttp_gateway_requestlog WHERE label = ? ORDER BY started_at, id",
        label,
    )


def audited(gw: Gateway, label: str) -> list[str]:
    rows = query(
        gw, "SELECT action FROM reversehttp_gateway_auditevent WHERE label = ? ORDER BY id", label
    )
    return [row["action"] for row in rows]


async def eventually(check: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.1)


async def serve(
    client: httpx.AsyncClient, reg: Registered, count: int, reply: bytes | None = None
) -> list[bytes]:
    """An application: answers ``count`` requests on ``reg``; returns what it received."""
    received: list[bytes] = []
    while len(received) < count:
        poll = await client.get(reg.first)
        if poll.status_code == 204:
            continue
        assert poll.status_code == 200, poll.text
        received.append(poll.content)
        answer = reply or envelope(
            "HTTP/1.1 201 Created", {"Content-Type": "text/plain", "X-App": "yes"}, b"made"
        )
        assert (await client.post(reg.first, content=answer)).status_code == 202
    return received


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=20) as c:
        yield c


async def relay_through(
    client: httpx.AsyncClient, reg: Registered, send: Callable[[], Awaitable[httpx.Response]]
) -> tuple[httpx.Response, bytes]:
    app = asyncio.ensure_future(serve(client, reg, 1))
    response = await send()
    received = await app
    return response, received[0]


async def test_a_relayed_request_is_logged(gateway, client):
    """One row per public request: method, raw target, status, transport, sizes, head."""
    name = unique_label("i")
    reg = await register(client, gateway.service_url, name)
    response, _ = await relay_through(
        client, reg, lambda: client.get(reg.public + "path?q=%20x", headers={"X-Trace": "t1"})
    )
    assert response.status_code == 201
    rows = await eventually(lambda: logged(gateway, name), what="the request log row")
    assert len(rows) == 1
    row = rows[0]
    assert (row["method"], row["target"], row["status"]) == ("GET", f"/{name}/path?q=%20x", 201)
    assert row["transport"] == "longpoll"
    assert (row["request_bytes"], row["response_bytes"]) == (0, 4)
    assert re.fullmatch(r"127\.0\.0\.1:\d+", row["requesting_client"])
    assert row["duration_ms"] > 0
    assert row["request_head"].startswith(f"GET /{name}/path?q=%20x HTTP/1.1\r\n")
    assert "X-Trace: t1" in row["request_head"]
    assert row["request_body"] is None and row["response_body"] is None  # bodies are off
    assert "X-App: yes" in row["response_headers"]


async def test_gateway_answers_are_logged_but_unknown_labels_are_not(gateway, client):
    """A 504 with no application polling is logged; a 404 for a label nobody has is not."""
    name = unique_label("i")
    await register(client, gateway.service_url, name)
    assert (await client.get(f"{gateway.url}/{name}/nobody-polls")).status_code == 504
    ghost = unique_label("ghost")
    assert (await client.get(f"{gateway.url}/{ghost}/")).status_code == 404
    rows = await eventually(lambda: logged(gateway, name), what="the 504 row")
    assert (rows[0]["status"], rows[0]["transport"]) == (504, "gateway")
    await asyncio.sleep(1.5)  # a writer pass later: still nothing for the made-up label
    assert logged(gateway, ghost) == []


async def test_private_status_page_shows_recent_requests_and_the_queue(gateway, client):
    """RH-81 in HTML: the registration's recent requests; JSON: the queue depth."""
    name = unique_label("i")
    reg = await register(client, gateway.service_url, name)
    await relay_through(client, reg, lambda: client.get(reg.public + "shown-on-the-page"))
    await eventually(lambda: logged(gateway, name), what="the request log row")
    page = await client.get(reg.private, headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert f"/{name}/shown-on-the-page" in page.text
    assert "Recent requests" in page.text and ">201<" in page.text

    waiting = asyncio.ensure_future(client.get(reg.public + "queued"))  # no poller now
    await asyncio.sleep(0.3)
    state = (await client.get(reg.private, headers={"Accept": "application/json"})).json()
    assert state["queue_depth"] == 1
    assert state["pollers_waiting"] is False
    assert (await waiting).status_code == 504  # T1: nobody polled


async def test_bodies_are_captured_cut_and_credentials_redacted(start_gateway, client):
    """INSPECTOR_CAPTURE_BODIES with INSPECTOR_BODY_LIMIT; Authorization never stored."""
    gw = start_gateway("memory", INSPECTOR_CAPTURE_BODIES="1", INSPECTOR_BODY_LIMIT="8")
    name = unique_label("i")
    reg = await register(client, gw.service_url, name)
    reply = envelope("HTTP/1.1 200 OK", {"Set-Cookie": "sid=app-secret"}, b"response-body")
    app = asyncio.ensure_future(serve(client, reg, 1, reply))
    response = await client.post(
        reg.public + "upload",
        content=b"0123456789abcdef",
        headers={"Authorization": "Bearer very-secret", "Content-Type": "text/plain"},
    )
    delivered = (await app)[0]
    assert response.status_code == 200
    assert b"Authorization: Bearer very-secret" in delivered  # the application gets it
    row = (await eventually(lambda: logged(gw, name), what="the request log row"))[0]
    assert bytes(row["request_body"]) == b"01234567"
    assert row["request_bytes"] == 16
    assert bytes(row["response_body"]) == b"response"
    assert "Authorization: [redacted]" in row["request_head"]
    assert "very-secret" not in row["request_head"]
    assert "Set-Cookie: [redacted]" in row["response_headers"]


async def test_registration_changes_are_audited(gateway, client):
    """Register (201), refresh (204), PUT, DELETE: one audit event each, with the address."""
    name = unique_label("a")
    reg = await register(client, gateway.service_url, name)
    await register(client, gateway.service_url, name)
    assert (await client.put(reg.private, data={"lease": "120"})).status_code == 204
    assert (await client.delete(reg.private)).status_code == 204
    expected = ["registered", "refreshed", "reconfigured", "deleted"]
    await eventually(lambda: audited(gateway, name) == expected, what=f"audit events {expected}")
    rows = query(
        gateway,
        "SELECT actor_ip, actor_id, detail FROM reversehttp_gateway_auditevent WHERE label = ?",
        name,
    )
    assert {(row["actor_ip"], row["actor_id"]) for row in rows} == {("127.0.0.1", None)}
    assert '"lease": 120' in rows[2]["detail"]


async def test_expiry_and_revival_are_audited(start_gateway, client):
    """The lease keeper records "expired"; a poll on the old Request URL records "revived"."""
    gw = start_gateway("memory", MIN_LEASE="1", DEFAULT_LEASE="2", EXPIRY_INTERVAL="0.3")
    name = unique_label("a")
    reg = await register(client, gw.service_url, name, lease="1")
    await eventually(lambda: "expired" in audited(gw, name), what="the expiry event")
    assert (await client.get(reg.first)).status_code == 204  # revived, then the poll timed out
    assert audited(gw, name) == ["registered", "expired", "revived"]


async def test_old_requests_are_pruned(start_gateway, client):
    """INSPECTOR_MAX_PER_LABEL keeps the newest rows; INSPECTOR_RETENTION removes old ones."""
    gw = start_gateway("memory", INSPECTOR_MAX_PER_LABEL="2", INSPECTOR_RETENTION="5")
    name = unique_label("p")
    reg = await register(client, gw.service_url, name)
    app = asyncio.ensure_future(serve(client, reg, 4))
    for i in range(4):
        assert (await client.get(reg.public + f"r{i}")).status_code == 201
    await app
    sent = time.monotonic()
    rows = await eventually(
        lambda: (rows := logged(gw, name)) and len(rows) == 2 and rows,
        what="the per-label limit",
    )
    assert [row["target"] for row in rows] == [f"/{name}/r2", f"/{name}/r3"]
    assert time.monotonic() - sent < 5  # seen before the retention could remove them
    await eventually(lambda: not logged(gw, name), timeout=12, what="the retention")


# Replay from the admin of the live gateway ---------------------------------------------------


def make_superuser(gw: Gateway, username: str = "staff", password: str = "staff-pw") -> None:
    """Create a superuser in the gateway's database, as ``createsuperuser`` would."""
    code = (
        "import django; django.setup();"
        "from django.contrib.auth import get_user_model;"
        f"get_user_model().objects.create_superuser({username!r}, '', {password!r})"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=gw.env, check=True)


async def admin_login(
    client: httpx.AsyncClient, gw: Gateway, username: str = "staff", password: str = "staff-pw"
) -> str:
    """Log ``client`` in through /admin/login/; returns the CSRF token for later forms."""
    await client.get(gw.url + "/admin/login/")
    token = client.cookies["csrftoken"]
    response = await client.post(
        gw.url + "/admin/login/?next=/admin/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": token,
            "next": "/admin/",
        },
    )
    assert response.status_code == 302, response.text[:500]
    return client.cookies["csrftoken"]


async def test_replay_from_the_admin(start_gateway, client):
    """The admin action re-sends a logged request to the application and logs the answer."""
    gw = start_gateway("memory")
    await asyncio.to_thread(make_superuser, gw)
    name = unique_label("r")
    reg = await register(client, gw.service_url, name)
    await relay_through(client, reg, lambda: client.get(reg.public + "again?n=1"))
    original = (await eventually(lambda: logged(gw, name), what="the request log row"))[0]

    async with httpx.AsyncClient(timeout=30) as admin:
        token = await admin_login(admin, gw)
        reply = envelope("HTTP/1.1 200 OK", {"Content-Type": "text/plain"}, b"second time")
        app = asyncio.ensure_future(serve(client, reg, 1, reply))
        response = await admin.post(
            gw.url + "/admin/reversehttp_gateway/requestlog/",
            data={
                "action": "replay_to_application",
                "_selected_action": [str(original["id"])],
                "csrfmiddlewaretoken": token,
            },
            follow_redirects=True,
        )
        replayed = (await app)[0]
    assert response.status_code == 200
    assert f"Replayed GET /{name}/again?n=1 to “{name}”: 200 OK" in response.text
    assert replayed.startswith(f"GET /{name}/again?n=1 HTTP/1.1\r\n".encode())
    rows = logged(gw, name)
    assert [(row["transport"], row["status"]) for row in rows] == [
        ("longpoll", 201),
        ("replay", 200),
    ]
    events = query(
        gw,
        "SELECT a.action, u.username FROM reversehttp_gateway_auditevent a "
        "JOIN auth_user u ON u.id = a.actor_id WHERE a.label = ?",
        name,
    )
    assert [(e["action"], e["username"]) for e in events] == [("replayed", "staff")]
