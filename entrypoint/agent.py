"""The agent's lifecycle: start, serve the first revision, poll, watch, stop.

Three threads: the main thread (signals, the watchdog over supervisord, the
shutdown), the poller (the update sequence, one check at a time) and the status
HTTP server. Signal handlers only set events.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from types import FrameType

from entrypoint.auth import GitAuth
from entrypoint.config import Settings
from entrypoint.environments import Environments, InstallOptions
from entrypoint.errors import (
    AppFailed,
    GitError,
    LivePullError,
    RevisionError,
    RevisionRefused,
    StartupFailed,
)
from entrypoint.installers import pick_installer
from entrypoint.releases import Releases
from entrypoint.repository import Repository
from entrypoint.state import StateFile
from entrypoint.status import StatusBoard, StatusServer
from entrypoint.supervisor import Supervisor, first_fatal
from entrypoint.supervisor_config import SharedSocket, Timings
from entrypoint.updater import Updater, short
from entrypoint.verify import Verifier
from entrypoint.webhook import Webhook

log = logging.getLogger(__name__)

WATCH_INTERVAL = 1.0
FIRST_RETRY = 1.0


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


class Agent:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.rollback_to: tuple[str, str] | None = None  # (sha, reason), for the poller
        home = settings.home
        home.mkdir(parents=True, exist_ok=True)
        self.board = StatusBoard(settings.repo_url.redacted(), settings.ref_label)
        self.repo = Repository(
            home / "repo",
            settings.repo_url,
            depth=settings.depth,
            timeout=settings.git_timeout,
            auth=GitAuth(settings.auth, home),
        )
        self.releases = Releases(home, settings.app_dir, settings.shared_paths)
        timings = Timings(settings.start_seconds, settings.start_retries, settings.stop_timeout)
        self.supervisor = Supervisor(home / "run", timings)
        self.updater = Updater(
            settings,
            self.repo,
            self.releases,
            self.supervisor,
            StateFile(home / "state.json"),
            self.board,
            self.stop,
            Environments(
                home / "venvs",
                home / "cache",
                pick_installer(settings.installer),
                InstallOptions(
                    settings.lockfile,
                    settings.install_command,
                    settings.install_args,
                    settings.install_timeout,
                ),
                self.stop,
            ),
            Verifier(settings.verify, home),
            self._shared_socket(),
        )
        self.status = StatusServer(
            settings.status_host,
            settings.status_port,
            self.board,
            self.request_sync,
            # The main thread blocks for at most one git command between beats.
            stale_after=max(60.0, settings.git_timeout + 30),
            webhook=Webhook(settings.webhook_secret, self._tracked_ref, self.request_sync),
            on_rollback=self.request_rollback,
        )

    # -- public -------------------------------------------------------------------

    def run(self) -> int:
        """Run until asked to stop (return 0) or the app cannot be kept up (raise)."""
        self._install_signal_handlers()
        self.status.start()
        log.info(
            "live-pull starting repo=%s ref=%s status_port=%d",
            self.settings.repo_url.redacted(),
            self.settings.ref_label,
            self.status.port,
        )
        try:
            self.repo.open()
            self.supervisor.start()
            if self._start_first_revision():
                self._start_poller()
                self._watch()
        finally:
            self._shutdown()
        return 0

    def request_sync(self) -> None:
        log.info("check requested")
        self.wake.set()

    def _shared_socket(self) -> SharedSocket | None:
        """With LIVE_PULL_LISTEN, `web` rolls over on a socket supervisord holds."""
        if self.settings.listen is None:
            return None
        return SharedSocket(
            self.settings.listen, self.settings.home / "run" / "slots", self.settings.drain_seconds
        )

    def _tracked_ref(self) -> str | None:
        """The full ref name being followed (None for a commit, or before the first check)."""
        ref = self.board.snapshot().get("ref")
        return ref if isinstance(ref, str) and ref.startswith("refs/") else None

    def request_stop(self) -> None:
        self.stop.set()
        self.wake.set()

    # -- start ----------------------------------------------------------------------

    def _start_first_revision(self) -> bool:
        """Serve something as soon as possible; False if stopped before that."""
        last_good = self.updater.state.last_good
        if last_good is not None and self.releases.exists(last_good):
            log.info("starting last good revision at once sha=%s", short(last_good))
            try:
                self.updater.go_live(self.updater.prepare(last_good))
            except RevisionError as exc:
                log.error("last good revision did not start, fetching error=%s", exc)
            else:
                self.wake.set()  # check the remote straight away, in the background
                return True
        return self._fetch_first_revision()

    def _fetch_first_revision(self) -> bool:
        deadline = time.monotonic() + self.settings.start_timeout
        backoff = Backoff(FIRST_RETRY, self.settings.max_backoff)
        while not self.stop.is_set():
            try:
                self.updater.check(retry_failed=True)
                return True
            except GitError as exc:
                self.board.update(last_error=str(exc), state="waiting for remote")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StartupFailed(
                        f"no revision fetched within {self.settings.start_timeout:g}s "
                        f"and none on disk: {exc}"
                    ) from exc
                delay = min(backoff.next_delay(), remaining)
                log.warning("first fetch failed, retrying in %.1fs error=%s", delay, exc)
                self._wait_alive(delay)
            except RevisionRefused as exc:
                raise StartupFailed(str(exc)) from exc
            except RevisionError as exc:
                raise AppFailed(str(exc)) from exc
        return False

    def _wait_alive(self, seconds: float) -> None:
        """Wait (until stopped) while telling /healthz the loop is alive."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.board.beat()
            self.stop.wait(min(WATCH_INTERVAL, max(0.0, deadline - time.monotonic())))

    # -- steady state --------------------------------------------------------------------

    def _start_poller(self) -> None:
        threading.Thread(target=self._poll_loop, name="poller", daemon=True).start()

    def _poll_loop(self) -> None:
        backoff = Backoff(max(self.settings.poll_interval, FIRST_RETRY), self.settings.max_backoff)
        delay: float | None = self._poll_delay()
        while not self.stop.is_set():
            self.wake.wait(delay)
            self.wake.clear()
            if self.stop.is_set():
                return
            delay = self._poll_once(backoff)

    def _poll_once(self, backoff: Backoff) -> float | None:
        try:
            self._roll_back_if_asked()
            self.updater.check()
        except GitError as exc:
            delay = backoff.next_delay()
            log.warning("check failed, next try in %.1fs error=%s", delay, exc)
            self.board.update(last_error=str(exc))
            return delay
        except LivePullError as exc:
            log.error("update failed error=%s", exc)
        backoff.reset()
        return self._poll_delay()

    def request_rollback(self, wanted: str | None) -> str:
        """Validate now, switch in the poller: returns the target sha or raises."""
        target = self.updater.rollback_target(wanted)
        self.rollback_to = (target, f"rolled back by operator to {short(target)}")
        self.wake.set()
        return target

    def _roll_back_if_asked(self) -> None:
        pending, self.rollback_to = self.rollback_to, None
        if pending is not None:
            self.updater.rollback(*pending)

    def _poll_delay(self) -> float | None:
        """Seconds to the next poll; None (wait for a sync) when polling is off."""
        if self.settings.poll_interval == 0:
            return None
        return jitter(self.settings.poll_interval)

    def _watch(self) -> None:
        """Turn "the app cannot stay up" into an exit the restart policy sees."""
        while not self.stop.wait(WATCH_INTERVAL):
            self.board.beat()
            if not self.supervisor.alive():
                raise AppFailed("supervisord exited unexpectedly")
            if not self.updater.switching.acquire(blocking=False):
                continue  # the updater judges a revision while it starts it
            try:
                fatal = first_fatal(self.supervisor.states(), self.updater.active_programs())
            finally:
                self.updater.switching.release()
            if fatal is not None and not self._roll_back_after_crash(fatal):
                raise AppFailed(fatal)

    def _roll_back_after_crash(self, fatal: str) -> bool:
        """With LIVE_PULL_ROLLBACK_ON_CRASH, a FATAL app falls back to an earlier release."""
        if not self.settings.rollback_on_crash or self.rollback_to is not None:
            return self.rollback_to is not None
        try:
            target = self.updater.rollback_target(None)
        except RevisionError:
            return False
        log.error("the app cannot stay up, rolling back error=%s", fatal)
        self.rollback_to = (target, f"crashed in steady state: {fatal}")
        self.wake.set()
        return True

    # -- stop -------------------------------------------------------------------------

    def _shutdown(self) -> None:
        self.request_stop()
        self.board.update(state="stopping", ready=False)
        log.info("stopping app and supervisord")
        self.supervisor.stop()
        self.status.stop()
        log.info("stopped")

    def _install_signal_handlers(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.wake.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
