"""The Django admin for registrations, access tokens and label claims.

Secrets never appear here: a new access token is shown once, in the message after it is created,
and private URLs (capabilities, RH-90) are never displayed. Admin changes that a serving gateway
must know about (deleting or expiring a registration) are sent to this process's broker when a
gateway loop runs here; otherwise the lease keeper of the serving process reconciles them within
``EXPIRY_INTERVAL``.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import actions as admin_actions
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from . import credentials, registry
from .conf import gateway_settings
from .models import AccessToken, LabelClaim, Registration
from .queue.base import Broker, BrokerUnavailable
from .runtime import runtime

logger = logging.getLogger(__name__)

ONE_DAY = 86400

Address = tuple[str, str]  # (broker key, label)


def _owner_search_field() -> str:
    return f"owner__{get_user_model().USERNAME_FIELD}"


def _change_link(obj: Any) -> str:
    """An HTML link to ``obj``'s admin change page, or "-" for None."""
    if obj is None:
        return "-"
    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, obj)


def _changelist_link(model: type[Any], text: str, **filters: Any) -> str:
    """An HTML link to ``model``'s changelist filtered by ``filters``."""
    opts = model._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    query = "&".join(f"{name}={value}" for name, value in filters.items())
    return format_html('<a href="{}?{}">{}</a>', url, query, text)


async def _call_broker(broker: Broker, *, method: str, key: str, label: str) -> None:
    await getattr(broker, method)(key, label)


def _tell_broker(method: str, addresses: list[Address]) -> int:
    """Call ``broker.<method>(key, label)`` on this process's gateway loop; how many were done.

    Stops at the first address that cannot be done here (no gateway loop in this process, a
    timeout, or the broker is unreachable): the lease keeper reconciles the rest.
    """
    done = 0
    for key, label in addresses:
        make = partial(_call_broker, method=method, key=key, label=label)
        try:
            ran = runtime.run_from_thread(make)
        except BrokerUnavailable as exc:
            logger.warning("Admin could not %s %s in the broker: %s", method, label, exc)
            ran = False
        if not ran:
            break
        done += 1
    return done


def _reconcile_note(done: int, total: int, what: str) -> str:
    """The admin message when ``total - done`` broker updates are left to the lease keeper."""
    interval = f"{gateway_settings.EXPIRY_INTERVAL:g}"
    where = (
        "No gateway loop runs in this admin process"
        if done == 0
        else f"{total - done} of {total} could not be sent to the broker from here"
    )
    return (
        f"{where}: the lease keeper of the serving gateway {what} within EXPIRY_INTERVAL "
        f"({interval} s)."
    )


# Registrations


