"""Ids unique across gateway processes and restarts, without a system call per id.

A random prefix drawn once per process (again in a forked child) plus a counter: request ids,
stream names and connection slots need uniqueness, not secrecy (none of them is a credential:
a connection slot can only be answered on its own connection). ``secrets.token_hex`` per id
cost a ``getrandom`` system call each, twice per relayed request.
"""

from __future__ import annotations

import itertools
import os
import secrets

__all__ = ["new_id"]


def _reset() -> None:
    global _prefix, _counter
    _prefix = secrets.token_hex(8)
    _counter = itertools.count(1)


_prefix = ""
_counter = itertools.count(1)
_reset()
os.register_at_fork(after_in_child=_reset)


def new_id() -> str:
    """A fresh id: 16 hex digits of this process's prefix, then a hex counter."""
    return f"{_prefix}{next(_counter):x}"
