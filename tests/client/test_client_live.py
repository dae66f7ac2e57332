"""The Python client end to end against live gateways (both brokers), through public URLs."""

from __future__ import annotations

import asyncio
import hashlib
import threading

import httpx
import pytest

from reversehttp_gateway.client import AsyncGatewayClient, GatewayClient

from ..rh import unique_label
from . import apps
from .conftest import eventually, wait_until

TIMEOUT = httpx.Timeout(15.0)


async def test_asyncio_client_serves_an_asgi_app(gateway):
    name = unique_label("asgi")
    client = AsyncGatewayClient(gateway.service_url, name, apps.asgi_echo, pollers=2)
    async with client, httpx.AsyncClient(timeout=TIMEOUT) as http:
        assert client.public_url == f"{gateway.url}/{name}/"
        response = await http.get(
            client.public_url + "hello/w%C3%B6rld?x=1&y=%20", headers={"X-Test": "yes"}
        )
        assert response.status_code == 200
        assert response.headers["X-App"] == "asgi"
        assert response.headers.get_list("Set-Cookie") == ["a=1", "b=2"]
        echo = response.json()
        assert echo["method"] == "GET"
        assert echo["path"] == f"/{name}/hello/wörld"
        assert echo["root_path"] == f"/{name}"
        assert echo["route"] == "/hello/wörld"
        assert echo["query_string"] == "x=1&y=%20"
        assert echo["headers"]["x-test"] == "yes"
        assert echo["client"][0] == "127.0.0.1"
        assert echo["scheme"] == "http"
        assert echo["lifespan_started"] is True

        body = bytes(range(256)) * 4096  # 1 MiB, every byte value
        posted = await http.post(client.public_url + "upload", content=body)
        assert posted.status_code == 201
        assert posted.json()["body_length"] == len(body)
        assert posted.json()["body_sha256"] == hashlib.sha256(body).hexdigest()

        head = await http.head(client.public_url + "x")
        assert head.status_code == 200 and head.content == b""
        # The counter moves as the reply leaves, maybe after the requestor got it.
        await asyncio.to_thread(wait_until, lambda: client.relayed == 3, 10, "3 relayed")
    # Leaving the context manager stopped the client and deleted the registration.
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        assert (await http.get(client.public_url)).status_code == 404


def test_sync_client_serves_a_wsgi_app(gateway):
    name = unique_label("wsgi")
    with GatewayClient(gateway.service_url, name, apps.wsgi_echo, pollers=2) as client:
        public_url = client.public_url
        with httpx.Client(timeout=TIMEOUT) as http:
            response = http.post(public_url + "form/a%20b?a=b", data={"k": "v"})
            assert response.status_code == 202
            assert response.headers["X-App"] == "wsgi"
            echo = response.json()
            assert echo["script_name"] == f"/{name}"
            assert echo["path_info"] == "/form/a b"
            assert echo["query_string"] == "a=b"
            assert echo["body"] == "k=v"
            assert echo["content_type"] == "application/x-www-form-urlencoded"
            assert echo["remote_addr"] == "127.0.0.1"
            assert echo["host"] == f"127.0.0.1:{gateway.port}"
            assert echo["thread"].startswith("reversehttp-wsgi")
            # An exception in the application is a 500, and the client keeps serving.
            assert http.get(public_url + "fail").status_code == 500
            assert http.get(public_url + "again").status_code == 202
    with httpx.Client(timeout=TIMEOUT) as http:
        assert http.get(public_url).status_code == 404


def test_sync_serve_forever_until_request_stop(gateway):
    client = GatewayClient(gateway.service_url, unique_label("sf"), apps.wsgi_echo, pollers=1)
    public_url = client.start()
    thread = threading.Thread(target=client.serve_forever, daemon=True)
    thread.start()
    with httpx.Client(timeout=TIMEOUT) as http:
        assert http.get(public_url).status_code == 202
        client.request_stop()
        thread.join(20)
        assert not thread.is_alive()
        assert http.get(public_url).status_code == 404


