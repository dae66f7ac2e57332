"""The browser client ``reversehttp.js`` in a real headless Chromium, and CORS on the gateway.

A page served from a second loopback origin (a tiny ``http.server``) loads the module, registers
with a live gateway that allows that origin (``CORS_ALLOWED_ORIGINS``) and serves requests in
both encodings; the tests fetch its public URL with httpx. Chromium is Debian's
``/usr/bin/chromium`` (``scripts/test.sh`` installs it), driven by Playwright's Python package;
no browser is ever downloaded. Every wait is bounded (Playwright's default timeout, httpx's
timeout, explicit deadlines).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.test import override_settings

from reversehttp_gateway import cors
from reversehttp_gateway.checks import check_cors

from ..conftest import FAST
from ..gateway_process import ROOT, Gateway, make_gateway, wait_for_port
from ..rh import unique_label
from .conftest import TIMEOUT_MS

MODULE = ROOT / "reversehttp_gateway" / "static" / "reversehttp_gateway" / "reversehttp.js"
EXPOSED = "Link, Location, Requesting-Client"
ENCODINGS = ["message/http", "json"]

# The test page: a handler with one route per behaviour under test (path mode: /<label>/<route>).
TEST_PAGE = b"""<!doctype html>
<meta charset="utf-8"><title>reversehttp.js test page</title>
<script type="module">
import { ReverseHttpServer } from "./reversehttp.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
window.served = [];
window.errors = [];
window.registrations = [];
window.started = [];

async function handler(request) {
  const [path, query = ""] = request.url.split("?");
  const route = path.split("/").slice(2).join("/");
  window.started.push(route);
  switch (route) {
    case "hello":
      return {
        status: 200,
        headers: [["Content-Type", "text/html; charset=utf-8"], ["X-Served-By", "chromium"],
                  ["Set-Cookie", "a=1"], ["Set-Cookie", "b=2"]],
        body: `<h1>Hello</h1><p>${query}</p>`,
      };
    case "echo":
      return {
        status: 201,
        headers: {
          "Content-Type": request.header("content-type") ?? "application/octet-stream",
          "X-Method": request.method,
          "X-Dup": request.headers.filter(([n]) => n.toLowerCase() === "x-dup")
            .map(([, v]) => v).join("|"),
          "X-Length": String(request.body.length),
          "X-Client": request.requestingClient ?? "",
        },
        body: request.body,
      };
    case "binary":
      return {
        headers: [["Content-Type", "application/octet-stream"]],
        body: Uint8Array.from({ length: 256 }, (_, i) => i),
      };
    case "text":
      return { body: "h\\u00e9llo " + request.text() };
    case "response":
      return new Response("from a Response", { status: 202, headers: { "X-Kind": "Response" } });
    case "boom":
      throw new Error("boom");
    case "slow":
      await sleep(Number(new URLSearchParams(query).get("ms") ?? 500));
      return { body: "slow done" };
    default:
      return { status: 404, body: "no such route" };
  }
}

window.startServer = async (options) => {
  const server = new ReverseHttpServer({ ...options, handler });
  server.addEventListener("request", (e) => window.served.push(e.detail));
  server.addEventListener("error", (e) => window.errors.push(String(e.detail.error)));
  server.addEventListener("registered", (e) => window.registrations.push(e.detail));
  window.server = server;
  try {
    await server.start();
  } catch (error) {
    return { error: String(error), name: error.name, status: error.status ?? null };
  }
  return { publicUrl: server.publicUrl, privateUrl: server.privateUrl };
};
window.ready = true;
</script>
"""


# -- fixtures ---------------------------------------------------------------------------------


class PageServer:
    """A static HTTP server on a free loopback port: a second origin for the test page."""

    def __init__(self, files: dict[str, tuple[bytes, str]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                found = files.get(self.path.split("?")[0])
                if found is None:
                    self.send_error(404)
                    return
                body, content_type = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> PageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    files = {
        "/page.html": (TEST_PAGE, "text/html; charset=utf-8"),
        "/reversehttp.js": (MODULE.read_bytes(), "text/javascript; charset=utf-8"),
    }
    with PageServer(files) as server:
        yield server.origin


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    page.console = console  # shown by the assertion messages below
    yield page
    context.close()


@pytest.fixture
def cors_gateway(start_gateway: Callable[..., Gateway], page_origin: str) -> Gateway:
    """A gateway (redis broker) that allows the test page's origin."""
    return start_gateway("redis", CORS_ALLOWED_ORIGINS=page_origin)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15) as client:
        yield client


def open_test_page(page: Any, page_origin: str) -> None:
    page.goto(page_origin + "/page.html")
    page.wait_for_function("window.ready === true")


