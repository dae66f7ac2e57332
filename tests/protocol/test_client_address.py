"""``Requesting-Client`` (RH-28)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reversehttp_gateway.protocol.client_address import format_requesting_client


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        (["127.0.0.1", 53122], "127.0.0.1:53122"),
        (("10.1.2.3", 80), "10.1.2.3:80"),
        (["::ffff:127.0.0.1", 5000], "127.0.0.1:5000"),  # IPv4-mapped -> dotted quad
        (["::FFFF:7f00:1", 5000], "127.0.0.1:5000"),
        (["::1", 5000], "[::1]:5000"),
        (["2001:0db8:0000:0000:0000:0000:0000:0001", 443], "[2001:db8::1]:443"),
        (["[::1]", 8080], "[::1]:8080"),
        (["127.0.0.1", "8080"], "127.0.0.1:8080"),
        (["127.0.0.1", 0], "127.0.0.1:0"),
        (["127.0.0.1", 65535], "127.0.0.1:65535"),
    ],
)
def test_rh28_formats(client: list[object], expected: str) -> None:
    assert format_requesting_client(client) == expected


@pytest.mark.parametrize(
    "client",
    [
        None,
        [],
        ["127.0.0.1"],
        ["127.0.0.1", 1, 2],
        "127.0.0.1:80",
        b"127.0.0.1",
        ["testclient", 50000],  # Starlette/Django test clients
        ["/run/gateway.sock", 0],
        ["", 80],
        ["localhost", 80],
        ["127.0.0.1", None],
        ["127.0.0.1", True],
        ["127.0.0.1", -1],
        ["127.0.0.1", 65536],
        ["127.0.0.1", "80a"],
        ["127.0.0.1", "٨٠"],
        ["127.0.0.1", 80.0],
        [b"127.0.0.1", 80],
        [None, 80],
        ["127.0.0.1:80", 80],
        ["999.1.1.1", 80],
    ],
)
def test_rh28_unusable_clients_give_none(client: object) -> None:
    assert format_requesting_client(client) is None  # type: ignore[arg-type]


def _java_client_parse(value: str) -> tuple[str, int]:
    """ReverseHttpServer.java: split on the first ':' and Integer.parseInt the rest."""
    host, _, port = value.partition(":")
    return host, int(port)


@given(st.ip_addresses(v=4), st.integers(0, 65535))
def test_rh28_ipv4_survives_the_java_client(address: ipaddress.IPv4Address, port: int) -> None:
    value = format_requesting_client([str(address), port])
    assert value == f"{address}:{port}"
    assert _java_client_parse(value) == (str(address), port)


@given(st.ip_addresses(v=4), st.integers(0, 65535))
def test_rh28_ipv4_mapped_survives_the_java_client(
    address: ipaddress.IPv4Address, port: int
) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert format_requesting_client([mapped.exploded, port]) == f"{address}:{port}"


@given(st.ip_addresses(v=6), st.integers(0, 65535))
def test_rh28_ipv6_is_bracketed(address: ipaddress.IPv6Address, port: int) -> None:
    value = format_requesting_client([address.exploded, port])
    if address.ipv4_mapped is not None:
        assert value == f"{address.ipv4_mapped}:{port}"
    else:
        assert value == f"[{address.compressed}]:{port}"
        host, _, rest = value[1:].partition("]:")
        assert ipaddress.IPv6Address(host) == address and int(rest) == port


@given(st.lists(st.one_of(st.none(), st.text(max_size=45), st.integers(), st.binary()), max_size=3))
def test_rh28_never_raises(client: list[object]) -> None:
    value = format_requesting_client(client)
    assert value is None or (":" in value and "\r" not in value and "\n" not in value)
