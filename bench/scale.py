#!/usr/bin/env python3
"""Scale figures of issue 5, measured on one gateway process (docs/benchmarks.md).

1. **Names and waiting pollers**: register ``--names`` (10,000) names, then hold ``--pollers``
   (1,000) long-polls waiting, one per name, on one ``rungateway`` process; report its RSS
   (target: at most 300 MiB) idle, after the registrations, and while the pollers wait. Before
   the figure is taken, every poll must still be open and one relayed request must go through
   a waiting poller (so they are live pollers, not dead sockets).
2. **100 MiB body over the WebSocket transport**: an application on the multiplexed WebSocket
   (docs/websocket.md) streams a 100 MiB response (GET), and echoes a 100 MiB request body
   (POST); report how much the gateway's peak RSS (VmHWM) grew during each (target: at most
   50 MiB), each on a fresh gateway process, after a 1 MiB warm-up.

Each part runs for each ``--brokers`` entry (redis, memory), on ``rungateway --server``
``--server`` (uvicorn, the default, or daphne). The gateway runs with its defaults
except: a fresh SQLite database in a temp dir, ``REGISTRATIONS_PER_MINUTE=0`` (10,000 names
come from one IP), ``POLL_TIMEOUT=600`` (so that polls wait for the whole measurement) and a
1-hour lease. Everything listens on 127.0.0.1 (gateway :18280, private Redis :18289 only if
none answers on :6379); processes are stopped by PID; every wait is bounded.

    .venv/bin/python bench/scale.py                       # both parts, both brokers
    .venv/bin/python bench/scale.py --names 2000 --pollers 200 --brokers memory --skip-body
    .venv/bin/python bench/scale.py --skip-pollers --brokers redis --server uvicorn

Writes var/bench/scale-<stamp>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.ws_streaming_app import MIB, frame, pattern, streaming_app  # noqa: E402

GW_PORT = int(os.environ.get("SCALE_GW_PORT", "18280"))
OWN_REDIS_PORT = int(os.environ.get("SCALE_REDIS_PORT", "18289"))


# ---------------------------------------------------------------- processes
def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def established(port: int) -> int:
    """ESTABLISHED TCP connections whose local port is ``port`` (server side), IPv4."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port and f[3] == "01":
            n += 1
    return n


class Redis:
    """The running Redis on :6379 if it answers, else a private redis-server (stopped by PID)."""

    def __init__(self, tmp: Path) -> None:
        self.process: subprocess.Popen | None = None
        if port_open(6379) and self._ping(6379):
            self.url = "redis://127.0.0.1:6379/0"
        else:
            if port_open(OWN_REDIS_PORT):
                sys.exit(f"port {OWN_REDIS_PORT} is in use")
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(OWN_REDIS_PORT),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while not port_open(OWN_REDIS_PORT):
                if time.monotonic() > deadline:
                    sys.exit("redis-server did not start")
                time.sleep(0.05)
            self.url = f"redis://127.0.0.1:{OWN_REDIS_PORT}/0"

    @staticmethod
    def _ping(port: int) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def drop_prefix(self, prefix: str) -> None:
        import redis

        r = redis.Redis.from_url(self.url)
        keys = list(r.scan_iter(match=prefix + ":*", count=1000))[:500_000]
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i : i + 1000])
        r.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Gateway:
    """One ``manage.py rungateway`` on 127.0.0.1:GW_PORT with a fresh database."""

    def __init__(
        self, tmp: Path, template: Path, broker: str, redis_url: str, tag: str, server: str
    ) -> None:
        self.tmp = tmp
        self.server = server
        db = tmp / f"{tag}.sqlite3"
        shutil.copy(template, db)
        self.prefix = f"rhscale{os.getpid()}{tag}"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "RHGW_VAR_DIR": str(tmp / "var"),
            "RHGW_DB_PATH": str(db),
            "RHGW_BASE_URL": f"http://127.0.0.1:{GW_PORT}",
            "RHGW_BROKER": broker,
            "RHGW_REDIS_URL": redis_url,
            "RHGW_REDIS_PREFIX": self.prefix,
            "RHGW_REGISTRATIONS_PER_MINUTE": "0",
            "RHGW_POLL_TIMEOUT": "600",
            "RHGW_DEFAULT_LEASE": "3600",
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = tmp / f"gateway-{tag}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Gateway:
        if port_open(GW_PORT):
            sys.exit(f"port {GW_PORT} is in use")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "rungateway",
                    f"127.0.0.1:{GW_PORT}",
                    "--no-static",
                    "--server",
                    self.server,
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not port_open(GW_PORT):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start; see {self.log_path}")
            time.sleep(0.1)
        time.sleep(1.0)  # runtime startup (broker, lease keeper)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{GW_PORT}"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def migrated_template(tmp: Path) -> Path:
    template = tmp / "template.sqlite3"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "RHGW_DB_PATH": str(template),
        "RHGW_VAR_DIR": str(tmp / "var"),
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return template


