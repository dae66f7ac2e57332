"""The lease keeper: expires dormant registrations and keeps the broker mirror in step (RH-07)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.utils import timezone

from .conf import gateway_settings
from .models import AuditEvent, Registration
from .queue.base import Broker, BrokerUnavailable

logger = logging.getLogger(__name__)


def _from_ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


def _active_registrations() -> list[Registration]:
    close_old_connections()
    return list(Registration.objects.filter(status=Registration.Status.ACTIVE))


def _still_active(keys: set[str]) -> set[str]:
    """Those of ``keys`` whose registration is active in the database right now."""
    labels = [key.split(".", 1)[0] for key in keys]
    rows = Registration.objects.filter(label__in=labels, status=Registration.Status.ACTIVE)
    return {r.broker_key for r in rows} & keys


def _save(changed: list[Registration], expired: list[Registration]) -> list[Registration]:
    Registration.objects.bulk_update(changed, ["last_poll_at", "dormant_since", "expires_at"])
    really_expired = []
    for registration in expired:
        updated = Registration.objects.filter(
            pk=registration.pk, nonce=registration.nonce, status=Registration.Status.ACTIVE
        ).update(status=Registration.Status.EXPIRED, expires_at=registration.expires_at)
        if updated:
            really_expired.append(registration)
    expired_event = AuditEvent.Action.EXPIRED
    AuditEvent.objects.bulk_create(
        AuditEvent(action=expired_event, label=r.label, detail={"lease": r.lease_seconds})
        for r in really_expired
    )
    return really_expired


async def sweep(broker: Broker) -> list[str]:
    """One pass: update lease fields, expire dormant registrations; returns the expired labels."""
    registrations = await sync_to_async(_active_registrations)()
    activity = await broker.activity([r.broker_key for r in registrations])
    now = timezone.now()
    changed: list[Registration] = []
    expired: list[Registration] = []
    for registration in registrations:
        seen = activity[registration.broker_key]
        last_poll = _from_ts(seen.last_seen) if seen.last_seen else None
        if seen.pollers_waiting:
            dormant_since, expires_at = None, None
        else:
            dormant_since = max(filter(None, (last_poll, registration.refreshed_at)))
            if registration.dormant_since and registration.dormant_since > dormant_since:
                dormant_since = registration.dormant_since
            expires_at = dormant_since + timedelta(seconds=registration.lease_seconds)
        fields = (last_poll or registration.last_poll_at, dormant_since, expires_at)
        if fields != (
            registration.last_poll_at,
            registration.dormant_since,
            registration.expires_at,
        ):
            registration.last_poll_at, registration.dormant_since, registration.expires_at = fields
            changed.append(registration)
        if expires_at is not None and expires_at <= now:
            expired.append(registration)
    expired = await sync_to_async(_save)(changed, expired)
    for registration in expired:
        logger.info("Lease of %s expired", registration.label)
        await broker.deactivate(registration.broker_key, registration.label)
    live = {r.broker_key: r.label for r in registrations if r not in expired}
    mirrored = await broker.active_keys()
    in_doubt = (mirrored - set(live)) | (set(live) - mirrored)
    active_now = await sync_to_async(_still_active)(in_doubt) if in_doubt else set()
    for key in mirrored - set(live) - active_now:  # deleted elsewhere (admin in another process)
        await broker.deactivate(key, key.split(".", 1)[0])
    for key in (set(live) - mirrored) & active_now:  # e.g. Redis restarted without persistence
        await broker.activate(key, live[key])
    await broker.housekeeping()
    return [r.label for r in expired]


async def keep_leases(broker: Broker) -> None:
    """Run ``sweep`` every ``EXPIRY_INTERVAL`` seconds until cancelled."""
    while True:
        try:
            await sweep(broker)
        except asyncio.CancelledError:
            raise
        except BrokerUnavailable as exc:
            logger.warning("Lease keeper: broker unavailable (%s)", exc)
        except Exception:
            logger.exception("Lease keeper pass failed")
        await asyncio.sleep(gateway_settings.EXPIRY_INTERVAL)
