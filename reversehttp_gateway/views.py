"""Django views: the gateway status page (staff only, HTML or JSON by Accept, RH-80), the live
dashboard (staff only, ``dashboard.py``), the home and demo pages."""

from __future__ import annotations

from dataclasses import asdict

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from .conf import gateway_settings
from .dashboard import UNKNOWN, queue_gauges_from_thread
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


def demo(request: HttpRequest) -> HttpResponse:
    """Serve HTTP from this browser tab with the JavaScript client (docs/browser.md)."""
    return render(
        request,
        "reversehttp_gateway/demo.html",
        {"service_url": gateway_settings.SERVICE_URL, "mode": gateway_settings.PUBLIC_URL_MODE},
    )


@staff_member_required
def gateway_status(request: HttpRequest) -> HttpResponse:
    """Every registration with its lease state; staff only (RH-80)."""
    registrations = list(Registration.objects.all())
    active = [r.broker_key for r in registrations if r.status == Registration.Status.ACTIVE]
    gauges = queue_gauges_from_thread(active)  # unknown when no gateway loop runs here
    rows = [
        {
            "label": r.label,
            "status": r.status,
            "public_url": gateway_settings.public_url(r.label),
            "lease_seconds": r.lease_seconds,
            "created_at": r.created_at.isoformat(),
            "last_poll_at": r.last_poll_at.isoformat() if r.last_poll_at else None,
            "expires_at": r.expires_at.isoformat() if r.expires_at else None,
            **asdict(gauges.get(r.broker_key, UNKNOWN)),
        }
        for r in registrations
    ]
    info = {
        "service_url": gateway_settings.SERVICE_URL,
        "public_url_mode": gateway_settings.PUBLIC_URL_MODE,
        "broker": gateway_settings.BROKER,
        "registrations": rows,
        "active": len(active),
        "polling": sum(1 for r in registrations if r.status == "active" and not r.expires_at),
        "queued": sum(row["queue_depth"] or 0 for row in rows),
    }
    if _wants_json(request):
        return JsonResponse(info)
    return render(request, "reversehttp_gateway/status.html", info)


@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """Live traffic, pollers and queues per label, over a WebSocket (``dashboard.py``)."""
    return render(
        request,
        "reversehttp_gateway/dashboard.html",
        {"broker": gateway_settings.BROKER, "service_url": gateway_settings.SERVICE_URL},
    )
