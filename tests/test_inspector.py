"""Request inspector, audit log and dashboard without a gateway process (issue 7, issue 6).

Capture and the bounded queue (``inspector.py``), writing and pruning ``RequestLog`` rows, the
private status page, replay from the admin through a ``MemoryBroker`` on a loop in a thread,
the audit events of admin actions, revivals and expiries, the dashboard's rolling window,
gauges, view and WebSocket consumer. Live behaviour is in ``tests/live/test_inspector.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from reversehttp_gateway import capabilities, credentials, dashboard, events, inspector, registry
from reversehttp_gateway.leases import _save
from reversehttp_gateway.models import AccessToken, AuditEvent, Registration, RequestLog
from reversehttp_gateway.protocol.embedded_request import build_embedded_request
from reversehttp_gateway.queue.base import PublicRequest, Reply, now
from reversehttp_gateway.queue.memory import MemoryBroker
from reversehttp_gateway.runtime import runtime

Action = AuditEvent.Action


def gateway_settings(**values: Any) -> Any:
    from django.conf import settings

    return override_settings(REVERSEHTTP_GATEWAY={**settings.REVERSEHTTP_GATEWAY, **values})


def relay_record(
    label: str = "app",
    *,
    method: str = "POST",
    target: str = "/app/x?y=1",
    body: bytes = b"hello body",
    headers: list[tuple[bytes, bytes]] | None = None,
    status: int = 200,
    transport: str = "longpoll",
    started_at: float | None = None,
    response_body: bytes = b"response body",
) -> events.RelayRecord:
    envelope = build_embedded_request(
        method=method,
        target=target.encode(),
        http_version="1.1",
        headers=headers or [(b"host", b"gw.example"), (b"authorization", b"Bearer s3cret")],
        body=body,
        default_host=b"gw.example",
    )
    return events.RelayRecord(
        label=label,
        method=method,
        target=target,
        status=status,
        transport=transport,
        started_at=time.time() if started_at is None else started_at,
        duration=0.0123,
        requesting_client="192.0.2.1:5555",
        request_bytes=len(body),
        response_bytes=len(response_body),
        request_envelope=envelope,
        response_headers=[(b"content-type", b"text/plain"), (b"set-cookie", b"sid=abc")],
        response_body=response_body,
    )


def make_registration(label: str, **fields: Any) -> Registration:
    values: dict[str, Any] = {
        "nonce": capabilities.new_nonce(),
        "token_digest": credentials.digest("t"),
        "lease_seconds": 90,
        "expires_at": timezone.now() + timedelta(seconds=90),
    }
    values.update(fields)
    return Registration.objects.create(label=label, **values)


def log_row(label: str = "app", at: datetime | None = None, **fields: Any) -> RequestLog:
    values: dict[str, Any] = {
        "started_at": at or timezone.now(),
        "method": "GET",
        "target": f"/{label}/",
        "status": 200,
        "transport": "longpoll",
        "duration_ms": 1.5,
        "request_head": f"GET /{label}/ HTTP/1.1\r\nHost: gw.example",
    }
    values.update(fields)
    return RequestLog.objects.create(label=label, **values)


# Capture: cheap, bounded ---------------------------------------------------------------------


def test_capture_keeps_the_head_and_bodies_only_when_asked():
    record = relay_record(body=b"0123456789")
    plain = inspector.capture(record, bodies=False, limit=4)
    assert plain.head.startswith(b"POST /app/x?y=1 HTTP/1.1\r\nHost: gw.example")
    assert b"\r\n\r\n" not in plain.head and b"0123" not in plain.head
    assert plain.body is None and plain.response_body is None
    assert not plain.head_truncated
    full = inspector.capture(record, bodies=True, limit=4)
    assert full.body == b"0123"
    assert full.response_body == b"resp"


def test_capture_cuts_huge_heads():
    record = relay_record(headers=[(b"x-big", b"a" * (inspector.HEAD_LIMIT + 10))])
    captured = inspector.capture(record, bodies=False, limit=10)
    assert captured.head_truncated
    assert len(captured.head) == inspector.HEAD_LIMIT


def test_pending_log_drops_and_counts_when_full():
    queue = inspector.PendingLog(capacity=2)
    for _ in range(5):
        queue.observe(relay_record())
    assert len(queue) == 2
    assert queue.dropped == 3
    batch = queue.take(10)
    assert len(batch) == 2 and len(queue) == 0
    queue.observe(relay_record(label="later"))
    queue.put_back(batch)  # room for one: the oldest of the batch goes back first
    assert [item.label for item in queue.take(10)] == ["app", "later"]
    assert queue.dropped == 4


def test_pending_log_ignores_labels_nobody_registered():
    queue = inspector.PendingLog()
    queue.observe(relay_record(status=404, transport="gateway"))
    queue.observe(relay_record(status=404, transport="longpoll"))  # the application's 404
    assert len(queue) == 1


# Writing and pruning ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_write_stores_rows_with_redacted_credentials():
    record = relay_record(started_at=1_700_000_000.25)
    assert inspector.write([inspector.capture(record, bodies=True, limit=100)]) == 1
    row = RequestLog.objects.get()
    assert row.label == "app" and row.method == "POST" and row.target == "/app/x?y=1"
    assert row.status == 200 and row.transport == "longpoll"
    assert row.started_at == datetime.fromtimestamp(1_700_000_000.25, tz=UTC)
    assert row.duration_ms == pytest.approx(12.3)
    assert row.request_bytes == 10 and row.response_bytes == 13
    assert row.requesting_client == "192.0.2.1:5555"
    assert "Authorization: [redacted]" in row.request_head
    assert "s3cret" not in row.request_head
    assert "Content-Length: 10" in row.request_head
    assert bytes(row.request_body) == b"hello body"
    assert row.response_headers == "Content-Type: text/plain\nSet-Cookie: [redacted]"
    assert bytes(row.response_body) == b"response body"
    assert row.body_complete


@pytest.mark.django_db
def test_write_inserts_batches_larger_than_one_statement():
    items = [inspector.capture(relay_record(), bodies=False, limit=0)] * 1201
    assert inspector.write(items) == 1201 and inspector.write([]) == 0
    assert RequestLog.objects.count() == 1201


@pytest.mark.django_db
def test_write_lets_go_of_the_gil_while_it_prepares_rows(monkeypatch):
    """The writer thread yields every YIELD_EVERY rows and before every INSERT: holding the
    GIL through a second's rows kept the event loop waiting 5 ms at a time (p99 doubled)."""
    yields = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        yields.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(inspector.time, "sleep", sleep)
    items = [inspector.capture(relay_record(), bodies=False, limit=0)] * 250
    assert inspector.write(items) == 250 and RequestLog.objects.count() == 250
    inserts = -(-250 // inspector.BATCH_SIZE)
    assert yields == [0] * (250 // inspector.YIELD_EVERY + inserts)


@pytest.mark.django_db
def test_write_keeps_credentials_when_redaction_is_off():
    with gateway_settings(INSPECTOR_REDACT_HEADERS=[]):
        inspector.write([inspector.capture(relay_record(), bodies=False, limit=0)])
    row = RequestLog.objects.get()
    assert "Authorization: Bearer s3cret" in row.request_head
    assert "Set-Cookie: sid=abc" in row.response_headers
    assert row.request_body is None and not row.body_complete


@pytest.mark.django_db
def test_prune_by_age_and_count_per_label():
    moment = timezone.now()
    old = log_row("a", moment - timedelta(days=8))
    for i in range(5):
        log_row("a", moment - timedelta(minutes=i))
    for i in range(2):
        log_row("b", moment - timedelta(minutes=i))
    with gateway_settings(INSPECTOR_RETENTION=7 * 86400, INSPECTOR_MAX_PER_LABEL=3):
        assert inspector.prune(moment=moment) == 3  # the old one, then the 2 oldest of "a"
    assert not RequestLog.objects.filter(pk=old.pk).exists()
    newest_a = RequestLog.objects.filter(label="a").order_by("-started_at")
    assert [r.started_at for r in newest_a] == [moment - timedelta(minutes=i) for i in range(3)]
    assert RequestLog.objects.filter(label="b").count() == 2


@pytest.mark.django_db
def test_prune_checks_only_the_labels_written_since_the_last_pass():
    for _ in range(4):
        log_row("a")
        log_row("b")
    with gateway_settings(INSPECTOR_MAX_PER_LABEL=2):
        assert inspector.prune(["a"]) == 2
    assert RequestLog.objects.filter(label="a").count() == 2
    assert RequestLog.objects.filter(label="b").count() == 4


@pytest.mark.django_db
def test_prune_keeps_the_newest_of_rows_started_at_the_same_moment():
    moment = timezone.now()
    rows = [log_row("a", moment) for _ in range(4)]
    with gateway_settings(INSPECTOR_MAX_PER_LABEL=2):
        inspector.prune(moment=moment)
    assert set(RequestLog.objects.values_list("pk", flat=True)) == {rows[2].pk, rows[3].pk}


@pytest.mark.django_db
def test_prune_removes_old_audit_events_unless_kept_forever():
    old = AuditEvent.record(Action.REGISTERED, label="a")
    AuditEvent.objects.filter(pk=old.pk).update(at=timezone.now() - timedelta(days=91))
    AuditEvent.record(Action.REGISTERED, label="b")
    with gateway_settings(AUDIT_RETENTION=None):
        inspector.prune()
    assert AuditEvent.objects.count() == 2
    inspector.prune()  # default: 90 days
    assert list(AuditEvent.objects.values_list("label", flat=True)) == ["b"]


@pytest.mark.django_db(transaction=True)
async def test_flush_writes_the_queue_off_the_loop():
    queue = inspector.PendingLog()
    for i in range(3):
        queue.observe(relay_record(target=f"/app/{i}"))
    assert await inspector.flush(queue) == {"app"}
    assert len(queue) == 0
    count = await RequestLog.objects.acount()
    assert count == 3


# The private URL's HTML page -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_status_page_lists_recent_requests_escaped():
    broker = MemoryBroker()
    await RequestLog.objects.acreate(
        label="app",
        started_at=timezone.now(),
        method="GET",
        target="/app/<script>alert(1)</script>",
        status=502,
        transport="gateway",
        duration_ms=3.24,
    )
    state = {
        "name": "app",
        "lease": 90,
        "status": "active",
        "public_url": "http://gw.example/app/",
        "pollers_waiting": False,
        "expires_at": "",
    }
    await broker.activate("app.n1", "app")
    await broker.enqueue("app.n1", PublicRequest(b"GET / HTTP/1.1\r\n\r\n", "1.2.3.4:5", "GET", 0))
    page = await inspector.status_page(broker, "app.n1", state)
    assert "Registration <code>app</code>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "3.2 ms" in page and ">502<" in page
    assert '<div class="value">1</div><div class="name">requests queued' in page


# Replay ------------------------------------------------------------------------------------------


def test_rebuild_envelope_sends_the_stored_request_again():
    log = RequestLog(
        label="app",
        method="POST",
        target="/app/p?q",
        request_head="POST /app/p?q HTTP/1.1\r\nHost: gw.example\r\nAuthorization: [redacted]\r\n"
        "X-Dup: 1\r\nX-Dup: 2\r\nContent-Length: 4",
        request_body=b"data",
        request_bytes=4,
    )
    envelope, left_out = inspector.rebuild_envelope(log)
    assert envelope == (
        b"POST /app/p?q HTTP/1.1\r\nHost: gw.example\r\nX-Dup: 1\r\nX-Dup: 2\r\n"
        b"Content-Length: 4\r\n\r\ndata"
    )
    assert left_out == ["Authorization"]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"request_head": ""}, "never reached"),
        ({"request_head_truncated": True}, "too large"),
        ({"request_bytes": 10, "request_body": None}, "INSPECTOR_CAPTURE_BODIES"),
        ({"request_bytes": 10, "request_body": b"cut"}, "INSPECTOR_BODY_LIMIT"),
    ],
)
def test_rebuild_envelope_refuses_incomplete_requests(fields, reason):
    values = {"label": "app", "method": "GET", "target": "/app/", "request_bytes": 0}
    values["request_head"] = "GET /app/ HTTP/1.1\r\nHost: gw.example"
    values.update(fields)
    with pytest.raises(inspector.ReplayRefused, match=reason):
        inspector.rebuild_envelope(RequestLog(**values))


