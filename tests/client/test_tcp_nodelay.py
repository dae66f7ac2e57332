"""The runner's docstring claims httpx connections already have TCP_NODELAY; check it."""

from __future__ import annotations

import socket

import httpx


async def test_async_httpx_connections_have_tcp_nodelay(local_server):
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(local_server.url + "/")
        sock = response.extensions["network_stream"].get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_sync_httpx_connections_have_tcp_nodelay(local_server):
    with httpx.Client(timeout=10) as http:
        response = http.get(local_server.url + "/")
        sock = response.extensions["network_stream"].get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
