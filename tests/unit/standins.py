"""In-memory stand-ins for the two slow boundaries of the update sequence: the git
repository and supervisord. Everything else the Updater touches is real (releases on a
tmp dir, state.json, the status board, environments, the verifier), so the unit tier
drives the real sequence in milliseconds.

Faults are scripted on the stand-ins: the remote down, a damaged local repository
(healthy() False until rebuild()), a full disk during export, a program that goes
FATAL when started on a given revision.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrypoint.board import StatusBoard
from entrypoint.config import Settings, load_settings
from entrypoint.environments import Environments, InstallOptions
from entrypoint.errors import (
    AppFailed,
    GitError,
    LocalGitError,
    OutOfResources,
    RefNotFound,
    SupervisorError,
)
from entrypoint.events import Recorder
from entrypoint.installers import pick_installer
from entrypoint.releases import Releases
from entrypoint.repository import RemoteRevision
from entrypoint.state import StateFile
from entrypoint.supervisor import STARTED_STATES, first_fatal
from entrypoint.supervisor_config import ProgramSpec, SharedSocket
from entrypoint.updater import Updater
from entrypoint.verify import Verifier

DEFAULT_BRANCH = "refs/heads/main"
WEB_PROCFILE = "web: python -m http.server $PORT\n"


def make_settings(home: Path, **variables: str) -> Settings:
    """Settings as the CLI builds them, from an environment mapping (never os.environ)."""
    return load_settings({"REPO_URL": "file:///x", "LIVE_PULL_HOME": str(home), **variables})


# -- the repository ----------------------------------------------------------------------


class FakeRepository:
    """entrypoint.repository.Repository in memory: commits are {sha: {path: text}}."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, str]] = {}
        self.refs: dict[str, str] = {}
        self.default_branch = DEFAULT_BRANCH
        self.calls: list[tuple[str, ...]] = []
        self.rebuilds = 0
        # Scripted faults.
        self.remote_down = False  # resolve and fetch raise GitError (network)
        self.damaged = False  # local commands raise LocalGitError, healthy() is False
        self.errors: dict[str, Exception] = {}  # method -> raised by it until cleared
        self._serial = itertools.count(1)

    # -- scripting ----------------------------------------------------------------

    def commit(self, files: Mapping[str, str], ref: str = DEFAULT_BRANCH) -> str:
        """A new commit with exactly `files`, `ref` moved to it; returns its sha."""
        serial = next(self._serial)
        sha = hashlib.sha1(f"{serial}:{sorted(files.items())}".encode()).hexdigest()
        self.commits[sha] = dict(files)
        self.refs[ref] = sha
        return sha

    def damage(self) -> None:
        """The local repository is broken until rebuilt (remote is fine)."""
        self.damaged = True

    def fail(self, method: str, error: Exception | None) -> None:
        """From now on `method` raises `error` (None: works again)."""
        if error is None:
            self.errors.pop(method, None)
        else:
            self.errors[method] = error

    def disk_full(self) -> None:
        """Exporting a release fails as on a full LIVE_PULL_HOME."""
        self.fail("export", OSError(errno.ENOSPC, "No space left on device"))

    def count(self, method: str) -> int:
        return sum(1 for call in self.calls if call[0] == method)

    # -- the Repository interface --------------------------------------------------

    def open(self) -> None:
        self.calls.append(("open",))
        if self.damaged:
            self.rebuild()

    def healthy(self) -> bool:
        self.calls.append(("healthy",))
        return not self.damaged

    def rebuild(self) -> None:
        self.calls.append(("rebuild",))
        self.rebuilds += 1
        self.damaged = False

    def resolve(self, ref: str | None) -> RemoteRevision:
        self.calls.append(("resolve", str(ref)))
        self._local_step("ls-remote")
        self._remote_step("ls-remote")
        self._scripted("resolve")
        if ref is None:
            return self._at(self.default_branch)
        if len(ref) == 40 and all(c in "0123456789abcdef" for c in ref):
            return RemoteRevision(ref, None)
        for name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
            if name in self.refs:
                return self._at(name)
        raise RefNotFound(f"ref not found on the remote: ref={ref}")

    def fetch(self, remote: RemoteRevision) -> str:
        self.calls.append(("fetch", remote.sha))
        self._local_step("fetch")
        self._remote_step("fetch")
        self._scripted("fetch")
        if remote.sha not in self.commits:
            raise GitError(f"git fetch failed: no such commit {remote.sha}")
        return remote.sha

    def verify(self, kind: str, name: str, config: list[str], env: dict[str, str]) -> str | None:
        self.calls.append(("verify", kind, name))
        return None

    def export(self, sha: str, target: Path) -> None:
        self.calls.append(("export", sha))
        self._local_step("checkout-index")
        self._scripted("export")
        for relative, text in self.commits[sha].items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def export_submodules(self, sha: str, target: Path) -> None:
        self.calls.append(("export_submodules", sha))

    # -- faults ----------------------------------------------------------------------

    def _at(self, ref: str) -> RemoteRevision:
        if ref not in self.refs:
            raise RefNotFound("the remote has no default branch (empty repository?)")
        return RemoteRevision(self.refs[ref], ref)

    def _local_step(self, verb: str) -> None:
        if self.damaged:
            raise LocalGitError(f"git {verb} failed: fatal: bad object HEAD (corrupt)")

    def _scripted(self, method: str) -> None:
        if method in self.errors:
            raise self.errors[method]

    def _remote_step(self, verb: str) -> None:
        if self.remote_down:
            raise GitError(f"git {verb} failed: unable to access the remote: connection refused")


