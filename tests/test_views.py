"""The staff status page on the Service URL (RH-80), through Django's test client."""

from __future__ import annotations

import pytest

from reversehttp_gateway.models import Registration

pytestmark = pytest.mark.django_db


def _registration(label: str) -> Registration:
    return Registration.objects.create(
        label=label, nonce=label * 2, token_digest="x", lease_seconds=60
    )


def test_status_page_needs_staff(client):
    response = client.get("/reversehttp")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_status_page_html_and_json(admin_client):
    _registration("alpha")
    html = admin_client.get("/reversehttp")
    assert html.status_code == 200
    assert b"alpha" in html.content and b"Registrations" in html.content
    data = admin_client.get("/reversehttp", HTTP_ACCEPT="application/json").json()
    assert data["registrations"][0]["label"] == "alpha"
    assert data["registrations"][0]["public_url"].endswith("/alpha/")


def test_home_page(client):
    response = client.get("/")
    assert response.status_code == 200
    assert b"reversehttp" in response.content
