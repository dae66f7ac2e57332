"""The ``Link`` header (RH-11, RH-12, RH-21, RH-22)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reversehttp_gateway.protocol.links import format_link_header, parse_link_header

FIRST = "http://gw.example/reversehttp/r/Zx9_-k/q/7f3a-B_c"
RELATED = "http://demo.apps.example:8000/"


def test_rh12_registration_link_is_byte_exact() -> None:
    value = format_link_header([(FIRST, "first"), (RELATED, "related")])
    assert value == (
        '<http://gw.example/reversehttp/r/Zx9_-k/q/7f3a-B_c>; rel="first", '
        '<http://demo.apps.example:8000/>; rel="related"'
    )


def test_rh21_single_next_link() -> None:
    assert format_link_header([("http://gw/q/1", "next")]) == '<http://gw/q/1>; rel="next"'


def test_format_no_links() -> None:
    assert format_link_header([]) == ""


def _python_client_links(value: str) -> dict[str, str]:
    """How reversehttp.py (and Hookout) read the header: split on ", " then ";"."""
    links = {}
    for link in value.split(", "):
        url, rel = link.split(";")
        assert url.strip()[0] == "<" and url.strip()[-1] == ">"
        key, quoted = rel.strip().split("=")
        assert key == "rel" and quoted[0] == quoted[-1] == '"'
        links[quoted[1:-1]] = url.strip()[1:-1]
    return links


def test_rh12_clients_can_split_the_header() -> None:
    """py/js/java split on the exact string ", " and then on ";", with no empty piece."""
    value = format_link_header([(FIRST, "first"), (RELATED, "related")])
    assert _python_client_links(value) == {"first": FIRST, "related": RELATED}
    for piece in value.split(", "):
        assert all(part.strip() for part in piece.split(";"))
    assert not value.endswith(";")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://x/<a",
        "http://x/a>",
        'http://x/"a',
        "http://x/a,b",
        "http://x/a;b",
        "http://x/a b",
        "http://x/a\tb",
        "http://x/a\r\nSet-Cookie: x=1",
        "http://x/a\n",
        "http://x/\x00",
        "http://x/\x7f",
        "http://x/\x1b",
        "http://x/é",
        "http://x/\u2028",
    ],
)
def test_rh12_rh16_bad_urls_rejected(url: str) -> None:
    with pytest.raises(ValueError):
        format_link_header([(url, "next")])


@pytest.mark.parametrize("rel", ["", "First", "NEXT", "next ", 'a"b', "next;x", "rel1", "a-b", "é"])
def test_rh12_bad_rels_rejected(rel: str) -> None:
    with pytest.raises(ValueError):
        format_link_header([("http://x/", rel)])


def test_url_may_hold_any_other_printable_ascii() -> None:
    url = "https://u:p@h.example:8443/a/%2F/~b!$&'()*+-._=:@?q=1&r=[x]{y}|z^`\\#frag"
    assert format_link_header([(url, "next")]) == f'<{url}>; rel="next"'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", {}),
        ('<http://a/1>; rel="next"', {"next": "http://a/1"}),
        (
            '<http://a/1>; rel="first", <http://b/>; rel="related"',
            {"first": "http://a/1", "related": "http://b/"},
        ),
        (
            "<http://a/1>;rel=next,<http://b/>;rel=related",
            {"next": "http://a/1", "related": "http://b/"},
        ),
        ('  <http://a/1> ;  REL = "Next" ; title="x"  ', {"next": "http://a/1"}),
        ('<http://a/1>; title="a, b; c"; rel="next"', {"next": "http://a/1"}),
        ("<http://a/x,y>; rel=next", {"next": "http://a/x,y"}),
        ('<http://a/1>; rel="next first"', {"next": "http://a/1", "first": "http://a/1"}),
        ('<http://a/1>; rel="next", <http://a/2>; rel="next"', {"next": "http://a/1"}),
        ('<http://a/1>; rel="next"; rel="prev"', {"next": "http://a/1"}),
        ('garbage, <http://a/1>; rel="next", <unterminated; rel="x"', {"next": "http://a/1"}),
        ("<http://a/1>; anchor=x", {}),
        ("<http://a/1>", {}),
        ("<http://a/1>; rel", {}),
    ],
)
def test_parse_link_header_is_tolerant(value: str, expected: dict[str, str]) -> None:
    assert parse_link_header(value) == expected


_URL = st.from_regex(
    r"https?://[a-z0-9.-]{1,20}(:[0-9]{1,5})?/[!#-+\--:=?-~]{0,40}", fullmatch=True
)
_REL = st.from_regex(r"[a-z]{1,10}", fullmatch=True)


@given(st.dictionaries(_REL, _URL, max_size=5))
def test_rh12_format_then_parse_round_trips(links: dict[str, str]) -> None:
    value = format_link_header([(url, rel) for rel, url in links.items()])
    assert parse_link_header(value) == links
    if links:
        assert _python_client_links(value) == links


@given(st.text(max_size=80))
def test_parse_link_header_never_crashes(value: str) -> None:
    result = parse_link_header(value)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())
