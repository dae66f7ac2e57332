"""Persistent state: registrations, label claims, access tokens, the request log and the audit log.

The hot relay path never reads these tables; the queue keeps a mirror of what it needs (see
``docs/architecture.md``). Secrets are stored as digests only (``credentials.digest``). The
request log is written in batches by a background task (``inspector.py``), never per request.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, models
from django.utils import timezone


def label_matches(pattern: str, label: str) -> bool:
    """Whether ``label`` is covered by ``pattern`` (``*`` and ``?`` wildcards, case-insensitive)."""
    return fnmatch.fnmatchcase(label.lower(), pattern.strip().lower())


class AccessToken(models.Model):
    """A bearer token that may register labels (``Authorization: Bearer <token>``)."""

    name = models.CharField(max_length=100, help_text="What this token is for.")
    token_digest = models.CharField(max_length=64, unique=True, editable=False)
    token_prefix = models.CharField(
        max_length=8, editable=False, help_text="First characters of the token, to recognise it."
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="reversehttp_tokens",
    )
    label_patterns = models.TextField(
        blank=True,
        help_text="Labels this token may register, one pattern per line (* and ? wildcards). "
        "Empty: any label not claimed by someone else.",
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.token_prefix}…)"

    @property
    def patterns(self) -> list[str]:
        return [line.strip() for line in self.label_patterns.splitlines() if line.strip()]

    def is_usable(self, now: object = None) -> bool:
        """Not revoked and not expired."""
        moment = now or timezone.now()
        return not self.revoked and (self.expires_at is None or self.expires_at > moment)

    def allows_label(self, label: str) -> bool:
        patterns = self.patterns
        return not patterns or any(label_matches(p, label) for p in patterns)


class LabelClaim(models.Model):
    """Ownership of a label or label pattern: only its owner may register matching labels."""

    pattern = models.CharField(
        max_length=100, unique=True, help_text="A label, or a pattern with * and ? wildcards."
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="reversehttp_claims",
        help_text="Any usable access token of this user may register the claimed labels.",
    )
    access_token = models.ForeignKey(
        AccessToken,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="claims",
        help_text="Or: only this access token may register the claimed labels.",
    )
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["pattern"]

    def __str__(self) -> str:
        return self.pattern

    def covers(self, label: str) -> bool:
        return label_matches(self.pattern, label)

    def is_owned_by(self, token: AccessToken | None) -> bool:
        if token is None:
            return False
        if self.access_token_id is not None:
            return self.access_token_id == token.pk
        return self.owner_id is not None and self.owner_id == token.owner_id


class Registration(models.Model):
    """A label claimed by an application, with its lease (RH-01..RH-10).

    An expired registration keeps its row (``status=expired``) as a tombstone, so that a client
    that keeps polling its old Request URL gets it re-created while the label is free (RH-23).
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        EXPIRED = "expired", "expired"

    label = models.CharField(max_length=63, unique=True)
    nonce = models.CharField(
        max_length=32,
        unique=True,
        editable=False,
        help_text="Random per registration; the private URL's secret is an HMAC of it "
        "(never stored).",
    )
    token_digest = models.CharField(max_length=64, editable=False)
    lease_seconds = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    access_token = models.ForeignKey(
        AccessToken,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="registrations",
        help_text="The access token used to register, if any.",
    )
    registered_from = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    refreshed_at = models.DateTimeField(default=timezone.now)
    last_poll_at = models.DateTimeField(null=True, blank=True)
    dormant_since = models.DateTimeField(
        null=True, blank=True, help_text="When the last poller left; the lease counts from here."
    )
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Empty while an application is polling."
    )

    class Meta:
        ordering = ["label"]
        indexes = [models.Index(fields=["status", "expires_at"])]

    def __str__(self) -> str:
        return self.label

    @property
    def broker_key(self) -> str:
        """The key of this registration's queue (differs for every incarnation of a label)."""
        return f"{self.label}.{self.nonce}"

    @classmethod
    def from_db(cls, db: Any, field_names: Any, values: Any, **kwargs: Any) -> Registration:
        """Remember the status as loaded, so a revival can be told from a live registration.

        ``**kwargs`` passes on what newer Django versions add (``fetch_mode`` in 6.1).
        """
        instance = super().from_db(db, field_names, values, **kwargs)
        instance._loaded_status = instance.__dict__.get("status")
        return instance

    @property
    def revived_since_loaded(self) -> bool:
        """Loaded from the database as expired, active now (RH-23, an admin extending it)."""
        loaded = getattr(self, "_loaded_status", None)
        return loaded == self.Status.EXPIRED and self.status == self.Status.ACTIVE

    async def arecord_revival(self) -> None:
        """Record a "revived" audit event if this instance went from expired to active.

        Called where an old client's poll re-activates its registration (``resolution.py``);
        costs nothing when the registration was not revived.
        """
        if not self.revived_since_loaded:
            return
        self._loaded_status = self.status  # once per revival
        await sync_to_async(_record_audit)(AuditEvent.Action.REVIVED, label=self.label)


