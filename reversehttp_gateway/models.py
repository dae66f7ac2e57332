"""Persistent state: registrations, label claims and access tokens.

The hot relay path never reads these tables; the queue keeps a mirror of what it needs (see
``docs/architecture.md``). Secrets are stored as digests only (``credentials.digest``).
"""

from __future__ import annotations

import fnmatch

from django.conf import settings
from django.db import models
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
