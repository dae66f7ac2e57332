"""The ``Link`` header on registration and poll responses (RH-11, RH-12, RH-21, RH-22)."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["format_link_header", "parse_link_header"]

_REL_RE = re.compile(r"[a-z]+", re.ASCII)
# Printable ASCII except the characters the clients split or match on: < > " , ; and space.
_URL_RE = re.compile(r"[!#-+\--:=?-~]+", re.ASCII)


def format_link_header(links: Sequence[tuple[str, str]]) -> str:
    """Format ``(url, rel)`` pairs as one ``Link`` header value (RH-12).

    The output is exactly ``<U1>; rel="first", <U2>; rel="related"``: links joined by ``", "``,
    a quoted lower-case ``rel``, no other parameters and no trailing ``;``. This is the only form
    that the Python, browser and Java clients all parse. An empty sequence gives ``""``.

    Raises:
        ValueError: a URL is empty or contains ``<>",;``, whitespace, control or non-ASCII
            characters, or a ``rel`` is not lower-case ``[a-z]+``.
    """
    parts: list[str] = []
    for url, rel in links:
        if _URL_RE.fullmatch(url) is None:
            raise ValueError(f"URL not allowed in a Link header: {url!r}")
        if _REL_RE.fullmatch(rel) is None:
            raise ValueError(f"rel not allowed in a Link header: {rel!r}")
        parts.append(f'<{url}>; rel="{rel}"')
    return ", ".join(parts)


def _split_outside(value: str, separator: str) -> list[str]:
    """Split on ``separator`` where it is neither inside ``<...>`` nor inside a quoted string."""
    pieces: list[str] = []
    start = 0
    in_angle = in_quote = escaped = False
    for index, char in enumerate(value):
        if in_quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quote = False
        elif in_angle:
            in_angle = char != ">"
        elif char == "<":
            in_angle = True
        elif char == '"':
            in_quote = True
        elif char == separator:
            pieces.append(value[start:index])
            start = index + 1
    pieces.append(value[start:])
    return pieces


def parse_link_header(value: str) -> dict[str, str]:
    """Map each ``rel`` of a ``Link`` header value to its URL (tolerant; for clients and tests).

    Links are split on commas outside ``<...>`` and quoted strings. ``rel`` may be quoted or not
    and may hold several space-separated relation types; relation types are lower-cased. Other
    parameters and pieces without ``<url>`` are ignored. The first link for a relation wins.
    """
    result: dict[str, str] = {}
    for link in _split_outside(value, ","):
        link = link.strip()
        if not link.startswith("<") or ">" not in link:
            continue
        close = link.index(">")
        url = link[1:close].strip()
        for param in _split_outside(link[close + 1 :], ";"):
            name, sep, raw = param.partition("=")
            if not sep or name.strip().lower() != "rel":
                continue
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1]
            for rel in raw.split():
                result.setdefault(rel.lower(), url)
            break
    return result
