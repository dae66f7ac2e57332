"""The long-poll's calls to the gateway (reversehttp_gateway/client/gateway_http.py).

A loopback server (:mod:`.raw_origin`) plays the gateway, or an HTTP proxy in front of it.
"""

from __future__ import annotations

import httpx
import pytest

from reversehttp_gateway.client.gateway_http import TRANSPORT_ERRORS, GatewayHttp

from .raw_origin import Exchange, Origin, ok

LINKS = (
    b'Link: </reversehttp/r/demo/s/2>; rel="next"\r\n'
    b'Link: <http://elsewhere/>; rel="first"\r\nRequesting-Client: 10.0.0.7:5555\r\n'
)


async def gateway(exchange: Exchange) -> bool:
    if exchange.request_line.startswith("GET"):
        await exchange.answer(ok(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n", LINKS))
    else:
        await exchange.answer(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
    return True


async def test_polls_and_replies_share_a_keep_alive_connection() -> None:
    async with Origin(gateway) as origin, httpx.AsyncClient() as http:
        calls = GatewayHttp(http, user_agent="test-agent/1")
        url = f"http://127.0.0.1:{origin.port}/reversehttp/r/demo/s/1"
        for _ in range(3):
            poll = await calls.get(url, headers={"Accept": "message/http"}, timeout=5)
            assert poll.status == 200 and poll.is_success
            assert poll.content == b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n"
            assert poll.url == url
            assert poll.header_list("link") == [
                '</reversehttp/r/demo/s/2>; rel="next"',
                '<http://elsewhere/>; rel="first"',
            ]
            assert poll.header("LINK") == ", ".join(poll.header_list("link"))  # as httpx joins
            assert poll.header("requesting-client") == "10.0.0.7:5555"
            reply = await calls.post(
                url, b"HTTP/1.1 200 OK\r\n\r\n", headers={"Content-Type": "message/http"}, timeout=5
            )
            assert (reply.status, reply.reason, reply.content) == (202, "Accepted", b"")
        assert origin.connections == 1
        get, post = origin.exchanges[:2]
        assert get.request_line == "GET /reversehttp/r/demo/s/1 HTTP/1.1"
        assert get.header("host") == f"127.0.0.1:{origin.port}"
        assert get.header("user-agent") == "test-agent/1"
        assert get.header("accept") == "message/http"
        assert post.header("content-type") == "message/http"
        assert post.body == b"HTTP/1.1 200 OK\r\n\r\n"
        await calls.aclose()


async def test_an_http_proxy_in_the_environment_is_honoured(monkeypatch) -> None:
    async with Origin(gateway) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with httpx.AsyncClient() as http:
            calls = GatewayHttp(http, user_agent="test-agent/1")
            poll = await calls.get("http://gateway.test:8000/r/x", headers={}, timeout=5)
            assert poll.status == 200
            # Through the proxy: the absolute-form target that only a proxy gets.
            assert proxy.exchanges[0].request_line == "GET http://gateway.test:8000/r/x HTTP/1.1"
            await calls.aclose()


async def test_failures_are_transport_errors() -> None:
    async with Origin(gateway) as origin:
        port = origin.port
    async with httpx.AsyncClient() as http:
        calls = GatewayHttp(http, user_agent="test-agent/1")
        with pytest.raises(TRANSPORT_ERRORS):
            await calls.get(f"http://127.0.0.1:{port}/r/x", headers={}, timeout=5)
