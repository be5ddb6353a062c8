"""The agent's lifecycle: take the home, start supervisord, run the control loop and
the watchdog, stop everything in order.

Threads: the main thread (signals, the watchdog, the shutdown), the control loop
(entrypoint.loop: all update work) and the status HTTP server. Signal handlers only
set events; the main thread turns them into requests.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from entrypoint.auth import GitAuth
from entrypoint.bake import health_probe
from entrypoint.board import StatusBoard
from entrypoint.boot import Booted
from entrypoint.config import Settings, split_urls
from entrypoint.environments import Environments, InstallOptions
from entrypoint.events import Recorder, Sink
from entrypoint.fleet.store import Fleet, open_fleet
from entrypoint.history import History
from entrypoint.identity import Identity
from entrypoint.inbox import Inbox, Pause, Resume, Rollback
from entrypoint.installers import pick_installer
from entrypoint.loop import ControlLoop
from entrypoint.metrics import Metrics
from entrypoint.quickstart import stop_asked
from entrypoint.releases import Releases
from entrypoint.repository import Repository
from entrypoint.state import StateFile
from entrypoint.status import Controls, StatusServer
from entrypoint.supervisor import Supervisor
from entrypoint.supervisor_config import SharedSocket, local_url
from entrypoint.updater import Updater, pick_rollback_target
from entrypoint.verify import Verifier
from entrypoint.watchdog import Watchdog
from entrypoint.webhook import Webhook

if TYPE_CHECKING:
    from entrypoint.notify import Notifier

log = logging.getLogger(__name__)

WATCH_INTERVAL = 1.0
LOOP_JOIN_SECONDS = 1.0
# A release step killed at stop is gone within this (commands.py: grace, then SIGKILL).
FLEET_CLOSE_AFTER_SECONDS = 10.0


class Agent:
    def __init__(self, settings: Settings, booted: Booted) -> None:
        """`booted`: who the app runs as and the supervisord already starting (boot.py)."""
        self.settings = settings
        self.output = booted.output
        self.stop = threading.Event()
        self.hangup = threading.Event()
        self.notifier: Notifier | None = None
        self.inbox = Inbox()
        run_as = booted.run_as
        self.board = StatusBoard(settings.repo_url.redacted(), settings.ref_label)
        self.history = History(settings.home / "history")
        self.metrics = Metrics(self.board)
        self.supervisor = booted.supervisor
        self.fleet = open_fleet(settings)
        self.updater = build_updater(
            settings,
            self.supervisor,
            self.board,
            self.stop,
            run_as,
            self._shared_socket(),
            sinks=self._sinks(),
            fleet=self.fleet,
        )
        self.loop = ControlLoop(settings, self.updater, self.board, self.inbox)
        self.watchdog = Watchdog(
            self.supervisor,
            self.updater,
            self.board,
            self.inbox,
            crash_loop=settings.crash_loop,
            rollback_on_crash=settings.rollback_on_crash,
            bake_probe=health_probe(self._served_health_url()),
        )
        self.status = StatusServer(
            settings.status_host,
            settings.status_port,
            self.board,
            lambda: self._push_heard("sync"),
            webhook=Webhook(
                settings.webhook_secret, self._tracked_ref, lambda: self._push_heard("webhook")
            ),
            controls=Controls(
                rollback=self.request_rollback,
                pause=lambda reason: self.inbox.pausing(Pause(reason)),
                resume=lambda: self.inbox.pausing(Resume()),
                sync_now=lambda: self._push_heard("sync", ignore_hold=True),
            ),
        )
        self.status.add_readers(self.history.events, self.metrics.exposition)

    # -- public -------------------------------------------------------------------

    def run(self) -> int:
        """Run until asked to stop (return 0) or the app cannot be kept up (raise)."""
        self._install_signal_handlers()
        self.status.start()
        log.info("status endpoint listening port=%d", self.status.port)
        self.fleet.start(lambda: self.inbox.check("peer"), self.board)
        try:
            self.supervisor.wait_ready()
            self.loop.start()
            self._watch()
        finally:
            self._shutdown()
        return 0

    def request_rollback(self, wanted: str | None) -> str:
        """From the HTTP side: check the target against what the board says is retained,
        then queue the switch for the control loop. Returns the target or raises."""
        retained = self.board.snapshot()["retained"]
        target = pick_rollback_target(list(retained), wanted)
        self.board.update(rollback={"to": target, "status": "pending", "error": None})
        self.inbox.rollback(
            Rollback(target, f"rolled back by operator to {target[:12]}", "operator")
        )
        return target

    def _sinks(self) -> list[Sink]:
        """Where events go: the history, the metrics, and notifications if configured."""
        sinks: list[Sink] = [self.history, self.metrics]
        urls = self.settings.notify_urls
        if urls is not None:
            from entrypoint.notify import Notifier  # Apprise is heavy: only when wanted

            self.notifier = Notifier(
                lambda: split_urls(urls.read()),
                self.settings.notify_on,
                self.settings.repo_url.url,
                self.settings.ref_label,
            )
            sinks.append(self.notifier)
        return sinks

    def _push_heard(self, trigger: str, *, ignore_hold: bool = False) -> None:
        """A webhook or a sync: check here, and tell the fleet's other replicas."""
        self.inbox.check(trigger, ignore_hold=ignore_hold)
        self.fleet.announce()

    def request_stop(self) -> None:
        self.stop.set()
        self.inbox.stop()

    def _served_health_url(self) -> str | None:
        """LIVE_PULL_HEALTHCHECK_PATH as clients reach it, on this machine."""
        path = self.settings.healthcheck_path
        if path is None:
            return None
        return local_url(self.settings.listen_address, self.settings.port, path)

    def _shared_socket(self) -> SharedSocket | None:
        """Unless LIVE_PULL_LISTEN=off, `web` rolls over on a socket supervisord holds."""
        settings = self.settings
        if settings.listen_address is None:
            return None
        slots_dir = settings.home / "run" / "slots"
        return SharedSocket(
            settings.listen_address, slots_dir, settings.drain_seconds, settings.handoff
        )

    def _tracked_ref(self) -> str | None:
        """The full ref name being followed (None for a commit, or before the first check)."""
        ref = self.board.snapshot().get("ref")
        return ref if isinstance(ref, str) and ref.startswith("refs/") else None

    # -- the main thread --------------------------------------------------------------

    def _watch(self) -> None:
        """Until stopped: hand signals to the loop, raise its fatal errors, watch the app."""
        while not self.stop.wait(WATCH_INTERVAL):
            if self.hangup.is_set():
                self.hangup.clear()
                self.inbox.check("signal")
            failure = self.loop.failure()
            if failure is not None:
                raise failure
            self.watchdog.tick()

    def _shutdown(self) -> None:
        self.request_stop()
        self.board.serving(False)
        self.board.update(state="stopping")
        # The loop's one-off commands die on the stop event, and go_live starts nothing
        # once it is set; the app's stop timeout is not spent waiting for a git command.
        self.loop.join(LOOP_JOIN_SECONDS)
        log.info("stopping app and supervisord")
        self.supervisor.stop()
        # The fleet's locks end with its connections: not while the loop may still hold
        # one for a release step that is being killed (a peer would start it meanwhile).
        if not self.fleet.alone:
            self.loop.join(FLEET_CLOSE_AFTER_SECONDS)
        self.fleet.close()
        self.output.stop()  # after supervisord: its last lines are written first
        if self.notifier is not None:
            self.notifier.close()
        self.status.stop()
        log.info("stopped")

    def _install_signal_handlers(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.stop.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.hangup.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        if stop_asked():  # while the quick start's app served, before these handlers
            log.info("stopping: asked to while the quick start served")
            self.stop.set()


def build_updater(
    settings: Settings,
    supervisor: Supervisor,
    board: StatusBoard,
    stop: threading.Event,
    run_as: Identity,
    shared: SharedSocket | None = None,
    *,
    sinks: Sequence[Sink] = (),
    fleet: Fleet | None = None,
) -> Updater:
    """The update sequence wired to the home (the agent's, and `live-pull prepare`'s);
    `sinks`: where its events go (history, metrics, notifications)."""
    home = settings.home
    repo = Repository(
        home / "repo",
        settings.repo_url,
        depth=settings.depth,
        timeout=settings.git_timeout,
        auth=GitAuth(settings.auth, home),
    )
    releases = Releases(
        home, settings.app_dir, settings.shared_paths, int(settings.max_revision_mb * 1024 * 1024)
    )
    options = InstallOptions(
        settings.lockfile,
        settings.install_command,
        settings.install_args,
        settings.install_timeout,
        settings.install_groups,
        settings.install_extras,
    )
    environments = Environments(
        home / "venvs", home / "cache", pick_installer(settings.installer), options, stop, run_as
    )
    return Updater(
        settings,
        repo,
        releases,
        supervisor,
        StateFile(home / "state.json"),
        board,
        stop,
        environments,
        Verifier(settings.verify, home),
        shared,
        run_as,
        recorder=Recorder(list(sinks), repo.describe),
        fleet=fleet,
    )
