"""How long to wait before trying again after a failure."""

from __future__ import annotations

import random


class Backoff:
    """Capped exponential backoff with jitter, so many pods do not retry in step."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.first * 2**self.failures)
        self.failures += 1
        return jitter(delay)

    def reset(self) -> None:
        self.failures = 0


def jitter(seconds: float) -> float:
    return seconds * random.uniform(0.8, 1.2)