# -- supervisord -------------------------------------------------------------------------


@dataclass
class Failure:
    """A program that goes FATAL when started (on one revision, or on any)."""

    program: str
    revision: str | None


@dataclass
class FakeSupervisor:
    """entrypoint.supervisor.Supervisor in memory: programs, their states, and the calls."""

    programs: dict[str, ProgramSpec] = field(default_factory=dict)
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)  # revisions apply() faults on
    running_supervisord: bool = True
    answering: bool = True
    out_of_files: bool = False  # the agent's own calls fail with EMFILE
    run_dir: Path = Path("/nonexistent/live-pull-run")  # nothing is written there
    remembered: list[str] = field(default_factory=list)  # for a quick start (quickstart.py)
    _pids: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- scripting ----------------------------------------------------------------

    def fail(self, program: str = "web", revision: str | None = None) -> None:
        """From now on, `program` goes FATAL when started on `revision` (None: any)."""
        self.failures.append(Failure(program, revision))

    def refuse(self, revision: str) -> None:
        """From now on, apply() of programs on `revision` gets an XML-RPC fault."""
        self.refused.add(revision)

    def heal(self) -> None:
        self.failures.clear()
        self.refused.clear()

    def restart(self, name: str) -> int:
        """The program exited and supervisord started it again: a new pid."""
        with self._lock:
            pid = next(self._pids)
            self.infos[name].update(statename="RUNNING", pid=pid)
            return pid

    def set_state(self, name: str, statename: str, pid: int = 0) -> None:
        with self._lock:
            self.infos[name].update(statename=statename, pid=pid)

    def revision_of(self, name: str = "web") -> str | None:
        """The revision the program runs, if it is RUNNING."""
        with self._lock:
            if self.infos.get(name, {}).get("statename") != "RUNNING":
                return None
            return self.programs[name].environment.get("LIVE_PULL_REVISION")

    def count(self, method: str) -> int:
        return sum(1 for call in self.calls if call[0] == method)

    # -- the Supervisor interface --------------------------------------------------

    def alive(self) -> bool:
        return self.running_supervisord

    def apply(self, programs: list[ProgramSpec], shared: SharedSocket | None = None) -> set[str]:
        """Run exactly `programs`: removed ones stop, changed ones restart; returns the
        unchanged ones."""
        self._answer()
        with self._lock:
            self.calls.append(("apply", *sorted(p.name for p in programs)))
            for spec in programs:
                if spec.environment.get("LIVE_PULL_REVISION") in self.refused:
                    raise SupervisorError(f"supervisord refused: BAD_NAME: {spec.name}")
            wanted = {spec.name: spec for spec in programs}
            for name in [n for n in self.programs if n not in wanted]:
                del self.programs[name]
                del self.infos[name]
            unchanged = {name for name, spec in wanted.items() if self.programs.get(name) == spec}
            for name, spec in wanted.items():
                if name not in unchanged:
                    self.programs[name] = spec
                    self.infos[name] = self._started(spec)
            return unchanged

    def start_stopped(self, names: Iterable[str]) -> dict[str, str]:
        failed: dict[str, str] = {}
        for name in names:
            info = self.states().get(name)
            if info is None:
                failed[name] = "supervisord has no such process"
            elif info["statename"] not in STARTED_STATES:
                try:
                    self.start_process(info["group"], name)
                except SupervisorError as exc:  # as the real one: the caller decides
                    failed[name] = str(exc)
        return failed

    def remember(self, names: list[str], answers: str | None, release: Path) -> None:
        self.remembered = list(names)

    def wait_running(self, names: Iterable[str]) -> None:
        states = self.states()
        wanted = set(names)
        self.calls.append(("wait_running", *sorted(wanted)))
        fatal = first_fatal(states, wanted)
        if fatal is not None:
            raise AppFailed(fatal)
        for name in sorted(wanted):
            if states.get(name, {}).get("statename") != "RUNNING":
                raise AppFailed(f"programs did not reach RUNNING: {name}")

    def states(self) -> dict[str, dict[str, Any]]:
        self._answer()
        with self._lock:
            return {name: dict(info) for name, info in self.infos.items()}

    def start_process(self, group: str, name: str) -> None:
        self._answer()
        with self._lock:
            self.calls.append(("start_process", group, name))
            info = self.infos.setdefault(name, {"name": name, "group": group})
            info.update(statename="RUNNING", pid=next(self._pids))

    def stop_process(self, group: str, name: str) -> None:
        with self._lock:
            self.calls.append(("stop_process", group, name))
            if name in self.infos:
                self.infos[name].update(statename="STOPPED", pid=0)

    # -- inside --------------------------------------------------------------------

    def _started(self, spec: ProgramSpec) -> dict[str, Any]:
        revision = spec.environment.get("LIVE_PULL_REVISION")
        info: dict[str, Any] = {"name": spec.name, "group": spec.name}
        for failure in self.failures:
            if failure.program == spec.name and failure.revision in (None, revision):
                info.update(statename="FATAL", pid=0, spawnerr="Exited too quickly")
                return info
        info.update(statename="RUNNING", pid=next(self._pids), spawnerr="")
        return info

    def _answer(self) -> None:
        if self.out_of_files:
            raise OutOfResources("the agent could not call supervisord: Too many open files")
        if not self.answering:
            raise SupervisorError("supervisord unreachable: connection refused")


