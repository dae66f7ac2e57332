"""A minimal ReverseHttp client for the tests, speaking the wire protocol with httpx."""

from __future__ import annotations

import secrets

import httpx

from reversehttp_gateway.protocol.links import parse_link_header


def unique_label(prefix: str = "t") -> str:
    return f"{prefix}{secrets.token_hex(5)}"


class Registered:
    """The URLs a registration response handed out."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        links = parse_link_header(response.headers["Link"])
        self.first: str = links["first"]
        self.public: str = links["related"]
        self.private: str = response.headers["Location"]


async def register(
    client: httpx.AsyncClient, service_url: str, name: str, token: str = "secret", **extra: str
) -> Registered:
    response = await client.post(service_url, data={"name": name, "token": token, **extra})
    assert response.status_code in (201, 204), (response.status_code, response.text)
    return Registered(response)


def envelope(
    status_line: str = "HTTP/1.1 200 OK", headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [status_line] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
