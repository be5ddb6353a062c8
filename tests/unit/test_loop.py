"""The control loop with a scripted updater: every kind of failure lands somewhere, the
loop goes on (or hands a fatal error over), and a burst of requests costs one check.

Synchronisation: the loop is one thread, so once check n+1 has started, everything it
did with check n (report, back off, clear) is done. Tests wait for checks, never sleep.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from entrypoint import inbox as inbox_module
from entrypoint.board import StatusBoard
from entrypoint.errors import (
    AppFailed,
    GitError,
    RevisionError,
    RevisionRefused,
    StartupFailed,
)
from entrypoint.inbox import Inbox, Pause, Resume, Rollback
from entrypoint.loop import ControlLoop
from tests.unit.standins import WAIT, ScriptedUpdater, make_settings

PRODUCTION_SETTLE = inbox_module.SETTLE_SECONDS
SHA = "b" * 40


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests are taken after 10ms of quiet instead of 0.3s (see the burst test)."""
    monkeypatch.setattr(inbox_module, "SETTLE_SECONDS", 0.01)


class Harness:
    def __init__(self, home: Path, updater: ScriptedUpdater, **variables: str) -> None:
        quick = {"LIVE_PULL_POLL_INTERVAL": "0.05", "LIVE_PULL_MAX_BACKOFF": "0.05"}
        settings = make_settings(home, **{**quick, **variables})
        self.updater = updater
        self.board = StatusBoard(settings.repo_url.redacted(), settings.ref_label)
        self.inbox = Inbox()
        self.loop = ControlLoop(settings, updater, self.board, self.inbox)  # type: ignore[arg-type]

    def start(self) -> Harness:
        self.loop.start()
        return self

    def stop(self) -> None:
        self.updater.release()
        self.inbox.stop()
        self.loop.join(WAIT)
        assert not self.thread_alive(), "the control loop did not stop"

    def thread_alive(self) -> bool:
        return self.loop._thread.is_alive()

    def status(self) -> dict[str, Any]:
        return self.board.snapshot()

    def assert_going_on(self) -> None:
        """The loop survived: its thread runs, /healthz would say ok, nothing fatal."""
        assert self.thread_alive()
        assert self.board.alive() == (True, "ok")
        assert self.loop.failure() is None

    def ended_with(self) -> BaseException:
        self.loop.join(WAIT)
        assert not self.thread_alive()
        failure = self.loop.failure()
        assert failure is not None
        return failure


@pytest.fixture
def harnesses(tmp_path: Path) -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for harness in made:
        harness.stop()


Run = Callable[..., Harness]


@pytest.fixture
def run(tmp_path: Path, harnesses: list[Harness]) -> Run:
    """run(updater, **settings): a started loop, stopped and joined at the end."""

    def start(updater: ScriptedUpdater, **variables: str) -> Harness:
        harness = Harness(tmp_path / "home", updater, **variables)
        harnesses.append(harness)
        return harness.start()

    return start


# -- failures while serving ----------------------------------------------------------------


def test_git_error_is_transient_backed_off_and_cleared_by_a_success(run: Run) -> None:
    updater = ScriptedUpdater(None)  # the first revision comes
    updater.error = GitError("git ls-remote failed: connection refused")
    harness = run(updater)

    checks = updater.wait_checks(4)  # start, then three failing polls

    assert [c.trigger for c in checks[:2]] == ["start", "poll"]
    status = harness.status()
    assert status["error_kind"] == "transient"
    assert status["last_error"] == "git ls-remote failed: connection refused"
    assert harness.loop.backoff.failures >= 2
    harness.assert_going_on()

    done = updater.fail_with(None)
    updater.wait_checks(done + 2)  # a success, handled

    status = harness.status()
    assert status["error_kind"] is None and status["last_error"] is None
    assert harness.loop.backoff.failures == 0
    harness.assert_going_on()


def test_rejected_revision_is_reported_and_polling_goes_on(run: Run) -> None:
    updater = ScriptedUpdater(None)
    updater.error = RevisionError("nothing to run: no Procfile entries")
    harness = run(updater)

    updater.wait_checks(4)

    status = harness.status()
    assert status["error_kind"] == "rejected"
    assert status["last_error"] == "nothing to run: no Procfile entries"
    assert harness.loop.backoff.failures == 0  # not backed off: waits for the next poll
    harness.assert_going_on()


