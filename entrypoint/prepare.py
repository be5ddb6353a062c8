"""`live-pull prepare`: the update sequence up to the switch, once, then exit.

For init containers, CI, and baking a release into a derived image: the revision the
ref points to is fetched, verified, exported, installed and released (the release
step, unless skipped), and recorded as the last good one, so a later `live-pull run`
on the same home serves it at once (offline too), then follows the remote.
supervisord is never started; the home's lock is held throughout, so a running agent
on the same home makes it fail before anything is touched; no copy of a git
credential is left in the home (it may become an image layer).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from entrypoint.agent import build_updater
from entrypoint.board import StatusBoard
from entrypoint.boot import separate
from entrypoint.config import Settings
from entrypoint.fleet.store import open_fleet
from entrypoint.homelock import HomeLock
from entrypoint.processes import home_id, tag_children
from entrypoint.supervisor import Supervisor
from entrypoint.supervisor_config import Timings
from entrypoint.updater import Staged

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    sha: str
    digest: str | None  # the dependency environment's, if the revision has one
    release: str  # what became of the release step (see Updater.stage)
    seconds: float

    def line(self) -> str:
        """The one line `live-pull prepare` ends with."""
        return (
            f"prepared sha={self.sha} digest={self.digest or '-'} release={self.release}"
            f" in {self.seconds:.1f}s"
        )


def prepare(settings: Settings, *, release_step: bool = True) -> Prepared:
    """Take the home, stage the ref's revision in it, let the home go."""
    started = time.monotonic()
    lock = HomeLock(settings.home)
    lock.acquire()  # before anything in the home is read or written
    try:
        staged = _stage(settings, release_step)
    finally:
        lock.release()
    environment = staged.revision.environment
    digest = environment.digest if environment is not None else None
    seconds = time.monotonic() - started
    return Prepared(staged.revision.sha, digest, staged.release, seconds)


def _stage(settings: Settings, release_step: bool) -> Staged:
    """The agent's own parts, wired as `run` wires them; supervisord is built (the
    sequence takes one) but never started."""
    home = settings.home
    run_as = separate(settings)
    process_home = home_id(home)
    tag_children(process_home)
    timings = Timings(settings.start_seconds, settings.start_retries, settings.stop_timeout)
    supervisor = Supervisor(home / "run", timings, process_home, run_as)
    board = StatusBoard(settings.repo_url.redacted(), settings.ref_label)
    fleet = open_fleet(settings)  # init containers of a fleet run the release step once
    updater = build_updater(settings, supervisor, board, threading.Event(), run_as, fleet=fleet)
    log.info(
        "preparing repo=%s ref=%s home=%s",
        settings.repo_url.redacted(),
        settings.ref_label,
        home,
    )
    try:
        return updater.stage(release_step=release_step)
    finally:
        fleet.close()
        updater.repo.auth.forget()
