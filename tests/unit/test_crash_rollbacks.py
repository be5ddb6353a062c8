"""Crash rollbacks (LIVE_PULL_ROLLBACK_ON_CRASH) through the real loop, watchdog and
updater against the stand-ins: a stale finding never rolls back a revision that came
after it, and two crashing revisions never take turns for ever."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrypoint.errors import AppFailed
from entrypoint.inbox import Inbox
from entrypoint.loop import ControlLoop
from entrypoint.watchdog import Watchdog
from tests.unit.standins import World


def make(tmp_path: Path) -> tuple[World, Inbox, ControlLoop, Watchdog]:
    world = World(tmp_path, LIVE_PULL_ROLLBACK_ON_CRASH="true")
    inbox = Inbox()
    loop = ControlLoop(world.settings, world.updater, world.board, inbox)
    watchdog = Watchdog(
        world.supervisor,
        world.updater,
        world.board,
        inbox,
        crash_loop=(3, 60.0),
        rollback_on_crash=True,
    )
    return world, inbox, loop, watchdog


def crash_loop(world: World, watchdog: Watchdog) -> None:
    watchdog.tick()
    for _ in range(3):
        world.supervisor.restart("web")
        watchdog.tick()


def test_a_stale_crash_finding_leaves_a_newer_revision_alone(tmp_path: Path) -> None:
    world, inbox, loop, watchdog = make(tmp_path)
    world.commit()
    world.updater.check()
    a = world.commit(**{"a.txt": "a"})
    world.updater.check()
    crash_loop(world, watchdog)  # a crash-loops while the loop is busy with b
    b = world.commit(**{"b.txt": "b"})
    world.updater.check()
    request = inbox.take(0.5)
    assert request is not None

    loop._handle(request)

    assert world.updater.running == b
    assert b not in world.updater.state.failed
    assert a != b


def test_two_crashing_revisions_do_not_take_turns(tmp_path: Path) -> None:
    world, inbox, loop, watchdog = make(tmp_path)
    p = world.commit()
    world.updater.check()
    world.commit(**{"a.txt": "a"})
    world.updater.check()
    crash_loop(world, watchdog)
    request = inbox.take(0.5)
    assert request is not None
    loop._handle(request)  # a crashed: back to p, a recorded failed
    assert world.updater.running == p

    crash_loop(world, watchdog)  # p crashes too (say the database is down)
    request = inbox.take(0.5)
    assert request is not None
    with pytest.raises(AppFailed, match="rollback failed"):
        loop._handle(request)  # nothing that never failed is left: exit 3
