"""Applications served through the gateway in the client tests: ASGI, WSGI, a local HTTP server."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _route(path: str, root_path: str) -> str:
    return path[len(root_path) :] if root_path and path.startswith(root_path) else path


async def _read_body(receive: Any) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def asgi_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes the request as JSON; supports lifespan (records that startup ran)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["started"] = True
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = await _read_body(receive)
    payload = {
        "method": scope["method"],
        "path": scope["path"],
        "root_path": scope["root_path"],
        "route": _route(scope["path"], scope["root_path"]),
        "query_string": scope["query_string"].decode(),
        "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
        "client": scope["client"],
        "scheme": scope["scheme"],
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "lifespan_started": scope.get("state", {}).get("started", False),
    }
    await send(
        {
            "type": "http.response.start",
            "status": 201 if scope["method"] == "POST" else 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"x-app", b"asgi"),
                (b"set-cookie", b"a=1"),
                (b"set-cookie", b"b=2"),
            ],
        }
    )
    # Two body chunks: the client must join them.
    data = json.dumps(payload).encode()
    await send({"type": "http.response.body", "body": data[:10], "more_body": True})
    await send({"type": "http.response.body", "body": data[10:]})


class Gathering:
    """ASGI app that answers only once ``expected`` requests are being handled at the same time.

    Each request answers "together" if all arrived within ``timeout`` s, else 503 "alone".
    """

    def __init__(self, expected: int, timeout: float = 10.0) -> None:
        self.expected = expected
        self.timeout = timeout
        self.arrived = 0
        self.everyone: asyncio.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")  # "auto" lifespan copes with this
        if self.everyone is None:
            self.everyone = asyncio.Event()
        await _read_body(receive)
        self.arrived += 1
        if self.arrived >= self.expected:
            self.everyone.set()
        try:
            await asyncio.wait_for(self.everyone.wait(), self.timeout)
            status, text = 200, b"together"
        except TimeoutError:
            status, text = 503, b"alone"
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": text})


class Slow:
    """ASGI app that signals when a request arrives, then answers after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.arrived: asyncio.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        if self.arrived is None:
            self.arrived = asyncio.Event()
        await _read_body(receive)
        self.arrived.set()
        await asyncio.sleep(self.delay)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"finished"})


class StreamingEcho:
    """ASGI app that streams the request body back as it arrives, chunk by chunk.

    ``messages`` counts the ``http.request`` messages of the last request (more than one: the
    body was handed over incrementally); ``largest`` is the largest chunk seen.
    """

    def __init__(self) -> None:
        self.messages = 0
        self.largest = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        self.messages = self.largest = 0
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        more = True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            self.messages += 1
            self.largest = max(self.largest, len(chunk))
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def pattern(size: int) -> bytes:
    """``size`` bytes of every byte value in turn (not compressible to nothing)."""
    block = bytes(range(256)) * 256
    return (block * (size // len(block) + 1))[:size]


def wsgi_echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Echoes the request as JSON (WSGI)."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    payload = {
        "method": environ["REQUEST_METHOD"],
        "script_name": environ["SCRIPT_NAME"],
        "path_info": environ["PATH_INFO"],
        "query_string": environ["QUERY_STRING"],
        "content_type": environ.get("CONTENT_TYPE", ""),
        "body": body.decode("latin-1"),
        "remote_addr": environ.get("REMOTE_ADDR"),
        "host": environ.get("HTTP_HOST"),
        "url_scheme": environ["wsgi.url_scheme"],
        "thread": threading.current_thread().name,
    }
    if environ["PATH_INFO"] == "/fail":
        raise RuntimeError("the application is broken")
    if environ["PATH_INFO"].startswith("/big/"):  # /big/<bytes>: a large body, returned whole
        data = pattern(int(environ["PATH_INFO"].rsplit("/", 1)[1]))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [data]
    start_response("202 Taken Care Of", [("Content-Type", "application/json"), ("X-App", "wsgi")])
    return [json.dumps(payload).encode()]


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass

    def _body_pieces(self, length: int) -> Iterator[bytes]:
        """The request body in pieces: ``Content-Length`` or the chunked coding."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                yield self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return
        while length:
            piece = self.rfile.read(min(length, 65536))
            if not piece:
                return
            length -= len(piece)
            yield piece

    def _answer(self) -> None:
        if self.path.startswith("/big/"):  # /big/<bytes>: a large body, written in pieces
            size = int(self.path.rsplit("/", 1)[1])
            data = pattern(size)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("X-Sha256", hashlib.sha256(data).hexdigest())
            self.end_headers()
            for offset in range(0, size, 256 * 1024):
                self.wfile.write(data[offset : offset + 256 * 1024])
            return
        length = int(self.headers.get("Content-Length") or 0)
        if self.path == "/digest":  # read the body in pieces; answer its size and SHA-256
            digest, size = hashlib.sha256(), 0
            for piece in self._body_pieces(length):
                digest.update(piece)
                size += len(piece)
            data = json.dumps(
                {
                    "length": size,
                    "sha256": digest.hexdigest(),
                    "transfer_encoding": self.headers.get("Transfer-Encoding"),
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        body = self.rfile.read(length) if length else b""
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/gzip":
            data = gzip.compress(b"compressed " * 100)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        data = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("latin-1"),
            }
        ).encode()
        self.send_response(200 if self.command != "PUT" else 418)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Local", "yes")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer


class LocalServer:
    """A threaded HTTP echo server on a free loopback port."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> LocalServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
