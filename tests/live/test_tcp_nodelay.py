"""TCP_NODELAY on the gateway's relayed sockets (shared/bench/README.md: the 40 ms Nagle step)."""

from __future__ import annotations

import ctypes
import os
import platform
import socket

import httpx
import pytest

PIDFD_GETFD = 438  # the same number on x86_64 and aarch64


def _socket_of(pid: int, peer_port: int) -> socket.socket | None:
    """A duplicate of the socket of process ``pid`` connected to local port ``peer_port``."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue
            sock = socket.socket(fileno=fd)
            try:
                inet = sock.family in (socket.AF_INET, socket.AF_INET6)
                if inet and sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == peer_port:
                    return sock
            except OSError:
                pass
            sock.close()
    finally:
        os.close(pidfd)
    return None


@pytest.mark.skipif(platform.system() != "Linux", reason="uses pidfd_getfd")
def test_accepted_sockets_have_tcp_nodelay(gateway):
    with httpx.Client(timeout=10) as client:
        response = client.get(gateway.url + "/")  # keep-alive: the connection stays open
        local_port = response.extensions["network_stream"].get_extra_info("socket").getsockname()[1]
        sock = _socket_of(gateway.process.pid, local_port)
        if sock is None:
            pytest.skip("cannot inspect the gateway's sockets here (pidfd_getfd refused)")
        with sock:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