@pytest.fixture
def serving_broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[MemoryBroker, Any]]:
    """A MemoryBroker on an event loop in a thread, installed as this process's runtime."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    broker = MemoryBroker()

    def run(coroutine: Any, timeout: float = 5) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

    monkeypatch.setattr(runtime, "_loop", loop)
    monkeypatch.setattr(runtime, "_broker", broker)
    yield broker, run
    run(broker.close())
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def answer_one(broker: MemoryBroker, key: str, status: int, body: bytes) -> Any:
    """An application on the broker's loop: takes one request and answers it."""
    seen: dict[str, bytes] = {}

    async def app() -> None:
        taken = await broker.take(key, 10, asyncio.Event())
        assert taken is not None
        seen["envelope"] = taken.request.envelope
        seen["client"] = taken.request.requesting_client.encode()
        reply = Reply(status, [(b"content-type", b"text/plain")], body, via="longpoll")
        await broker.route_reply(taken.request, reply)

    loop = runtime._loop
    assert loop is not None
    return asyncio.run_coroutine_threadsafe(app(), loop), seen


def run_action(client: Client, ids: list[int], action: str = "replay_to_application") -> Any:
    url = reverse("admin:reversehttp_gateway_requestlog_changelist")
    return client.post(url, {"action": action, "_selected_action": ids}, follow=True)


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


