"""Prometheus metrics at /metrics and JSON access logs, against live gateways (docs/metrics.md).

Also the system checks of the metrics settings (E009, W002), which need no gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from reversehttp_gateway.checks import check_metrics

from ..rh import envelope, register, unique_label

TOKEN = "metrics-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ACCESS_FIELDS = {
    "time",
    "level",
    "logger",
    "label",
    "method",
    "target",
    "status",
    "transport",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "client",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=15) as c:
        yield c


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    response = await client.get(url + "/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    return parse(response.text)


async def scrape_until(
    client: httpx.AsyncClient, url: str, done: Callable[[Samples], bool], timeout: float = 5
) -> Samples:
    """Scrape until ``done`` holds: the relay event is published just after the response."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await scrape(client, url)
        if done(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)


async def relay_one(client: httpx.AsyncClient, service_url: str, name: str, body: bytes) -> None:
    """Register ``name``, long-poll, send one public POST and answer it with ``body``."""
    reg = await register(client, service_url, name)
    poll = asyncio.ensure_future(client.get(reg.first))
    await asyncio.sleep(0.2)
    public = asyncio.ensure_future(client.post(reg.public + "x", content=b"hello"))
    delivered = await poll
    assert delivered.status_code == 200
    answer = envelope(headers={"Content-Length": str(len(body))}, body=body)
    assert (await client.post(reg.first, content=answer)).status_code == 202
    response = await public
    assert response.status_code == 200
    assert response.content == body