class ActivityFilter(admin.SimpleListFilter):
    """Polling now, dormant (lease running) or expired."""

    title = "activity"
    parameter_name = "activity"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("polling", "Polling now"),
            ("dormant", "Dormant (lease running)"),
            ("expired", "Expired"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        active = Q(status=Registration.Status.ACTIVE)
        if self.value() == "polling":
            return queryset.filter(active, expires_at__isnull=True)
        if self.value() == "dormant":
            return queryset.filter(active, expires_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(status=Registration.Status.EXPIRED)
        return queryset


@admin.register(Registration)
class RegistrationAdmin(admin.ModelAdmin):
    """Registrations are made by applications; the admin inspects, extends, expires, deletes."""

    list_display = [
        "label",
        "status",
        "activity",
        "lease_seconds",
        "expires_at",
        "last_poll_at",
        "access_token_link",
        "registered_from",
        "created_at",
    ]
    list_filter = [ActivityFilter, "status", ("access_token", admin.RelatedOnlyFieldListFilter)]
    search_fields = [
        "label",
        "registered_from",
        "access_token__name",
        "access_token__token_prefix",
    ]
    date_hierarchy = "created_at"
    list_select_related = ["access_token"]
    actions = ["delete_selected", "extend_lease", "expire_now"]
    fieldsets = [
        (None, {"fields": ["label", "status", "public_url", "access_token_link"]}),
        (
            "Lease",
            {
                "fields": [
                    "lease_seconds",
                    "refreshed_at",
                    "last_poll_at",
                    "dormant_since",
                    "expires_at",
                ]
            },
        ),
        (
            "Origin",
            {
                "fields": ["registered_from", "created_at", "nonce", "token_digest"],
                "description": "The nonce and token digest are not secrets; the private URL "
                "(a capability) is never shown.",
            },
        ),
    ]
    readonly_fields = [
        "label",
        "status",
        "public_url",
        "access_token_link",
        "lease_seconds",
        "refreshed_at",
        "last_poll_at",
        "dormant_since",
        "expires_at",
        "registered_from",
        "created_at",
        "nonce",
        "token_digest",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # applications register themselves (RH-01)

    @admin.display(description="activity")
    def activity(self, obj: Registration) -> str:
        if obj.status == Registration.Status.EXPIRED:
            return "expired"
        return "polling" if obj.expires_at is None else "dormant"

    @admin.display(description="public URL")
    def public_url(self, obj: Registration) -> str:
        url = gateway_settings.public_url(obj.label)
        return format_html('<a href="{}" rel="noopener noreferrer">{}</a>', url, url)

    @admin.display(description="access token", ordering="access_token__name")
    def access_token_link(self, obj: Registration) -> str:
        return _change_link(obj.access_token)

    # Deletion: every path ends in delete_model / delete_queryset.

    def delete_model(self, request: HttpRequest, obj: Registration) -> None:
        address = (obj.broker_key, obj.label)
        super().delete_model(request, obj)
        self._forget_after_commit(request, [address])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        addresses = [(r.broker_key, r.label) for r in queryset]
        super().delete_queryset(request, queryset)
        self._forget_after_commit(request, addresses)

    @admin.action(
        permissions=["delete"],
        description="Delete selected registrations (waiting pollers get 410)",
    )
    def delete_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        """Django's confirm-then-delete action, ending in ``delete_queryset`` above."""
        return admin_actions.delete_selected(self, request, queryset)

    @admin.action(permissions=["change"], description="Extend lease by one day")
    def extend_lease(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        revived: list[Address] = []
        count = 0
        with transaction.atomic():
            for registration in queryset.select_for_update():
                if registration.status == Registration.Status.EXPIRED:
                    revived.append((registration.broker_key, registration.label))
                registry.extend_lease(registration, ONE_DAY)
                count += 1
        self.message_user(
            request,
            f"Extended the lease of {count} registration(s) by one day from now.",
            messages.SUCCESS,
        )
        if revived:
            transaction.on_commit(lambda: self._announce(request, "activate", revived))

    @admin.action(permissions=["change"], description="Expire now")
    def expire_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        now = timezone.now()
        expired: list[Address] = []
        with transaction.atomic():
            for registration in queryset.select_for_update():
                if registration.status == Registration.Status.EXPIRED:
                    continue
                registration.status = Registration.Status.EXPIRED
                registration.expires_at = now
                registration.save(update_fields=["status", "expires_at"])
                expired.append((registration.broker_key, registration.label))
        skipped = len(queryset) - len(expired)
        text = f"Expired {len(expired)} registration(s)"
        text += f"; {skipped} already expired." if skipped else "."
        self.message_user(
            request,
            text + " An application that keeps polling its old URLs re-creates its registration "
            "while the label is free (RH-23); delete it to stop that.",
            messages.SUCCESS if expired else messages.WARNING,
        )
        if expired:
            self._forget_after_commit(request, expired)

    def _forget_after_commit(self, request: HttpRequest, addresses: list[Address]) -> None:
        if addresses:
            transaction.on_commit(lambda: self._announce(request, "deactivate", addresses))

    def _announce(self, request: HttpRequest, method: str, addresses: list[Address]) -> None:
        """Tell this process's broker, and the user what happened."""
        done = _tell_broker(method, addresses)
        if method == "deactivate":
            if done == len(addresses):
                text = f"Waiting pollers of {done} registration(s) got 410 Gone."
            else:
                text = _reconcile_note(
                    done,
                    len(addresses),
                    "stops the registration(s) and answers their waiting pollers 410 Gone",
                )
        elif done == len(addresses):
            text = f"Re-activated {done} expired registration(s) in the gateway."
        else:
            text = _reconcile_note(
                done, len(addresses), "re-activates the previously expired registration(s)"
            )
        self.message_user(request, text, messages.INFO)


# Access tokens


class TokenStateFilter(admin.SimpleListFilter):
    """Usable, revoked or expired."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("usable", "Usable"), ("revoked", "Revoked"), ("expired", "Expired")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = timezone.now()
        not_expired = Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        if self.value() == "usable":
            return queryset.filter(not_expired, revoked=False)
        if self.value() == "revoked":
            return queryset.filter(revoked=True)
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=now)
        return queryset


@admin.register(AccessToken)
class AccessTokenAdmin(admin.ModelAdmin):
    """Bearer tokens for enrolment; the token itself is generated on save and shown once."""

    list_display = [
        "name",
        "prefix",
        "owner",
        "usable",
        "expires_at",
        "last_used_at",
        "registration_count",
        "claim_count",
        "created_at",
    ]
    list_filter = [TokenStateFilter, "revoked", ("owner", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name", "token_prefix", "label_patterns"]
    raw_id_fields = ["owner"]
    list_select_related = ["owner"]
    actions = ["revoke"]
    add_fieldsets = [
        (
            None,
            {
                "fields": ["name", "owner", "label_patterns", "expires_at"],
                "description": "The token is generated when you save and shown once, in the "
                "message that follows; only its digest is stored.",
            },
        )
    ]
    fieldsets = [
        (None, {"fields": ["name", "owner", "label_patterns", "expires_at", "revoked"]}),
        (
            "Token",
            {
                "fields": ["prefix", "token_digest", "created_at", "last_used_at"],
                "description": "The token itself is not stored and cannot be shown again; "
                "create a new one if it was lost.",
            },
        ),
    ]
    readonly_fields = ["prefix", "token_digest", "created_at", "last_used_at"]

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        return [*self.search_fields, _owner_search_field()]

    def get_fieldsets(self, request: HttpRequest, obj: AccessToken | None = None) -> Any:
        return self.add_fieldsets if obj is None else self.fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: AccessToken | None = None) -> Any:
        return [] if obj is None else self.readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                registration_total=Count("registrations", distinct=True),
                claim_total=Count("claims", distinct=True),
            )
        )

    def save_model(
        self, request: HttpRequest, obj: AccessToken, form: forms.ModelForm, change: bool
    ) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        token = credentials.new_capability()
        obj.token_digest = credentials.digest(token)
        obj.token_prefix = token[:8]
        super().save_model(request, obj, form, change)
        self.message_user(
            request,
            f"The new access token “{obj.name}” is: {token} — copy it now. Only its digest is "
            "stored; it will not be shown again. Use it as 'Authorization: Bearer <token>'.",
            messages.WARNING,
        )

    @admin.display(description="token", ordering="token_prefix")
    def prefix(self, obj: AccessToken) -> str:
        return f"{obj.token_prefix}…"

    @admin.display(description="usable", boolean=True)
    def usable(self, obj: AccessToken) -> bool:
        return obj.is_usable()

    @admin.display(description="registrations", ordering="registration_total")
    def registration_count(self, obj: AccessToken) -> str:
        count = getattr(obj, "registration_total", None)
        if count is None:
            count = obj.registrations.count()
        return _changelist_link(Registration, str(count), access_token__id__exact=obj.pk)

    @admin.display(description="claims", ordering="claim_total")
    def claim_count(self, obj: AccessToken) -> str:
        count = getattr(obj, "claim_total", None)
        if count is None:
            count = obj.claims.count()
        return _changelist_link(LabelClaim, str(count), access_token__id__exact=obj.pk)

    @admin.action(permissions=["change"], description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        count = queryset.model.objects.filter(
            pk__in=list(queryset.values_list("pk", flat=True)), revoked=False
        ).update(revoked=True)
        self.message_user(
            request,
            f"Revoked {count} access token(s). Registrations made with them stay until they "
            "expire; delete those to stop them now.",
            messages.SUCCESS,
        )


# Label claims


class LabelClaimForm(forms.ModelForm):
    """A claim belongs to exactly one of: a user (any of their tokens) or one access token."""

    class Meta:
        model = LabelClaim
        fields = ["pattern", "owner", "access_token", "note"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        owner, token = cleaned.get("owner"), cleaned.get("access_token")
        if (owner is None) == (token is None):
            raise forms.ValidationError(
                "Set exactly one of owner (any of that user's tokens may register the labels) "
                "and access token (only that token may).",
                code="owner_or_token",
            )
        return cleaned

    def clean_pattern(self) -> str:
        return str(self.cleaned_data["pattern"]).strip().lower()


@admin.register(LabelClaim)
class LabelClaimAdmin(admin.ModelAdmin):
    """Who may register which labels under the "token" and "claims" enrolment policies."""

    form = LabelClaimForm
    list_display = ["pattern", "owner", "access_token_link", "note", "created_at"]
    list_filter = [
        ("owner", admin.RelatedOnlyFieldListFilter),
        ("access_token", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["pattern", "note", "access_token__name", "access_token__token_prefix"]
    raw_id_fields = ["owner", "access_token"]
    list_select_related = ["owner", "access_token"]
    readonly_fields = ["created_at"]
    fieldsets = [
        (
            None,
            {
                "fields": ["pattern", "owner", "access_token", "note", "created_at"],
                "description": "Claims apply when the ENROLMENT setting is 'token' or "
                "'claims'. Set exactly one of owner and access token.",
            },
        )
    ]

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        return [*self.search_fields, _owner_search_field()]

    @admin.display(description="access token", ordering="access_token__name")
    def access_token_link(self, obj: LabelClaim) -> str:
        return _change_link(obj.access_token)
