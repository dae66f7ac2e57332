"""An application for the WebSocket transport that streams bodies both ways (docs/websocket.md).

Shared by the streaming tests and ``bench/scale.py``: it echoes each request's body (with its
SHA-256 in ``X-Request-Sha256``) or, for ``GET /big/<n>``, sends ``n`` MiB of pattern data, as
``response-start``/``body``/``end`` frames within the gateway's ``window`` credit, and grants
the gateway a ``window`` for every request-body chunk it consumes.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import msgpack

MIB = 1024 * 1024


def frame(kind: str, ident: str, payload: Any) -> bytes:
    return msgpack.packb([kind, ident, payload], use_bin_type=True)


def pattern(size: int) -> bytes:
    block = bytes(range(256)) * 256  # 64 KiB, not compressible to nothing
    return (block * (size // len(block) + 1))[:size]


async def streaming_app(ws: Any, *, chunk: int = 64 * 1024) -> None:
    """The streaming application of tests/live/test_streaming.py (copied): answers each request
    by streaming back its body (SHA-256 in a header), or, for GET /big/<n>, n MiB of pattern
    data; honours the gateway's flow-control windows (docs/websocket.md)."""
    bodies: dict[str, list[bytes]] = {}
    heads: dict[str, bytes] = {}
    credit: dict[str, int] = {}
    credit_changed: dict[str, asyncio.Event] = {}
    tasks: set[asyncio.Task] = set()

    async def answer(ident: str) -> None:
        head = heads.pop(ident)
        target = head.split(b" ")[1]
        body = b"".join(bodies.pop(ident))
        size = int(target.rsplit(b"/", 1)[1]) * MIB if b"/big/" in target else len(body)
        digest = hashlib.sha256(body).hexdigest()
        credit.setdefault(ident, 0)
        credit_changed.setdefault(ident, asyncio.Event())
        start = f"HTTP/1.1 200 OK\r\nX-Request-Sha256: {digest}\r\n\r\n".encode()
        await ws.send(frame("response-start", ident, start))
        data = body if b"/big/" not in target else pattern(size)
        for offset in range(0, size, chunk):
            piece = data[offset : offset + chunk]
            while credit[ident] < len(piece):
                credit_changed[ident].clear()
                await credit_changed[ident].wait()
            credit[ident] -= len(piece)
            await ws.send(frame("body", ident, piece))
        await ws.send(frame("end", ident, b""))

    def spawn(ident: str) -> None:
        task = asyncio.ensure_future(answer(ident))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async for data in ws:
        kind, ident, payload = msgpack.unpackb(data, raw=False)
        if kind == "request":
            heads[ident] = payload[0].partition(b"\r\n\r\n")[0]
            bodies[ident] = [payload[0].partition(b"\r\n\r\n")[2]]
            if not payload[2]:
                spawn(ident)
        elif kind == "body":
            bodies[ident].append(payload)
            await ws.send(frame("window", ident, len(payload)))
        elif kind == "end":
            spawn(ident)
        elif kind == "window":
            credit[ident] = credit.get(ident, 0) + payload
            credit_changed.setdefault(ident, asyncio.Event()).set()
