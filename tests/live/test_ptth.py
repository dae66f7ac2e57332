"""PTTH (``Upgrade: PTTH/1.0``) against a live gateway: handshake, reversed HTTP, failures.

PT-01..PT-12 of ../shared/spec/PROTOCOL.md §4 and §11 item 22. Tests on the module's ``gateway``
run once per broker, ``redis`` and ``memory`` (the PTTH listener shares the in-process queue with
the long-poll transport); tests that need other settings start gateways of their own. The last
tests are interop tests with the npm PTTH client ``reverse-http`` (installed in a session fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import h11
import httpx
import pytest

from ..conftest import FAST
from ..gateway_process import ROOT, Gateway, free_port, make_gateway, wait_for_port
from ..rh import Registered, envelope, register, unique_label

pytestmark = pytest.mark.asyncio

ACCEPT = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n"
TOKEN = "ptth-secret"


def _ptth_settings(port: int) -> dict[str, str]:
    return {"PTTH_LISTEN": f"127.0.0.1:{port}"}


def ptth_port(gateway: Gateway) -> int:
    return int(gateway.settings["PTTH_LISTEN"].rsplit(":", 1)[1])


def start_ptth_gateway(
    broker: str, tmp: Path, db_template: Path, redis_url: str, *, server: str | None = None
) -> Gateway:
    """A gateway with a PTTH listener, with the FAST settings (stop it when done)."""
    settings = {
        **FAST,
        "BROKER": broker,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        **_ptth_settings(free_port()),
    }
    return make_gateway(tmp, db_template, server=server, **settings).start()


@pytest.fixture(scope="module", params=["redis", "memory"])
def gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    db_template: Path,
    redis_url: str,
) -> Iterator[Gateway]:
    """One gateway with a PTTH listener per broker, with the FAST settings."""
    gw = start_ptth_gateway(request.param, tmp_path_factory.mktemp("ptth"), db_template, redis_url)
    yield gw
    gw.stop()


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=15) as c:
        yield c


# A PTTH application written with raw sockets -----------------------------------------------


class App:
    """The application side of one reversed socket: an HTTP server after the 101."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, timeout: float = 5) -> tuple[h11.Request, bytes]:
        """The next request the gateway writes on this socket."""
        conn = h11.Connection(h11.SERVER)
        body = b""
        request = None
        async with asyncio.timeout(timeout):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await self.reader.read(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert request is not None
                    return request, body
                else:
                    raise AssertionError(f"unexpected {event!r}")

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def closed_by_gateway(self, timeout: float = 5) -> bool:
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(65536) == b""
        except (ConnectionError, TimeoutError):
            return False

    def close(self) -> None:
        self.writer.close()


def upgrade_request(
    target: str,
    *,
    upgrade: str = "PTTH/1.0",
    connection: str = "Upgrade",
    extra: dict[str, str] | None = None,
) -> bytes:
    lines = [f"POST {target} HTTP/1.1", "Host: gateway.test"]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    lines += [f"Upgrade: {upgrade}", f"Connection: {connection}", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def connect_app(gateway: Gateway, target: str, **kwargs) -> App:
    """Upgrade a connection to ``target`` and return the application side; asserts the 101."""
    reader, writer = await asyncio.open_connection("127.0.0.1", ptth_port(gateway))
    writer.write(upgrade_request(target, **kwargs))
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head == ACCEPT
    return App(reader, writer)


def private_path(reg: Registered) -> str:
    return httpx.URL(reg.private).path


def label_of(reg: Registered) -> str:
    return reg.public.rstrip("/").rsplit("/", 1)[1]


def raw_exchange(gateway: Gateway, data: bytes, timeout: float = 3) -> bytes:
    """Send ``data`` on a fresh socket and read until the gateway closes it."""
    with socket.create_connection(("127.0.0.1", ptth_port(gateway)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def raw_exchange_head(gateway: Gateway, data: bytes) -> bytes:
    """Send ``data`` on a fresh socket and return the first chunk of the answer."""
    return raw_exchange_head_at(ptth_port(gateway), data)


def raw_exchange_head_at(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(data)
        return sock.recv(65536)


# Handshake ---------------------------------------------------------------------------------


async def test_handshake_101_is_byte_exact_in_one_segment(gateway, client):
    """PT-01, PT-02, PT-03: exactly three header lines, written at once, nothing after them."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    with socket.create_connection(("127.0.0.1", ptth_port(gateway)), timeout=3) as sock:
        sock.sendall(upgrade_request(private_path(reg)))
        first = sock.recv(65536)  # one recv: the head must not be split across writes
        assert first == ACCEPT
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(65536)  # no body, nothing else until a request arrives


async def test_connection_keep_alive_upgrade_is_accepted_with_exact_answer(gateway, client):
    """PT-01, PT-02, §11 item 22: ``keep-alive, Upgrade`` offered; the answer is ``Upgrade``."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gateway, private_path(reg), connection="keep-alive, Upgrade")
    public = asyncio.ensure_future(client.get(reg.public))
    await app.request()
    await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (await public).text == "ok"
    app.close()


async def test_ptth_0_9_is_echoed(gateway, client):
    """PT-10: the 2008 token ``PTTH/0.9`` is accepted and echoed back."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    answer = raw_exchange_head(gateway, upgrade_request(private_path(reg), upgrade="PTTH/0.9"))
    assert answer == ACCEPT.replace(b"PTTH/1.0", b"PTTH/0.9")


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("no upgrade", 400),
        ("websocket", 400),
        ("connection close", 400),
        ("no token", 401),
        ("other scheme", 401),
        ("bad token", 403),
        ("unknown label", 404),
        ("unknown private url", 404),
        ("unknown endpoint", 404),
    ],
)
async def test_refusals_are_plain_http_errors_then_close(gateway, client, case, status):
    """PT-04: a refused upgrade gets an ordinary final status, a text body, and a close."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    label = label_of(reg)
    requests = {
        "no upgrade": b"POST /ptth/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        "websocket": upgrade_request(private_path(reg), upgrade="websocket"),
        "connection close": upgrade_request(private_path(reg), connection="close"),
        "no token": upgrade_request(f"/ptth/{label}"),
        "other scheme": upgrade_request(f"/ptth/{label}", extra={"Authorization": "Basic dTpw"}),
        "bad token": upgrade_request(f"/ptth/{label}", extra={"Authorization": "Bearer wrong"}),
        "unknown label": upgrade_request(
            f"/ptth/{unique_label('nobody')}", extra={"Authorization": f"Bearer {TOKEN}"}
        ),
        "unknown private url": upgrade_request(private_path(reg)[:-4] + "AAAA"),
        "unknown endpoint": upgrade_request("/"),
    }
    answer = await asyncio.to_thread(raw_exchange, gateway, requests[case])
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"\r\nContent-Type: text/plain; charset=utf-8" in head
    assert body.startswith(f"{status} ".encode())
    if status == 401:
        assert b"\r\nWWW-Authenticate: Bearer" in head


# Reversed HTTP ------------------------------------------------------------------------------


async def test_request_arrives_with_host_and_is_answered(gateway, client):
    """PT-05, PT-06, PT-12: Host and Forwarded; keep-alive; hop-by-hop dropped; chunked."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gateway, private_path(reg))
    public = asyncio.ensure_future(
        client.post(reg.public + "a%2Fb?x=%20", content=b"payload", headers={"X-Dup": "1"})
    )
    request, body = await app.request()
    assert request.method == b"POST"
    assert request.target == f"/{label_of(reg)}/a%2Fb?x=%20".encode()
    headers = dict(request.headers)
    assert headers[b"host"] == f"127.0.0.1:{gateway.port}".encode()
    assert headers[b"x-dup"] == b"1"
    assert headers[b"forwarded"].startswith(b'for="127.0.0.1:')
    assert body == b"payload"
    await app.send(
        b"HTTP/1.1 201 Made\r\nX-App: yes\r\nKeep-Alive: timeout=5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n4\r\nmade\r\n0\r\n\r\n"
    )
    response = await public
    assert response.status_code == 201
    assert response.content == b"made"
    assert response.headers["X-App"] == "yes"
    assert response.headers["Content-Length"] == "4"
    assert "Keep-Alive" not in response.headers
    # PT-06: the same socket serves the next request.
    public = asyncio.ensure_future(client.head(reg.public + "again"))
    request, _ = await app.request()
    assert request.method == b"HEAD" and request.target.endswith(b"/again")
    await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n")
    response = await public
    assert response.status_code == 200 and response.content == b""
    app.close()


async def test_token_endpoint_serves_the_registration(gateway, client):
    """PT-09: ``/ptth/<label>`` with the registration's token as a Bearer credential."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(
        gateway, f"/ptth/{label_of(reg)}", extra={"Authorization": f"Bearer {TOKEN}"}
    )
    public = asyncio.ensure_future(client.get(reg.public + "via-token"))
    request, _ = await app.request()
    assert request.target.endswith(b"/via-token")
    await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ntoken")
    assert (await public).text == "token"
    app.close()


async def test_close_after_one_response_then_reconnect(gateway, client):
    """PT-06: a Go-style client serves one request, closes, and connects again."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    for i in range(3):
        app = await connect_app(gateway, private_path(reg))
        public = asyncio.ensure_future(client.get(reg.public + f"n{i}"))
        request, _ = await app.request()
        assert request.target.endswith(f"/n{i}".encode())
        await app.send(f"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{i}".encode())
        app.close()
        response = await public
        assert (response.status_code, response.text) == (200, str(i))


async def test_response_delimited_by_close_is_complete(gateway, client):
    """PT-05: a response without Content-Length ends when the application closes."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gateway, private_path(reg))
    public = asyncio.ensure_future(client.get(reg.public))
    await app.request()
    await app.send(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
    app.close()
    response = await public
    assert (response.status_code, response.text) == (200, "until the end")


async def test_idle_close_sends_the_next_request_to_a_long_poller(gateway, client):
    """PT-07, mixed transports: a socket closed while idle is a poller gone, nothing is lost."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gateway, private_path(reg))
    app.close()
    await asyncio.sleep(0.3)
    poll = asyncio.ensure_future(client.get(reg.first))
    await asyncio.sleep(0.2)
    public = asyncio.ensure_future(client.get(reg.public + "to-longpoll"))
    delivered = await poll
    assert delivered.status_code == 200
    assert b"/to-longpoll HTTP/1.1" in delivered.content
    await client.post(reg.first, content=envelope(body=b"long-polled"))
    assert (await public).text == "long-polled"


async def test_both_transports_share_one_name(gateway, client):
    """Mixed transports: a PTTH socket and a long-poller of one name both get requests."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gateway, private_path(reg))
    poll = asyncio.ensure_future(client.get(reg.first))
    await asyncio.sleep(0.3)
    publics = [asyncio.ensure_future(client.get(reg.public + f"p{i}")) for i in range(2)]
    request, _ = await app.request()
    await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nptth")
    delivered = await poll
    assert delivered.status_code == 200
    await client.post(reg.first, content=envelope(body=b"poll"))
    assert sorted([(await p).text for p in publics]) == ["poll", "ptth"]
    app.close()


async def test_close_after_request_written_is_502_and_never_replayed(gateway, client):
    """PT-07: a written request whose socket closed gets 502; no other poller sees it again."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gateway, private_path(reg))
    public = asyncio.ensure_future(client.post(reg.public + "once", content=b"side effect"))
    await app.request()
    app.close()
    response = await public
    assert response.status_code == 502
    assert "closed the connection" in response.text
    again = await client.get(reg.first)  # a long-poller waits a whole POLL_TIMEOUT in vain
    assert again.status_code == 204


async def test_bad_response_is_502_and_the_socket_closed(gateway, client):
    """RH-50 on PTTH: an unparseable response gives 502; the gateway drops the socket."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gateway, private_path(reg))
    public = asyncio.ensure_future(client.get(reg.public))
    await app.request()
    await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
    response = await public
    assert response.status_code == 502
    assert response.text.startswith("502 Bad response from the application")
    assert await app.closed_by_gateway()


async def test_silent_application_gets_504_and_the_socket_closed(gateway, client):
    """RH-65 on PTTH: no response before the deadline gives 504 and the socket is dropped."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gateway, private_path(reg))
    public = asyncio.ensure_future(client.get(reg.public))
    await app.request()
    response = await public
    assert response.status_code == 504
    assert await app.closed_by_gateway(timeout=8)


async def test_deleting_the_registration_closes_idle_sockets(gateway, client):
    """RH-24 on PTTH: a deleted registration's sockets are closed instead of answered 410."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gateway, private_path(reg))
    await asyncio.sleep(0.2)
    assert (await client.delete(reg.private)).status_code == 204
    assert await app.closed_by_gateway()


async def test_ptth_socket_on_one_process_serves_requests_of_another(start_gateway, client):
    """Redis broker: requests made on process A are written on a PTTH socket held by B."""
    prefix = f"ptth{uuid.uuid4().hex[:8]}"
    a = start_gateway("redis", prefix=prefix)
    b = start_gateway("redis", prefix=prefix, DB_PATH=str(a.db_path), **_ptth_settings(free_port()))
    reg = await register(client, a.service_url, unique_label(), token=TOKEN)
    app = await connect_app(b, f"/ptth/{label_of(reg)}", extra={"Authorization": f"Bearer {TOKEN}"})
    for i in range(3):
        public = asyncio.ensure_future(client.get(reg.public + f"from-a{i}"))
        request, _ = await app.request()
        assert dict(request.headers)[b"host"] == f"127.0.0.1:{a.port}".encode()
        await app.send(f"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{i}".encode())
        assert (await public).text == str(i)
    app.close()


async def test_limits_and_forwarded_switch(start_gateway, client):
    """MAX_BODY_SIZE bounds PTTH responses (502); PTTH_FORWARDED=0 leaves Forwarded out."""
    gw = start_gateway(
        "redis", MAX_BODY_SIZE="1000", PTTH_FORWARDED="0", **_ptth_settings(free_port())
    )
    reg = await register(client, gw.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gw, private_path(reg))
    public = asyncio.ensure_future(client.get(reg.public))
    request, _ = await app.request()
    assert b"forwarded" not in dict(request.headers)
    await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n" + b"x" * 1001)
    response = await public
    assert response.status_code == 502
    assert "too large" in response.text
    assert await app.closed_by_gateway()


async def test_shutdown_closes_idle_sockets(start_gateway, client):
    """SIGTERM: the listener stops and idle reversed sockets are closed (they reconnect)."""
    gw = start_gateway("memory", **_ptth_settings(free_port()))
    reg = await register(client, gw.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gw, private_path(reg))
    assert await asyncio.to_thread(gw.stop, signal.SIGTERM) == 0
    assert await app.closed_by_gateway(timeout=1)
    assert "PTTH listener closed" in gw.log()


def _rungateway(gw: Gateway, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "rungateway", f"127.0.0.1:{gw.port}", "--no-static", *args],
        cwd=ROOT,
        env=gw.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_rungateway_ptth_option(tmp_path, db_template):
    """``rungateway --ptth [host:]port`` starts the listener (no PTTH_LISTEN setting needed)."""
    gw = make_gateway(tmp_path, db_template, BROKER="memory")
    port = free_port()
    process = _rungateway(gw, "--ptth", str(port))
    try:
        await asyncio.to_thread(wait_for_port, gw.port, process)
        async with httpx.AsyncClient(timeout=15) as client:
            reg = await register(client, gw.service_url, unique_label(), token=TOKEN)
        head = await asyncio.to_thread(
            raw_exchange_head_at, port, upgrade_request(private_path(reg))
        )
        assert head == ACCEPT
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.to_thread(process.communicate, timeout=15)
    assert process.returncode == 0
    assert f"PTTH listener on 127.0.0.1:{port}" in output


@pytest.mark.parametrize("problem", ["bad value", "port in use"])
async def test_rungateway_ptth_problems_stop_it_at_once(tmp_path, db_template, problem):
    """A malformed ``--ptth`` or a PTTH port in use makes rungateway exit non-zero."""
    gw = make_gateway(tmp_path, db_template, BROKER="memory")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        value = "nonsense:port" if problem == "bad value" else str(taken.getsockname()[1])
        process = _rungateway(gw, "--ptth", value)
        output, _ = await asyncio.to_thread(process.communicate, timeout=30)
    assert process.returncode != 0
    assert ("--ptth" if problem == "bad value" else "Address already in use") in output


# Interop: the npm package reverse-http ------------------------------------------------------

NODE_APP = r"""
const ReverseServer = require('reverse-http')
const [host, port, path, token, keepAlive] = process.argv.slice(2)
const opts = { host: host, port: Number(port), path: path, headers: {} }
if (token) opts.headers['Authorization'] = 'Bearer ' + token
let served = 0
const server = ReverseServer(opts, (req, res) => {
  let body = ''
  req.on('data', (chunk) => { body += chunk })
  req.on('end', () => {
    served += 1
    res.setHeader('Content-Type', 'text/plain')
    res.setHeader('X-Seen-Host', req.headers.host || '')
    res.setHeader('X-Seen-Forwarded', req.headers.forwarded || '')
    res.end('hello from node #' + served + ' ' + req.method + ' ' + req.url + ' ' + body)
  })
})
server.keepAliveTimeout = Number(keepAlive)
server.on('connection', () => console.log('connected'))
server.on('error', (err) => console.log('error ' + err.message))
"""


@pytest.fixture(scope="session")
def reverse_http(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with ``reverse-http@1.3.0`` installed and the test app script."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("node and npm are needed for the reverse-http interop test")
    directory = tmp_path_factory.mktemp("npm")
    result = subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(directory),
            "--no-audit",
            "--no-fund",
            "reverse-http@1.3.0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-800:]
        if any(
            word in output
            for word in ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "network")
        ):
            pytest.skip(f"npm cannot reach the registry to install reverse-http: {output}")
        pytest.fail(f"npm install reverse-http@1.3.0 failed: {output}")
    (directory / "app.js").write_text(NODE_APP)
    return directory


async def _next_line(process: asyncio.subprocess.Process, timeout: float = 10) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(timeout):
        return (await process.stdout.readline()).decode().strip()


@contextlib.asynccontextmanager
async def node_app(
    directory: Path, gateway: Gateway, path: str, token: str = "", keep_alive_ms: int = 5000
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run app.js (reverse-http) against the gateway's PTTH port; stopped by PID afterwards."""
    process = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node",
        str(directory / "app.js"),
        "127.0.0.1",
        str(ptth_port(gateway)),
        path,
        token,
        str(keep_alive_ms),
        cwd=directory,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_npm_reverse_http_interop(gateway, client, reverse_http):
    """PT-01..PT-07 with the npm client: 101 accepted, requests served, idle close reconnects."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    label = label_of(reg)
    # keepAliveTimeout 300 ms: Node closes the idle socket soon after each response (PT-07).
    async with node_app(reverse_http, gateway, f"/ptth/{label}", TOKEN, 300) as node:
        assert await _next_line(node) == "connected"
        response = await client.post(reg.public + "greet?x=1", content=b"hi")
        assert response.status_code == 200
        assert response.text == f"hello from node #1 POST /{label}/greet?x=1 hi"
        assert response.headers["X-Seen-Host"] == f"127.0.0.1:{gateway.port}"
        assert response.headers["X-Seen-Forwarded"].startswith('for="127.0.0.1:')
        assert await _next_line(node) == "connected"  # reverse-http reconnected after the close
        await asyncio.sleep(0.2)
        response = await client.get(reg.public + "again")
        assert response.status_code == 200
        assert response.text.startswith("hello from node #2 GET /")


async def test_npm_request_queued_before_connect(gateway, client, reverse_http):
    """§11 item 22: a queued request is written right after the 101; the private URL works."""
    reg = await register(client, gateway.service_url, unique_label(), token=TOKEN)
    public = asyncio.ensure_future(client.get(reg.public + "early"))
    await asyncio.sleep(0.1)
    async with node_app(reverse_http, gateway, private_path(reg)):
        response = await public
        assert response.status_code == 200, response.text
        assert response.text == f"hello from node #1 GET /{label_of(reg)}/early "


@pytest.mark.parametrize("broker", ["redis", "memory"])
async def test_large_bodies_stream_through_ptth(start_gateway, client, broker):
    """Issue 4: a streamed request body is written to the socket as it arrives (chunked when
    its length is unknown) and a large response goes on to the requestor as it is read."""
    gw = start_gateway(
        broker, STREAM_THRESHOLD="65536", MAX_BODY_SIZE="1048576", **_ptth_settings(free_port())
    )
    reg = await register(client, gw.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gw, private_path(reg))
    upload = bytes(range(256)) * 4096 * 3  # 3 MiB: more than MAX_BODY_SIZE, so only streaming
    public = asyncio.ensure_future(client.post(reg.public + "big", content=upload))
    request, body = await app.request(timeout=20)
    assert dict(request.headers)[b"content-length"] == str(len(upload)).encode()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(upload).hexdigest()
    answer = upload * 4  # 12 MiB back
    await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer))
    for start in range(0, len(answer), 256 * 1024):
        await app.send(answer[start : start + 256 * 1024])
    response = await public
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(answer))
    assert hashlib.sha256(response.content).hexdigest() == hashlib.sha256(answer).hexdigest()
    # The socket is still good for the next request.
    second = asyncio.ensure_future(client.get(reg.public + "small"))
    await app.request()
    await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (await second).text == "ok"


async def test_response_cut_off_mid_stream_breaks_the_public_response(start_gateway, client):
    gw = start_gateway("redis", STREAM_THRESHOLD="65536", **_ptth_settings(free_port()))
    reg = await register(client, gw.service_url, unique_label(), token=TOKEN)
    app = await connect_app(gw, private_path(reg))
    public = asyncio.ensure_future(client.get(reg.public))
    await app.request()
    await app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 200000)
    await asyncio.sleep(0.3)
    app.writer.close()
    with pytest.raises(httpx.TransportError):
        await public  # the connection is dropped: the client knows the body is incomplete
