"""The long-poll's ``rel="next"`` shortcut gives what parse_link_header() + urljoin() give."""

from __future__ import annotations

from urllib.parse import urljoin

import pytest

from reversehttp_gateway.client.gateway_http import GatewayAnswer
from reversehttp_gateway.client.poller import _next_link
from reversehttp_gateway.protocol.links import format_link_header, parse_link_header

URL = "http://gw:8000/reversehttp/r/demo/abc/11"


def reference(answer: GatewayAnswer) -> str | None:
    links = parse_link_header(", ".join(answer.header_list("link")))
    next_url = links.get("next")
    return urljoin(answer.url, next_url) if next_url else None


@pytest.mark.parametrize(
    "links",
    [
        [format_link_header([("http://gw:8000/reversehttp/r/demo/abc/12", "next")])],
        [format_link_header([("http://gw/a", "first"), ("https://gw/b", "next")])],
        ['<http://gw/a>; rel="first"', '<http://gw/b>; rel="next"'],  # two Link fields
        ['<http://gw/x?y>; rel="next"'],
        ['</relative/path>; rel="next"'],
        ['<http://gw/a/../b>; rel="next"'],
        ['<http://gw/a;p>; rel="next"'],
        ['<http://gw/a#f>; rel="next"'],
        ['<HTTP://gw/a>; rel="next"'],
        ["<http://gw/a>; rel=next"],
        ['<http://gw/a>; rel="related"'],
        ['<http://[::1]:80/a>; rel="next"'],
        ['<http://gw/a>; rel="next prev"'],
        [],
    ],
)
def test_next_link_matches_the_general_parser(links: list[str]) -> None:
    answer = GatewayAnswer(URL, 200, "OK", [(b"Link", v.encode()) for v in links], b"")
    assert _next_link(answer) == reference(answer)
