"""Held updates in the update sequence (stand-ins for git and supervisord): a pause, kept
across restarts, and update windows with an injected clock. The first start, rollbacks
and `sync --now` are never held."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from entrypoint.hold import UpdateGate
from entrypoint.windows import parse_windows
from tests.unit.standins import WEB_PROCFILE, World

SATURDAY_NOON = datetime(2026, 1, 17, 12, 0, tzinfo=UTC)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "home")


def second_commit(world: World) -> str:
    return world.commit({"Procfile": WEB_PROCFILE, "app.py": "VERSION = 2\n"})


def test_the_first_start_is_not_held_by_a_pause(world: World) -> None:
    world.updater.pause("freeze")
    a = world.commit()

    assert world.updater.check() is True

    assert world.updater.running == a
    assert world.status()["waiting"] is None


def test_a_pause_holds_updates_across_a_restart_until_resumed(world: World) -> None:
    a = world.commit()
    world.updater.check()
    world.updater.pause("release freeze")
    b = second_commit(world)

    assert world.updater.check(trigger="webhook") is False

    assert world.updater.running == a and world.supervisor.revision_of("web") == a
    status = world.status()
    assert status["paused"]["reason"] == "release freeze"
    assert status["waiting"]["sha"] == b and status["waiting"]["held_by"] == "pause"
    assert status["waiting"]["ref"] == "refs/heads/main"
    assert json.loads(world.saved_state())["paused"]["reason"] == "release freeze"

    world.updater = world.new_updater()  # a restart reads the pause back
    assert world.status()["paused"]["reason"] == "release freeze"
    world.updater.go_live(world.updater.prepare(a))
    assert world.updater.check(trigger="start") is False

    world.updater.resume()
    assert world.status()["paused"] is None
    assert json.loads(world.saved_state())["paused"] is None
    assert world.updater.check(trigger="resume") is True
    assert world.updater.running == b
    assert world.status()["waiting"] is None


def test_a_closed_window_holds_an_update_and_sync_now_goes_ahead(world: World) -> None:
    a = world.commit()
    world.updater.gate = UpdateGate(parse_windows("Mon-Fri 09:00-17:00 UTC"), lambda: SATURDAY_NOON)
    assert world.updater.check() is True  # the first start: not held
    b = second_commit(world)

    assert world.updater.check() is False

    assert world.updater.running == a
    waiting = world.status()["waiting"]
    assert waiting["held_by"] == "update window" and waiting["sha"] == b
    assert waiting["next_window"] == "2026-01-19T09:00:00+00:00"

    assert world.updater.check(trigger="sync", ignore_hold=True) is True
    assert world.updater.running == b
    assert world.status()["waiting"] is None


def test_an_open_window_lets_an_update_through(world: World) -> None:
    world.commit()
    world.updater.gate = UpdateGate(parse_windows("Sat 11:00-13:00 UTC"), lambda: SATURDAY_NOON)
    world.updater.check()
    b = second_commit(world)

    assert world.updater.check() is True
    assert world.updater.running == b


def test_a_pause_shows_when_the_window_opens_and_a_rollback_is_not_held(world: World) -> None:
    a = world.commit()
    world.updater.check()
    b = second_commit(world)
    world.updater.check()
    world.updater.gate = UpdateGate(parse_windows("Sun 02:00-04:00 UTC"), lambda: SATURDAY_NOON)
    world.updater.pause(None)
    world.commit({"Procfile": WEB_PROCFILE, "app.py": "VERSION = 3\n"})

    assert world.updater.check() is False
    waiting = world.status()["waiting"]
    assert waiting["held_by"] == "pause"
    assert waiting["next_window"] == "2026-01-18T02:00:00+00:00"

    world.updater.rollback(a, "rolled back by operator")
    assert world.updater.running == a
    assert b in world.updater.state.failed  # the left one, as after any rollback
