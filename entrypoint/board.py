"""The status facts: what the agent knows about itself, written by the control loop and
the watchdog, read by the HTTP side. Thread-safe, and free of any HTTP code, so the
update path uses it without importing the server.

Liveness is here too: the loop says which step it is in and how long that step may
take by its own timeouts; /healthz fails only when a step overruns that or the loop
stops beating while idle.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

# A loop that is waiting for work beats at least this often (seconds).
IDLE_BUDGET = 60.0
# Added to every step's own budget: logging, bookkeeping, a slow machine.
STEP_SLACK = 30.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Snapshot:
    state: str = "starting"
    revision: str | None = None
    ref: str | None = None
    tag: str | None = None  # REPO_REF=semver:...: the tag chosen at the last good check
    repo_url: str = ""
    ready: bool = False
    last_check: str | None = None
    checks: int = 0
    last_error: str | None = None
    error_kind: str | None = None  # transient, rejected, unexpected
    last_error_at: str | None = None
    updates: int = 0
    deps_digest: str | None = None
    deps_locked: bool | None = None  # False: a pyproject.toml installed without a lock
    installs: int = 0
    last_install_seconds: float | None = None
    failed_revisions: dict[str, str] = field(default_factory=dict)
    retained: list[str] = field(default_factory=list)  # releases to roll back to, newest last
    restarts: dict[str, int] = field(default_factory=dict)  # unexpected exits per program
    app_down: dict[str, Any] | None = None  # {program, restarts, window_seconds}
    rollback: dict[str, Any] | None = None  # {to, status, error}
    paused: dict[str, Any] | None = None  # {reason, since}: updates wait until resumed
    waiting: dict[str, Any] | None = None  # {sha, ref, held_by, since, next_window}
    step: str | None = None  # what the control loop is doing, if anything long
    standing_by: str | None = None  # the release replaced, ready while the new one bakes
    fleet: dict[str, Any] | None = None  # the replicas' view (fleet/), with a store only
    started_at: str = field(default_factory=now_iso)


class StatusBoard:
    """Thread-safe facts about the agent, as /status shows them."""

    def __init__(self, repo_url: str, ref: str) -> None:
        self._lock = threading.Lock()
        self._snapshot = Snapshot(repo_url=repo_url, ref=ref)
        self._serving = False  # a known-good revision is live (the loop says)
        self._programs_up = True  # every program of it is RUNNING (the watchdog says)
        self.liveness = Liveness()
        self.watchdog_beat = Heartbeat()

    def update(self, **facts: Any) -> None:
        with self._lock:
            for key, value in facts.items():
                if not hasattr(self._snapshot, key):
                    raise AttributeError(key)
                setattr(self._snapshot, key, value)

    def serving(self, serving: bool) -> None:
        with self._lock:
            self._serving = serving

    def programs_up(self, up: bool) -> None:
        with self._lock:
            self._programs_up = up

    def count_update(self) -> None:
        with self._lock:
            self._snapshot.updates += 1

    def count_check(self) -> None:
        with self._lock:
            self._snapshot.checks += 1
            self._snapshot.last_check = now_iso()

    def error(self, message: str | None, kind: str | None = None) -> None:
        """The last error and how the loop sorted it (None clears it)."""
        with self._lock:
            self._snapshot.last_error = bounded(message)
            self._snapshot.error_kind = kind if message is not None else None
            self._snapshot.last_error_at = now_iso() if message is not None else None

    def clear_error(self, kinds: tuple[str, ...]) -> None:
        with self._lock:
            if self._snapshot.error_kind in kinds:
                self._snapshot.last_error = self._snapshot.error_kind = None
                self._snapshot.last_error_at = None

    def ready(self) -> bool:
        with self._lock:
            return self._ready()

    def _ready(self) -> bool:
        return self._serving and self._programs_up and self._snapshot.app_down is None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._snapshot.ready = self._ready()
            self._snapshot.step = self.liveness.current()
            return asdict(self._snapshot)

    def alive(self) -> tuple[bool, str]:
        """For /healthz: the control loop and the watchdog both make progress."""
        loop_ok, loop_why = self.liveness.alive()
        if not loop_ok:
            return False, loop_why
        if self.watchdog_beat.age() > IDLE_BUDGET:
            return False, f"watchdog silent for {self.watchdog_beat.age():.0f}s"
        return True, "ok"


class Heartbeat:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = time.monotonic()

    def beat(self) -> None:
        with self._lock:
            self._last = time.monotonic()

    def age(self) -> float:
        with self._lock:
            return time.monotonic() - self._last


class Liveness:
    """Is the control loop alive and making progress?

    While idle it beats every second or so. Before a long step it declares the
    step and its budget (the step's own timeouts); a step that overruns its
    budget, or a loop thread that ended, is stuck.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._step: str | None = None
        self._deadline = time.monotonic() + IDLE_BUDGET
        self._thread: threading.Thread | None = None

    def attach(self, thread: threading.Thread) -> None:
        with self._lock:
            self._thread = thread

    def beat(self) -> None:
        """Idle, or between steps: the loop is alive."""
        with self._lock:
            self._step = None
            self._deadline = time.monotonic() + IDLE_BUDGET

    def step(self, name: str, budget: float) -> None:
        """A step starts that may take `budget` seconds by its own timeouts."""
        with self._lock:
            self._step = name
            self._deadline = time.monotonic() + budget + STEP_SLACK

    def current(self) -> str | None:
        with self._lock:
            return self._step

    def alive(self) -> tuple[bool, str]:
        with self._lock:
            if self._thread is not None and not self._thread.is_alive():
                return False, "control loop ended"
            overdue = time.monotonic() - self._deadline
            if overdue > 0:
                what = f"step {self._step}" if self._step else "control loop"
                return False, f"{what} stuck {overdue:.0f}s beyond its timeouts"
            return True, "ok"


REASON_CHARS = 300


def bounded(message: str | None) -> str | None:
    """What /status shows of an error: one line, at most REASON_CHARS characters (the
    log has it whole)."""
    if message is None:
        return None
    line = " | ".join(part.strip() for part in message.splitlines() if part.strip())
    return line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 1] + "…"