def first_link(response: httpx.Response) -> tuple[str, str, str]:
    """(rel=first Request URL, public URL, private URL) of a registration response."""
    from reversehttp_gateway.protocol.links import parse_link_header

    links = parse_link_header(response.headers["Link"])
    return links["first"], links["related"], response.headers["Location"]


def envelope_reply(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


# ---------------------------------------------------------------- part 1: names and pollers
async def names_and_pollers(gw: Gateway, names: int, pollers: int, deadline: float) -> dict:
    result: dict[str, Any] = {"names": names, "pollers": pollers}
    result["rss_idle"] = status(gw.pid)["VmRSS"]
    service = gw.url + "/reversehttp"
    firsts: dict[int, str] = {}
    publics: dict[int, str] = {}
    failures: dict[str, int] = {}
    sem = asyncio.Semaphore(32)
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=40)) as client:

        async def register(i: int) -> None:
            async with sem:
                for _attempt in range(3):
                    if time.monotonic() > deadline:
                        return
                    try:
                        r = await client.post(
                            service, data={"name": f"scale{i}", "token": "t", "lease": "3600"}
                        )
                    except httpx.HTTPError as exc:
                        failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                        continue
                    if r.status_code in (201, 204):
                        if i < pollers:
                            firsts[i], publics[i], _ = first_link(r)
                        return
                    failures[str(r.status_code)] = failures.get(str(r.status_code), 0) + 1
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(register(i) for i in range(names)))
    result["register_seconds"] = round(time.monotonic() - t0, 1)
    result["register_failures"] = failures
    result["registered_with_poll_url"] = len(firsts)
    result["rss_after_registering"] = status(gw.pid)["VmRSS"]
    print(
        f"  registered {names} names in {result['register_seconds']} s "
        f"(failures {failures}); RSS {result['rss_after_registering'] / MIB:.1f} MiB",
        flush=True,
    )

    before_conns = established(GW_PORT)
    limits = httpx.Limits(max_connections=pollers + 20, max_keepalive_connections=pollers + 20)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900, connect=30), limits=limits) as polls:
        tasks = {i: asyncio.ensure_future(polls.get(url)) for i, url in firsts.items()}
        # wait until the gateway holds every poll connection (bounded)
        while time.monotonic() < deadline:
            held = established(GW_PORT) - before_conns
            if held >= len(tasks) or any(t.done() for t in tasks.values()):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(5)  # let them settle in the broker
        samples = []
        for _ in range(10):
            samples.append(status(gw.pid))
            await asyncio.sleep(1)
        done_early = {i: t for i, t in tasks.items() if t.done()}
        early = {}
        for t in done_early.values():
            key = str(t.result().status_code) if not t.exception() else type(t.exception()).__name__
            early[key] = early.get(key, 0) + 1
        result["polls_open_when_measured"] = len(tasks) - len(done_early)
        result["polls_finished_early"] = early
        result["poll_connections_held"] = established(GW_PORT) - before_conns
        result["rss_with_pollers_max"] = max(s["VmRSS"] for s in samples)
        result["hwm_with_pollers"] = samples[-1]["VmHWM"]
        # one relayed request through a waiting poller: they are live
        live = None
        for i in sorted(set(tasks) - set(done_early))[:1]:
            async with httpx.AsyncClient(timeout=30) as public:
                call = asyncio.ensure_future(public.get(publics[i] + "alive"))
                delivered = await asyncio.wait_for(tasks[i], 30)
                reply = await polls.post(
                    firsts[i],
                    content=envelope_reply(b"alive"),
                    headers={"Content-Type": "message/http"},
                )
                answered = await asyncio.wait_for(call, 30)
                live = (
                    delivered.status_code,
                    reply.status_code,
                    answered.status_code,
                    answered.text,
                )
        result["live_check"] = live
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    print(
        f"  {result['polls_open_when_measured']} polls open ({result['poll_connections_held']} "
        f"connections held), RSS max {result['rss_with_pollers_max'] / MIB:.1f} MiB, "
        f"live check {live}",
        flush=True,
    )
    return result


