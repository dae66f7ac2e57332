"""Registration parameters: the ``name`` label (RH-03, RH-04, RH-16), ``lease`` (RH-05, RH-06)."""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = ["InvalidLabel", "InvalidLease", "normalize_label", "parse_lease"]

_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_LEASE_RE = re.compile(r"([+-]?)([0-9]+)", re.ASCII)

_BAD_LABEL = "Invalid label: must be a DNS label of 1-63 letters, digits or hyphens"
_BAD_LEASE = "Invalid lease seconds setting"


class InvalidLabel(ValueError):
    """The ``name`` parameter is missing, malformed or reserved; ``str()`` is a 400 body."""


class InvalidLease(ValueError):
    """The ``lease`` parameter is not an integer; ``str()`` is a 400 body."""


def normalize_label(raw: str | None, reserved: Collection[str] = ()) -> str:
    """Return ``raw`` lower-cased if it is a valid, unreserved DNS label.

    Labels are ASCII only (punycode ``xn--`` labels are accepted), so nothing that could split a
    header or a path (CR, LF, ``/``, ``%``, ``.``, spaces, ...) ever reaches a URL (RH-16).

    Raises:
        InvalidLabel: ``raw`` is missing or empty (RH-04), is not a DNS label (RH-03), or is one
            of ``reserved`` (compared case-insensitively).
    """
    if not raw:
        raise InvalidLabel("Missing label parameter")
    # Check ASCII before lower-casing: "\u212a".lower() (KELVIN SIGN) is the ASCII "k".
    if not raw.isascii():
        raise InvalidLabel(_BAD_LABEL)
    label = raw.lower()
    if _LABEL_RE.fullmatch(label) is None:
        raise InvalidLabel(_BAD_LABEL)
    if label in {name.lower() for name in reserved}:
        raise InvalidLabel(f"Invalid label: '{label}' is reserved")
    return label


def parse_lease(raw: str | None, *, default: int, minimum: int, maximum: int) -> int:
    """Return the lease in seconds, clamped silently into ``[minimum, maximum]`` (RH-06).

    ``None`` (parameter omitted) gives ``default``, returned as is. Otherwise ``raw`` must be an
    optional sign followed by ASCII digits, like Erlang's ``list_to_integer`` (RH-05): ``-5`` and
    ``+5`` are accepted; ``""``, ``" 30"``, ``"1.5"``, ``"1e3"`` and ``"30s"`` are not.

    Raises:
        InvalidLease: ``raw`` is not such an integer.
        ValueError: ``minimum > maximum`` (a configuration error).
    """
    if minimum > maximum:
        raise ValueError(f"lease minimum {minimum} is greater than maximum {maximum}")
    if raw is None:
        return default
    match = _LEASE_RE.fullmatch(raw)
    if match is None:
        raise InvalidLease(_BAD_LEASE)
    sign, digits = match.groups()
    digits = digits.lstrip("0") or "0"
    # Far outside the range: clamp without int(), which refuses very long digit strings.
    if len(digits) > len(str(max(abs(minimum), abs(maximum)))) + 1:
        return minimum if sign == "-" else maximum
    value = -int(digits) if sign == "-" else int(digits)
    return max(minimum, min(value, maximum))