async def test_metrics_need_the_bearer_token(start_gateway, client):
    gateway = start_gateway("memory", METRICS_TOKEN=TOKEN)
    url = gateway.url + "/metrics"
    missing = await client.get(url)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert missing.text.startswith("401 ")
    for wrong in ("Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"):
        assert (await client.get(url, headers={"Authorization": wrong})).status_code == 401
    ok = await client.get(url, headers=AUTH)
    assert ok.status_code == 200
    assert ok.headers["Content-Type"].startswith("text/plain")
    samples = parse(ok.text)
    assert value(samples, "reversehttp_gateway_broker_up") == 1
    assert ("reversehttp_gateway_registrations_active", frozenset()) in samples
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)
    openmetrics = await client.get(
        url, headers={**AUTH, "Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    assert (await client.post(url, headers=AUTH)).status_code == 405


async def test_metrics_not_exposed_without_token(start_gateway, client):
    """METRICS_TOKEN unset: /metrics is ordinary traffic (here, path mode: the label 'metrics')."""
    gateway = start_gateway("memory")
    response = await client.get(gateway.url + "/metrics", headers=AUTH)
    assert response.status_code == 404
    assert "reversehttp_gateway_" not in response.text


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_counters_and_gauges_move(start_gateway, client, broker):
    gateway = start_gateway(broker, METRICS_TOKEN=TOKEN)
    relayed = {"status_class": "2xx", "code": "200", "transport": "longpoll"}
    before = await scrape(client, gateway.url)
    await relay_one(client, gateway.service_url, unique_label(), b"0123456789")
    count = "reversehttp_gateway_relayed_requests_total"
    after = await scrape_until(
        client, gateway.url, lambda s: value(s, count, **relayed) > value(before, count, **relayed)
    )
    assert value(after, count, **relayed) - value(before, count, **relayed) == 1
    histogram = "reversehttp_gateway_relay_duration_seconds"
    bucket_labels = {"transport": "longpoll", "status_class": "2xx"}
    assert (
        value(after, histogram + "_count", **bucket_labels)
        - value(before, histogram + "_count", **bucket_labels)
        == 1
    )
    assert value(after, histogram + "_bucket", **bucket_labels, le="60.0") >= 1
    for name, size in [("request_bytes", 5), ("response_bytes", 10)]:
        metric = f"reversehttp_gateway_{name}_total"
        grown = value(after, metric, transport="longpoll") - value(
            before, metric, transport="longpoll"
        )
        assert grown == size
    assert value(after, "reversehttp_gateway_registrations_active") >= 1

    # Gauges: a waiting poller, then a queued request nobody polls for.
    reg = await register(client, gateway.service_url, unique_label())
    poll = asyncio.ensure_future(client.get(reg.first))
    await asyncio.sleep(0.3)
    waiting = await scrape(client, gateway.url)
    assert value(waiting, "reversehttp_gateway_pollers_waiting") >= 1
    assert value(waiting, "reversehttp_gateway_queue_depth") == 0
    assert (await poll).status_code == 204  # POLL_TIMEOUT
    public = asyncio.ensure_future(client.get(reg.public))
    await asyncio.sleep(0.3)
    queued = await scrape(client, gateway.url)
    assert value(queued, "reversehttp_gateway_queue_depth") == 1
    assert value(queued, "reversehttp_gateway_requests_in_flight") == 1
    assert value(queued, "reversehttp_gateway_pollers_waiting") == 0
    response = await public
    assert response.status_code == 504  # NO_APP_TIMEOUT
    gateway_504 = {"status_class": "5xx", "code": "504", "transport": "gateway"}
    final = await scrape_until(client, gateway.url, lambda s: value(s, count, **gateway_504) == 1)
    assert value(final, count, **gateway_504) == 1
    assert value(final, "reversehttp_gateway_queue_depth") == 0


async def test_per_label_dimension(start_gateway, client):
    gateway = start_gateway("memory", METRICS_TOKEN=TOKEN, METRICS_PER_LABEL="1")
    name = unique_label()
    await relay_one(client, gateway.service_url, name, b"ok")
    unknown = await client.get(f"{gateway.url}/{unique_label('nobody')}/")
    assert unknown.status_code == 404
    count = "reversehttp_gateway_relayed_requests_total"
    labelled = {"status_class": "2xx", "code": "200", "transport": "longpoll", "label": name}
    not_found = {"status_class": "4xx", "code": "404", "transport": "gateway", "label": "-"}
    samples = await scrape_until(client, gateway.url, lambda s: value(s, count, **not_found) == 1)
    assert value(samples, count, **labelled) == 1
    assert value(samples, count, **not_found) == 1  # unknown labels add no series
    assert value(samples, "reversehttp_gateway_pollers_waiting", label=name) == 0
    assert ("reversehttp_gateway_queue_depth", frozenset({("label", name)})) in samples


async def test_vhost_mode_serves_metrics_on_the_gateway_host_only(start_gateway, client):
    gateway = start_gateway(
        "memory", METRICS_TOKEN=TOKEN, PUBLIC_URL_MODE="vhost", VHOST_DOMAIN="gw.test"
    )
    own = await client.get(gateway.url + "/metrics", headers={**AUTH, "Host": "gw.test"})
    assert own.status_code == 200
    application = await client.get(
        gateway.url + "/metrics", headers={**AUTH, "Host": "someapp.gw.test"}
    )
    assert application.status_code == 404  # the public URL of the label "someapp"
    assert "No application" in application.text


async def test_multiprocess_mode_sums_all_processes(start_gateway, client, tmp_path, monkeypatch):
    """PROMETHEUS_MULTIPROC_DIR shared by two processes: either one serves both's counts."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    prefix = f"t{unique_label()}"
    first = start_gateway("redis", prefix=prefix, METRICS_TOKEN=TOKEN)
    second = start_gateway("redis", prefix=prefix, METRICS_TOKEN=TOKEN, DB_PATH=str(first.db_path))
    await relay_one(client, first.service_url, unique_label(), b"x")
    await relay_one(client, first.service_url, unique_label(), b"y")
    count = "reversehttp_gateway_relayed_requests_total"
    relayed = {"status_class": "2xx", "code": "200", "transport": "longpoll"}
    samples = await scrape_until(client, second.url, lambda s: value(s, count, **relayed) == 2)
    assert value(samples, count, **relayed) == 2


async def test_json_access_log(start_gateway, client):
    gateway = start_gateway("memory", LOG_FORMAT="json")
    name = unique_label()
    await relay_one(client, gateway.service_url, name, b"logged")
    deadline = time.monotonic() + 5
    access: list[dict] = []
    while not access and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        lines = [line for line in gateway.log().splitlines() if line.startswith("{")]
        entries = [json.loads(line) for line in lines]  # every JSON-looking line parses
        access = [e for e in entries if e["logger"] == "reversehttp_gateway.access"]
    assert len(access) == 1
    entry = access[0]
    assert set(entry) >= ACCESS_FIELDS
    assert entry["level"] == "INFO"
    assert entry["label"] == name
    assert entry["method"] == "POST"
    assert entry["target"] == f"/{name}/x"
    assert entry["status"] == 200
    assert entry["transport"] == "longpoll"
    assert entry["bytes_in"] == 5 and entry["bytes_out"] == 6
    assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
    assert entry["client"].startswith("127.0.0.1:")
    assert entry["time"].endswith("+00:00")


async def test_text_access_log_by_default(start_gateway, client):
    gateway = start_gateway("memory")
    name = unique_label()
    await relay_one(client, gateway.service_url, name, b"plain")
    deadline = time.monotonic() + 5
    while f"label={name} status=200" not in gateway.log() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    line = next(line for line in gateway.log().splitlines() if f"label={name}" in line)
    assert " INFO reversehttp_gateway.access " in line
    assert not line.startswith("{")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, []),
        ({"METRICS_TOKEN": None}, []),
        ({"METRICS_TOKEN": ""}, ["reversehttp_gateway.E009"]),
        ({"METRICS_TOKEN": "   "}, ["reversehttp_gateway.E009"]),
        ({"METRICS_TOKEN": 12345}, ["reversehttp_gateway.E009"]),
        ({"METRICS_TOKEN": "secret"}, ["reversehttp_gateway.W002"]),
        ({"METRICS_TOKEN": "secret", "RESERVED_LABELS": ["metrics"]}, []),
        ({"METRICS_TOKEN": "s", "PUBLIC_URL_MODE": "vhost", "VHOST_DOMAIN": "gw.example"}, []),
    ],
)
def test_metrics_checks(config, expected):
    with override_settings(REVERSEHTTP_GATEWAY=config):
        messages = check_metrics()
    assert [message.id for message in messages] == expected
    assert all(message.hint for message in messages)
