"""The control loop's one queue: everything that wants an update asks here.

The poll timer, SIGHUP, POST /sync, a webhook, POST /rollback, POST /pause and
/resume, and the watchdog's findings all become requests. Requests coalesce: a thousand
checks asked for while the loop is busy are one check when it is free (one that goes
ahead despite a pause, if any asked for that), and the newest rollback, and the newest
of pause and resume, wins.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

# After a wake-up, wait this long for more of the same burst before acting on it,
# so a storm of /sync calls or webhooks costs the remote one check.
SETTLE_SECONDS = 0.3
SETTLE_MAX = 2.0
# Checks asked for from outside (/sync, webhooks, SIGHUP) are at least this far apart,
# so a flood of them costs the remote a round trip a second at most.
CHECK_SPACING = 1.0


@dataclass(frozen=True)
class Check:
    trigger: str  # start, poll, sync, webhook, signal, resume
    ignore_hold: bool = False  # sync --now: not held by a pause or the update windows


@dataclass(frozen=True)
class Pause:
    reason: str | None


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Rollback:
    target: str | None  # None: the release before the running one
    reason: str
    trigger: str  # operator, crash


@dataclass(frozen=True)
class Crashed:
    """The watchdog found the running revision down (FATAL, or a crash loop)."""

    reason: str
    revision: str | None  # the one that was down: stale once another runs
    baking: bool = False  # within LIVE_PULL_BAKE_SECONDS of its switch


Request = Check | Rollback | Crashed | Pause | Resume


class Inbox:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._check: Check | None = None
        self._rollback: Rollback | None = None
        self._crashed: Crashed | None = None
        self._pausing: Pause | Resume | None = None
        self._last_put = 0.0
        self._checks_after = 0.0  # checks asked for wait until then (see hold_checks)
        self.stopping = False

    def check(self, trigger: str, *, ignore_hold: bool = False) -> None:
        with self._changed:
            if self._check is None or (ignore_hold and not self._check.ignore_hold):
                self._check = Check(trigger, ignore_hold)
            self._touch()

    def pausing(self, request: Pause | Resume) -> None:
        with self._changed:
            self._pausing = request
            self._touch()

    def rollback(self, request: Rollback) -> None:
        with self._changed:
            self._rollback = request
            self._touch()

    def crashed(self, reason: str, revision: str | None, *, baking: bool = False) -> None:
        with self._changed:
            self._crashed = Crashed(reason, revision, baking)
            self._touch()

    def hold_checks(self, seconds: float) -> None:
        """Checks asked for from now on are taken no sooner than `seconds` from now: the
        backoff of a failing remote, or the spacing after a check. They wait, coalesced;
        rollbacks and crash findings do not."""
        with self._changed:
            self._checks_after = max(self._checks_after, time.monotonic() + seconds)

    def stop(self) -> None:
        with self._changed:
            self.stopping = True
            self._changed.notify_all()

    def take(self, timeout: float) -> Request | None:
        """The most urgent pending request, waiting up to `timeout` seconds for one."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.stopping and not self._pending():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if self._check is not None:  # held: wake when it may be taken
                    remaining = min(remaining, max(0.01, self._checks_after - time.monotonic()))
                self._changed.wait(remaining)
            if not self.stopping:
                self._settle()
            return None if self.stopping else self._pop()

    def _pending(self) -> bool:
        return any((self._crashed, self._rollback, self._pausing, self._check_due()))

    def _check_due(self) -> bool:
        return self._check is not None and time.monotonic() >= self._checks_after

    def _settle(self) -> None:
        """Let a burst finish arriving (bounded), so it is taken as one request."""
        first = time.monotonic()
        while not self.stopping and time.monotonic() - first < SETTLE_MAX:
            quiet_for = time.monotonic() - self._last_put
            if quiet_for >= SETTLE_SECONDS:
                return
            self._changed.wait(SETTLE_SECONDS - quiet_for)

    def _pop(self) -> Request | None:
        taken: Request | None
        if self._crashed is not None:
            taken, self._crashed = self._crashed, None
        elif self._rollback is not None:
            taken, self._rollback = self._rollback, None
        elif self._pausing is not None:
            taken, self._pausing = self._pausing, None
        elif self._check_due():
            taken, self._check = self._check, None
        else:
            taken = None
        return taken

    def _touch(self) -> None:
        self._last_put = time.monotonic()
        self._changed.notify_all()
