"""The update sequence: one method that reads as the list of steps in DESIGN.md."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from entrypoint.config import Settings
from entrypoint.errors import AppFailed, GitError, RevisionError, SupervisorError
from entrypoint.procfile import Processes, load_processes
from entrypoint.release_step import run_release_step
from entrypoint.releases import Releases
from entrypoint.repository import RemoteRevision, Repository
from entrypoint.state import State, StateFile
from entrypoint.status import StatusBoard, now_iso
from entrypoint.supervisor import Supervisor
from entrypoint.supervisor_config import ProgramSpec

log = logging.getLogger(__name__)


def short(sha: str) -> str:
    return sha[:12]


class Updater:
    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        releases: Releases,
        supervisor: Supervisor,
        state_file: StateFile,
        board: StatusBoard,
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.releases = releases
        self.supervisor = supervisor
        self.state_file = state_file
        self.state: State = state_file.load()
        self.board = board
        self.stop = stop
        self.running: str | None = None
        # Held while programs are being swapped; the watchdog leaves them alone then.
        self.switching = threading.Lock()

    def check(self, *, retry_failed: bool = False) -> bool:
        """Bring the newest revision of the ref live; return True if one went live.

        Git errors (remote down, damaged repository) propagate for the caller to
        back off; a revision that cannot run is recorded as failed instead.
        """
        remote = self._ask_remote()  # 1. one round trip, no objects
        if not self._wanted(remote.sha, retry_failed):  # 2. running, or known bad
            return False
        sha = self._fetch(remote)  # 3. fetch and prepare releases/<sha>
        if not self._wanted(sha, retry_failed):
            return False
        replacing = self.running is not None
        try:
            processes = self._load(sha)
            self._release_step(sha, processes)  # 5. release step (migrations)
            self.go_live(sha, processes)  # 6. start, prove healthy, else roll back
        except RevisionError as exc:
            if not self.stop.is_set():  # a stop mid-update says nothing of the revision
                self._record_failure(sha, str(exc))
            raise
        self._record_success(sha, counted=replacing)  # 7. record, collect garbage
        return True

    # -- the steps ------------------------------------------------------------------

    def _ask_remote(self) -> RemoteRevision:
        try:
            remote = self.repo.resolve(self.settings.repo_ref)
        except GitError:
            if self.repo.healthy():
                raise  # the remote's problem: the caller backs off
            log.warning("local repository damaged, rebuilding it")
            self.repo.rebuild()
            remote = self.repo.resolve(self.settings.repo_ref)
        self.board.update(last_check=now_iso(), ref=remote.ref_name or self.settings.repo_ref)
        return remote

    def _wanted(self, sha: str, retry_failed: bool) -> bool:
        if sha == self.running:
            return False
        reason = self.state.failed.get(sha)
        if reason is not None and not retry_failed:
            log.debug("skipping revision that failed before sha=%s", short(sha))
            return False
        return True

    def _fetch(self, remote: RemoteRevision) -> str:
        """Fetch and export; a failure after the remote answered means our repository
        is the problem, so it is rebuilt from scratch and the step tried once more."""
        self.board.update(state="fetching")
        try:
            return self._fetch_and_export(remote)
        except (GitError, OSError) as exc:
            log.warning("fetch failed, rebuilding the repository error=%s", exc)
            self.repo.rebuild()
            return self._fetch_and_export(remote)

    def _fetch_and_export(self, remote: RemoteRevision) -> str:
        sha = self.repo.fetch(remote)
        self.releases.prepare(sha, lambda target: self.repo.export(sha, target))
        return sha

    def _load(self, sha: str) -> Processes:
        app_path = self.releases.app_path(sha)
        if not app_path.is_dir():
            raise RevisionError(
                f"LIVE_PULL_APP_DIR {self.settings.app_dir!r} is not in the revision"
            )
        return load_processes(app_path, self.settings.command)

    def _release_step(self, sha: str, processes: Processes) -> None:
        if processes.release is None:
            return
        self.board.update(state="releasing")
        run_release_step(
            processes.release,
            self.releases.app_path(sha),
            self.app_environment(sha),
            timeout=self.settings.release_timeout,
            stop=self.stop,
        )

    def go_live(self, sha: str, processes: Processes) -> None:
        """Point `current` at sha and restart the programs on it (stop, then start).

        If the new revision does not come up, the previous one is restored.
        """
        previous = self.running
        log.info("starting revision sha=%s programs=%s", short(sha), ",".join(processes.programs))
        with self.switching:
            self.board.update(state="switching", ready=False)
            try:
                self._run(sha, processes)
            except (AppFailed, SupervisorError) as exc:
                if previous is not None and not self.stop.is_set():
                    log.error("revision failed to start, restoring sha=%s", short(previous))
                    self._run(previous, self._load(previous))
                raise RevisionError(f"revision {short(sha)} failed to start: {exc}") from exc

    def _run(self, sha: str, processes: Processes) -> None:
        self.releases.activate(sha)
        self.running = sha
        self.board.update(revision=sha)
        self.supervisor.apply(self._programs(sha, processes))
        self.supervisor.wait_running(processes.programs)
        self.board.update(state="running", ready=True)

    def _programs(self, sha: str, processes: Processes) -> list[ProgramSpec]:
        directory = self.releases.current_link / self.settings.app_dir
        env = {"PORT": str(self.settings.port), "LIVE_PULL_REVISION": sha}
        return [
            ProgramSpec(name, command, Path(os.path.normpath(directory)), env)
            for name, command in processes.programs.items()
        ]

    def app_environment(self, sha: str) -> dict[str, str]:
        """The app's environment: ours (secrets already scrubbed), PORT and the revision."""
        return {**os.environ, "PORT": str(self.settings.port), "LIVE_PULL_REVISION": sha}

    # -- recording --------------------------------------------------------------------

    def _record_success(self, sha: str, *, counted: bool) -> None:
        """`counted`: an update replaced a running revision (the first start is not one)."""
        log.info("revision live sha=%s", short(sha))
        self.state.record_good(sha)
        self.state_file.save(self.state)
        if counted:
            self.board.count_update()
        self.board.update(last_error=None, failed_revisions=dict(self.state.failed))
        self.releases.collect(self.state.retained(self.settings.keep_releases))

    def _record_failure(self, sha: str, reason: str) -> None:
        log.error("revision failed sha=%s reason=%s", short(sha), reason)
        self.state.record_failed(sha, reason)
        self.state_file.save(self.state)
        self.board.update(
            last_error=reason,
            failed_revisions=dict(self.state.failed),
            state="running" if self.running else "failed",
            ready=self.running is not None and self.running != sha,
        )
