"""The watchdog: is the running revision up? Run by the main thread once a second.

supervisord restarts a program that exits after it started for ever, so a crash
loop slower than LIVE_PULL_START_SECONDS never turns FATAL. The watchdog counts
unexpected exits itself (a process it saw is gone) and calls the revision down
when a program exits `limit` times within `window` seconds, or goes FATAL. Down
means: /readyz fails, /status names the program; then either a rollback is asked
for (LIVE_PULL_ROLLBACK_ON_CRASH) or the agent exits so the platform sees it.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from entrypoint.bake import Bake, judge
from entrypoint.board import StatusBoard
from entrypoint.errors import AppFailed, OutOfResources, SupervisorError
from entrypoint.inbox import Inbox
from entrypoint.supervisor import Supervisor, first_fatal, is_running
from entrypoint.supervisor_config import program_name
from entrypoint.updater import Updater

log = logging.getLogger(__name__)

# supervisord not answering for this long, while alive, is as bad as its exit.
UNANSWERED_LIMIT = 30.0


class CrashCounter:
    """Unexpected exits per program within a sliding window."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.totals: dict[str, int] = {}
        self.since_switch: list[str] = []  # programs that exited since the last switch
        self._pids: dict[str, int] = {}
        self._recent: dict[str, collections.deque[float]] = {}

    def forget_processes(self) -> None:
        """A switch replaced the programs: the pids seen so far were stopped on purpose."""
        self._pids.clear()
        self._recent.clear()
        self.since_switch.clear()

    def observe(self, states: dict[str, dict[str, Any]], watched: set[str]) -> None:
        now = time.monotonic()
        for name in watched:
            pid = int(states.get(name, {}).get("pid") or 0)
            seen = self._pids.get(name, 0)
            if seen and pid != seen:  # the process we saw is gone
                self._exited(name, now)
            self._pids[name] = pid

    def looping(self) -> tuple[str, int] | None:
        """The first program over the limit, with its exits in the window."""
        now = time.monotonic()
        for name, times in sorted(self._recent.items()):
            while times and now - times[0] > self.window:
                times.popleft()
            if len(times) >= self.limit:
                return name, len(times)
        return None

    def _exited(self, process: str, now: float) -> None:
        """Counted per program as operators name them (a slot's exits are `web`'s)."""
        name = program_name(process)
        self.totals[name] = self.totals.get(name, 0) + 1
        self.since_switch.append(name)
        self._recent.setdefault(name, collections.deque()).append(now)
        log.warning("program exited unexpectedly program=%s exits=%d", name, self.totals[name])