def test_full_disk_is_transient_and_names_live_pull_home(run: Run) -> None:
    updater = ScriptedUpdater(None)
    updater.error = OSError(errno.ENOSPC, "No space left on device")
    harness = run(updater)

    updater.wait_checks(3)

    status = harness.status()
    assert status["error_kind"] == "transient"
    assert "LIVE_PULL_HOME" in status["last_error"]
    assert "No space left on device" in status["last_error"]
    harness.assert_going_on()


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (RuntimeError("boom"), "RuntimeError: boom"),
        (FileExistsError(errno.EEXIST, "File exists"), "FileExistsError: [Errno 17] File exists"),
    ],
)
def test_unexpected_error_is_logged_with_traceback_and_the_loop_goes_on(
    run: Run,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    shown: str,
) -> None:
    caplog.set_level(logging.ERROR, logger="entrypoint.loop")
    updater = ScriptedUpdater(None)
    updater.error = error
    harness = run(updater)

    updater.wait_checks(3)

    status = harness.status()
    assert status["error_kind"] == "unexpected"
    assert status["last_error"] == shown
    logged = [r for r in caplog.records if r.name == "entrypoint.loop" and r.exc_info]
    assert logged and logged[0].exc_info[1] is error  # type: ignore[index]
    assert harness.loop.backoff.failures >= 1
    harness.assert_going_on()

    done = updater.fail_with(None)
    updater.wait_checks(done + 2)
    assert harness.status()["error_kind"] is None
    harness.assert_going_on()


def test_fatal_error_is_handed_to_the_main_thread(run: Run) -> None:
    updater = ScriptedUpdater(None)
    fatal = AppFailed("program web went FATAL")
    updater.error = fatal
    harness = run(updater)

    assert harness.ended_with() is fatal
    assert harness.board.alive() == (False, "control loop ended")


# -- the first revision ------------------------------------------------------------------


def test_first_revision_retried_until_it_comes(run: Run) -> None:
    updater = ScriptedUpdater(GitError("remote down"), GitError("remote down"), None)
    harness = run(updater)

    checks = updater.wait_checks(4)  # three at start, then a poll

    assert [(c.trigger, c.retry_failed) for c in checks[:3]] == [("start", True)] * 3
    assert checks[3].trigger == "poll"
    assert harness.status()["error_kind"] is None
    harness.assert_going_on()


def test_first_revision_failing_until_the_start_timeout(run: Run) -> None:
    updater = ScriptedUpdater()
    updater.error = GitError("remote down")
    harness = run(updater, LIVE_PULL_START_TIMEOUT="0.5")

    failure = harness.ended_with()

    assert isinstance(failure, StartupFailed)
    assert "no revision fetched within 0.5s and none on disk: remote down" in str(failure)
    assert len(updater.checks) >= 2  # retried meanwhile
    assert all(c.trigger == "start" and c.retry_failed for c in updater.checks)
    status = harness.status()
    assert status["state"] == "waiting for remote"
    assert status["error_kind"] == "transient"


def test_first_revision_refused_fails_the_start(run: Run) -> None:
    updater = ScriptedUpdater(RevisionRefused(SHA, "unsigned"))
    failure = run(updater).ended_with()
    assert isinstance(failure, StartupFailed)
    assert "unsigned" in str(failure)


def test_first_revision_that_cannot_run_fails_the_start(run: Run) -> None:
    updater = ScriptedUpdater(RevisionError("release step failed code=1"))
    failure = run(updater).ended_with()
    assert isinstance(failure, AppFailed)
    assert "release step failed" in str(failure)


def test_last_good_revision_on_disk_is_served_at_once(run: Run) -> None:
    updater = ScriptedUpdater()
    updater.on_disk = SHA
    harness = run(updater)

    checks = updater.wait_checks(1)

    assert updater.went_live == [SHA]
    assert (checks[0].trigger, checks[0].retry_failed) == ("start", False)
    assert harness.status()["state"] == "running"
    harness.assert_going_on()


def test_last_good_revision_that_does_not_start_falls_back_to_fetching(run: Run) -> None:
    updater = ScriptedUpdater()
    updater.on_disk = SHA
    updater.go_live_error = RevisionError("web failed to start")
    harness = run(updater)

    checks = updater.wait_checks(1)

    assert (checks[0].trigger, checks[0].retry_failed) == ("start", True)
    harness.assert_going_on()


# -- pause and resume ----------------------------------------------------------------------


def test_pause_is_handed_to_the_updater_and_a_resume_checks_at_once(run: Run) -> None:
    updater = ScriptedUpdater(None)
    harness = run(updater, LIVE_PULL_POLL_INTERVAL="0")  # no polls: every check is asked for
    updater.wait_checks(1)

    harness.inbox.pausing(Pause("freeze"))
    harness.inbox.pausing(Resume())  # newest wins
    harness.inbox.pausing(Pause("freeze"))
    harness.inbox.check("sync", ignore_hold=True)
    checks = updater.wait_checks(2)
    assert updater.pauses == ["freeze"]
    assert checks[1].ignore_hold and checks[1].trigger == "sync"

    harness.inbox.pausing(Resume())
    checks = updater.wait_checks(3)

    assert updater.pauses == ["freeze", "resume"]
    assert checks[2].trigger == "resume" and not checks[2].ignore_hold
    harness.assert_going_on()


