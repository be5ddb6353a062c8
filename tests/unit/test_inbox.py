"""The control loop's one queue: requests coalesce, the most urgent is taken first."""

from __future__ import annotations

import threading
import time

import pytest

from entrypoint import inbox as inbox_module
from entrypoint.inbox import Check, Crashed, Inbox, Pause, Request, Resume, Rollback

WAIT = 5.0  # bound on any wait for a thread; never reached when things work


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst is taken as one after this much quiet (0.3s in production)."""
    monkeypatch.setattr(inbox_module, "SETTLE_SECONDS", 0.02)


def drain(inbox: Inbox) -> list[Request]:
    taken = []
    while (request := inbox.take(0)) is not None:
        taken.append(request)
    return taken


def test_checks_coalesce_into_one() -> None:
    inbox = Inbox()
    for _ in range(1000):
        inbox.check("sync")
    inbox.check("webhook")

    taken = drain(inbox)

    assert len(taken) == 1
    assert isinstance(taken[0], Check)


def test_a_check_asked_for_after_one_was_taken_is_a_new_one() -> None:
    inbox = Inbox()
    inbox.check("sync")
    assert drain(inbox) == [Check("sync")]

    inbox.check("poll")

    assert drain(inbox) == [Check("poll")]


def test_crashed_before_rollback_before_check() -> None:
    inbox = Inbox()
    inbox.check("sync")
    inbox.rollback(Rollback(None, "operator asked", "operator"))
    inbox.crashed("web went FATAL", "b" * 40)

    assert drain(inbox) == [
        Crashed("web went FATAL", "b" * 40),
        Rollback(None, "operator asked", "operator"),
        Check("sync"),
    ]


def test_newest_of_pause_and_resume_wins_and_goes_before_checks() -> None:
    inbox = Inbox()
    inbox.check("poll")
    inbox.pausing(Pause("freeze"))
    inbox.pausing(Resume())

    assert drain(inbox) == [Resume(), Check("poll")]


def test_a_check_that_ignores_the_hold_is_not_coalesced_away() -> None:
    inbox = Inbox()
    inbox.check("poll")
    inbox.check("sync", ignore_hold=True)
    inbox.check("webhook")

    assert drain(inbox) == [Check("sync", ignore_hold=True)]


def test_newest_rollback_wins() -> None:
    inbox = Inbox()
    inbox.rollback(Rollback("a" * 40, "first", "operator"))
    inbox.rollback(Rollback("b" * 40, "second", "operator"))

    assert drain(inbox) == [Rollback("b" * 40, "second", "operator")]


def test_take_returns_none_on_timeout() -> None:
    inbox = Inbox()
    started = time.monotonic()

    assert inbox.take(0.05) is None

    assert time.monotonic() - started >= 0.05
    assert inbox.take(0) is None


def test_a_request_wakes_a_waiter() -> None:
    inbox = Inbox()
    taken: list[Request | None] = []
    waiter = threading.Thread(target=lambda: taken.append(inbox.take(WAIT)))
    waiter.start()

    inbox.check("sync")

    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert taken == [Check("sync")]


def test_stop_wakes_a_waiter() -> None:
    inbox = Inbox()
    taken: list[Request | None] = []
    waiter = threading.Thread(target=lambda: taken.append(inbox.take(60)))
    waiter.start()

    inbox.stop()

    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert taken == [None]
    assert inbox.stopping


def test_nothing_is_taken_once_stopping() -> None:
    inbox = Inbox()
    inbox.check("sync")
    inbox.stop()

    assert inbox.take(0) is None


def test_a_burst_arriving_while_taking_is_taken_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The waiter wakes on the first request and waits for quiet before taking it, so
    the rest of the burst joins it instead of making a second check."""
    monkeypatch.setattr(inbox_module, "SETTLE_SECONDS", 0.5)
    inbox = Inbox()
    taken: list[Request | None] = []
    waiter = threading.Thread(target=lambda: taken.append(inbox.take(WAIT)))
    waiter.start()

    for _ in range(1000):
        inbox.check("sync")

    waiter.join(WAIT)
    assert taken == [Check("sync")]
    assert inbox.take(0) is None


def test_stop_while_a_burst_settles_takes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop asked for while the waiter lets a burst settle ends the wait with None: the
    loop must not start a check (git, an install, a switch) once the agent is stopping."""
    monkeypatch.setattr(inbox_module, "SETTLE_SECONDS", 60.0)  # bounded by SETTLE_MAX
    settling = threading.Event()
    settle = Inbox._settle

    def announced_settle(self: Inbox) -> None:
        settling.set()
        settle(self)

    monkeypatch.setattr(Inbox, "_settle", announced_settle)
    inbox = Inbox()
    inbox.check("sync")
    taken: list[Request | None] = []
    waiter = threading.Thread(target=lambda: taken.append(inbox.take(WAIT)))
    waiter.start()
    assert settling.wait(WAIT)

    inbox.stop()

    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert taken == [None]


def test_held_checks_wait_coalesced_while_rollbacks_go_first() -> None:
    """A failing remote's backoff (or the spacing after a check) holds checks asked for
    from outside: a flood of /sync waits, as one, and a rollback is not held."""
    inbox = Inbox()
    earliest = time.monotonic() + 0.3
    inbox.hold_checks(0.3)
    for _ in range(2000):
        inbox.check("sync")
    assert inbox.take(0) is None  # held
    inbox.rollback(Rollback(None, "operator", "operator"))
    assert isinstance(inbox.take(0), Rollback)
    taken = inbox.take(WAIT)
    assert isinstance(taken, Check) and time.monotonic() >= earliest
    assert drain(inbox) == []