# ---------------------------------------------------------------- part 2: 100 MiB over WebSocket
async def big_body(gw: Gateway, mib: int, direction: str) -> dict:
    """Relay one ``mib`` MiB body (``direction``: "response" or "echo") and measure VmHWM."""
    async with httpx.AsyncClient(timeout=300) as client:
        r = await client.post(gw.url + "/reversehttp", data={"name": "bodies", "token": "t"})
        _, public, private = first_link(r)
        ws_url = private.replace("http://", "ws://", 1) + "/ws"
        async with websockets.connect(ws_url, max_size=None) as ws:
            await ws.send(frame("ready", "", 1))
            app = asyncio.ensure_future(streaming_app(ws))
            await asyncio.sleep(0.3)
            warm = await client.get(public + "big/1")
            assert warm.status_code == 200 and len(warm.content) == MIB, warm.status_code
            before = status(gw.pid)
            t0 = time.monotonic()
            digest = hashlib.sha256()
            received = 0
            if direction == "response":
                expected = hashlib.sha256(pattern(mib * MIB)).hexdigest()
                async with client.stream("GET", public + f"big/{mib}") as response:
                    code = response.status_code
                    async for chunk in response.aiter_raw():
                        received += len(chunk)
                        digest.update(chunk)
            else:
                body = pattern(mib * MIB)
                expected = hashlib.sha256(body).hexdigest()

                async def upload():  # in 256 KiB pieces, as a real upload arrives
                    for offset in range(0, len(body), 256 * 1024):
                        yield body[offset : offset + 256 * 1024]

                async with client.stream("POST", public + "echo", content=upload()) as response:
                    code = response.status_code
                    async for chunk in response.aiter_raw():
                        received += len(chunk)
                        digest.update(chunk)
            seconds = time.monotonic() - t0
            after = status(gw.pid)
            app.cancel()
    ok = code == 200 and received == mib * MIB and digest.hexdigest() == expected
    return {
        "direction": direction,
        "mib": mib,
        "status": code,
        "bytes_received": received,
        "intact": ok,
        "seconds": round(seconds, 2),
        "mib_per_s": round(received / MIB / seconds, 1) if seconds else None,
        "hwm_before": before["VmHWM"],
        "hwm_after": after["VmHWM"],
        "hwm_growth": after["VmHWM"] - before["VmHWM"],
        "rss_after": after["VmRSS"],
    }


# ---------------------------------------------------------------- report
def markdown(res: dict) -> str:
    m = lambda b: "%.1f" % (b / MIB)  # noqa: E731
    lines = [
        f"### bench/scale.py, {res['stamp']} (UTC), rungateway --server {res['args']['server']}",
        "",
        f"Command: `{res['command']}`",
        "",
        res.get("machine", ""),
        "",
    ]
    if res["names_pollers"]:
        lines += [
            "**%d registered names, %d waiting long-polls (one per name), one gateway "
            "process** (target: RSS <= 300 MiB)" % (res["args"]["names"], res["args"]["pollers"]),
            "",
            "| broker | idle RSS MiB | after registering MiB | with pollers waiting, max RSS "
            "MiB | peak RSS (VmHWM) MiB | polls open / held connections | registering "
            "took | live check | target |",
            "|---|---:|---:|---:|---:|---|---:|---|---|",
        ]
        for b, r in res["names_pollers"].items():
            if "error" in r:
                lines.append(f"| {b} | error: {r['error']} | | | | | | | |")
                continue
            ok = (
                r["rss_with_pollers_max"] <= 300 * MIB
                and r["polls_open_when_measured"] == r["pollers"]
            )
            live = "ok" if r["live_check"] and r["live_check"][2] == 200 else str(r["live_check"])
            lines.append(
                "| %s | %s | %s | %s | %s | %d / %d | %.0f s | %s | %s |"
                % (
                    b,
                    m(r["rss_idle"]),
                    m(r["rss_after_registering"]),
                    m(r["rss_with_pollers_max"]),
                    m(r["hwm_with_pollers"]),
                    r["polls_open_when_measured"],
                    r["poll_connections_held"],
                    r["register_seconds"],
                    live,
                    "**met**" if ok else "**not met**",
                )
            )
        lines.append("")
    if res["big_body"]:
        lines += [
            f"**{res['args']['body_mib']} MiB body relayed over the WebSocket transport** "
            "(streamed; target for 100 MiB: peak "
            "RSS growth <= 50 MiB), a fresh gateway process per row, after a 1 MiB warm-up",
            "",
            "| broker | body | intact | MiB/s | VmHWM before MiB | VmHWM after MiB | "
            "growth MiB | target |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        for b, rows in res["big_body"].items():
            for r in rows:
                if "error" in r:
                    lines.append(f"| {b} | {r.get('direction')} | error: {r['error']} | | | | | |")
                    continue
                what = (
                    "GET, %d MiB response" % r["mib"]
                    if r["direction"] == "response"
                    else "POST, %d MiB request echoed back" % r["mib"]
                )
                ok = r["intact"] and r["hwm_growth"] <= 50 * MIB
                lines.append(
                    "| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                        b,
                        what,
                        "yes"
                        if r["intact"]
                        else "NO (status %s, %d bytes)" % (r["status"], r["bytes_received"]),
                        r["mib_per_s"],
                        m(r["hwm_before"]),
                        m(r["hwm_after"]),
                        m(r["hwm_growth"]),
                        "**met**" if ok else "**not met**",
                    )
                )
        lines.append("")
    return "\n".join(lines)


