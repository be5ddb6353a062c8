"""The bake: for LIVE_PULL_BAKE_SECONDS after an update goes live, the revision is on
probation. If its web (or any program of it) exits, or its health path fails twice in a
row, the watchdog asks for the previous release back at once, whatever
LIVE_PULL_ROLLBACK_ON_CRASH says, and the revision is recorded as failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from entrypoint.health import answer

log = logging.getLogger(__name__)

FAILED_PROBES = 2  # a health path failing this many times in a row fails the bake


@dataclass
class Bake:
    """A revision on probation until `until` (time.monotonic()); `pids`: its processes
    as they went live (one of them replaced since has exited)."""

    sha: str
    until: float
    pids: dict[str, int] = field(default_factory=dict)
    failed_probes: int = 0

    @classmethod
    def starting(cls, sha: str, seconds: float, pids: dict[str, int]) -> Bake | None:
        return cls(sha, time.monotonic() + seconds, pids) if seconds > 0 else None

    def replaced(self, process: str, pid: int) -> bool:
        """Is `process` no longer the one that went live?"""
        return self.pids.get(process, pid) != pid

    @property
    def over(self) -> bool:
        return time.monotonic() >= self.until


def health_probe(url: str | None) -> Callable[[], str | None]:
    """A check of the served health path: None when it answers 2xx (or there is none),
    else what it gave."""

    def probe() -> str | None:
        return None if url is None else answer(url, timeout=1.0)

    return probe


def judge(bake: Bake, exited: list[str], probe: Callable[[], str | None]) -> str | None:
    """Why the revision fails its bake now, if it does (`exited`: programs of it that
    exited unexpectedly since it went live)."""
    if exited:
        return f"program {exited[0]} exited"
    answer = probe()
    bake.failed_probes = bake.failed_probes + 1 if answer is not None else 0
    if bake.failed_probes >= FAILED_PROBES:
        return f"its health path gave {answer} {FAILED_PROBES} times in a row"
    return None
