"""`live-pull prepare`'s part of the sequence (Updater.stage, start_from_disk) against
the in-memory repository and supervisord; releases and state.json are real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entrypoint.errors import RevisionError
from tests.unit.standins import WEB_PROCFILE, World

RELEASE = WEB_PROCFILE + 'release: echo "$LIVE_PULL_REVISION" >> released\n'


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "home")


def released(world: World, sha: str) -> list[str]:
    path = world.releases.path(sha) / "released"
    return path.read_text().split() if path.exists() else []


def test_staged_revision_is_the_last_good_one_and_nothing_started(world: World) -> None:
    a = world.commit({"Procfile": RELEASE})

    staged = world.updater.stage()

    assert (staged.revision.sha, staged.release) == (a, "ran")
    assert released(world, a) == [a]
    assert world.supervisor.calls == []  # nothing started, nothing asked
    assert world.releases.current() == a
    assert json.loads(world.saved_state())["last_good"] == a
    restarted = world.new_updater()  # what `live-pull run` builds at start
    assert restarted.last_good_on_disk() == a
    restarted.start_from_disk(a)
    assert world.supervisor.revision_of("web") == a
    assert released(world, a) == [a]  # once per revision


def test_release_step_runs_once_per_revision(world: World) -> None:
    a = world.commit({"Procfile": RELEASE})
    world.updater.stage()

    again = world.new_updater().stage()

    assert again.release == "done-before"
    assert released(world, a) == [a]


def test_skipped_release_step_runs_at_first_start(world: World) -> None:
    a = world.commit({"Procfile": RELEASE})

    assert world.updater.stage(release_step=False).release == "skipped"

    assert released(world, a) == []
    assert json.loads(world.saved_state())["unreleased"] == [a]
    world.new_updater().start_from_disk(a)
    assert released(world, a) == [a]
    assert json.loads(world.saved_state())["unreleased"] == []
    assert world.supervisor.revision_of("web") == a


def test_failed_release_step_keeps_what_was_there(world: World) -> None:
    a = world.commit({"Procfile": RELEASE})
    world.updater.stage()
    b = world.commit({"Procfile": WEB_PROCFILE + "release: echo migrating; exit 3\n"})

    with pytest.raises(RevisionError, match="release step failed code=3"):
        world.new_updater().stage()

    state = json.loads(world.saved_state())
    assert state["last_good"] == a and state["failed"] == {}  # a one-shot records no failure
    assert world.releases.current() == a
    assert world.releases.exists(a) and b != a