async def test_forward_mode_to_a_local_server(gateway, local_server):
    name = unique_label("fwd")
    async with (
        AsyncGatewayClient(gateway.service_url, name, local_server.url, pollers=2) as client,
        httpx.AsyncClient(timeout=TIMEOUT) as http,
    ):
        response = await http.post(
            client.public_url + "api/items?q=1&r=%2F",
            content=b"hello",
            headers={"X-Forwarded-For": "10.1.2.3", "X-Custom": "kept"},
        )
        assert response.status_code == 200
        assert response.headers["X-Local"] == "yes"
        echo = response.json()
        assert echo["method"] == "POST"
        assert echo["path"] == "/api/items?q=1&r=%2F"  # the /<name> prefix is stripped
        assert echo["body"] == "hello"
        headers = echo["headers"]
        assert headers["host"] == local_server.url.removeprefix("http://")
        assert headers["x-forwarded-host"] == f"127.0.0.1:{gateway.port}"
        assert headers["x-forwarded-prefix"] == f"/{name}"
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
        assert headers["x-custom"] == "kept"
        assert "accept-encoding" in headers  # httpx's own, sent by the third party
        assert "user-agent" in headers and "reversehttp" not in headers["user-agent"]

        # Status and compressed bodies pass through untouched; redirects are not followed.
        assert (await http.put(client.public_url + "teapot")).status_code == 418
        gzipped = await http.get(client.public_url + "gzip")
        assert gzipped.headers["Content-Encoding"] == "gzip"
        assert gzipped.text == "compressed " * 100
        redirect = await http.get(client.public_url + "redirect")
        assert redirect.status_code == 302
        assert redirect.headers["Location"] == "/elsewhere"


async def test_forward_to_an_unreachable_local_server_is_502(gateway, local_server):
    dead = local_server.url
    local_server.stop()
    async with (
        AsyncGatewayClient(gateway.service_url, unique_label("dead"), dead, pollers=1) as client,
        httpx.AsyncClient(timeout=TIMEOUT) as http,
    ):
        response = await http.get(client.public_url)
        assert response.status_code == 502
        assert "Cannot reach the local server" in response.text


async def test_twenty_pollers_answer_twenty_parallel_requests(gateway):
    count = 20
    app = apps.Gathering(count)
    limits = httpx.Limits(max_connections=2 * count)
    async with (
        AsyncGatewayClient(gateway.service_url, unique_label("many"), app, pollers=count) as client,
        httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as http,
    ):
        requests = [http.get(client.public_url + f"n{i}") for i in range(count)]
        responses = await asyncio.wait_for(asyncio.gather(*requests), 30)
    # Every request waited for all the others: they were handled concurrently.
    assert [(r.status_code, r.text) for r in responses] == [(200, "together")] * count


async def test_registers_again_after_the_registration_is_deleted(gateway):
    async with (
        AsyncGatewayClient(
            gateway.service_url, unique_label("del"), apps.asgi_echo, pollers=2
        ) as client,
        httpx.AsyncClient(timeout=TIMEOUT) as http,
    ):
        assert (await http.get(client.public_url)).status_code == 200
        old_private = client.private_url
        assert (await http.delete(old_private)).status_code == 204
        await asyncio.to_thread(
            wait_until, lambda: client.private_url != old_private, 15, "a new registration"
        )
        response = await eventually(
            lambda: http.get(client.public_url + "back"),
            lambda r: r.status_code == 200,
            15,
            "the public URL to answer again",
        )
        assert response.json()["route"] == "/back"
        assert (await http.get(old_private)).status_code == 404
        assert (await http.get(client.private_url)).status_code == 200


async def test_stop_answers_requests_in_hand_then_deletes_the_registration(gateway):
    name = unique_label("stop")
    app = apps.Slow(delay=1.0)
    client = AsyncGatewayClient(gateway.service_url, name, app, pollers=2)
    public_url = await client.start()
    private_url = client.private_url
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        in_hand = asyncio.ensure_future(http.get(public_url + "slow"))
        await asyncio.to_thread(
            wait_until, lambda: app.arrived is not None and app.arrived.is_set(), 10, "request"
        )
        await asyncio.wait_for(client.stop(), 15)
        response = await asyncio.wait_for(in_hand, 15)
        assert (response.status_code, response.text) == (200, "finished")
        assert (await http.get(public_url)).status_code == 404
        assert (await http.get(private_url)).status_code == 404
        # The label is free again, for anyone.
        again = await http.post(gateway.service_url, data={"name": name, "token": "someone"})
        assert again.status_code == 201


async def test_start_errors_are_raised(gateway):
    from reversehttp_gateway.client import GatewayUnreachable, RegistrationRefused

    name = unique_label("err")
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        taken = await http.post(gateway.service_url, data={"name": name, "token": "owner"})
        assert taken.status_code == 201
    client = AsyncGatewayClient(gateway.service_url, name, apps.asgi_echo, token="intruder")
    with pytest.raises(RegistrationRefused) as refused:
        await asyncio.wait_for(client.start(), 15)
    assert refused.value.status == 403
    assert refused.value.message.startswith("403 Bad token")

    invalid = AsyncGatewayClient(gateway.service_url, "not_a_label!", apps.asgi_echo)
    with pytest.raises(RegistrationRefused) as bad_name:
        await asyncio.wait_for(invalid.start(), 15)
    assert bad_name.value.status == 400

    unreachable = AsyncGatewayClient("http://127.0.0.1:9", name, apps.asgi_echo)
    with pytest.raises(GatewayUnreachable, match="cannot reach the gateway"):
        await asyncio.wait_for(unreachable.start(), 15)
