"""Labels (RH-03, RH-04, RH-16) and leases (RH-05, RH-06); PROTOCOL.md section 11 items 2 and 4."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reversehttp_gateway.protocol.labels import (
    InvalidLabel,
    InvalidLease,
    normalize_label,
    parse_lease,
)

RESERVED = ("reversehttp", "static", "ADMIN")
LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("demo", "demo"),
        ("Demo", "demo"),  # section 11 item 1: stored lower-cased
        ("DEMO", "demo"),
        ("a", "a"),
        ("0", "0"),
        ("9lives", "9lives"),  # RFC 1123 relaxation: a leading digit is fine
        ("a-b", "a-b"),
        ("a--b", "a--b"),
        ("xn--bcher-kva", "xn--bcher-kva"),  # punycode labels are allowed
        ("a" * 63, "a" * 63),
        ("A1-" + "b" * 60, "a1-" + "b" * 60),
    ],
)
def test_rh03_valid_labels_are_lower_cased(raw: str, expected: str) -> None:
    assert normalize_label(raw) == expected


@pytest.mark.parametrize("raw", [None, ""])
def test_rh04_missing_label(raw: str | None) -> None:
    with pytest.raises(InvalidLabel) as info:
        normalize_label(raw)
    assert str(info.value) == "Missing label parameter"


@pytest.mark.parametrize(
    "raw",
    [
        "-a",
        "a-",
        "-",
        "a_b",
        "a.b",
        "a" * 64,
        "a/b",
        "/",
        "a%2Fb",
        "ä",
        "bücher",
        "a%0d%0aSet-Cookie:x=1",
        "a\r\nSet-Cookie:x=1",
        "a\n",  # a regex "$" would accept a trailing newline
        "\na",
        "a\r",
        "a\x00",
        "a b",
        " a",
        "a ",
        "a\tb",
        "\u212a",  # KELVIN SIGN: lower-cases to the ASCII "k"
        "\u0130",  # LATIN CAPITAL LETTER I WITH DOT ABOVE
        "ａ",  # FULLWIDTH LATIN SMALL LETTER A
        "١",  # ARABIC-INDIC DIGIT ONE
        "a:b",
        "a@b",
        "*",
    ],
)
def test_rh03_rh16_invalid_labels(raw: str) -> None:
    with pytest.raises(InvalidLabel) as info:
        normalize_label(raw)
    assert str(info.value) == (
        "Invalid label: must be a DNS label of 1-63 letters, digits or hyphens"
    )


def test_invalid_label_is_a_value_error() -> None:
    assert issubclass(InvalidLabel, ValueError)
    assert issubclass(InvalidLease, ValueError)


@pytest.mark.parametrize("raw", ["reversehttp", "ReverseHttp", "static", "admin", "Admin"])
def test_rh03_reserved_labels_rejected_case_insensitively(raw: str) -> None:
    with pytest.raises(InvalidLabel, match="reserved") as info:
        normalize_label(raw, RESERVED)
    assert raw.lower() in str(info.value)


def test_rh03_reserved_only_when_listed() -> None:
    assert normalize_label("static") == "static"
    assert normalize_label("statics", RESERVED) == "statics"
    assert normalize_label("demo", frozenset({"admin"})) == "demo"


@given(st.text(max_size=70))
def test_rh03_rh16_any_text_gives_a_dns_label_or_invalid_label(raw: str) -> None:
    try:
        label = normalize_label(raw, RESERVED)
    except InvalidLabel as exc:
        assert "\r" not in str(exc) and "\n" not in str(exc)
    else:
        assert LABEL_RE.fullmatch(label)
        assert label == raw.lower()
        assert label not in {"reversehttp", "static", "admin"}


@given(st.from_regex(LABEL_RE, fullmatch=True))
def test_rh03_every_dns_label_is_accepted(label: str) -> None:
    assert normalize_label(label.upper()) == label


# --- lease (RH-05, RH-06) ---------------------------------------------------------------------

LEASE = {"default": 90, "minimum": 30, "maximum": 3600}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, 90),  # omitted: the default
        ("60", 60),
        ("30", 30),
        ("3600", 3600),
        ("0", 30),  # clamped up silently
        ("-5", 30),  # Erlang list_to_integer accepts a sign
        ("+5", 30),
        ("+90", 90),
        ("-0", 30),
        ("0060", 60),
        ("3601", 3600),  # clamped down silently
        ("99999999999999999999", 3600),
        ("-99999999999999999999", 30),
        ("9" * 5000, 3600),  # longer than int() accepts by default
        ("-" + "9" * 5000, 30),
        ("0" * 5000 + "45", 45),
    ],
)
def test_rh05_rh06_lease_values(raw: str | None, expected: int) -> None:
    assert parse_lease(raw, **LEASE) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " 30",
        "30 ",
        "\n30",
        "30\n",
        "1.5",
        "abc",
        "1e3",
        "30s",
        "+",
        "-",
        "+-5",
        "--5",
        "1_000",
        "0x10",
        "١٢",  # Unicode digits: int() would accept them
        "３０",
    ],
)
def test_rh05_invalid_lease(raw: str) -> None:
    with pytest.raises(InvalidLease) as info:
        parse_lease(raw, **LEASE)
    assert str(info.value) == "Invalid lease seconds setting"


def test_rh06_default_is_returned_as_given() -> None:
    assert parse_lease(None, default=120, minimum=30, maximum=600) == 120


def test_lease_bounds_misconfigured() -> None:
    with pytest.raises(ValueError) as info:
        parse_lease("60", default=60, minimum=100, maximum=10)
    assert not isinstance(info.value, InvalidLease)


@given(st.integers(min_value=-(10**40), max_value=10**40), st.sampled_from(["", "+"]))
def test_rh05_rh06_integers_are_clamped(value: int, plus: str) -> None:
    raw = plus + str(value) if value >= 0 else str(value)
    assert parse_lease(raw, **LEASE) == max(30, min(value, 3600))


@given(st.text(max_size=30))
def test_rh05_any_text_gives_a_clamped_int_or_invalid_lease(raw: str) -> None:
    try:
        lease = parse_lease(raw, **LEASE)
    except InvalidLease:
        assert re.fullmatch(r"[+-]?[0-9]+", raw, re.ASCII) is None
    else:
        assert 30 <= lease <= 3600