async def main_async(a: argparse.Namespace, tmp: Path, redis: Redis) -> dict:
    template = migrated_template(tmp)
    deadline_all = time.monotonic() + a.timeout
    res: dict[str, Any] = {"names_pollers": {}, "big_body": {}}
    for broker in a.brokers.split(","):
        if not a.skip_pollers:
            print(f"[{broker}] {a.names} names, {a.pollers} pollers", flush=True)
            gw = Gateway(tmp, template, broker, redis.url, f"np-{broker}", a.server).start()
            try:
                res["names_pollers"][broker] = await asyncio.wait_for(
                    names_and_pollers(gw, a.names, a.pollers, deadline_all),
                    max(1, deadline_all - time.monotonic()),
                )
            except Exception as exc:  # report it, go on with the rest
                res["names_pollers"][broker] = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                gw.stop()
                if broker == "redis":
                    redis.drop_prefix(gw.prefix)
        if not a.skip_body:
            res["big_body"][broker] = []
            for direction in ("response", "echo"):
                print(f"[{broker}] {a.body_mib} MiB {direction} over WebSocket", flush=True)
                tag = f"big-{broker}-{direction}"
                gw = Gateway(tmp, template, broker, redis.url, tag, a.server).start()
                try:
                    r = await asyncio.wait_for(
                        big_body(gw, a.body_mib, direction),
                        max(1, min(300, deadline_all - time.monotonic())),
                    )
                    print(
                        "  VmHWM growth {:.1f} MiB, {} MiB/s, intact {}".format(
                            r["hwm_growth"] / MIB, r["mib_per_s"], r["intact"]
                        ),
                        flush=True,
                    )
                except Exception as exc:
                    r = {"direction": direction, "error": f"{type(exc).__name__}: {exc}"}
                finally:
                    gw.stop()
                    if broker == "redis":
                        redis.drop_prefix(gw.prefix)
                res["big_body"][broker].append(r)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--names", type=int, default=10_000)
    ap.add_argument("--pollers", type=int, default=1_000)
    ap.add_argument("--brokers", default="redis,memory")
    ap.add_argument("--server", choices=["uvicorn", "daphne"], default="uvicorn")
    ap.add_argument("--body-mib", type=int, default=100)
    ap.add_argument("--skip-pollers", action="store_true")
    ap.add_argument("--skip-body", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800, help="overall bound, seconds")
    ap.add_argument("--out", help="output prefix (default var/bench/scale-<stamp>)")
    a = ap.parse_args()
    if a.pollers > a.names:
        sys.exit("--pollers must not exceed --names")
    sys.path.insert(0, str(ROOT))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path(a.out) if a.out else ROOT / "var" / "bench" / f"scale-{stamp}"
    out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    import machine

    described = machine.describe()
    tmp = Path(tempfile.mkdtemp(prefix="rhgw-scale."))
    redis = Redis(tmp)
    try:
        res = asyncio.run(main_async(a, tmp, redis))
    finally:
        redis.stop()
        logs = out.parent / f"{out.name}-logs"
        logs.mkdir(exist_ok=True)
        for f in tmp.glob("*.log"):
            shutil.copy(f, logs / f.name)
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    res.update(
        stamp=stamp,
        args=vars(a),
        redis=redis.url,
        machine_info=described,
        machine=machine.markdown(described) + f"Load average after: {load_after}.",
        command="python bench/scale.py " + " ".join(sys.argv[1:]),
    )
    text = markdown(res)
    Path(f"{out}.json").write_text(json.dumps(res, indent=1))
    Path(f"{out}.md").write_text(text + "\n")
    print()
    print(text)
    print(f"wrote {out}.md and {out}.json")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
