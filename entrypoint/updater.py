"""The update sequence: one method that reads as the list of steps in DESIGN.md."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from entrypoint import events
from entrypoint.bake import Bake
from entrypoint.board import StatusBoard, now_iso
from entrypoint.commands import run_release_step
from entrypoint.config import Settings
from entrypoint.environments import Environment, Environments
from entrypoint.errors import (
    GitError,
    RevisionError,
    RevisionRefused,
    SupervisorError,
    TransientError,
)
from entrypoint.files import OutsideRoot, resolve_inside, sweep_leftovers
from entrypoint.fleet.store import WAIT_SLACK, Fleet, Solo
from entrypoint.hold import UpdateGate
from entrypoint.identity import AS_AGENT, Identity, ScratchDirs
from entrypoint.procfile import WEB, Processes, load_processes
from entrypoint.quickstart import forget
from entrypoint.releases import Releases
from entrypoint.repository import FETCHED_REF, RemoteRevision, Repository
from entrypoint.state import Paused, State, StateFile
from entrypoint.supervisor import Supervisor
from entrypoint.supervisor_config import ProgramSpec, SharedSocket, local_url
from entrypoint.switching.picking import switches_for
from entrypoint.switching.strategy import Lineup, Switch
from entrypoint.verify import Verifier, refusal_reason

log = logging.getLogger(__name__)

T = TypeVar("T")
SWEEP_BUDGET = 600.0  # removing what cut-off builds left: a few environments at worst


@dataclass(frozen=True)
class Revision:
    """A release ready to run: its sha, its programs and its environment (if any)."""

    sha: str
    processes: Processes
    environment: Environment | None


@dataclass(frozen=True)
class Staged:
    """A revision prepared without going live, and what became of its release step."""

    revision: Revision
    release: str  # none, ran, skipped, done-before


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
        environments: Environments,
        verifier: Verifier,
        shared: SharedSocket | None = None,
        run_as: Identity = AS_AGENT,
        recorder: events.Recorder | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.settings = settings
        self.fleet = fleet or Solo()  # the replicas this one shares a store with (fleet/)
        self.recorder = recorder or events.Recorder()  # history, metrics, notifications (events.py)
        self.run_as = run_as  # who code from the repository runs as (identity.py)
        self.scratch = ScratchDirs(settings.home / "scratch", run_as)
        self.repo = repo
        self.releases = releases
        self.supervisor = supervisor
        self.state_file = state_file
        self.state: State = state_file.load(
            lambda sha: environments.digest_for(releases.app_path(sha), releases.path(sha))
        )
        self.board = board
        self.stop = stop
        self.environments = environments
        self.shared = shared
        self.switches = switches_for(settings, supervisor, board, stop, shared, run_as)
        self.live: Lineup | None = None  # the running revision's programs
        self.live_switch: Switch | None = None  # and the strategy that started them
        self.verifier = verifier
        self.running_revision: Revision | None = None
        # Held while programs are being swapped; the watchdog leaves them alone then.
        self.switching = threading.Lock()
        # Counts switches, so the watchdog knows its counts belong to older processes.
        self.generation = 0
        self.baking: Bake | None = None  # the update on probation (bake.py), if any
        self.baked_sha: str | None = None  # the last that baked in full (the watchdog's)
        self.gate = UpdateGate(settings.update_windows)  # pause and update windows
        self.board.update(failed_revisions=dict(self.state.failed))  # known from the start
        self._show_pause()
        self._say_paused()
        self._opened = False

    def open(self) -> None:
        """Open (or rebuild) the local repository, once."""
        if not self._opened:
            self._step("opening repository", self.settings.git_timeout * 3)
            self.repo.open()
            self._opened = True

    def last_good_on_disk(self) -> str | None:
        """The revision to serve at once at start: the last good one, if its release is here
        (and its fleet has not refused it meanwhile)."""
        for sha in (self.state.last_good, self.releases.current()):
            if sha is not None and self.releases.exists(sha):
                return None if self._refused_by_fleet(sha) else sha
        return None

    def check(
        self, *, trigger: str = "poll", retry_failed: bool = False, ignore_hold: bool = False
    ) -> bool:
        """Bring the newest revision of the ref live; return True if one went live.

        Git errors (remote down, damaged repository) propagate for the caller to
        back off; a revision that cannot run is recorded as failed instead.
        `ignore_hold` (sync --now): go ahead even if paused or outside the windows.
        """
        log.debug("checking the remote trigger=%s", trigger)
        self.open()
        remote = asked = self._ask_remote()  # 1. one round trip, no objects
        if retry_failed:  # the first start
            remote = self._unless_refused_by_fleet(remote)
        # What fails here is told to the fleet, unless this replica chose it alone.
        fleet_wide = remote is asked
        found = self._check_result(remote.sha, retry_failed)
        self.recorder.checked(found)
        if not self._wanted(remote.sha, found, retry_failed):  # 2. running, or known bad
            self.board.update(waiting=None)
            return False
        if self._held(remote, ignore_hold):  # paused, or outside the update windows
            return False
        try:
            self.recorder.begin("update", trigger, self.running, remote.sha)  # seen: timed
            sha = self._fetch(remote)  # 3. fetch, verify, prepare releases/<sha>
        except RevisionError as exc:
            self._record_failure(remote.sha, exc, fleet_wide=fleet_wide)
            raise
        except Exception as exc:  # transient: retried, the revision is not marked failed
            self._record_interrupted(exc)
            raise
        if not self._wanted(sha, self._check_result(sha, retry_failed), retry_failed):
            return False
        self.recorder.fetched(sha)
        replacing = self.running is not None
        try:
            revision = self.prepare(sha)  # 4. environment, built only if missing
            self._release_step(revision)  # 5. release step (migrations)
            bakes = replacing or self._bakes_again(sha)
            self.go_live(revision, bake_seconds=self._bake_seconds(bakes))  # 6. start,
            # prove healthy, else roll back (the one replaced stands by, where it can)
        except RevisionError as exc:
            if not self.stop.is_set():  # a stop mid-update says nothing of the revision
                self._record_failure(sha, exc, fleet_wide=fleet_wide)
            raise
        except Exception as exc:
            self._record_interrupted(exc)
            raise
        self._record_success(revision, counted=replacing)  # 7. record, collect garbage
        return True

    def stage(self, *, release_step: bool = True) -> Staged:
        """`live-pull prepare`: steps 1 and 3 to 5 without the switch, then the revision is
        recorded as the last good one and `current` names it, so the next start serves it
        at once. Without `release_step` the step is left for that start
        (start_from_disk). A failure is raised, not recorded: a one-shot may fail for
        want of what only its surroundings lack (a database at image build time).
        """
        self.open()
        remote = self._unless_refused_by_fleet(self._ask_remote())
        revision = self.prepare(self._fetch(remote))
        release = self._stage_release(revision, release_step)
        self._record_staged(revision, released=release != "skipped")
        return Staged(revision, release)

    def _stage_release(self, revision: Revision, wanted: bool) -> str:
        """What became of the release step: none, ran, skipped, or done before (once per
        revision, as when the agent updates). Done before only for the last good revision:
        a state rebuilt from the releases on disk names some whose step never ran (a
        prepare that failed or was killed before its first save)."""
        sha = revision.sha
        if revision.processes.release is None:
            return "none"
        if sha == self.state.last_good and sha not in self.state.unreleased:
            return "done-before"
        if not wanted:
            return "skipped"
        self._release_step(revision)
        return "ran"

    def start_from_disk(self, sha: str) -> None:
        """At start: serve a release on disk, running first a release step that
        `live-pull prepare --skip-release` left to this moment."""
        revision = self.prepare(sha)
        self._release_left_to_start(revision)
        self.go_live(revision, bake_seconds=self._bake_seconds(self._bakes_again(sha)))

    def _release_left_to_start(self, revision: Revision) -> None:
        """The release step `live-pull prepare --skip-release` left to the revision's
        first start runs before it serves, whenever that is: at start, or a rollback to
        it after that start failed and a newer revision served instead."""
        if revision.sha not in self.state.unreleased:
            return
        self._release_step(revision)
        self.state.released(revision.sha)
        self.state_file.save(self.state)

    def _bakes_again(self, sha: str) -> bool:
        """Was `sha` on probation when the last agent stopped? Then it is no good yet: it
        bakes again, if there is a release to go back to (else it serves, as one past its
        bake would: a revision nothing can replace is not refused at every start)."""
        if self.state.baking != sha:
            return False
        back = [s for s in self._healthy_retained() if s != sha]
        if back:
            log.info("the revision was on probation, it bakes again sha=%s", short(sha))
        return bool(back)

    def _held(self, remote: RemoteRevision, ignore_hold: bool) -> bool:
        """An update (never the first start) waits while paused or outside the update
        windows; /status shows the revision that waits."""
        held = None if ignore_hold or self.running is None else self.gate.held(self.state.paused)
        waiting = self.gate.waiting(remote.sha, remote.ref_name, held) if held else None
        self.board.update(waiting=waiting)
        return held is not None

    def pause(self, reason: str | None) -> None:
        """Hold updates until resume(), across restarts (kept in state.json)."""
        self.state.paused = Paused(reason, now_iso())
        log.info("paused reason=%s", reason or "-")
        self._show_pause()
        self.recorder.record(events.Event(kind="pause", reason=reason))
        self.state_file.save(self.state)  # in force even if this fails (then shown as error)

    def resume(self) -> None:
        """Let updates go live again (the caller asks for a check)."""
        if self.state.paused is None:
            log.info("resume asked, but not paused")
            return
        self.state.paused = None
        log.info("resumed")
        self._show_pause()
        self.recorder.record(events.Event(kind="resume"))
        self.state_file.save(self.state)

    def _show_pause(self) -> None:
        paused = self.state.paused
        self.board.update(paused=asdict(paused) if paused else None)

    def _say_paused(self) -> None:
        """At start: a pause kept from before holds updates until `live-pull resume`."""
        paused = self.state.paused
        if paused is not None:
            log.warning("updates paused since=%s reason=%s", paused.since, paused.reason or "-")

    def prepare(self, sha: str) -> Revision:
        """What it takes to run a release on disk: its programs and its environment."""
        app_path = self.releases.app_path(sha)
        self._app_dir_inside(sha, app_path)
        processes = load_processes(app_path, self.settings.command, self.settings.release_command)
        self._keeps_serving(processes)
        # The app writes its release (collectstatic & co. run in place) and shared data.
        self.run_as.hand_over(self.releases.path(sha))
        self.run_as.hand_over(self.releases.shared_root)
        self._step("installing", 2 * self.settings.install_timeout)
        installs = self.environments.installs
        environment = self.environments.ensure(app_path, self.releases.path(sha))
        if self.environments.installs > installs:
            self.recorder.installed(self.environments.last_install_seconds)
        self.board.update(
            installs=self.environments.installs,
            last_install_seconds=self.environments.last_install_seconds,
        )
        return Revision(sha, processes, environment)

    def _app_dir_inside(self, sha: str, app_path: Path) -> None:
        """LIVE_PULL_APP_DIR names a directory of the release, not a link out of it."""
        app_dir = self.settings.app_dir
        try:
            inside = resolve_inside(self.releases.path(sha), app_path).is_dir()
        except OutsideRoot as exc:
            raise RevisionError(f"LIVE_PULL_APP_DIR {app_dir!r} refused: {exc}") from exc
        if not inside:
            raise RevisionError(f"LIVE_PULL_APP_DIR {app_dir!r} is not in the revision")

    def _keeps_serving(self, processes: Processes) -> None:
        """A worker-only app is fine; a revision that drops `web` while `web` serves
        would take the site down, so it is refused."""
        running = self.running_revision
        serving_web = running is not None and WEB in running.processes.programs
        if serving_web and WEB not in processes.programs:
            raise RevisionError("no web entry, while the running revision serves web")

    # -- the steps ------------------------------------------------------------------

    def _ask_remote(self) -> RemoteRevision:
        self._step("checking", 2 * self.settings.git_timeout)
        try:
            remote = self._unless_damaged(lambda: self.repo.resolve(self.settings.repo_ref))
        except Exception:
            self.recorder.checked("error")
            raise
        finally:
            self.board.count_check()
        ref = self.settings.repo_ref if remote.tag else remote.ref_name  # a range stays shown
        self.board.update(ref=ref or self.settings.repo_ref, tag=remote.tag)
        return remote

    def _unless_damaged(self, git_step: Callable[[], T]) -> T:
        """Run a git step; if it fails because our repository is damaged (and only then),
        rebuild the repository and run it once more. The remote's failures (network,
        credentials, a refused revision) and a full disk propagate as they are."""
        try:
            return git_step()
        except GitError:
            if self.repo.healthy():
                raise
            log.warning("local repository damaged, rebuilding it")
            self.repo.rebuild()
            return git_step()

    def _wanted(self, sha: str, found: str, retry_failed: bool) -> bool:
        """`found`: what `_check_result` said of `sha`."""
        if found == "skipped":
            log.debug("skipping revision that failed before sha=%s", short(sha))
        if found != "new":
            return False
        return retry_failed or not self._refused_by_fleet(sha)

    def _unless_refused_by_fleet(self, remote: RemoteRevision) -> RemoteRevision:
        """A replica starting with nothing on disk (a new pod) does not try the remote's
        revision if the fleet refused it: it starts the revision the fleet serves."""
        if self.settings.verify_mode == "tag":  # a sha alone is no tag to verify
            return remote
        reason = self.fleet.verdict(remote.sha)
        serving = self.fleet.serving() if reason is not None else None
        if serving is None or serving == remote.sha:
            return remote
        log.warning(
            "starting the fleet's revision sha=%s instead of refused sha=%s reason=%s",
            short(serving),
            short(remote.sha),
            reason,
        )
        return RemoteRevision(serving, None)

    def _refused_by_fleet(self, sha: str) -> bool:
        """A revision another replica refused is skipped here too, and kept as failed."""
        reason = self.fleet.verdict(sha)
        if reason is None:
            return False
        log.warning("skipping revision sha=%s reason=%s", short(sha), reason)
        self.state.record_failed(sha, reason)
        self.board.update(failed_revisions=dict(self.state.failed))
        self.state_file.save(self.state)
        return True

    def _check_result(self, sha: str, retry_failed: bool) -> str:
        """What a check found, as the metrics count it."""
        if sha == self.running:
            return "unchanged"
        return "skipped" if sha in self.state.failed and not retry_failed else "new"

    def _fetch(self, remote: RemoteRevision) -> str:
        """Fetch and export the revision (a damaged repository is rebuilt once)."""
        self._step("fetching", self._fetch_budget())
        return self._unless_damaged(lambda: self._fetch_and_export(remote))

    def _fetch_budget(self) -> float:
        """Fetch, verify, export, and as much again after a rebuild; submodules on top."""
        commands = 12 if self.settings.submodules else 6
        return commands * self.settings.git_timeout

    def _fetch_and_export(self, remote: RemoteRevision) -> str:
        sha = self.repo.fetch(remote)
        if not self.releases.exists(sha):  # a release on disk was verified when made
            self._verify(sha, remote)
        self.releases.prepare(sha, lambda target: self._export(sha, target))
        return sha

    def _export(self, sha: str, target: Path) -> None:
        self.repo.export(sha, target)
        if not self.settings.submodules:
            return
        try:
            self.repo.export_submodules(sha, target)
        except RevisionRefused:
            raise
        except RevisionError as exc:  # a submodule URL outside the rules
            raise RevisionRefused(sha, str(exc)) from exc

    def _verify(self, sha: str, remote: RemoteRevision) -> None:
        """Refuse, before anything is exported, a revision not signed by an allowed key."""
        if not self.verifier.enabled:
            return
        kind, name = self.verifier.target(sha, remote.ref_name, FETCHED_REF)
        problem = self.repo.verify(
            kind, name, self.verifier.git_config(), self.verifier.environment()
        )
        if problem is not None:
            raise RevisionRefused(sha, f"{kind} {refusal_reason(problem)}")
        log.info("signature verified kind=%s sha=%s", kind, short(sha))

    def _release_step(self, revision: Revision) -> None:
        if revision.processes.release is None:
            return
        release = revision.processes.release
        # A fleet's replicas wait for the one running it (and its slack), then may run it.
        self._step("releasing", 2 * self.settings.release_timeout + 2 * WAIT_SLACK)
        started = time.monotonic()

        def step() -> None:
            run_release_step(
                release,
                self.releases.app_path(revision.sha),
                self.app_environment(revision),
                timeout=self.settings.release_timeout,
                stop=self.stop,
                run_as=self.run_as,
            )

        try:
            outcome = self.fleet.release_once(revision.sha, step, self.stop)
        finally:
            self.recorder.released(time.monotonic() - started)
        if outcome != "ran":
            log.info("release step skipped sha=%s %s", short(revision.sha), outcome)
        # The database is as far as this step took it (here or at a peer): a step that
        # `prepare --skip-release` left pending for an older release (a rollback to it
        # would run it) has nothing left to do, and would fail against the newer schema
        # (as Alembic's does).
        self.state.unreleased = []

    def go_live(
        self,
        revision: Revision,
        *,
        urgent: bool = False,
        bake_seconds: float = 0.0,
        left_failed: tuple[str, str] | None = None,
    ) -> None:
        """Switch to the revision: start it beside the running one, prove it, promote it,
        and let the old one drain. If it does not come up, the running one keeps (or goes
        back to) serving; the strategy (switching/) decides how, the steps are the same.
        In a fleet, a replica that serves waits for a switching place first, unless
        `urgent` (what it serves fell over). `bake_seconds`: how long the revision will
        bake; the one it replaces stands by meanwhile, where the strategy can and the
        release stays on disk (after_the_bake).
        """
        names = ",".join(revision.processes.programs)
        log.info("starting revision sha=%s programs=%s", short(revision.sha), names)
        if self.stop.is_set():
            raise RevisionError("the agent is stopping")
        new, old = self._lineup(revision), self.live
        switch = self.switches.pick(new)
        budget = self._switch_budget(old, new)
        with self._switching_place(old is None or urgent, budget):
            self._switch(revision, switch, new, old, budget, urgent, bake_seconds, left_failed)

    def _switching_place(
        self, free: bool, budget: float
    ) -> contextlib.AbstractContextManager[None]:
        """One of the fleet's switching places (a replica not serving needs none)."""
        if free or self.fleet.alone:
            return contextlib.nullcontext()
        self._step("waiting for the fleet", budget)
        return self.fleet.switching(budget, self.stop)

    def _switch(
        self,
        revision: Revision,
        switch: Switch,
        new: Lineup,
        old: Lineup | None,
        budget: float,
        urgent: bool,
        bake_seconds: float,
        left_failed: tuple[str, str] | None,
    ) -> None:
        self._step("switching", budget)
        with self.switching:
            self.generation += 1
            self.baking = None
            try:
                if urgent:
                    switch.withdraw_fallen()
                switch.start_beside(new, old)
                switch.prove(new)
                switch.promote(new, bake_seconds)
            except Exception as exc:  # whatever it was, the old one must serve again
                failure = f"revision {short(revision.sha)} failed to start: {exc}"
                raise RevisionError(failure + switch.abandon(new, old)) from exc
            finally:
                self.board.update(standing_by=switch.standing_by())
            # On probation from its promotion (as its slot, see switching/slots.py): the
            # watchdog brings the previous release back if it fails its bake.
            self.baking = self._bake(revision.sha, bake_seconds, switch, new)
            self.live, self.live_switch = new, switch
            self._serve(revision, left_failed, baking=self.baking is not None)
            if old is not None:  # it serves already; /status says what is left to do
                self._step("draining", self._stop_budget())
            try:
                switch.drain(old, keep_ready=self._keeps_previous(bake_seconds))
            finally:  # `new` serves, whatever became of the old one
                self.board.update(standing_by=switch.standing_by())
                self._remember(switch, new)

    def _remember(self, switch: Switch, lineup: Lineup) -> None:
        """What serves now, for a quick start of the next agent (quickstart.py); only
        with LIVE_PULL_LOG_FORMAT=text: the app's output goes through no relay then."""
        run_dir = self.supervisor.run_dir
        if self.settings.log_format != "text":
            forget(run_dir)
            return
        try:  # a head start for the next start: never worth failing this one for
            settings = self.settings
            path = settings.healthcheck_path or "/"
            answers = (
                local_url(settings.listen_address, settings.port, path) if lineup.web else None
            )
            release = self.releases.path(lineup.sha)
            self.supervisor.remember(switch.restarted(lineup), answers, release)
        except Exception as exc:
            log.warning("the next start will not be a quick one error=%s", exc)
            forget(run_dir)

    def stop_unclaimed(self) -> None:
        """Before the first revision is fetched: what a quick start began (quickstart.py)
        stops, for the agent serves none of it (its release is gone, or refused, or would
        not start), and the next start is not a quick one."""
        if self.live is not None:
            return
        forget(self.supervisor.run_dir)
        try:
            self.supervisor.apply([])
        except SupervisorError as exc:  # the first fetch replaces what runs anyway
            log.warning("what a quick start began did not stop error=%s", exc)

    def baked(self, bake: Bake) -> None:
        """The revision stayed up through its bake time (the watchdog's thread). Not
        while a switch runs: it sets the bake of what it starts, and the watchdog asks
        again at its next look if this one still bakes."""
        if not self.switching.acquire(blocking=False):
            return
        try:
            if self.baking is bake:  # said first: after it, the loop stops what stood by
                log.info("revision baked sha=%s", short(bake.sha))
                self.baking, self.baked_sha = None, bake.sha
        finally:
            self.switching.release()

    def _bake(self, sha: str, seconds: float, switch: Switch, lineup: Lineup) -> Bake | None:
        """The bake of `lineup` going live (none without bake seconds), with the pids of
        what the watchdog watches of it."""
        if seconds <= 0:
            return None
        try:
            states = self.supervisor.states()
        except SupervisorError:  # the bake goes by the exits the watchdog sees
            states = {}
        watched = switch.watched(lineup)
        pids = {name: int(info.get("pid") or 0) for name, info in states.items() if name in watched}
        return Bake.starting(sha, seconds, pids)

    def _bake_seconds(self, bakes: bool) -> float:
        """An update that replaces a running revision bakes (and one that was baking when
        the last agent stopped); a first start does not."""
        return self.settings.bake_seconds if bakes else 0.0

    def _keeps_previous(self, bake_seconds: float) -> bool:
        """Does the release being replaced stand by through the bake? Only if there is a
        bake, and the release stays on disk meanwhile (LIVE_PULL_KEEP_RELEASES)."""
        return bake_seconds > 0 and self.settings.keep_releases > 1

    def after_the_bake(self) -> None:
        """What stood by for a bake stops once no bake runs (the control loop, when idle),
        and state.json no longer says the revision is on probation."""
        # Only what baked in full: a switch that failed set the running one's bake aside.
        baked = self.baked_sha is not None and self.state.baking == self.baked_sha
        if self.baking is None and baked:
            self.state.baking = None
            try:
                self.state_file.save(self.state)
            except OSError as exc:  # a start would bake it again: the lesser harm
                log.warning("state not saved after the bake error=%s", exc)
        switch = self.live_switch
        if self.baking is not None or switch is None or switch.standing_by() is None:
            return
        self.board.liveness.step("stopping the release that stood by", self._stop_budget())
        with self.switching:
            try:
                switch.let_go()
            except Exception as exc:  # the loop goes on; the slot is stopped at the next start
                log.warning("stopping the release that stood by failed error=%s", exc)
            self.board.update(standing_by=switch.standing_by())

    def _stop_budget(self) -> float:
        return self.settings.drain_seconds + self.settings.stop_timeout

    def _switch_budget(self, old: Lineup | None, new: Lineup) -> float:
        """Start (with retries), health check, each program's stop, drain: twice over
        for a restore."""
        s = self.settings
        starting = (s.start_retries + 1) * (s.start_seconds + s.start_retries + 1) + 10
        programs = len(new.programs) + (len(old.programs) if old is not None else 0)
        stopping = programs * s.stop_timeout
        return 2 * (starting + s.healthcheck_timeout + stopping) + s.drain_seconds

    def _step(self, name: str, budget: float) -> None:
        """A long step starts: /status shows it, /healthz allows it its budget."""
        self.board.update(state=name)
        self.board.liveness.step(name, budget)

    def resting_state(self) -> str:
        return "running" if self.running is not None else "waiting"

    @property
    def running(self) -> str | None:
        return self.running_revision.sha if self.running_revision else None

    def active_programs(self) -> set[str]:
        """The processes whose FATAL means the app cannot stay up."""
        if self.live is None or self.live_switch is None:
            return set()
        return self.live_switch.watched(self.live)

    def _serve(
        self, revision: Revision, left_failed: tuple[str, str] | None, *, baking: bool
    ) -> None:
        """The revision is proven: it is the running one, `current` names it (a `current`
        that cannot be written, on a full disk, costs a restart its head start only), and
        state.json records it good (and `left_failed`, the sha and reason of the one it
        replaces in a rollback, failed), and `baking` (on probation) until its bake ends.

        The release left stops being the app's before `current` moves: from then on the
        app writes only the release it runs (a draining old web can still read its own).
        """
        left, self.running_revision = self.running_revision, revision
        if left is not None and left.sha != revision.sha:
            self._take_back(left.sha)
        try:
            self.releases.activate(revision.sha)
        except OSError as exc:
            log.warning("current not switched sha=%s error=%s", short(revision.sha), exc)
        digest = revision.environment.digest if revision.environment else None
        # Now, not after the drain: an agent killed while the old web drains starts next
        # time with this revision (and does not fetch again what a rollback left), and no
        # quick start brings back the one it replaced (the record names that one until
        # _remember writes it anew).
        self.state.record_good(revision.sha, digest)
        if left_failed is not None:
            self.state.record_failed(*left_failed)
        self.state.baking = revision.sha if baking else None
        forget(self.supervisor.run_dir)
        try:
            self.state_file.save(self.state)
        except OSError as exc:  # what serves is unchanged; the next save writes it
            log.warning("state not saved sha=%s error=%s", short(revision.sha), exc)
        locked = revision.environment.locked if revision.environment else None
        self.board.update(
            revision=revision.sha,
            deps_digest=digest,
            deps_locked=locked,
            app_down=None,
            retained=self._retained(),
            failed_revisions=dict(self.state.failed),  # with what a rollback left
        )
        self.board.serving(True)

    def _lineup(self, revision: Revision) -> Lineup:
        """The revision's programs for supervisord."""
        # The release's own path, not `current`: during a rollover the old and the new
        # revision run side by side, and `current` switches only once the new is proven.
        directory = self.releases.app_path(revision.sha)
        env = self._revision_variables(revision)
        specs = {
            name: ProgramSpec(name, command, directory, env)
            for name, command in revision.processes.programs.items()
        }
        web = specs.pop(WEB, None)
        return Lineup(revision.sha, web, list(specs.values()))

    def _revision_variables(self, revision: Revision) -> dict[str, str]:
        """What live-pull adds to the app's environment for this revision."""
        variables = {
            "PORT": str(self.settings.port),
            "LIVE_PULL_REVISION": revision.sha,
            **self.scratch.variables(revision.sha),
        }
        if revision.environment is not None:
            variables.update(revision.environment.variables(os.environ.get("PATH", os.defpath)))
        return variables

    def app_environment(self, revision: Revision) -> dict[str, str]:
        """The app's environment: ours (secrets already scrubbed) plus the revision's."""
        return {**os.environ, **self._revision_variables(revision)}

    # -- rollback ---------------------------------------------------------------------

    def rollback_target(self, wanted: str | None) -> str:
        """The retained release to roll back to (see pick_rollback_target)."""
        return pick_rollback_target(self._retained(), wanted)

    def crash_rollback_target(self) -> str:
        """The newest retained release not recorded as failed (a crash rollback must not
        bring back a revision that crashed before)."""
        return pick_rollback_target(self._healthy_retained(), None)

    def _healthy_retained(self) -> list[str]:
        """Releases on disk one can go back to after a crash: never recorded failed."""
        return [sha for sha in self._retained() if sha not in self.state.failed]

    def _retained(self) -> list[str]:
        """Releases on disk one can roll back to, oldest first (the running one excluded)."""
        return [
            sha
            for sha in self.state.retained(self.settings.keep_releases)
            if sha != self.running and self.releases.exists(sha)
        ]

    def rollback(self, target: str, reason: str, *, trigger: str = "rollback") -> None:
        """Switch to a retained release through the same path as an update. The revision
        left is recorded as failed, so polling does not bring it back until the ref moves.
        `trigger`: rollback (asked by an operator) or crash (the watchdog's finding)."""
        left = self.running
        log.warning("rolling back to sha=%s reason=%s", short(target), reason)
        self.recorder.begin("rollback", trigger, left, target, reason)
        try:
            revision = self.prepare(target)
            self._release_left_to_start(revision)
            failed = (left, reason) if left is not None else None
            self.go_live(revision, urgent=trigger == "crash", left_failed=failed)
        except Exception as exc:
            self._record_interrupted(exc)
            raise
        if left is not None and trigger == "crash":  # it fell over: no replica should take it
            self.fleet.refuse(left, reason)
        self._record_success(revision, counted=True)

    # -- recording --------------------------------------------------------------------

    def _record_success(self, revision: Revision, *, counted: bool) -> None:
        """`counted`: an update replaced a running revision (the first start is not one)."""
        log.info("revision live sha=%s", short(revision.sha))
        digest = revision.environment.digest if revision.environment else None
        if counted:
            self.board.count_update()
        self.recorder.succeeded(digest)
        self.board.error(None)
        self.board.update(failed_revisions=dict(self.state.failed))
        self.collect_garbage()
        self.board.update(retained=self._retained())

    def _record_staged(self, revision: Revision, *, released: bool) -> None:
        """Prepared, not started: the last good revision, which a start serves at once."""
        digest = revision.environment.digest if revision.environment else None
        self.state.record_good(revision.sha, digest)
        if not released:
            self.state.record_unreleased(revision.sha)
        self.state_file.save(self.state)  # before `current`, which a rebuilt state trusts
        self.releases.activate(revision.sha)
        forget(self.supervisor.run_dir)  # the next start serves this one, not what ran
        self.collect_garbage()

    def sweep_interrupted(self) -> None:
        """At start (the home's lock is ours, nothing builds): what an agent killed while
        it built or collected left behind; otherwise only a successful update sweeps it,
        and a pod killed in every install would fill its volume."""
        self.board.liveness.step("sweeping what builds cut off left", SWEEP_BUDGET)
        home = self.releases.current_link.parent  # a link `activate` staged
        for root in (
            home,
            self.releases.root,
            self.environments.root,
            self.environments.layers.root,
        ):
            try:
                sweep_leftovers(root)
            except OSError as exc:  # the next collection tries again
                log.warning("leftovers not swept path=%s error=%s", root, exc)
        self.board.liveness.beat()

    def collect_garbage(self) -> None:
        """Old releases beyond the kept number, and environments none of them uses."""
        retained = self.state.retained(self.settings.keep_releases)
        self.state.forget_all_but(retained)
        self.state_file.save(self.state)
        self.releases.collect(retained)
        self.scratch.collect(set(retained))
        self.environments.collect_layers({*retained, *([self.running] if self.running else [])})
        for sha in retained:  # the app writes only the release it runs
            self._take_back(sha)
        in_use = {self.state.environments.get(sha) for sha in retained}
        running = self.running_revision
        if running is not None and running.environment is not None:
            in_use.add(running.environment.digest)
        self.environments.collect({digest for digest in in_use if digest})

    def _take_back(self, sha: str) -> None:
        """A release the app no longer runs becomes the agent's (the app reads it only)."""
        if sha != self.running and self.releases.exists(sha):
            self.run_as.take_back(self.releases.path(sha))

    def _record_failure(self, sha: str, exc: RevisionError, *, fleet_wide: bool) -> None:
        """`fleet_wide`: the revision is the fleet's choice, not this replica's alone; the
        fleet's other replicas then skip it too, if the failure is the revision's own."""
        reason = str(exc)
        log.error("revision failed sha=%s reason=%s", short(sha), reason)
        self._take_back(sha)
        self.state.record_failed(sha, reason)
        if fleet_wide and about_the_revision(exc):
            self.fleet.refuse(sha, reason)
        self.recorder.failed(reason)
        self.state_file.save(self.state)
        self.board.error(reason, "rejected")
        self.board.update(failed_revisions=dict(self.state.failed), state=self.resting_state())

    def _record_interrupted(self, exc: Exception) -> None:
        """An attempt ended by an error that does not mark the revision (remote, disk,
        supervisord), or a failed rollback; a stop says nothing of the revision."""
        if not self.stop.is_set():
            self.recorder.failed(str(exc) or type(exc).__name__)


def about_the_revision(exc: BaseException) -> bool:
    """Is the failure the revision's own, for the whole fleet to know? Not if this
    replica's own state caused it: a transient fault or an OS error (a full disk, no
    file descriptors) among the errors it was raised from."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, TransientError | OSError):
            return False
        cause = cause.__cause__
    return True


def pick_rollback_target(retained: list[str], wanted: str | None) -> str:
    """The release before the running one, or `wanted` (a full or abbreviated sha) among
    `retained` (oldest first). Raises RevisionError naming what is wrong."""
    if wanted is None:
        if not retained:
            raise RevisionError("no earlier release is retained to roll back to")
        return retained[-1]
    matches = [sha for sha in retained if sha.startswith(wanted.lower())]
    if len(matches) != 1:
        choices = ", ".join(short(sha) for sha in retained) or "none"
        raise RevisionError(f"{wanted} is not one retained release (retained: {choices})")
    return matches[0]
