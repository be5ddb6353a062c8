"""The control loop: the one thread that owns the update work.

It serves the first revision, then takes requests from the inbox (or the poll
timer) one at a time. Every failure lands somewhere (see the tree in errors.py):
a rejected revision is recorded by the updater and the loop waits for the next
poll; a transient or unexpected one is shown in /status and backed off; a fatal
one is handed to the main thread, which exits with its code.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from entrypoint.backoff import Backoff, jitter
from entrypoint.board import StatusBoard
from entrypoint.config import Settings
from entrypoint.errors import (
    AppFailed,
    FatalError,
    LivePullError,
    LocalFault,
    RevisionError,
    RevisionRefused,
    StartupFailed,
    TransientError,
    is_local_fault,
)
from entrypoint.inbox import (
    CHECK_SPACING,
    Check,
    Crashed,
    Inbox,
    Pause,
    Request,
    Resume,
    Rollback,
)
from entrypoint.updater import Updater, short

log = logging.getLogger(__name__)

FIRST_RETRY = 1.0
TICK = 1.0  # the idle loop beats at least this often


class ControlLoop:
    def __init__(
        self, settings: Settings, updater: Updater, board: StatusBoard, inbox: Inbox
    ) -> None:
        self.settings = settings
        self.updater = updater
        self.board = board
        self.inbox = inbox
        self.backoff = Backoff(max(settings.poll_interval, FIRST_RETRY), settings.max_backoff)
        self._failures: queue.Queue[FatalError] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="control-loop", daemon=True)

    def start(self) -> None:
        self.board.liveness.attach(self._thread)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def failure(self) -> FatalError | None:
        """The fatal error that ended the loop, for the main thread to exit with."""
        try:
            return self._failures.get_nowait()
        except queue.Empty:
            return None

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._start_first_revision():
                self._serve()
        except FatalError as exc:
            self._failures.put(exc)
        except BaseException as exc:  # the loop must never end without a word
            log.exception("control loop ended by an unexpected error")
            self._failures.put(AppFailed(f"control loop ended: {exc!r}"))

    def _serve(self) -> None:
        next_poll = self._next_poll(self._poll_delay())
        while not self.inbox.stopping:
            self.board.liveness.beat()
            wait = TICK if next_poll is None else max(0.0, min(TICK, next_poll - time.monotonic()))
            request = self.inbox.take(wait)
            if request is None:
                self.updater.after_the_bake()
                if next_poll is None or time.monotonic() < next_poll or self.inbox.stopping:
                    continue
                request = Check("poll")
            next_poll = self._next_poll(self._handle(request))

    def _handle(self, request: Request) -> float | None:
        """Carry out one request; return the seconds to the next poll (None: no polling)."""
        if isinstance(request, Check):
            self.inbox.hold_checks(CHECK_SPACING)
        try:
            self._dispatch(request)
        except FatalError:
            raise
        except RevisionError as exc:  # recorded as failed by the updater
            self._report(exc, "rejected")
        except Exception as exc:
            delay = self._back_off(exc)
            self.inbox.hold_checks(delay)  # a /sync flood does not hurry a failing remote
            return delay
        else:
            self._settled()
        self.backoff.reset()
        return self._poll_delay()

    def _dispatch(self, request: Request) -> None:
        if isinstance(request, Check):
            self.updater.check(trigger=request.trigger, ignore_hold=request.ignore_hold)
        elif isinstance(request, Pause | Resume):
            self._pause_or_resume(request)
        elif isinstance(request, Rollback):
            self._roll_back(request)
        elif isinstance(request, Crashed):
            if request.revision != self.updater.running:
                log.info("the revision found down no longer runs, nothing to roll back")
                return
            self._roll_back_after_crash(request)

    def _pause_or_resume(self, request: Pause | Resume) -> None:
        """Pauses hold updates only (see entrypoint/hold.py); a resume checks at once, so
        a revision that waited goes live."""
        if isinstance(request, Pause):
            self.updater.pause(request.reason)
        else:
            self.updater.resume()
            self.inbox.check("resume")

    # -- the first revision ---------------------------------------------------------------

    def _start_first_revision(self) -> bool:
        """Serve something as soon as possible; False if stopped before that."""
        if self._serve_from_disk():
            self.updater.sweep_interrupted()  # once it serves: it may take a while
            self.inbox.check("start")  # check the remote straight away
            return True
        self.updater.stop_unclaimed()  # nothing runs but what the agent chose
        self.updater.sweep_interrupted()  # room for the first install
        return self._fetch_first_revision()

    def _serve_from_disk(self) -> bool:
        try:
            sha = self.updater.last_good_on_disk()
            if sha is None:
                return False
            log.info("starting last good revision at once sha=%s", short(sha))
            self.updater.start_from_disk(sha)
        except FatalError:
            raise
        except Exception as exc:
            log.error("last good revision did not start, fetching error=%s", exc)
            return False
        self._settled()
        return True

    def _fetch_first_revision(self) -> bool:
        deadline = time.monotonic() + self.settings.start_timeout
        backoff = Backoff(FIRST_RETRY, self.settings.max_backoff)
        while not self.inbox.stopping:
            self.board.liveness.beat()
            try:
                self.updater.check(retry_failed=True, trigger="start")
                self._settled()
                return True
            except FatalError:
                raise
            except RevisionRefused as exc:
                raise StartupFailed(str(exc)) from exc
            except RevisionError as exc:
                raise AppFailed(str(exc)) from exc
            except Exception as exc:
                self._report(exc, self._kind(exc), state="waiting for remote")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StartupFailed(
                        f"no revision fetched within {self.settings.start_timeout:g}s "
                        f"and none on disk: {self._describe(exc)}"
                    ) from exc
                delay = min(backoff.next_delay(), remaining)
                log.warning("first fetch failed, retrying in %.1fs error=%s", delay, exc)
                self._wait_for_retry(delay)
        return False

    def _wait_for_retry(self, seconds: float) -> None:
        """Wait, beating, until the retry is due or a request (a sync) asks for it now."""
        deadline = time.monotonic() + seconds
        while not self.inbox.stopping and time.monotonic() < deadline:
            self.board.liveness.beat()
            request = self.inbox.take(min(TICK, max(0.0, deadline - time.monotonic())))
            if isinstance(request, Pause | Resume):  # kept, though the first start goes on
                try:
                    self._pause_or_resume(request)
                except Exception as exc:
                    self._report(exc, self._kind(exc), state="waiting for remote")
            elif request is not None:
                return

    # -- rollbacks ------------------------------------------------------------------------

    def _roll_back(self, request: Rollback) -> None:
        target = request.target or "previous"
        self.board.update(rollback={"to": target, "status": "pending", "error": None})
        try:
            target = self._rollback_target(request)
            self.board.update(rollback={"to": target, "status": "pending", "error": None})
            self.updater.rollback(target, request.reason, trigger=_trigger(request))
        except Exception as exc:
            error = self._describe(exc)
            self.board.update(rollback={"to": target, "status": "failed", "error": error})
            raise
        self.board.update(rollback={"to": target, "status": "done", "error": None})

    def _rollback_target(self, request: Rollback) -> str:
        try:
            if request.trigger == "crash":
                return self.updater.crash_rollback_target()
            return self.updater.rollback_target(request.target)
        except RevisionError as exc:  # nothing to roll back to: a failed rollback too
            running = self.updater.running
            reason = f"{request.reason}; {exc}"
            self.updater.recorder.refused("rollback", _trigger(request), running, reason)
            raise

    def _roll_back_after_crash(self, crash: Crashed) -> None:
        """A revision down within its bake time, or LIVE_PULL_ROLLBACK_ON_CRASH: the newest
        retained release that never failed, or exit if there is none or it cannot serve
        (never back and forth between two)."""
        reason = crash.reason
        log.error("the app cannot stay up, rolling back error=%s", reason)
        when = "failed within the bake time" if crash.baking else "crashed in steady state"
        try:
            self._roll_back(Rollback(None, f"{when}: {reason}", "crash"))
        except Exception as exc:
            raise AppFailed(f"{reason}; rollback failed: {self._describe(exc)}") from exc

    # -- reporting ------------------------------------------------------------------------

    def _back_off(self, exc: Exception) -> float:
        kind = self._kind(exc)
        self._report(exc, kind)
        delay = self.backoff.next_delay()
        log.warning("next check in %.1fs kind=%s", delay, kind)
        return delay

    def _report(self, exc: Exception, kind: str, state: str | None = None) -> None:
        message = self._describe(exc)
        if kind == "unexpected":
            log.error("unexpected error, the loop goes on error=%s", message, exc_info=exc)
        elif kind != "rejected":  # the updater already logged the rejection
            log.warning("check failed kind=%s error=%s", kind, message)
        self.board.error(message, kind)
        self.board.update(state=state or self.updater.resting_state())

    def _settled(self) -> None:
        """A request went through: a fault that blocked checks is over."""
        self.board.clear_error(("transient", "unexpected"))
        self.board.update(state=self.updater.resting_state())

    @staticmethod
    def _kind(exc: Exception) -> str:
        if isinstance(exc, TransientError) or is_local_fault(exc):
            return "transient"
        return "rejected" if isinstance(exc, RevisionError) else "unexpected"

    @staticmethod
    def _describe(exc: BaseException) -> str:
        if is_local_fault(exc) or isinstance(exc, LocalFault):
            return f"LIVE_PULL_HOME cannot be written: {exc}"
        if isinstance(exc, LivePullError):
            return str(exc)
        return f"{type(exc).__name__}: {exc}"

    def _poll_delay(self) -> float | None:
        """Seconds to the next poll; None (wait for a sync) when polling is off."""
        if self.settings.poll_interval == 0:
            return None
        return jitter(self.settings.poll_interval)

    @staticmethod
    def _next_poll(delay: float | None) -> float | None:
        return None if delay is None else time.monotonic() + delay


def _trigger(request: Rollback) -> str:
    """What a history calls a rollback's trigger: rollback (an operator's) or crash."""
    return "crash" if request.trigger == "crash" else "rollback"