# -- the sequence wired with them ----------------------------------------------------------


class World:
    """A real Updater on a tmp home, with the repository and supervisord stood in for."""

    def __init__(self, home: Path, **variables: str) -> None:
        self.home = home
        self.settings = make_settings(home, **variables)
        self.repo = FakeRepository()
        self.supervisor = FakeSupervisor()
        self.board = StatusBoard(self.settings.repo_url.redacted(), self.settings.ref_label)
        self.stop = threading.Event()
        self.releases = Releases(home, self.settings.app_dir, self.settings.shared_paths)
        self.state_file = StateFile(home / "state.json")
        self.updater = self.new_updater()

    def new_updater(self) -> Updater:
        """An updater as the agent builds one at start (state read from disk)."""
        s = self.settings
        environments = Environments(
            self.home / "venvs",
            self.home / "cache",
            pick_installer("pip"),
            InstallOptions(s.lockfile, s.install_command, s.install_args, s.install_timeout),
            self.stop,
        )
        return Updater(
            s,
            self.repo,  # type: ignore[arg-type]
            self.releases,
            self.supervisor,  # type: ignore[arg-type]
            self.state_file,
            self.board,
            self.stop,
            environments,
            Verifier(s.verify, self.home),
        )

    def commit(self, files: Mapping[str, str] | None = None, **more: str) -> str:
        """A commit with a Procfile running `web` (plus `more` files), the ref moved to it."""
        return self.repo.commit({"Procfile": WEB_PROCFILE, **more} if files is None else files)

    def status(self) -> dict[str, Any]:
        return self.board.snapshot()

    def saved_state(self) -> bytes:
        return self.state_file.path.read_bytes()


