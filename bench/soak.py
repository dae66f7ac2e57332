"""Soak test (issue 6): mixed traffic with registration churn and poller restarts.

Starts two gateway processes sharing Redis and one database on loopback, runs pollers that are
restarted at random, registers and deletes names while traffic flows, and checks that every
public request gets exactly one response and that it is its own (no loss, no duplicate, no
cross-talk). Pollers post each reply to either gateway at random, as behind a balancer, so
a reply is often claimed by the process that did not deliver its request. Samples the
gateways' RSS to show whether memory stays flat (``--post-bytes 65536`` makes a leak of
request bodies show within minutes).

    .venv/bin/python bench/soak.py --duration 1800 --rate 20 --out var/soak.json

Everything runs on 127.0.0.1 and stops by itself; the gateways are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gateway_process import make_gateway, migrated_database  # noqa: E402

SETTINGS = {
    "POLL_TIMEOUT": "5",
    "NO_APP_TIMEOUT": "5",
    "REPLY_TIMEOUT": "20",
    "EXPIRY_INTERVAL": "2",
    "REGISTRATIONS_PER_MINUTE": "0",
}


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def on(port: int, url: str) -> str:
    return url.replace(url.split("/")[2], f"127.0.0.1:{port}", 1)


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ports: list[int] = []
        self.stats: collections.Counter[str] = collections.Counter()
        self.answered: collections.Counter[str] = collections.Counter()
        self.delivered: collections.Counter[str] = collections.Counter()
        self.rss: list[dict[str, float]] = []
        self.stop = asyncio.Event()

    async def poller(self, client: httpx.AsyncClient, service: str, label: str, port: int) -> None:
        """One application poller; it restarts itself at random (churn)."""
        while not self.stop.is_set():
            try:
                reg = await client.post(service, data={"name": label, "token": "soak"})
                if reg.status_code not in (201, 204):
                    await asyncio.sleep(0.5)
                    continue
                url = on(port, reg.headers["Link"].split(">")[0][1:])
                lifetime = time.monotonic() + random.uniform(5, 60)
                while not self.stop.is_set() and time.monotonic() < lifetime:
                    response = await client.get(url, timeout=15)
                    if response.status_code == 204:
                        continue
                    if response.status_code != 200:
                        self.stats[f"poll {response.status_code}"] += 1
                        break
                    target = response.content.split(b" ", 2)[1].decode()
                    self.delivered[target] += 1
                    body = target.encode()
                    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    # Either gateway, as behind a balancer (RH-47: any process may claim it).
                    await client.post(on(random.choice(self.ports), url), content=reply, timeout=15)
                    url = on(port, response.headers["Link"].split(">")[0][1:])
                self.stats["poller restarts"] += 1
            except httpx.HTTPError as exc:
                self.stats[f"poller error {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)

    async def traffic(self, client: httpx.AsyncClient, ports: list[int], labels: list[str]) -> None:
        interval = 1 / self.args.rate
        tasks: set[asyncio.Task[None]] = set()
        while not self.stop.is_set():
            label = random.choice(labels)
            port = random.choice(ports)
            ident = uuid.uuid4().hex
            task = asyncio.ensure_future(self.one_request(client, port, label, ident))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(interval)
        await asyncio.gather(*tasks)

    async def one_request(
        self, client: httpx.AsyncClient, port: int, label: str, ident: str
    ) -> None:
        path = f"/{label}/{ident}"
        self.stats["public sent"] += 1
        try:
            if random.random() < 0.3:
                body = (ident * (self.args.post_bytes // len(ident) + 1))[: self.args.post_bytes]
                response = await client.post(
                    f"http://127.0.0.1:{port}{path}", content=body, timeout=30
                )
            else:
                response = await client.get(f"http://127.0.0.1:{port}{path}", timeout=30)
        except httpx.HTTPError as exc:
            self.stats[f"public error {type(exc).__name__}"] += 1
            return
        self.stats[f"public {response.status_code}"] += 1
        if response.status_code == 200:
            if response.text != path:
                self.stats["WRONG BODY"] += 1
            self.answered[path] += 1

    async def churn(self, client: httpx.AsyncClient, service: str) -> None:
        """Registers and deletes throwaway names all along."""
        while not self.stop.is_set():
            name = f"churn{uuid.uuid4().hex[:8]}"
            reg = await client.post(service, data={"name": name})
            self.stats[f"churn register {reg.status_code}"] += 1
            await asyncio.sleep(1)
            if reg.status_code == 201:
                gone = await client.delete(reg.headers["Location"])
                self.stats[f"churn delete {gone.status_code}"] += 1

    async def sample(self, gateways) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            self.rss.append(
                {
                    "t": round(time.monotonic() - start),
                    **{str(g.port): rss(g.process.pid) / 2**20 for g in gateways},
                }
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.args.sample_every)

    async def run(self) -> dict:
        tmp = Path(tempfile.mkdtemp(prefix="soak-"))
        template = migrated_database(tmp)
        prefix = f"soak{uuid.uuid4().hex[:6]}"
        first = make_gateway(
            tmp,
            template,
            BROKER="redis",
            REDIS_URL=self.args.redis,
            REDIS_PREFIX=prefix,
            **SETTINGS,
        ).start()
        second = make_gateway(
            tmp,
            template,
            db_path=first.db_path,
            BROKER="redis",
            REDIS_URL=self.args.redis,
            REDIS_PREFIX=prefix,
            **SETTINGS,
        ).start()
        gateways = [first, second]
        ports = self.ports = [g.port for g in gateways]
        labels = [f"soak{i}" for i in range(self.args.labels)]
        try:
            limits = httpx.Limits(max_connections=500, max_keepalive_connections=100)
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:
                pollers = [
                    asyncio.ensure_future(self.poller(client, first.service_url, label, port))
                    for label in labels
                    for port in ports
                ]
                await asyncio.sleep(1)
                workers = [
                    asyncio.ensure_future(self.traffic(client, ports, labels)),
                    asyncio.ensure_future(self.churn(client, first.service_url)),
                    asyncio.ensure_future(self.sample(gateways)),
                ]
                await asyncio.sleep(self.args.duration)
                self.stop.set()
                await asyncio.wait(workers, timeout=60)
                await asyncio.wait(pollers, timeout=30)
        finally:
            for gateway in gateways:
                gateway.stop()
        duplicated = sum(1 for n in self.delivered.values() if n > 1)
        twice_answered = sum(1 for n in self.answered.values() if n > 1)
        result = {
            "duration_s": self.args.duration,
            "rate_per_s": self.args.rate,
            "labels": self.args.labels,
            "post_bytes": self.args.post_bytes,
            "stats": dict(sorted(self.stats.items())),
            "requests_delivered_twice": duplicated,
            "responses_answered_twice": twice_answered,
            "rss_mib": self.rss,
        }
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800)
    parser.add_argument("--rate", type=float, default=20, help="public requests per second")
    parser.add_argument("--labels", type=int, default=4)
    parser.add_argument(
        "--post-bytes", type=int, default=1600, help="body size of the POSTs (30 %% of requests)"
    )
    parser.add_argument("--sample-every", type=float, default=60, help="RSS sampling, seconds")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "soak.json")
    args = parser.parse_args()
    result = asyncio.run(Soak(args).run())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rss_mib"}, indent=2))
    print("RSS MiB (first, last):", result["rss_mib"][:1], result["rss_mib"][-1:])


if __name__ == "__main__":
    main()
