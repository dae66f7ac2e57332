"""Virtual-host public URLs and enrolment policies against a live gateway (RH-13, RH-14, RH-92)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest

from ..gateway_process import ROOT
from ..rh import envelope, register, unique_label

pytestmark = pytest.mark.asyncio


async def test_vhost_public_urls(start_gateway):
    """RH-13/RH-14: Host matched case-insensitively with the port stripped; path kept whole."""
    gw = start_gateway("redis", PUBLIC_URL_MODE="vhost", VHOST_DOMAIN="apps.test:8443")
    async with httpx.AsyncClient(timeout=15) as client:
        name = unique_label()
        reg = await register(client, gw.service_url, name)
        assert reg.public == f"http://{name}.apps.test:8443/"
        poll = asyncio.ensure_future(client.get(reg.first))
        await asyncio.sleep(0.2)
        public = asyncio.ensure_future(
            client.get(f"{gw.url}/any/path?q=1", headers={"Host": f"{name.upper()}.Apps.Test:9"})
        )
        delivered = await poll
        assert delivered.content.startswith(b"GET /any/path?q=1 HTTP/1.1\r\n")
        assert f"Host: {name.upper()}.Apps.Test:9\r\n".encode() in delivered.content
        await client.post(reg.first, content=envelope(body=b"vhost"))
        assert (await public).text == "vhost"
        unknown = await client.get(gw.url + "/", headers={"Host": "nobody.apps.test"})
        assert unknown.status_code == 404
        # Outside the vhost domain the site itself answers (home page), not the relay.
        assert (await client.get(gw.url + "/")).status_code == 200


def _make_token(gw, name: str, patterns: str = "") -> str:
    """Create an AccessToken in the gateway's database, as an operator would."""
    code = (
        "import django; django.setup();"
        "from reversehttp_gateway import credentials;"
        "from reversehttp_gateway.models import AccessToken;"
        "t = credentials.new_capability();"
        f"AccessToken.objects.create(name={name!r}, token_digest=credentials.digest(t),"
        f" token_prefix=t[:8], label_patterns={patterns!r});"
        "print(t)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=gw.env,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


async def test_token_enrolment_policy(start_gateway):
    """ENROLMENT=token: no or bad bearer token -> 401; a token limited to patterns -> 403."""
    gw = start_gateway("memory", ENROLMENT="token")
    token = await asyncio.to_thread(_make_token, gw, "ci", "team-*")
    async with httpx.AsyncClient(timeout=15) as client:
        data = {"name": "team-a", "token": "x"}
        assert (await client.post(gw.service_url, data=data)).status_code == 401
        bad = await client.post(gw.service_url, data=data, headers={"Authorization": "Bearer no"})
        assert bad.status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert (await client.post(gw.service_url, data=data, headers=auth)).status_code == 201
        other = await client.post(gw.service_url, data={"name": "other"}, headers=auth)
        assert other.status_code == 403


async def test_hyphen_token_refused_by_policy(start_gateway):
    """RH-92 (c): the well-known token "-" refused with a clear 400."""
    gw = start_gateway("memory", HYPHEN_TOKEN="refuse")
    async with httpx.AsyncClient(timeout=15) as client:
        response = await client.post(gw.service_url, data={"name": unique_label(), "token": "-"})
        assert response.status_code == 400
        assert "token" in response.text


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"token": "x"}, 400),  # RH-04
        ({"name": ""}, 400),
        ({"name": "a_b"}, 400),  # RH-03
        ({"name": "-a"}, 400),
        ({"name": "a" * 64}, 400),
        ({"name": "a\r\nSet-Cookie: x=1"}, 400),  # RH-16
        ({"name": "admin"}, 400),  # reserved
        ({"name": "ok", "lease": "abc"}, 400),  # RH-05
        ({"name": "ok", "lease": "1.5"}, 400),
        ({"name": "ok", "lease": ""}, 400),
    ],
)
async def test_bad_registration_input_is_400(gateway, form, status):
    async with httpx.AsyncClient(timeout=15) as client:
        if form.get("name") == "ok":
            form = {**form, "name": unique_label()}
        response = await client.post(gateway.service_url, data=form)
        assert response.status_code == status
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert "Link" not in response.headers


async def test_unknown_gateway_urls_are_404_or_405(gateway):
    async with httpx.AsyncClient(timeout=15) as client:
        assert (await client.get(gateway.service_url + "/nothing")).status_code == 404
        assert (await client.get(gateway.service_url + "/r/a/b/c/d")).status_code == 404
        assert (await client.delete(gateway.service_url)).status_code == 405
