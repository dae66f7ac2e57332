"""Django views: the gateway status page (staff only, HTML or JSON by Accept, RH-80)."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from .conf import gateway_settings
from .models import Registration


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def home(request: HttpRequest) -> HttpResponse:
    """What this gateway is and how to register with it."""
    return render(
        request,
        "reversehttp_gateway/home.html",
        {"service_url": gateway_settings.SERVICE_URL, "mode": gateway_settings.PUBLIC_URL_MODE},
    )


@staff_member_required
def gateway_status(request: HttpRequest) -> HttpResponse:
    """Every registration with its lease state; staff only (RH-80)."""
    registrations = list(Registration.objects.all())
    rows = [
        {
            "label": r.label,
            "status": r.status,
            "public_url": gateway_settings.public_url(r.label),
            "lease_seconds": r.lease_seconds,
            "created_at": r.created_at.isoformat(),
            "last_poll_at": r.last_poll_at.isoformat() if r.last_poll_at else None,
            "expires_at": r.expires_at.isoformat() if r.expires_at else None,
        }
        for r in registrations
    ]
    info = {
        "service_url": gateway_settings.SERVICE_URL,
        "public_url_mode": gateway_settings.PUBLIC_URL_MODE,
        "broker": gateway_settings.BROKER,
        "registrations": rows,
    }
    if _wants_json(request):
        return JsonResponse(info)
    return render(request, "reversehttp_gateway/status.html", info)