def _record_audit(action: str, **fields: Any) -> None:
    close_old_connections()  # outside Django's request cycle (notes P18)
    AuditEvent.record(action, **fields)


class RequestLog(models.Model):
    """One public request relayed to a registration, for the request inspector (issue 7).

    ``label`` is not a foreign key: the log outlives the registration (and its re-creations).
    Rows are written in batches by ``inspector.py`` and pruned by age (``INSPECTOR_RETENTION``)
    and count per label (``INSPECTOR_MAX_PER_LABEL``). Bodies are stored only with
    ``INSPECTOR_CAPTURE_BODIES``, cut at ``INSPECTOR_BODY_LIMIT`` bytes.
    """

    label = models.CharField(max_length=63, db_index=True)
    started_at = models.DateTimeField(db_index=True)
    method = models.CharField(max_length=32)
    target = models.CharField(max_length=2000, help_text="The raw request target, with query.")
    status = models.PositiveSmallIntegerField(
        help_text="The status sent to the requestor; 499: the requestor left first."
    )
    transport = models.CharField(
        max_length=16,
        help_text="How the answer came: longpoll, pipeline, json, websocket, ptth; gateway "
        "(the gateway answered itself); replay (sent again from the admin).",
    )
    duration_ms = models.FloatField()
    request_bytes = models.PositiveBigIntegerField(default=0)
    response_bytes = models.PositiveBigIntegerField(default=0)
    requesting_client = models.CharField(max_length=64, blank=True)
    request_head = models.TextField(
        blank=True, help_text="The request as the application received it, without the body."
    )
    request_head_truncated = models.BooleanField(default=False)
    request_body = models.BinaryField(null=True, blank=True)
    response_headers = models.TextField(blank=True)
    response_body = models.BinaryField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        verbose_name = "logged request"
        permissions = [("replay_requestlog", "Can replay a logged request to its application")]

    def __str__(self) -> str:
        return f"{self.method} {self.target} → {self.status}"

    @property
    def body_complete(self) -> bool:
        """The whole request body is stored (or there was none): the request can be replayed."""
        if self.request_bytes == 0:
            return True
        return self.request_body is not None and len(self.request_body) == self.request_bytes


class AuditEvent(models.Model):
    """Who changed what (issue 6, "Secrets and audit"): registrations, leases, tokens, admin."""

    class Action(models.TextChoices):
        REGISTERED = "registered", "registered"
        REFRESHED = "refreshed", "refreshed (re-registered with its token)"
        RECONFIGURED = "reconfigured", "reconfigured (PUT on the private URL)"
        DELETED = "deleted", "deleted (DELETE on the private URL)"
        EXPIRED = "expired", "lease expired"
        REVIVED = "revived", "revived by a poll on its old URL"
        LEASE_EXTENDED = "lease_extended", "lease extended (admin)"
        ADMIN_EXPIRED = "admin_expired", "expired (admin)"
        ADMIN_DELETED = "admin_deleted", "deleted (admin)"
        TOKEN_CREATED = "token_created", "access token created"
        TOKEN_CHANGED = "token_changed", "access token changed"
        TOKEN_REVOKED = "token_revoked", "access token revoked"
        TOKEN_DELETED = "token_deleted", "access token deleted"
        CLAIM_CREATED = "claim_created", "label claim created"
        CLAIM_CHANGED = "claim_changed", "label claim changed"
        CLAIM_DELETED = "claim_deleted", "label claim deleted"
        REPLAYED = "replayed", "logged request replayed (admin)"

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="reversehttp_audit_events",
        help_text="The admin user; empty for applications and the gateway itself.",
    )
    actor_ip = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=32, choices=Action.choices, db_index=True)
    label = models.CharField(max_length=100, blank=True, db_index=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "audit event"

    def __str__(self) -> str:
        return f"{self.action} {self.label}".strip()

    @classmethod
    def record(
        cls,
        action: str,
        *,
        label: str = "",
        actor: Any = None,
        actor_ip: str | None = None,
        **detail: Any,
    ) -> AuditEvent:
        """Store one event (synchronous ORM code; async callers wrap it, notes P18)."""
        user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
        return cls.objects.create(
            action=action, label=label, actor=user, actor_ip=actor_ip or None, detail=detail
        )
