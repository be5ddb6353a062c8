"""The watchdog: crash loops counted from pid changes, FATAL programs, readiness, and
counts that start over when the updater switches revisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrypoint import inbox as inbox_module
from entrypoint import watchdog as watchdog_module
from entrypoint.errors import AppFailed, RevisionError, SupervisorError
from entrypoint.inbox import Crashed, Inbox
from entrypoint.watchdog import UNANSWERED_LIMIT, CrashCounter, Watchdog
from tests.unit.standins import World


class Clock:
    """time for the watchdog module only: moves when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(watchdog_module, "time", fake)
    return fake


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbox_module, "SETTLE_SECONDS", 0.01)


def states(**pids: int) -> dict[str, dict[str, object]]:
    return {name: {"name": name, "statename": "RUNNING", "pid": pid} for name, pid in pids.items()}


# -- CrashCounter ------------------------------------------------------------------------


def test_pid_changes_count_as_exits(clock: Clock) -> None:
    counter = CrashCounter(limit=3, window=60)
    for pid in (10, 11, 12):
        counter.observe(states(web=pid), {"web"})
    assert counter.totals == {"web": 2}
    assert counter.looping() is None

    counter.observe(states(web=13), {"web"})

    assert counter.looping() == ("web", 3)


def test_the_same_pid_is_no_exit(clock: Clock) -> None:
    counter = CrashCounter(limit=1, window=60)
    for _ in range(5):
        counter.observe(states(web=10), {"web"})
    assert counter.totals == {}
    assert counter.looping() is None


def test_pid_zero_then_a_new_pid_counts_once(clock: Clock) -> None:
    counter = CrashCounter(limit=3, window=60)
    counter.observe(states(web=10), {"web"})
    counter.observe(states(web=0), {"web"})  # exited, not yet restarted
    counter.observe(states(web=0), {"web"})
    counter.observe(states(web=11), {"web"})  # restarted

    assert counter.totals == {"web": 1}


def test_exits_leave_the_window(clock: Clock) -> None:
    counter = CrashCounter(limit=3, window=10)
    counter.observe(states(web=10), {"web"})
    counter.observe(states(web=11), {"web"})
    counter.observe(states(web=12), {"web"})
    clock.advance(11)  # the first two exits are older than the window now
    counter.observe(states(web=13), {"web"})

    assert counter.looping() is None
    assert counter.totals == {"web": 3}  # totals are for /status, never forgotten

    counter.observe(states(web=14), {"web"})
    counter.observe(states(web=15), {"web"})
    assert counter.looping() == ("web", 3)


def test_only_watched_programs_are_counted(clock: Clock) -> None:
    counter = CrashCounter(limit=1, window=60)
    counter.observe(states(web=1, worker=2), {"web"})
    counter.observe(states(web=1, worker=3), {"web"})
    assert counter.totals == {}


def test_forget_processes(clock: Clock) -> None:
    counter = CrashCounter(limit=2, window=60)
    counter.observe(states(web=10), {"web"})
    counter.observe(states(web=11), {"web"})
    counter.forget_processes()  # a switch stopped 11 on purpose and started 20

    counter.observe(states(web=20), {"web"})
    counter.observe(states(web=21), {"web"})

    assert counter.looping() is None  # one exit since the switch
    assert counter.totals == {"web": 2}


# -- Watchdog ----------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path / "home")
    world.commit()
    world.updater.check()
    return world


def make_watchdog(world: World, inbox: Inbox, *, rollback_on_crash: bool = False) -> Watchdog:
    return Watchdog(
        world.supervisor,  # type: ignore[arg-type]
        world.updater,
        world.board,
        inbox,
        crash_loop=(3, 60.0),
        rollback_on_crash=rollback_on_crash,
    )


def test_a_crash_loop_is_the_app_down(world: World, clock: Clock) -> None:
    watchdog = make_watchdog(world, Inbox())
    watchdog.tick()  # sees web's pid
    for _ in range(2):
        world.supervisor.restart("web")
        watchdog.tick()
    assert world.board.ready()

    world.supervisor.restart("web")
    with pytest.raises(AppFailed, match="program web exited 3 times within 60s"):
        watchdog.tick()

    status = world.status()
    assert status["app_down"] == {"program": "web", "restarts": 3, "window_seconds": 60.0}
    assert status["restarts"] == {"web": 3}
    assert status["error_kind"] == "app"
    assert not world.board.ready()


def test_a_crash_loop_asks_for_a_rollback_when_configured(world: World, clock: Clock) -> None:
    inbox = Inbox()
    watchdog = make_watchdog(world, inbox, rollback_on_crash=True)
    watchdog.tick()
    for _ in range(3):
        world.supervisor.restart("web")
        watchdog.tick()  # no exception: the control loop rolls back
    world.supervisor.restart("web")
    watchdog.tick()  # reported once, not once a tick

    assert world.status()["app_down"]["program"] == "web"
    assert not world.board.ready()
    running = world.updater.running
    assert inbox.take(0) == Crashed("program web exited 3 times within 60s", running)
    assert inbox.take(0) is None


def test_fatal_is_the_app_down(world: World, clock: Clock) -> None:
    watchdog = make_watchdog(world, Inbox())
    watchdog.tick()
    world.supervisor.set_state("web", "FATAL")

    with pytest.raises(AppFailed, match="program web went FATAL"):
        watchdog.tick()

    assert world.status()["app_down"]["program"] == "web"
    assert world.status()["error_kind"] == "app"
    assert not world.board.ready()