# -- the updater, for the control loop -----------------------------------------------------

WAIT = 5.0  # bound on waiting for the loop thread; never reached when things work


@dataclass
class CheckCall:
    trigger: str
    retry_failed: bool
    error: Exception | None  # what this check raised (decided when it was called)
    ignore_hold: bool = False


class ScriptedUpdater:
    """What ControlLoop calls on the Updater, each call scripted and recorded.

    Checks raise, in order, the errors in `script` (None: success), then `error`
    forever. `hold()` makes the next checks block until `release()`: the loop is busy.
    """

    def __init__(self, *script: Exception | None) -> None:
        self.script = list(script)
        self.error: Exception | None = None
        self.checks: list[CheckCall] = []
        self.on_disk: str | None = None  # last_good_on_disk()
        self.go_live_error: Exception | None = None
        self.target_error: Exception | None = None
        self.rollback_error: Exception | None = None
        self.went_live: list[str] = []
        self.targets: list[str | None] = []  # rollback_target calls: a rollback began
        self.rollbacks: list[tuple[str, str]] = []
        self.running: str | None = None
        self.pauses: list[str | None] = []  # pause(reason) calls, then "resume" for resume()
        self.opened = 0
        self.recorder = Recorder()
        self._changed = threading.Condition()
        self._gate = threading.Event()
        self._gate.set()

    # -- scripting ------------------------------------------------------------------

    def after_the_bake(self) -> None:
        """Called when the loop is idle; nothing stands by here."""

    def stop_unclaimed(self) -> None:
        """Called before the first fetch; no quick start ran here."""

    def sweep_interrupted(self) -> None:
        """Called at start; no build was ever cut off here."""

    def fail_with(self, error: Exception | None) -> int:
        """Checks from now on raise `error` (None: succeed); returns the checks so far."""
        with self._changed:
            self.script.clear()
            self.error = error
            return len(self.checks)

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def wait_checks(self, count: int) -> list[CheckCall]:
        """Block until `count` checks have started (bounded); the loop handled all before."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.checks) >= count, WAIT):
                raise AssertionError(f"{len(self.checks)} checks, waited for {count}")
            return list(self.checks)

    def wait_rollback_handled(self, count: int = 1) -> None:
        """Block until the loop has handled its `count`th rollback request: it asked for
        the target, and a check started after that (bounded)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.targets) >= count, WAIT):
                raise AssertionError(f"{len(self.targets)} rollbacks began, waited for {count}")
            checks = len(self.checks)
        self.wait_checks(checks + 1)

    # -- what the loop calls --------------------------------------------------------------

    def open(self) -> None:
        self.opened += 1

    def last_good_on_disk(self) -> str | None:
        return self.on_disk

    def prepare(self, sha: str) -> str:
        return sha

    def start_from_disk(self, sha: str) -> None:
        self.go_live(self.prepare(sha))

    def go_live(self, revision: str) -> None:
        self.went_live.append(revision)
        if self.go_live_error is not None:
            raise self.go_live_error
        self.running = revision

    def check(
        self, *, trigger: str = "poll", retry_failed: bool = False, ignore_hold: bool = False
    ) -> bool:
        with self._changed:
            error = self.script.pop(0) if self.script else self.error
            self.checks.append(CheckCall(trigger, retry_failed, error, ignore_hold))
            self._changed.notify_all()
        self._gate.wait(WAIT)
        if error is not None:
            raise error
        return False

    def pause(self, reason: str | None) -> None:
        self.pauses.append(reason)

    def resume(self) -> None:
        self.pauses.append("resume")

    def rollback_target(self, wanted: str | None) -> str:
        with self._changed:
            self.targets.append(wanted)
            self._changed.notify_all()
        if self.target_error is not None:
            raise self.target_error
        return wanted or "a" * 40

    def crash_rollback_target(self) -> str:
        return self.rollback_target(None)

    def rollback(self, target: str, reason: str, *, trigger: str = "rollback") -> None:
        self.rollbacks.append((target, reason))
        if self.rollback_error is not None:
            raise self.rollback_error
        self.running = target

    def resting_state(self) -> str:
        return "running" if self.running is not None else "waiting"