@pytest.mark.django_db
def test_replay_action_sends_the_request_again_and_logs_the_answer(
    admin_client: Client, admin_user: Any, serving_broker: Any
):
    broker, run = serving_broker
    run(broker.activate("app.n1", "app"))
    log = log_row(
        "app",
        method="PUT",
        target="/app/item?v=2",
        request_head="PUT /app/item?v=2 HTTP/1.1\r\nHost: gw.example\r\nContent-Length: 3",
        request_body=b"abc",
        request_bytes=3,
        requesting_client="198.51.100.7:4000",
    )
    app, seen = answer_one(broker, "app.n1", 201, b"made again")
    response = run_action(admin_client, [log.pk])
    app.result(5)
    assert seen["envelope"] == (
        b"PUT /app/item?v=2 HTTP/1.1\r\nHost: gw.example\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert seen["client"] == b"198.51.100.7:4000"
    texts = messages_of(response)
    assert any("Replayed PUT /app/item?v=2 to “app”: 201 Created" in t for t in texts), texts
    replayed = RequestLog.objects.get(transport="replay")
    assert replayed.status == 201 and replayed.label == "app" and replayed.target == log.target
    assert replayed.response_bytes == len(b"made again")
    assert replayed.response_body is None  # INSPECTOR_CAPTURE_BODIES is off
    event = AuditEvent.objects.get(action=Action.REPLAYED)
    assert event.actor == admin_user
    assert event.detail["request_log"] == log.pk and event.detail["status"] == 201


@pytest.mark.django_db
def test_replay_action_refuses_what_it_cannot_send(admin_client: Client, serving_broker: Any):
    broker, run = serving_broker
    without_body = log_row("app", method="POST", request_bytes=5, request_body=None)
    unregistered = log_row("gone")
    response = run_action(admin_client, [without_body.pk, unregistered.pk])
    texts = messages_of(response)
    assert any("Not replayed" in t and "INSPECTOR_CAPTURE_BODIES" in t for t in texts), texts
    assert any("no application is registered at “gone”" in t for t in texts), texts
    assert not RequestLog.objects.filter(transport="replay").exists()


@pytest.mark.django_db
def test_replay_needs_a_gateway_loop_in_the_admin_process(admin_client: Client):
    log = log_row("app")
    texts = messages_of(run_action(admin_client, [log.pk]))
    assert any("no gateway loop runs in this admin process" in t for t in texts), texts


@pytest.mark.django_db
def test_replay_action_is_for_users_with_the_replay_permission(client: Client):
    from django.contrib.auth.models import Permission, User

    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_requestlog"))
    client.force_login(viewer)
    url = reverse("admin:reversehttp_gateway_requestlog_changelist")
    response = client.get(url)
    assert response.status_code == 200
    form = response.context["action_form"]
    assert form is None or "replay_to_application" not in dict(form.fields["action"].choices)


# Admin pages ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_request_log_admin_is_read_only_with_filters_and_search(admin_client: Client):
    ok = log_row("alpha", status=200)
    failed = log_row(
        "beta", status=503, transport="gateway", request_body=b"\x00\xff", request_bytes=2
    )
    changelist = reverse("admin:reversehttp_gateway_requestlog_changelist")
    for query, expected in [
        ("", {ok.pk, failed.pk}),
        ("status_class=5", {failed.pk}),
        ("transport=gateway", {failed.pk}),
        ("label=alpha", {ok.pk}),
        ("q=beta", {failed.pk}),
        (f"started_at__year={timezone.now().year}", {ok.pk, failed.pk}),
    ]:
        response = admin_client.get(changelist + "?" + query)
        assert response.status_code == 200, query
        assert {r.pk for r in response.context["cl"].result_list} == expected, query
    page = admin_client.get(
        reverse("admin:reversehttp_gateway_requestlog_change", args=[failed.pk])
    )
    assert page.status_code == 200
    content = page.content.decode()
    assert "GET /beta/ HTTP/1.1" in content
    assert "2 bytes of binary data: 00 ff" in content
    assert 'name="label"' not in content  # read-only
    add = admin_client.get(reverse("admin:reversehttp_gateway_requestlog_add"))
    assert add.status_code == 403


@pytest.mark.django_db
def test_registration_list_links_to_its_request_log(admin_client: Client):
    make_registration("alpha")
    content = admin_client.get(reverse("admin:reversehttp_gateway_registration_changelist"))
    link = reverse("admin:reversehttp_gateway_requestlog_changelist") + "?label=alpha"
    assert link in content.content.decode()


@pytest.mark.django_db
def test_audit_admin_is_read_only(admin_client: Client):
    event = AuditEvent.record(Action.REGISTERED, label="alpha", actor_ip="192.0.2.9", lease=90)
    changelist = reverse("admin:reversehttp_gateway_auditevent_changelist")
    response = admin_client.get(changelist + "?action=registered&q=alpha")
    assert response.status_code == 200
    assert [e.pk for e in response.context["cl"].result_list] == [event.pk]
    assert "lease=90" in response.content.decode()
    assert response.context["action_form"] is None  # no actions, not even delete
    change = reverse("admin:reversehttp_gateway_auditevent_change", args=[event.pk])
    assert admin_client.get(change).status_code == 200
    assert admin_client.post(change, {"label": "x"}).status_code == 403
    delete = reverse("admin:reversehttp_gateway_auditevent_delete", args=[event.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert admin_client.get(reverse("admin:reversehttp_gateway_auditevent_add")).status_code == 403


# Audit events -----------------------------------------------------------------------------------


def admin_action(client: Client, model: str, action: str, ids: list[int], **extra: str) -> Any:
    url = reverse(f"admin:reversehttp_gateway_{model}_changelist")
    data: dict[str, Any] = {"action": action, "_selected_action": ids, **extra}
    return client.post(url, data, follow=True, REMOTE_ADDR="203.0.113.5")


@pytest.mark.django_db(transaction=True)
def test_admin_actions_are_audited(admin_client: Client, admin_user: Any):
    live = make_registration("live")
    old = make_registration("old", status=Registration.Status.EXPIRED)
    doomed = make_registration("doomed")
    admin_action(admin_client, "registration", "expire_now", [live.pk])
    admin_action(admin_client, "registration", "extend_lease", [old.pk])
    admin_action(admin_client, "registration", "delete_selected", [doomed.pk], post="yes")
    events_by_action = {e.action: e for e in AuditEvent.objects.all()}
    assert set(events_by_action) == {
        Action.ADMIN_EXPIRED,
        Action.LEASE_EXTENDED,
        Action.ADMIN_DELETED,
    }
    assert events_by_action[Action.ADMIN_EXPIRED].label == "live"
    assert events_by_action[Action.LEASE_EXTENDED].detail == {"lease": 86400, "revived": True}
    assert events_by_action[Action.ADMIN_DELETED].label == "doomed"
    for event in events_by_action.values():
        assert event.actor == admin_user
        assert event.actor_ip == "203.0.113.5"


@pytest.mark.django_db
def test_token_lifecycle_is_audited_without_the_token(admin_client: Client):
    response = admin_client.post(
        reverse("admin:reversehttp_gateway_accesstoken_add"),
        {"name": "ci", "owner": "", "label_patterns": "", "expires_at_0": "", "expires_at_1": ""},
        follow=True,
    )
    token = next(str(m) for m in response.context["messages"] if "copy it now" in str(m))
    secret = token.split("is: ", 1)[1].split(" ", 1)[0]
    access = AccessToken.objects.get()
    admin_action(admin_client, "accesstoken", "revoke", [access.pk])
    admin_action(admin_client, "accesstoken", "delete_selected", [access.pk], post="yes")
    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    assert actions == [Action.TOKEN_CREATED, Action.TOKEN_REVOKED, Action.TOKEN_DELETED]
    for event in AuditEvent.objects.all():
        assert event.detail["name"] == "ci" and event.detail["prefix"] == secret[:8]
        assert secret not in str(event.detail)


@pytest.mark.django_db
def test_claims_are_audited(admin_client: Client, admin_user: Any):
    admin_client.post(
        reverse("admin:reversehttp_gateway_labelclaim_add"),
        {"pattern": "Team-*", "owner": str(admin_user.pk), "access_token": "", "note": ""},
    )
    event = AuditEvent.objects.get()
    assert (event.action, event.label) == (Action.CLAIM_CREATED, "team-*")


@pytest.mark.django_db(transaction=True)
async def test_a_revival_is_audited_once():
    await Registration.objects.acreate(
        label="back",
        nonce="n" * 32,
        token_digest="x",
        lease_seconds=60,
        status=Registration.Status.EXPIRED,
    )
    secret = capabilities.registration_secret("back", "n" * 32)
    from asgiref.sync import sync_to_async

    revived = await sync_to_async(registry.revive)("back", secret)
    assert revived is not None and revived.revived_since_loaded
    await revived.arecord_revival()
    await revived.arecord_revival()  # once per revival
    live = await sync_to_async(registry.revive)("back", secret)  # active already: no event
    await live.arecord_revival()
    events_ = [e async for e in AuditEvent.objects.all()]
    assert [(e.action, e.label) for e in events_] == [(Action.REVIVED, "back")]


@pytest.mark.django_db
def test_the_lease_keeper_audits_expiries():
    registration = make_registration("dormant")
    registration.expires_at = timezone.now()
    assert _save([], [registration]) == [registration]
    assert _save([], [registration]) == []  # another process already expired it
    event = AuditEvent.objects.get()
    assert (event.action, event.label, event.detail) == (Action.EXPIRED, "dormant", {"lease": 90})
    assert event.actor is None


# Dashboard ----------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_traffic_window_counts_rates_and_errors():
    clock = FakeClock()
    window = dashboard.TrafficWindow(window=60, clock=clock)
    for status in (200, 200, 502, 404):
        window.observe(relay_record(status=status))
    window.observe(relay_record(label="ghost", status=404, transport="gateway"))  # not registered
    clock.now += 30
    window.observe(relay_record(status=200))
    stats = window.stats("app")
    assert stats["requests"] == 5 and stats["errors"] == 1
    assert stats["error_rate"] == pytest.approx(0.2)
    assert stats["rps"] == pytest.approx(0.1)  # 1 request in the last 10 s
    assert stats["mean_ms"] == pytest.approx(12.3)
    assert window.labels() == {"app"}
    clock.now += 45  # the first 4 left the window; totals stay
    stats = window.stats("app")
    assert (stats["requests"], stats["total"], stats["total_errors"]) == (1, 5, 1)
    clock.now += 60
    window.forget(keep=["other"])
    assert window.labels() == set()


async def test_queue_gauges_of_the_memory_broker():
    broker = MemoryBroker()
    await broker.activate("app.n1", "app")
    for _ in range(2):
        await broker.enqueue(
            "app.n1", PublicRequest(b"GET / HTTP/1.1\r\n\r\n", "c", "GET", now() + 9)
        )
    gauges = await dashboard.queue_gauges(broker, ["app.n1", "other.n2"])
    assert gauges["app.n1"] == dashboard.QueueGauge(pollers=0, queue_depth=2, in_flight=0)
    assert gauges["other.n2"].queue_depth == 0


async def test_queue_gauges_of_the_redis_broker(redis_url: str):
    from reversehttp_gateway.queue.redis_broker import RedisBroker

    broker = RedisBroker(redis_url, f"t{time.time_ns()}")
    await broker.start()
    try:
        await broker.activate("app.n1", "app")
        await broker.enqueue(
            "app.n1", PublicRequest(b"GET / HTTP/1.1\r\n\r\n", "c", "GET", now() + 9)
        )
        gauges = await dashboard.queue_gauges(broker, ["app.n1"])
        assert gauges["app.n1"] == dashboard.QueueGauge(pollers=0, queue_depth=1, in_flight=0)
    finally:
        await broker.deactivate("app.n1", "app")
        await broker.close()


async def test_snapshot_joins_broker_state_and_traffic():
    broker = MemoryBroker()
    await broker.activate("app.n1", "app")
    window = dashboard.TrafficWindow()
    window.observe(relay_record(label="app", status=504))
    window.observe(relay_record(label="gone", status=200))
    data = await dashboard.snapshot(broker, window)
    rows = {row["label"]: row for row in data["labels"]}
    assert set(rows) == {"app", "gone"}
    assert rows["app"]["registered"] and not rows["gone"]["registered"]
    assert rows["app"]["queue_depth"] == 0 and rows["gone"]["queue_depth"] is None
    assert rows["app"]["errors"] == 1
    assert data["totals"]["registrations"] == 1
    assert data["totals"]["requests"] == 2 and data["totals"]["error_rate"] == 0.5


@pytest.mark.django_db
def test_dashboard_page_is_for_staff(client: Client, admin_client: Client):
    url = reverse("reversehttp_gateway:dashboard")
    assert url == "/gateway/dashboard/"
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    page = admin_client.get(url)
    assert page.status_code == 200
    assert b"Live dashboard" in page.content and b'new URL("ws/"' in page.content


@pytest.mark.django_db
def test_gateway_status_shows_queue_gauges(admin_client: Client, serving_broker: Any):
    broker, run = serving_broker
    registration = make_registration("alpha")
    run(broker.activate(registration.broker_key, "alpha"))
    request = PublicRequest(b"GET / HTTP/1.1\r\n\r\n", "c", "GET", now() + 9)
    run(broker.enqueue(registration.broker_key, request))
    data = admin_client.get("/reversehttp", HTTP_ACCEPT="application/json").json()
    row = data["registrations"][0]
    assert (row["pollers"], row["queue_depth"], row["in_flight"]) == (0, 1, 0)
    assert data["queued"] == 1
    html = admin_client.get("/reversehttp").content.decode()
    assert "Pollers here" in html and "alpha" in html


@pytest.mark.django_db
def test_gateway_status_without_a_gateway_loop_shows_unknown_gauges(admin_client: Client):
    make_registration("alpha")
    row = admin_client.get("/reversehttp", HTTP_ACCEPT="application/json").json()["registrations"][
        0
    ]
    assert row["queue_depth"] is None


@pytest.fixture
def dashboard_broker(monkeypatch: pytest.MonkeyPatch) -> MemoryBroker:
    broker = MemoryBroker()

    async def started() -> MemoryBroker:
        return broker

    monkeypatch.setattr(runtime, "ensure_started", started)
    return broker


# Channels closes old connections before every handler: the consumer tests need the database.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "user",
    [
        None,
        SimpleNamespace(is_active=True, is_staff=False),
        SimpleNamespace(is_active=False, is_staff=True),
    ],
)
async def test_dashboard_websocket_refuses_non_staff(user: Any, dashboard_broker: MemoryBroker):
    communicator = WebsocketCommunicator(
        dashboard.DashboardConsumer.as_asgi(), "/gateway/dashboard/ws/"
    )
    if user is not None:
        communicator.scope["user"] = user
    connected, code = await communicator.connect()
    assert not connected
    assert code == 4403
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_dashboard_websocket_pushes_snapshots_to_staff(dashboard_broker: MemoryBroker):
    await dashboard_broker.activate("app.n1", "app")
    communicator = WebsocketCommunicator(
        dashboard.DashboardConsumer.as_asgi(), "/gateway/dashboard/ws/"
    )
    communicator.scope["user"] = SimpleNamespace(is_active=True, is_staff=True)
    connected, _ = await communicator.connect()
    assert connected
    first = await communicator.receive_json_from(timeout=3)
    assert first["totals"]["registrations"] == 1
    assert first["labels"][0]["label"] == "app"
    second = await communicator.receive_json_from(timeout=3)
    assert second["at"] > first["at"]
    await communicator.disconnect()