def test_fatal_asks_for_a_rollback_when_configured(world: World, clock: Clock) -> None:
    inbox = Inbox()
    watchdog = make_watchdog(world, inbox, rollback_on_crash=True)
    world.supervisor.set_state("web", "FATAL")

    watchdog.tick()

    request = inbox.take(0)
    assert isinstance(request, Crashed) and "went FATAL" in request.reason


def test_programs_not_running_are_not_ready(world: World, clock: Clock) -> None:
    watchdog = make_watchdog(world, Inbox())
    watchdog.tick()
    assert world.board.ready()

    world.supervisor.set_state("web", "BACKOFF")
    watchdog.tick()
    assert not world.board.ready()
    assert world.status()["app_down"] is None  # not down (yet): restarting

    world.supervisor.restart("web")
    watchdog.tick()
    assert world.board.ready()


def test_a_switch_starts_the_counts_over(world: World, clock: Clock) -> None:
    watchdog = make_watchdog(world, Inbox())
    watchdog.tick()
    for _ in range(2):
        world.supervisor.restart("web")
        watchdog.tick()

    world.commit()
    assert world.updater.check() is True  # new revision: web restarted on purpose
    watchdog.tick()
    for _ in range(2):
        world.supervisor.restart("web")
        watchdog.tick()  # two exits since the switch: under the limit

    assert watchdog.counter.looping() is None
    assert world.status()["app_down"] is None
    assert world.status()["restarts"] == {"web": 4}
    assert world.board.ready()


def test_nothing_is_judged_while_the_updater_switches(world: World, clock: Clock) -> None:
    watchdog = make_watchdog(world, Inbox())
    watchdog.tick()
    with world.updater.switching:
        world.supervisor.set_state("web", "FATAL")
        watchdog.tick()  # the updater judges the revision it starts itself
    assert world.status()["app_down"] is None


def test_supervisord_gone_is_the_app_down(world: World, clock: Clock) -> None:
    watchdog = make_watchdog(world, Inbox())
    world.supervisor.running_supervisord = False

    with pytest.raises(AppFailed, match="supervisord exited"):
        watchdog.tick()


def test_supervisord_not_answering_for_long_is_the_app_down(world: World, clock: Clock) -> None:
    watchdog = make_watchdog(world, Inbox())
    world.supervisor.answering = False
    watchdog.tick()
    clock.advance(UNANSWERED_LIMIT)
    watchdog.tick()  # at the limit, not beyond it

    clock.advance(1)
    with pytest.raises(AppFailed, match="stopped answering") as raised:
        watchdog.tick()
    assert isinstance(raised.value.__cause__, SupervisorError)


def test_supervisord_answering_again_resets_the_limit(world: World, clock: Clock) -> None:
    watchdog = make_watchdog(world, Inbox())
    world.supervisor.answering = False
    watchdog.tick()
    clock.advance(UNANSWERED_LIMIT)
    world.supervisor.answering = True
    watchdog.tick()
    world.supervisor.answering = False
    watchdog.tick()
    clock.advance(UNANSWERED_LIMIT)

    watchdog.tick()  # a fresh spell of silence, within the limit


def test_after_a_rollback_the_restored_revision_is_watched_afresh(
    world: World, clock: Clock
) -> None:
    """The crash-loop path end to end: the watchdog asks, the updater rolls back (as the
    control loop does with a Crashed request), and the app is up and counted afresh."""
    a = world.updater.running
    b = world.commit()
    world.updater.check()
    inbox = Inbox()
    watchdog = make_watchdog(world, inbox, rollback_on_crash=True)
    watchdog.tick()
    for _ in range(3):
        world.supervisor.restart("web")
        watchdog.tick()
    request = inbox.take(0)
    assert isinstance(request, Crashed)

    world.updater.rollback(world.updater.rollback_target(None), request.reason)
    watchdog.tick()

    assert world.supervisor.revision_of("web") == a
    assert b in world.updater.state.failed
    status = world.status()
    assert status["app_down"] is None
    assert status["error_kind"] is None
    assert world.board.ready()
    for _ in range(2):
        world.supervisor.restart("web")
        watchdog.tick()  # two exits of the restored revision: under the limit
    assert world.board.ready()


def test_a_failed_restore_is_the_app_down(world: World, clock: Clock) -> None:
    """The old revision (clock + web) could not be restored after the new one (web only)
    failed: supervisord runs the new one's FATAL web and no `clock`. The watchdog calls
    the app down (AppFailed, exit 3); it must not break on the program it cannot see."""
    a = world.commit({"Procfile": "clock: python clock.py\n" + "web: python web.py\n"})
    world.updater.check()
    b = world.commit()
    world.supervisor.fail("web", revision=b)
    world.supervisor.refuse(a)
    with pytest.raises(RevisionError, match="failed too"):
        world.updater.check()
    assert world.updater.running == a  # what the watchdog watches: clock and web
    assert set(world.supervisor.states()) == {"web"}
    watchdog = make_watchdog(world, Inbox())

    with pytest.raises(AppFailed, match="web"):
        watchdog.tick()

    assert world.status()["app_down"] is not None
    assert not world.board.ready()


def test_the_agent_out_of_files_never_stops_a_healthy_app(world: World, clock: Clock) -> None:
    """EMFILE on the agent's own call (a flood on the status port) is reported and retried
    however long it lasts: it says nothing of the app."""
    world.commit()
    world.updater.check()
    watchdog = make_watchdog(world, Inbox())
    world.supervisor.out_of_files = True
    for _ in range(3):
        watchdog.tick()
        clock.advance(UNANSWERED_LIMIT)
    assert "Too many open files" in str(world.status()["last_error"])
    assert world.status()["error_kind"] == "transient"
    world.supervisor.out_of_files = False
    watchdog.tick()
    assert world.board.ready()
