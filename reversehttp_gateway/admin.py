"""The Django admin: registrations, access tokens, label claims, request log and audit log.

Secrets never appear here: a new access token is shown once, in the message after it is created,
and private URLs (capabilities, RH-90) are never displayed. Admin changes that a serving gateway
must know about (deleting or expiring a registration) are sent to this process's broker when a
gateway loop runs here; otherwise the lease keeper of the serving process reconciles them within
``EXPIRY_INTERVAL``.

Every change made here is recorded as an ``AuditEvent`` with the user and their address; the
audit log and the request log (``inspector.py``) are read-only here, except for replaying a
logged request to its application.
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

from . import credentials, inspector, registry
from .conf import gateway_settings
from .models import AccessToken, AuditEvent, LabelClaim, Registration, RequestLog
from .queue.base import Broker, BrokerUnavailable
from .runtime import runtime

logger = logging.getLogger(__name__)

ONE_DAY = 86400

Address = tuple[str, str]  # (broker key, label)


def _audit(request: HttpRequest, action: str, label: str = "", **detail: Any) -> None:
    """Record what ``request.user`` did (issue 6, "Secrets and audit")."""
    AuditEvent.record(
        action, label=label, actor=request.user, actor_ip=request.META.get("REMOTE_ADDR"), **detail
    )


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
        "request_log_link",
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

    @admin.display(description="requests")
    def request_log_link(self, obj: Registration) -> str:
        return _changelist_link(RequestLog, "log", label=obj.label)

    # Deletion: every path ends in delete_model / delete_queryset.

    def delete_model(self, request: HttpRequest, obj: Registration) -> None:
        address = (obj.broker_key, obj.label)
        super().delete_model(request, obj)
        _audit(request, AuditEvent.Action.ADMIN_DELETED, obj.label, status=obj.status)
        self._forget_after_commit(request, [address])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        doomed = list(queryset)
        addresses = [(r.broker_key, r.label) for r in doomed]
        super().delete_queryset(request, queryset)
        for registration in doomed:
            _audit(request, AuditEvent.Action.ADMIN_DELETED, registration.label)
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
                _audit(
                    request,
                    AuditEvent.Action.LEASE_EXTENDED,
                    registration.label,
                    lease=registration.lease_seconds,
                    revived=registration.revived_since_loaded,
                )
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
                _audit(request, AuditEvent.Action.ADMIN_EXPIRED, registration.label)
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
            revoked = "revoked" in form.changed_data and obj.revoked
            action = AuditEvent.Action.TOKEN_REVOKED if revoked else AuditEvent.Action.TOKEN_CHANGED
            _audit(request, action, **self._described(obj), changed=list(form.changed_data))
            return
        token = credentials.new_capability()
        obj.token_digest = credentials.digest(token)
        obj.token_prefix = token[:8]
        super().save_model(request, obj, form, change)
        _audit(request, AuditEvent.Action.TOKEN_CREATED, **self._described(obj))
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

    @staticmethod
    def _described(token: AccessToken) -> dict[str, Any]:
        """How audit events name a token (never the token itself)."""
        return {"token": token.pk, "name": token.name, "prefix": token.token_prefix}

    def delete_model(self, request: HttpRequest, obj: AccessToken) -> None:
        described = self._described(obj)
        super().delete_model(request, obj)
        _audit(request, AuditEvent.Action.TOKEN_DELETED, **described)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        described = [self._described(token) for token in queryset]
        super().delete_queryset(request, queryset)
        for fields in described:
            _audit(request, AuditEvent.Action.TOKEN_DELETED, **fields)

    @admin.action(permissions=["change"], description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        to_revoke = queryset.model.objects.filter(
            pk__in=list(queryset.values_list("pk", flat=True)), revoked=False
        )
        described = [self._described(token) for token in to_revoke]
        count = to_revoke.update(revoked=True)
        for fields in described:
            _audit(request, AuditEvent.Action.TOKEN_REVOKED, **fields)
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

    def save_model(
        self, request: HttpRequest, obj: LabelClaim, form: forms.ModelForm, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        action = AuditEvent.Action.CLAIM_CHANGED if change else AuditEvent.Action.CLAIM_CREATED
        _audit(request, action, obj.pattern, claim=obj.pk, changed=list(form.changed_data))

    def delete_model(self, request: HttpRequest, obj: LabelClaim) -> None:
        pattern, pk = obj.pattern, obj.pk
        super().delete_model(request, obj)
        _audit(request, AuditEvent.Action.CLAIM_DELETED, pattern, claim=pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        doomed = [(claim.pattern, claim.pk) for claim in queryset]
        super().delete_queryset(request, queryset)
        for pattern, pk in doomed:
            _audit(request, AuditEvent.Action.CLAIM_DELETED, pattern, claim=pk)


# The request log (inspector.py)


class StatusClassFilter(admin.SimpleListFilter):
    """2xx, 3xx, 4xx or 5xx."""

    title = "status class"
    parameter_name = "status_class"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(n), f"{n}xx") for n in (1, 2, 3, 4, 5)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value and value.isdigit():
            base = int(value) * 100
            return queryset.filter(status__gte=base, status__lt=base + 100)
        return queryset


def _preview(data: bytes | memoryview | None, total: int) -> str:
    """A body as text in a <pre>, or a hex dump of its start when it is not UTF-8."""
    if data is None:
        return "not stored (INSPECTOR_CAPTURE_BODIES is off)" if total else "(empty)"
    raw = bytes(data)
    note = "" if len(raw) >= total else f"\n… first {len(raw)} of {total} bytes"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = f"{len(raw)} bytes of binary data: " + raw[:512].hex(" ")
    return format_html("<pre style='white-space: pre-wrap'>{}{}</pre>", text, note)


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    """Read-only: written by the gateway; replaying sends a logged request again."""

    list_display = [
        "started_at",
        "label_link",
        "method",
        "short_target",
        "status",
        "transport",
        "duration",
        "request_bytes",
        "response_bytes",
        "requesting_client",
    ]
    list_filter = [StatusClassFilter, "transport", "label", "status"]
    search_fields = ["label", "target", "requesting_client"]
    date_hierarchy = "started_at"
    list_per_page = 50
    actions = ["replay_to_application", "delete_selected"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "label",
                    "started_at",
                    "method",
                    "target",
                    "status",
                    "transport",
                    "duration_ms",
                    "requesting_client",
                    "request_bytes",
                    "response_bytes",
                ]
            },
        ),
        ("Request", {"fields": ["request_head_text", "request_body_text"]}),
        ("Response", {"fields": ["response_headers_text", "response_body_text"]}),
    ]
    readonly_fields = [
        "label",
        "started_at",
        "method",
        "target",
        "status",
        "transport",
        "duration_ms",
        "requesting_client",
        "request_bytes",
        "response_bytes",
        "request_head_text",
        "request_body_text",
        "response_headers_text",
        "response_body_text",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        match = request.resolver_match
        if match is not None and (match.url_name or "").endswith("changelist"):
            return queryset.defer("request_body", "response_body", "request_head")
        return queryset

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_replay_permission(self, request: HttpRequest) -> bool:
        user = request.user
        return bool(user.is_active and user.is_staff) and user.has_perm(
            "reversehttp_gateway.replay_requestlog"
        )

    @admin.display(description="label", ordering="label")
    def label_link(self, obj: RequestLog) -> str:
        return _changelist_link(Registration, obj.label, label=obj.label)

    @admin.display(description="target", ordering="target")
    def short_target(self, obj: RequestLog) -> str:
        return obj.target if len(obj.target) <= 60 else obj.target[:59] + "…"

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj: RequestLog) -> str:
        return f"{obj.duration_ms:.1f} ms"

    @admin.display(description="head")
    def request_head_text(self, obj: RequestLog) -> str:
        note = "\n… cut at 16 KiB" if obj.request_head_truncated else ""
        return format_html("<pre style='white-space: pre-wrap'>{}{}</pre>", obj.request_head, note)

    @admin.display(description="body")
    def request_body_text(self, obj: RequestLog) -> str:
        return _preview(obj.request_body, obj.request_bytes)

    @admin.display(description="headers")
    def response_headers_text(self, obj: RequestLog) -> str:
        return format_html("<pre style='white-space: pre-wrap'>{}</pre>", obj.response_headers)

    @admin.display(description="body")
    def response_body_text(self, obj: RequestLog) -> str:
        return _preview(obj.response_body, obj.response_bytes)

    @admin.action(permissions=["replay"], description="Replay to the application")
    def replay_to_application(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Send each selected request again and wait for the answer (at most REPLY_TIMEOUT)."""
        logs = list(queryset[: inspector.REPLAY_LIMIT + 1])
        if len(logs) > inspector.REPLAY_LIMIT:
            self.message_user(
                request,
                f"Only the first {inspector.REPLAY_LIMIT} selected requests are replayed.",
                messages.WARNING,
            )
        for log in logs[: inspector.REPLAY_LIMIT]:
            try:
                result = inspector.replay(
                    log, actor=request.user, actor_ip=request.META.get("REMOTE_ADDR")
                )
            except inspector.ReplayRefused as exc:
                self.message_user(request, f"Not replayed: {log}: {exc}.", messages.ERROR)
                continue
            url = reverse("admin:reversehttp_gateway_requestlog_change", args=[result.log.pk])
            self.message_user(
                request,
                format_html(
                    'Replayed {} {} to “{}”: {} in {} ms (<a href="{}">logged</a>).',
                    log.method,
                    log.target,
                    log.label,
                    inspector.status_text(result.status),
                    f"{result.duration * 1000:.0f}",
                    url,
                ),
                messages.SUCCESS if result.status < 500 else messages.WARNING,
            )


# The audit log


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: who did what, recorded by the gateway and by this admin."""

    list_display = ["at", "action", "label", "actor", "actor_ip", "detail_text"]
    list_filter = ["action", ("actor", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["label", "actor_ip"]
    date_hierarchy = "at"
    list_select_related = ["actor"]
    list_per_page = 100
    fields = ["at", "action", "label", "actor", "actor_ip", "detail_text"]
    readonly_fields = fields

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        return [*self.search_fields, f"actor__{get_user_model().USERNAME_FIELD}"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # pruned after AUDIT_RETENTION only

    @admin.display(description="detail")
    def detail_text(self, obj: AuditEvent) -> str:
        return ", ".join(f"{key}={value}" for key, value in sorted(obj.detail.items()))
