"""The update sequence (Updater.check, go_live, rollback) against in-memory stand-ins of
the repository and supervisord; releases, state.json and the status board are real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from entrypoint.errors import GitError, RevisionError, TransientError
from entrypoint.updater import pick_rollback_target
from tests.unit.standins import WEB_PROCFILE, World


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "home")


def saved(world: World) -> dict[str, Any]:
    return dict(json.loads(world.saved_state()))


def assert_serving(world: World, sha: str) -> None:
    """Every place that says what runs agrees on `sha`."""
    assert world.supervisor.revision_of("web") == sha
    assert world.updater.running == sha
    assert world.releases.current() == sha
    assert world.status()["revision"] == sha
    assert saved(world)["last_good"] == sha


# -- going live ------------------------------------------------------------------------


def test_first_revision_goes_live(world: World) -> None:
    a = world.commit()

    assert world.updater.check() is True

    assert_serving(world, a)
    assert (world.releases.path(a) / "Procfile").read_text() == WEB_PROCFILE
    status = world.status()
    assert status["error_kind"] is None and status["last_error"] is None
    assert status["failed_revisions"] == {}
    assert status["retained"] == []  # nothing earlier to roll back to
    assert status["updates"] == 0  # the first start is not an update
    assert status["checks"] == 1
    assert status["ref"] == "refs/heads/main"
    assert world.board.ready()
    assert world.updater.resting_state() == "running"


def test_same_revision_is_a_no_op(world: World) -> None:
    a = world.commit()
    world.updater.check()
    applied, fetched = world.supervisor.count("apply"), world.repo.count("fetch")
    state_before = world.saved_state()

    assert world.updater.check() is False

    assert world.supervisor.count("apply") == applied
    assert world.repo.count("fetch") == fetched  # one round trip (resolve), no objects
    assert world.saved_state() == state_before
    assert_serving(world, a)
    assert world.status()["checks"] == 2


def test_new_revision_replaces_the_old(world: World) -> None:
    a = world.commit()
    world.updater.check()
    b = world.commit({"Procfile": WEB_PROCFILE, "app.py": "VERSION = 2\n"})

    assert world.updater.check() is True

    assert_serving(world, b)
    assert (world.releases.path(b) / "app.py").read_text() == "VERSION = 2\n"
    assert world.releases.exists(a)  # kept for a rollback
    status = world.status()
    assert status["updates"] == 1
    assert status["retained"] == [a]
    assert saved(world)["history"] == [a, b]
    assert world.board.ready()


# -- a revision that cannot run --------------------------------------------------------


def test_web_failing_to_start_is_recorded_and_the_old_revision_restored(world: World) -> None:
    a = world.commit()
    world.updater.check()
    b = world.commit()
    world.supervisor.fail("web", revision=b)

    with pytest.raises(RevisionError, match="failed to start"):
        world.updater.check()

    assert_serving(world, a)  # restored, and still running
    assert b in saved(world)["failed"]
    status = world.status()
    assert status["error_kind"] == "rejected"
    assert b[:12] in status["last_error"]
    assert list(status["failed_revisions"]) == [b]
    assert status["state"] == "running"
    assert world.board.ready()


def test_failed_revision_is_skipped_until_the_ref_moves(world: World) -> None:
    world.commit()
    world.updater.check()
    b = world.commit()
    world.supervisor.fail("web", revision=b)
    with pytest.raises(RevisionError):
        world.updater.check()
    applied, fetched = world.supervisor.count("apply"), world.repo.count("fetch")

    assert world.updater.check() is False  # the ref still names b
    assert world.supervisor.count("apply") == applied
    assert world.repo.count("fetch") == fetched

    # An agent restarted on the same home still knows b failed.
    assert world.new_updater().state.failed.keys() == {b}

    c = world.commit()
    assert world.updater.check() is True
    assert_serving(world, c)
    assert world.status()["failed_revisions"] == {b: saved(world)["failed"][b]}


def test_failed_revision_is_retried_when_asked(world: World) -> None:
    """The first fetch at start retries a revision that failed before (retry_failed)."""
    world.commit()
    world.updater.check()
    b = world.commit()
    world.supervisor.fail("web", revision=b)
    with pytest.raises(RevisionError):
        world.updater.check()
    world.supervisor.heal()

    assert world.updater.check(retry_failed=True) is True

    assert_serving(world, b)
    assert saved(world)["failed"] == {}
    assert world.status()["failed_revisions"] == {}


def test_failed_restore_is_still_recorded_as_failed(world: World) -> None:
    a = world.commit()
    world.updater.check()
    b = world.commit()
    world.supervisor.fail("web", revision=b)
    world.supervisor.fail("web", revision=a)  # the old one will not come back either

    with pytest.raises(RevisionError, match=f"restoring {a[:12]} failed too"):
        world.updater.check()

    assert b in saved(world)["failed"]
    assert world.status()["error_kind"] == "rejected"
    assert not world.board.ready()  # nothing serves
    applied, fetched = world.supervisor.count("apply"), world.repo.count("fetch")

    assert world.updater.check() is False  # not retried every poll

    assert world.supervisor.count("apply") == applied
    assert world.repo.count("fetch") == fetched


# -- the remote and the local repository ----------------------------------------------


def test_remote_down_is_transient_and_leaves_everything_as_it_was(world: World) -> None:
    a = world.commit()
    world.updater.check()
    world.commit()  # the ref moved, but the remote cannot be reached
    world.repo.remote_down = True
    state_before = world.saved_state()
    calls_before = list(world.supervisor.calls)

    with pytest.raises(GitError) as raised:
        world.updater.check()

    assert isinstance(raised.value, TransientError)
    assert world.repo.rebuilds == 0  # a network error says nothing of the repository
    assert world.supervisor.calls == calls_before
    assert world.saved_state() == state_before
    assert_serving(world, a)
    status = world.status()
    assert status["failed_revisions"] == {}
    assert status["checks"] == 2  # the failed check is counted
    assert world.board.ready()


def test_remote_down_during_fetch_rejects_nothing(world: World) -> None:
    a = world.commit()
    world.updater.check()
    b = world.commit()
    world.repo.fail("fetch", GitError("git fetch failed: connection reset by peer"))

    with pytest.raises(GitError):
        world.updater.check()

    assert world.repo.rebuilds == 0
    assert b not in world.updater.state.failed
    assert not world.releases.exists(b)
    assert_serving(world, a)


def test_damaged_repository_is_rebuilt_and_the_update_goes_on(world: World) -> None:
    world.commit()
    world.updater.check()
    b = world.commit()
    world.repo.damage()

    assert world.updater.check() is True

    assert world.repo.rebuilds == 1
    assert_serving(world, b)


def test_repository_is_rebuilt_only_when_damaged(world: World) -> None:
    world.commit()
    world.updater.check()
    world.commit()
    world.repo.remote_down = True
    for _ in range(3):
        with pytest.raises(GitError):
            world.updater.check()
    assert world.repo.rebuilds == 0
    assert world.repo.count("healthy") == 3  # asked, and the answer was "sound"


def test_full_disk_during_export_is_not_the_revision_s_fault(world: World) -> None:
    a = world.commit()
    world.updater.check()
    b = world.commit()
    world.repo.disk_full()

    with pytest.raises(OSError) as raised:
        world.updater.check()

    assert raised.value.errno == 28  # ENOSPC, for the loop to call it transient
    assert world.updater.state.failed == {}
    assert not world.releases.exists(b)
    assert [p.name for p in world.releases.root.iterdir()] == [a]  # no half-made release
    assert_serving(world, a)

    world.repo.fail("export", None)
    assert world.updater.check() is True
    assert_serving(world, b)


# -- revisions rejected before they run -------------------------------------------------


def test_empty_procfile_is_rejected(world: World) -> None:
    a = world.commit()
    world.updater.check()
    b = world.commit({"Procfile": "# nothing here\n"})

    with pytest.raises(RevisionError, match="nothing to run"):
        world.updater.check()

    assert b in world.updater.state.failed
    assert_serving(world, a)


def test_procfile_without_web_is_rejected(world: World) -> None:
    """`web` is what serves PORT and what /readyz speaks for: a revision without it
    (and no LIVE_PULL_COMMAND) cannot be brought live in its place."""
    a = world.commit()
    world.updater.check()
    b = world.commit({"Procfile": "worker: python worker.py\n"})

    with pytest.raises(RevisionError):
        world.updater.check()

    assert b in world.updater.state.failed
    assert_serving(world, a)


def test_app_dir_missing_from_the_revision_is_rejected(tmp_path: Path) -> None:
    world = World(tmp_path / "home", LIVE_PULL_APP_DIR="app")
    a = world.commit({"app/Procfile": WEB_PROCFILE})
    world.updater.check()
    assert world.supervisor.programs["web"].directory == world.releases.path(a) / "app"
    b = world.commit({"Procfile": WEB_PROCFILE})  # the app moved out of app/

    with pytest.raises(RevisionError, match="LIVE_PULL_APP_DIR 'app' is not in the revision"):
        world.updater.check()

    assert b in world.updater.state.failed
    assert_serving(world, a)


def test_release_step_failure_rejects_the_revision(world: World) -> None:
    a = world.commit()
    world.updater.check()
    applied = world.supervisor.count("apply")
    procfile = WEB_PROCFILE + "release: echo migrating; echo no database >&2; exit 3\n"
    b = world.commit({"Procfile": procfile})

    with pytest.raises(RevisionError, match="release step failed code=3") as raised:
        world.updater.check()

    # The step's output went to the log; the error (and /status) says where, not what.
    assert "no database" not in str(raised.value)
    assert "no database" in raised.value.__cause__.tail  # type: ignore[union-attr]
    assert world.supervisor.count("apply") == applied  # the switch never started
    assert b in world.updater.state.failed
    assert world.status()["error_kind"] == "rejected"
    assert_serving(world, a)
    assert world.board.ready()


def test_release_step_runs_in_the_new_release(world: World) -> None:
    procfile = WEB_PROCFILE + 'release: echo "$LIVE_PULL_REVISION" > migrated\n'
    a = world.commit({"Procfile": procfile})

    assert world.updater.check() is True

    assert (world.releases.path(a) / "migrated").read_text().strip() == a


# -- rollback ---------------------------------------------------------------------------


def test_rollback_to_the_previous_release(world: World) -> None:
    a = world.commit()
    world.updater.check()
    b = world.commit()
    world.updater.check()

    target = world.updater.rollback_target(None)
    assert target == a
    world.updater.rollback(target, "rolled back by operator")

    assert_serving(world, a)
    assert world.updater.state.failed == {b: "rolled back by operator"}
    status = world.status()
    assert status["updates"] == 2
    assert status["failed_revisions"] == {b: "rolled back by operator"}
    assert status["retained"] == [b]
    assert world.board.ready()
    # Polling does not bring b back while the ref still names it.
    assert world.updater.check() is False
    assert_serving(world, a)


def test_rollback_target_with_nothing_retained(world: World) -> None:
    world.commit()
    world.updater.check()

    with pytest.raises(RevisionError, match="no earlier release"):
        world.updater.rollback_target(None)


def test_rollback_target_by_short_sha(world: World) -> None:
    a = world.commit()
    world.updater.check()
    world.commit()
    world.updater.check()

    assert world.updater.rollback_target(a[:7]) == a
    assert world.updater.rollback_target(a[:7].upper()) == a


SHAS = ["ab12" + "0" * 36, "ab34" + "1" * 36, "cd56" + "2" * 36]


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [(None, SHAS[-1]), (SHAS[0], SHAS[0]), ("ab3", SHAS[1]), ("CD56", SHAS[2])],
)
def test_pick_rollback_target(wanted: str | None, expected: str) -> None:
    assert pick_rollback_target(SHAS, wanted) == expected


@pytest.mark.parametrize(
    ("retained", "wanted", "message"),
    [
        ([], None, "no earlier release is retained"),
        ([], "ab12", r"retained: none"),
        (SHAS, "ab", "ab is not one retained release"),  # ambiguous
        (SHAS, "ef", "ef is not one retained release"),  # unknown
    ],
)
def test_pick_rollback_target_refuses(
    retained: list[str], wanted: str | None, message: str
) -> None:
    with pytest.raises(RevisionError, match=message):
        pick_rollback_target(retained, wanted)


# -- garbage collection -------------------------------------------------------------------


def test_garbage_collection_keeps_the_configured_number_of_releases(tmp_path: Path) -> None:
    world = World(tmp_path / "home", LIVE_PULL_KEEP_RELEASES="2")
    shas = []
    for _ in range(4):
        shas.append(world.commit())
        world.updater.check()

    on_disk = sorted(p.name for p in world.releases.root.iterdir())
    assert on_disk == sorted(shas[-2:])
    assert saved(world)["history"] == shas[-2:]
    assert world.status()["retained"] == [shas[-2]]
    assert_serving(world, shas[-1])


def test_only_the_revisions_own_failures_are_the_fleets() -> None:
    """A failure raised from a transient fault or an OS error is this replica's."""
    from entrypoint.errors import InstallError, RevisionError, SupervisorError
    from entrypoint.updater import about_the_revision

    def raised(error: BaseException, cause: BaseException | None) -> BaseException:
        try:
            raise error from cause
        except BaseException as exc:
            return exc

    assert about_the_revision(RevisionError("release step failed code=3"))
    assert about_the_revision(raised(InstallError("install failed"), RuntimeError("exit 1")))
    assert not about_the_revision(raised(InstallError("could not run"), OSError(28, "full")))
    assert not about_the_revision(raised(RevisionError("failed to start"), SupervisorError("x")))