# -- rollbacks -----------------------------------------------------------------------------


def test_rollback_request(run: Run) -> None:
    updater = ScriptedUpdater(None)
    harness = run(updater)
    updater.wait_checks(1)

    harness.inbox.rollback(Rollback(SHA, "rolled back by operator", "operator"))
    updater.wait_rollback_handled()

    assert updater.rollbacks == [(SHA, "rolled back by operator")]
    assert harness.status()["rollback"] == {"to": SHA, "status": "done", "error": None}
    harness.assert_going_on()


def test_failed_rollback_is_shown_and_the_loop_goes_on(run: Run) -> None:
    updater = ScriptedUpdater(None)
    updater.rollback_error = RevisionError("revision bbbbbbbbbbbb failed to start")
    harness = run(updater)
    updater.wait_checks(1)

    harness.inbox.rollback(Rollback(SHA, "rolled back by operator", "operator"))
    updater.wait_rollback_handled()

    status = harness.status()
    assert status["rollback"] == {
        "to": SHA,
        "status": "failed",
        "error": "revision bbbbbbbbbbbb failed to start",
    }
    assert status["error_kind"] == "rejected"
    harness.assert_going_on()


def test_rollback_with_no_target_is_shown_as_failed(run: Run) -> None:
    updater = ScriptedUpdater(None)
    updater.target_error = RevisionError("no earlier release is retained to roll back to")
    harness = run(updater)
    updater.wait_checks(1)

    harness.inbox.rollback(Rollback(None, "rolled back by operator", "operator"))
    updater.wait_rollback_handled()

    assert updater.rollbacks == []
    assert harness.status()["rollback"] == {
        "to": "previous",
        "status": "failed",
        "error": "no earlier release is retained to roll back to",
    }
    harness.assert_going_on()


def test_crash_rolls_back_to_the_previous_release(run: Run) -> None:
    updater = ScriptedUpdater(None)
    harness = run(updater)
    updater.wait_checks(1)

    harness.inbox.crashed("program web went FATAL", updater.running)
    updater.wait_rollback_handled()

    assert updater.rollbacks == [("a" * 40, "crashed in steady state: program web went FATAL")]
    assert harness.status()["rollback"]["status"] == "done"
    harness.assert_going_on()


def test_crash_with_no_rollback_possible_is_fatal(run: Run) -> None:
    updater = ScriptedUpdater(None)
    updater.target_error = RevisionError("no earlier release is retained to roll back to")
    harness = run(updater)
    updater.wait_checks(1)

    harness.inbox.crashed("program web went FATAL", updater.running)

    failure = harness.ended_with()
    assert isinstance(failure, AppFailed)
    assert str(failure) == (
        "program web went FATAL; rollback failed: no earlier release is retained to roll back to"
    )
    assert harness.status()["rollback"]["status"] == "failed"


# -- coalescing ----------------------------------------------------------------------------


def test_a_burst_of_syncs_while_busy_is_at_most_two_checks(
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inbox_module, "SETTLE_SECONDS", PRODUCTION_SETTLE)
    updater = ScriptedUpdater(None)
    harness = run(updater, LIVE_PULL_POLL_INTERVAL="0")  # no polls: only requests check
    updater.wait_checks(1)
    updater.hold()
    harness.inbox.check("sync")
    updater.wait_checks(2)  # the loop is busy in this check

    def send() -> None:
        for _ in range(250):
            harness.inbox.check("sync")

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(WAIT)
    updater.release()
    checks = updater.wait_checks(3)
    harness.stop()

    assert [c.trigger for c in updater.checks] == ["start", "sync", "sync"]
    assert checks == updater.checks
    assert harness.inbox._check is None  # nothing left over for a third


def test_no_check_starts_once_stopping(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync asked for just before the agent stops: the stop wins, no check begins."""
    monkeypatch.setattr(inbox_module, "SETTLE_SECONDS", 60.0)  # bounded by SETTLE_MAX
    settling = threading.Event()
    settle = Inbox._settle

    def announced_settle(self: Inbox) -> None:
        settling.set()
        settle(self)

    monkeypatch.setattr(Inbox, "_settle", announced_settle)
    updater = ScriptedUpdater(None)
    harness = run(updater, LIVE_PULL_POLL_INTERVAL="0")
    updater.wait_checks(1)

    harness.inbox.check("sync")
    assert settling.wait(WAIT)
    harness.stop()

    assert [c.trigger for c in updater.checks] == ["start"]