def start_in_page(page: Any, page_origin: str, gateway: Gateway, **options: Any) -> dict[str, Any]:
    """Open the test page and start a ReverseHttpServer there; returns its URLs (or error)."""
    open_test_page(page, page_origin)
    options = {"gateway": gateway.service_url, "name": unique_label("b"), **options}
    return page.evaluate("options => window.startServer(options)", options)


def started(page: Any, page_origin: str, gateway: Gateway, **options: Any) -> dict[str, Any]:
    urls = start_in_page(page, page_origin, gateway, **options)
    assert "error" not in urls, (urls, page.console)
    return urls


def wait_until(predicate: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


# -- the browser client -----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_page_serves_requests(page, page_origin, cors_gateway, http, encoding):
    """A cross-origin page registers and answers: status, headers, text and binary bodies."""
    urls = started(page, page_origin, cors_gateway, encoding=encoding)
    public = urls["publicUrl"]
    assert public.startswith(cors_gateway.url + "/b")
    assert urls["privateUrl"].startswith(cors_gateway.service_url + "/r/")

    hello = http.get(public + "hello?x=1&y=%C3%A9")
    assert hello.status_code == 200, (hello.text, page.console)
    assert hello.headers["Content-Type"] == "text/html; charset=utf-8"
    assert hello.headers["X-Served-By"] == "chromium"
    assert hello.headers.get_list("Set-Cookie") == ["a=1", "b=2"]
    assert hello.text == "<h1>Hello</h1><p>x=1&y=%C3%A9</p>"

    payload = bytes(range(256)) * 3 + b"\xff\xfe end"
    echo = http.post(
        public + "echo",
        content=payload,
        headers=[("Content-Type", "application/x-test"), ("X-Dup", "1"), ("X-Dup", "2")],
    )
    assert echo.status_code == 201
    assert echo.content == payload  # base64 both ways in JSON mode, raw bytes in message/http
    assert echo.headers["Content-Type"] == "application/x-test"
    assert echo.headers["X-Method"] == "POST"
    assert echo.headers["X-Dup"] == "1|2"
    assert echo.headers["X-Length"] == str(len(payload))
    assert echo.headers["X-Client"].startswith("127.0.0.1:")

    binary = http.get(public + "binary")
    assert binary.status_code == 200
    assert binary.content == bytes(range(256))
    assert binary.headers["Content-Type"] == "application/octet-stream"
    assert binary.headers["Content-Length"] == "256"

    text = http.put(public + "text", content="wörld".encode())
    assert text.status_code == 200
    assert text.headers["Content-Type"] == "text/plain; charset=utf-8"  # the default for strings
    assert text.text == "héllo wörld"

    from_response = http.get(public + "response")
    assert (from_response.status_code, from_response.text) == (202, "from a Response")
    assert from_response.headers["X-Kind"] == "Response"

    head = http.head(public + "binary")
    assert head.status_code == 200 and head.content == b""

    boom = http.get(public + "boom")
    assert boom.status_code == 500
    assert boom.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert boom.text == "500 The application failed to handle this request"

    page.wait_for_function("window.served.length >= 7")
    served = page.evaluate("window.served")
    assert [(s["method"], s["status"]) for s in served] == [
        ("GET", 200),
        ("POST", 201),
        ("GET", 200),
        ("PUT", 200),
        ("GET", 202),
        ("HEAD", 200),
        ("GET", 500),
    ], served
    assert served[0]["url"].endswith("/hello?x=1&y=%C3%A9")
    assert any("boom" in error for error in page.evaluate("window.errors"))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_pollers_share_the_work_and_reregister_after_delete(
    page, page_origin, cors_gateway, http, encoding
):
    """Two pollers serve concurrently; a deleted registration (410) is registered again."""
    urls = started(page, page_origin, cors_gateway, encoding=encoding, pollers=2)
    public = urls["publicUrl"]
    with ThreadPoolExecutor(2) as pool:
        slow = list(pool.map(lambda _: http.get(public + "slow?ms=700"), range(2)))
    assert [r.status_code for r in slow] == [200, 200]
    assert {r.text for r in slow} == {"slow done"}
    served = page.evaluate("window.served")
    assert {entry["poller"] for entry in served} == {0, 1}, served

    registrations = len(page.evaluate("window.registrations"))
    assert http.delete(urls["privateUrl"]).status_code == 204
    wait_until(
        lambda: len(page.evaluate("window.registrations")) >= registrations + 2,
        what="both pollers to register again",
    )
    again = page.evaluate("window.registrations")[registrations:]
    assert sorted(r["created"] for r in again) == [False, True]  # one 201, then a 204
    assert again[0]["publicUrl"] == public
    assert page.evaluate("window.server.privateUrl") != urls["privateUrl"]  # a new incarnation
    hello = http.get(public + "hello")
    assert hello.status_code == 200, (hello.text, page.console)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_stop_answers_requests_in_flight_then_deletes(
    page, page_origin, cors_gateway, http, encoding
):
    """stop(): the request being handled still gets its reply; then the name is gone (404)."""
    urls = started(page, page_origin, cors_gateway, encoding=encoding)
    public = urls["publicUrl"]
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(http.get, public + "slow?ms=1000")
        page.wait_for_function("window.started.includes('slow')")
        began = time.monotonic()
        assert page.evaluate("window.server.stop().then(() => window.server.running)") is False
        stop_seconds = time.monotonic() - began
        response = in_flight.result(timeout=15)
    assert (response.status_code, response.text) == (200, "slow done")
    assert stop_seconds < 5, stop_seconds  # polls end at once (410), not at POLL_TIMEOUT
    gone = http.get(public + "hello")
    assert gone.status_code == 404
    assert http.get(urls["privateUrl"]).status_code == 404
    errors = page.evaluate("window.errors")
    assert errors == [], errors


def test_start_rejects_with_the_gateways_reason(page, page_origin, cors_gateway):
    """A refused registration rejects start() with a GatewayError carrying the status."""
    result = start_in_page(page, page_origin, cors_gateway, name="reversehttp")
    assert result["name"] == "GatewayError"
    assert result["status"] == 400
    assert "Registration refused" in result["error"]


def test_page_on_an_origin_not_allowed_cannot_register(page, page_origin, start_gateway):
    """Without CORS_ALLOWED_ORIGINS the browser hides the gateway's answer from the page."""
    gateway = start_gateway("redis")
    result = start_in_page(page, page_origin, gateway)
    assert result["name"] == "TypeError", result  # "Failed to fetch": blocked by CORS


# -- CORS -------------------------------------------------------------------------------------


def test_cors_preflight_and_response_headers(cors_gateway, page_origin, http):
    """Allowed origins get preflight answers and exposed headers; others 403 and nothing."""
    service = cors_gateway.service_url
    preflight = {"Origin": page_origin, "Access-Control-Request-Method": "POST"}
    allowed = http.options(
        service + "/r/x/y/json",
        headers={**preflight, "Access-Control-Request-Headers": "content-type"},
    )
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == page_origin
    assert allowed.headers["Access-Control-Allow-Methods"] == "GET, POST, PUT, DELETE, OPTIONS"
    assert allowed.headers["Access-Control-Allow-Headers"] == (
        "Content-Type, Authorization, Accept, Reversehttp-Poll"
    )
    assert allowed.headers["Access-Control-Max-Age"] == "600"
    assert allowed.headers["Vary"] == "Origin"
    assert allowed.content == b""

    refused = http.options(service, headers={**preflight, "Origin": "http://evil.example"})
    assert refused.status_code == 403
    assert refused.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert refused.text.strip() == "403 Origin not allowed"
    assert "Access-Control-Allow-Origin" not in refused.headers

    name = unique_label("c")
    registered = http.post(
        service, data={"name": name, "token": "t"}, headers={"Origin": page_origin}
    )
    assert registered.status_code == 201
    assert registered.headers["Access-Control-Allow-Origin"] == page_origin
    assert registered.headers["Access-Control-Expose-Headers"] == EXPOSED
    assert "Origin" in registered.headers["Vary"]
    assert registered.headers["Link"] and registered.headers["Location"]  # unchanged otherwise

    # Error paths are covered too (the headers are added to whatever the endpoint sends).
    missing = http.get(service + "/r/nobody/secret/slot", headers={"Origin": page_origin})
    assert missing.status_code == 404
    assert missing.headers["Access-Control-Allow-Origin"] == page_origin

    other = http.post(service, data={"name": name, "token": "t"}, headers={"Origin": "http://x.y"})
    assert other.status_code == 204
    assert "Access-Control-Allow-Origin" not in other.headers
    assert other.headers["Vary"] == "Origin"
    plain = http.post(service, data={"name": name, "token": "t"})
    assert "Access-Control-Allow-Origin" not in plain.headers

    # The staff status page (a Django view on the Service URL) is under SERVICE_PATH too.
    status = http.get(service, headers={"Origin": page_origin})
    assert status.headers["Access-Control-Allow-Origin"] == page_origin

    # Public URLs are the applications' business: OPTIONS is relayed, not answered here.
    public = http.options(cors_gateway.url + f"/{unique_label('n')}/", headers=preflight)
    assert public.status_code == 404
    assert "Access-Control-Allow-Origin" not in public.headers


def test_cors_off_by_default(start_gateway, page_origin, http):
    """Default []: no CORS headers; preflights are refused."""
    gateway = start_gateway("redis")
    headers = {"Origin": page_origin, "Access-Control-Request-Method": "POST"}
    assert http.options(gateway.service_url, headers=headers).status_code == 403
    response = http.post(
        gateway.service_url, data={"name": unique_label(), "token": "t"}, headers=headers
    )
    assert response.status_code == 201
    assert not any(name.lower().startswith("access-control-") for name in response.headers)
    assert "Vary" not in response.headers


def _asgi_call(handler: Callable[..., Any], scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, handler(scope, send)).result(timeout=10)
    return sent


def test_cors_wildcard_echoes_the_origin_and_merges_vary():
    """["*"] allows any origin (echoed, with Vary: Origin merged into an existing Vary)."""
    scope = {
        "type": "http",
        "method": "OPTIONS",
        "headers": [
            (b"origin", b"https://any.example"),
            (b"access-control-request-method", b"PUT"),
        ],
    }
    with override_settings(REVERSEHTTP_GATEWAY={"CORS_ALLOWED_ORIGINS": ["*"]}):
        assert cors.is_preflight(scope)
        (start, _body) = _asgi_call(cors.respond_preflight, scope)
        assert start["status"] == 204
        assert (b"access-control-allow-origin", b"https://any.example") in start["headers"]

        async def endpoint(scope: dict[str, Any], send: Any) -> None:
            wrapped = cors.wrap_send(scope, send)
            await wrapped(
                {"type": "http.response.start", "status": 200, "headers": [(b"vary", b"Cookie")]}
            )
            await wrapped({"type": "http.response.body", "body": b"ok"})

        (start, body) = _asgi_call(endpoint, {**scope, "method": "GET"})
    headers = dict(start["headers"])
    assert headers[b"access-control-allow-origin"] == b"https://any.example"
    assert headers[b"access-control-expose-headers"] == EXPOSED.encode()
    assert headers[b"vary"] == b"Cookie, Origin"
    assert body == {"type": "http.response.body", "body": b"ok"}


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ([], True),
        (["*"], True),
        (["http://127.0.0.1:8000", "https://App.example"], True),
        ("https://app.example", False),  # a string, not a list
        (["https://app.example/"], False),  # a path
        (["app.example"], False),
        (["http://app.example:port"], False),
        ([None], False),
    ],
)
def test_malformed_cors_allowed_origins_is_e008(value, ok):
    with override_settings(REVERSEHTTP_GATEWAY={"CORS_ALLOWED_ORIGINS": value}):
        ids = [message.id for message in check_cors()]
    assert ids == ([] if ok else ["reversehttp_gateway.E008"])