class Watchdog:
    def __init__(
        self,
        supervisor: Supervisor,
        updater: Updater,
        board: StatusBoard,
        inbox: Inbox,
        *,
        crash_loop: tuple[int, float],
        rollback_on_crash: bool,
        bake_probe: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.supervisor = supervisor
        self.updater = updater
        self.board = board
        self.inbox = inbox
        self.counter = CrashCounter(*crash_loop)
        self.rollback_on_crash = rollback_on_crash
        self._generation = -1
        self._reported = False
        self._unanswered_since: float | None = None
        self._running: str | None = None
        self._bake: Bake | None = None
        self.bake_probe = bake_probe
        self._not_running_since: dict[str, float] = {}

    def tick(self) -> None:
        """One look; raises AppFailed when the app cannot be kept up."""
        self.board.watchdog_beat.beat()
        if not self.supervisor.alive():
            raise AppFailed("supervisord exited unexpectedly")
        seen = self._look()
        if seen is None:
            return
        states, watched = seen
        self.counter.observe(states, watched)
        self.board.update(restarts=dict(self.counter.totals))
        running = all(is_running(states, n) for n in watched)
        self.board.programs_up(running)
        if self._bake_failed(states, watched):
            return
        problem = self._problem(states, watched)
        if problem is not None:
            self._down(*problem)

    def _look(self) -> tuple[dict[str, dict[str, Any]], set[str]] | None:
        """The programs' states and which of them the running revision owns; None while
        the updater swaps programs (it judges the revision it starts itself)."""
        if not self.updater.switching.acquire(blocking=False):
            return None
        try:
            if self.updater.generation != self._generation:
                self._generation = self.updater.generation
                self.counter.forget_processes()
                self._not_running_since.clear()
                self._reported = False
            watched = self.updater.active_programs()
            self._running = self.updater.running
            self._bake = self.updater.baking
            states = self._states()
        finally:
            self.updater.switching.release()
        return None if states is None else (states, watched)

    def _states(self) -> dict[str, dict[str, Any]] | None:
        try:
            states = self.supervisor.states()
        except OutOfResources as exc:
            log.warning("watchdog could not look, retrying error=%s", exc)
            self.board.error(str(exc), "transient")
            return None
        except SupervisorError as exc:
            now = time.monotonic()
            self._unanswered_since = self._unanswered_since or now
            if now - self._unanswered_since > UNANSWERED_LIMIT:
                raise AppFailed(f"supervisord stopped answering: {exc}") from exc
            return None
        self._unanswered_since = None
        return states

    def _bake_failed(self, states: dict[str, dict[str, Any]], watched: set[str]) -> bool:
        """True when the revision on probation failed it: the previous one is asked for
        (once), and nothing else is judged meanwhile. Its programs were all RUNNING when
        it went live, so one that is not, or is not the process that went live, has
        exited, even if no look saw it go (one that exits as the switch ends, while the
        watchdog cannot look)."""
        bake = self._bake
        if bake is None or bake.sha != self._running or self._reported:
            return False
        if bake.over:
            self.updater.baked(bake)
            return False
        down = [
            program_name(n)
            for n in sorted(watched)
            if not is_running(states, n) or bake.replaced(n, int(states[n].get("pid") or 0))
        ]
        why = judge(bake, self.counter.since_switch or down, self.bake_probe)
        if why is None:
            return False
        self._reported = True
        log.error("revision failed within the bake time sha=%s reason=%s", bake.sha[:12], why)
        self.board.error(why, "app")
        self.inbox.crashed(why, self._running, baking=True)
        return True

    def _problem(
        self, states: dict[str, dict[str, Any]], watched: set[str]
    ) -> tuple[str, str, int] | None:
        """(program, why, restarts) of the first program that cannot stay up."""
        looping = self.counter.looping()
        if looping is not None:
            name, exits = looping
            why = f"program {name} exited {exits} times within {self.counter.window:g}s"
            return name, why, exits
        fatal = first_fatal(states, watched)
        if fatal is not None:
            process = next(
                n for n in sorted(watched) if states.get(n, {}).get("statename") == "FATAL"
            )
            name = program_name(process)
            return name, fatal, self.counter.totals.get(name, 0)
        return self._stuck_down(states, watched)

    def _stuck_down(
        self, states: dict[str, dict[str, Any]], watched: set[str]
    ) -> tuple[str, str, int] | None:
        """A program missing or not RUNNING for a whole crash-loop window is down too
        (a restore that failed half-way leaves one stopped, never FATAL)."""
        now = time.monotonic()
        for name in sorted(watched):
            if is_running(states, name):
                self._not_running_since.pop(name, None)
                continue
            since = self._not_running_since.setdefault(name, now)
            if now - since > self.counter.window:
                program = program_name(name)
                why = f"program {program} not running for {now - since:.0f}s"
                return program, why, self.counter.totals.get(program, 0)
        return None

    def _down(self, program: str, why: str, restarts: int) -> None:
        window = self.counter.window
        self.board.update(
            app_down={"program": program, "restarts": restarts, "window_seconds": window}
        )
        if self._reported:
            return
        self._reported = True
        self.board.error(why, "app")
        if not self.rollback_on_crash:
            raise AppFailed(why)
        self.inbox.crashed(why, self._running)
