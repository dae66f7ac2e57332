"""Exponential backoff with jitter, for retrying polls and registrations after failures."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays that double after each failure, up to ``maximum``, randomised by "equal jitter".

    The n-th consecutive failure waits a uniform random time in ``[d/2, d]`` with
    ``d = min(maximum, initial * 2**n)``: never zero, so a broken gateway is not hammered, and
    spread out, so many clients that failed together do not retry together.
    """

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("need 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next attempt."""
        ceiling = min(self.maximum, self.initial * 2 ** min(self.failures, 32))
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """A success: the next failure starts from ``initial`` again."""
        self.failures = 0