# -- the demo page of the example project -----------------------------------------------------


class StaticServingGateway(Gateway):
    """A gateway started like ``rungateway`` by default: it serves STATIC_URL itself."""

    def start(self) -> Gateway:
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed with the process)
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "rungateway", f"127.0.0.1:{self.port}"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for_port(self.port, self.process)
        return self


@pytest.fixture
def static_gateway(tmp_path: Path, db_template: Path) -> Iterator[Gateway]:
    base = make_gateway(tmp_path, db_template, **{**FAST, "BROKER": "memory"})
    gateway = StaticServingGateway(base.port, base.db_path, base.env, base.log_path)
    yield gateway.start()
    gateway.stop()


def test_demo_page_serves_a_greeting(page, static_gateway, http, tmp_path):
    """The example project's demo page registers, serves a greeting, logs it, and stops."""
    page.goto(static_gateway.url + "/gateway/demo/")
    name = unique_label("demo")
    page.fill("#name", name)
    page.select_option("#encoding", "json")
    page.click("#start")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Serving')")
    public = page.text_content("#public-url")
    assert public == f"{static_gateway.url}/{name}/", page.console

    greeting = http.get(public + "welcome?from=test")
    assert greeting.status_code == 200, (greeting.text, page.console)
    assert greeting.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Hello from a browser tab!" in greeting.text
    assert f"<code>/{name}/welcome?from=test</code>" in greeting.text
    page.wait_for_selector("#log td.url")
    assert page.text_content("#log td.url") == f"/{name}/welcome?from=test"

    screenshot = tmp_path / "demo.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 1000
    if os.environ.get("RHGW_SCREENSHOT_DIR"):  # to look at it; never committed
        target = Path(os.environ["RHGW_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        (target / "demo.png").write_bytes(screenshot.read_bytes())

    page.click("#stop")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Stopped')")
    assert http.get(public).status_code == 404
