"""The Service URL and private URLs: register, inspect, reconfigure, delete.

RH-01..RH-16 and RH-81..RH-83.

Raw ASGI: requests under ``SERVICE_PATH`` are routed here; polls and replies go on to the
long-poll transport. The ORM is used only for registration changes, never for polls or replies.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode

from django.db import DatabaseError

from . import inspector, registry
from .addresses import RegistrationAddress
from .conf import gateway_settings
from .dashboard import queue_gauges
from .http import (
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    respond,
    respond_error,
)
from .models import AuditEvent, Registration
from .queue.base import Broker
from .resolution import resolve_private_url, run_db
from .transports import jsonpoll, longpoll

logger = logging.getLogger(__name__)

FORM_LIMIT = 64 * 1024


def _form(scope: Scope, body: bytes) -> dict[str, str]:
    """Query parameters merged with the body parsed as a form, whatever its type (RH-02).

    Body parameters win over query parameters; of repeated parameters the first one counts.
    """
    params: dict[str, str] = {}
    for source in (body, scope.get("query_string", b"")):
        text = source.decode("utf-8", "replace")
        for name, value in parse_qsl(text, keep_blank_values=True):
            params.setdefault(name, value)
    return params


def _client_ip(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


async def handle(scope: Scope, receive: Receive, send: Send, broker: Broker, rest: str) -> None:
    """Dispatch a request whose path is ``SERVICE_PATH`` + ``rest``."""
    parts = [p for p in rest.split("/") if p]
    method = scope["method"]
    if not parts:
        if method == "POST":
            await register(scope, receive, send, broker)
        else:
            await respond_error(send, 405, "Method not allowed", headers=[(b"allow", b"POST")])
        return
    if parts[0] != "r" or len(parts) not in (3, 4):
        await respond_error(send, 404, "Not found")
        return
    label, secret = parts[1].lower(), parts[2]
    if len(parts) == 3:
        await private(scope, receive, send, broker, label, secret)
        return
    if parts[3] == "json":
        if method != "POST":
            await respond_error(send, 405, "Method not allowed", headers=[(b"allow", b"POST")])
            return
        address = await resolve_private_url(broker, label, secret)
        if address is None:
            await respond_error(send, 404, "No such registration")
            return
        await jsonpoll.json_poll(scope, receive, send, broker, address)
        return
    if method == "POST":
        await longpoll.reply(scope, receive, send, broker, parts[3], (label, secret))
        return
    if method not in ("GET", "HEAD"):
        await respond_error(send, 405, "Method not allowed", headers=[(b"allow", b"GET, POST")])
        return
    address = await resolve_private_url(broker, label, secret)
    if address is None:
        await respond_error(send, 404, "No such registration")
        return
    await longpoll.poll(scope, receive, send, broker, address, parts[3])


async def register(scope: Scope, receive: Receive, send: Send, broker: Broker) -> None:
    """POST to the Service URL: 201 created, 204 refreshed, 400/401/403 refused (RH-01..RH-11)."""
    try:
        body = await read_body(scope, receive, FORM_LIMIT)
    except BodyTooLarge:
        await respond_error(send, 413, "Registration form too large")
        return
    except ClientDisconnected:
        return
    client_ip = _client_ip(scope)
    # Only new registrations and refusals count: refreshes (204) are how a client gets one
    # Request URL per poller, and must not lock it out.
    bucket, limit = f"register:{client_ip}", gateway_settings.REGISTRATIONS_PER_MINUTE
    if limit > 0 and await broker.hit(bucket, 60, 0) >= limit:
        await respond_error(
            send, 429, "Too many registrations from your address; slow down", retry_after=60
        )
        return
    form = _form(scope, body)
    authorization = header(scope, b"authorization")
    try:
        enrolled = await run_db(
            registry.register,
            name=form.get("name"),
            token=form.get("token"),
            lease=form.get("lease"),
            authorization=authorization.decode("latin-1") if authorization else None,
            client_ip=_client_ip(scope),
        )
    except registry.RegistrationError as exc:
        await broker.hit(bucket, 60)
        await respond_error(send, exc.status, exc.message)
        return
    if enrolled.created:
        await broker.hit(bucket, 60)
    registration = enrolled.registration
    address = RegistrationAddress(registration.label, registration.nonce)
    await broker.activate(address.key, address.label)
    action = AuditEvent.Action.REGISTERED if enrolled.created else AuditEvent.Action.REFRESHED
    await _audit(action, scope, registration, revived=registration.revived_since_loaded)
    await respond(send, 201 if enrolled.created else 204, address.registration_headers())


def _wants(scope: Scope) -> str:
    accept = (header(scope, b"accept") or b"").decode("latin-1").lower()
    if "application/json" in accept:
        return "json"
    if "text/html" in accept:
        return "html"
    return "form"


async def private(
    scope: Scope, receive: Receive, send: Send, broker: Broker, label: str, secret: str
) -> None:
    """GET, PUT or DELETE on a private URL (RH-81..RH-83); these never revive an expired one."""
    method = scope["method"]
    registration = await run_db(registry.find, label, secret)
    if registration is None:
        await respond_error(send, 404, "No such registration")
        return
    address = RegistrationAddress(registration.label, registration.nonce)
    if method == "DELETE":
        deleted = await run_db(_delete_row, address)
        await broker.deactivate(address.key, address.label)
        if deleted:
            await _audit(AuditEvent.Action.DELETED, scope, registration)
            await respond(send, 204)
        else:
            await respond_error(send, 404, "No such registration")
        return
    if method == "POST":  # one more Request URL, for another poller (no re-registration)
        if registration.status != Registration.Status.ACTIVE:
            await respond_error(send, 404, "This registration has expired; register again")
            return
        await broker.activate(address.key, address.label)
        await respond(send, 204, address.registration_headers())
        return
    if method == "PUT":
        try:
            body = await read_body(scope, receive, FORM_LIMIT)
        except BodyTooLarge:
            await respond_error(send, 413, "Form too large")
            return
        except ClientDisconnected:
            return
        form = _form(scope, body)
        try:
            await run_db(
                registry.reconfigure, registration, token=form.get("token"), lease=form.get("lease")
            )
        except registry.RegistrationError as exc:
            await respond_error(send, exc.status, exc.message)
            return
        await broker.activate(address.key, address.label)
        await _audit(AuditEvent.Action.RECONFIGURED, scope, registration, token="token" in form)
        await respond(send, 204, address.registration_headers())
        return
    if method not in ("GET", "HEAD"):
        await respond_error(
            send, 405, "Method not allowed", headers=[(b"allow", b"GET, HEAD, POST, PUT, DELETE")]
        )
        return
    activity = (await broker.activity([address.key]))[address.key]
    state = {
        "name": registration.label,
        "lease": registration.lease_seconds,
        "status": registration.status,
        "public_url": address.public_url,
        "pollers_waiting": activity.pollers_waiting,
        "expires_at": registration.expires_at.isoformat() if registration.expires_at else "",
    }
    head = method == "HEAD"
    kind = _wants(scope)
    if kind == "json":
        state["queue_depth"] = (await queue_gauges(broker, [address.key]))[address.key].queue_depth
        body = json.dumps(state).encode()
        await respond(send, 200, [(b"content-type", b"application/json")], body, head=head)
    elif kind == "html":  # a template with the queue and the request log (inspector.py)
        page = await inspector.status_page(broker, address.key, state)
        await respond(
            send, 200, [(b"content-type", b"text/html; charset=utf-8")], page.encode(), head=head
        )
    else:
        body = urlencode(
            {k: str(v).lower() if isinstance(v, bool) else v for k, v in state.items()}
        )
        await respond(
            send,
            200,
            [(b"content-type", b"application/x-www-form-urlencoded")],
            body.encode(),
            head=head,
        )


async def _audit(action: str, scope: Scope, registration: Registration, **detail: Any) -> None:
    """Record an audit event; a database failure is logged, it does not fail the request."""
    try:
        await run_db(
            AuditEvent.record,
            action,
            label=registration.label,
            actor_ip=_client_ip(scope),
            lease=registration.lease_seconds,
            **detail,
        )
    except DatabaseError as exc:
        logger.warning("Audit event %s of %s not recorded: %s", action, registration.label, exc)


def _delete_row(address: RegistrationAddress) -> bool:
    deleted, _ = Registration.objects.filter(label=address.label, nonce=address.nonce).delete()
    return bool(deleted)
