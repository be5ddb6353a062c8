"""The PostgreSQL fleet store, driven directly against a real server: the release step
once, verdicts, the switching places, push notices, and a store that is down."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from entrypoint.auth import Secret
from entrypoint.board import StatusBoard
from entrypoint.config import load_settings
from entrypoint.errors import RevisionError, TransientError
from entrypoint.fleet.postgres import PostgresFleet
from entrypoint.fleet.store import FleetIdentity
from entrypoint.ports import unused_port
from tests.conftest import wait_until
from tests.postgres import PASSWORD, PostgresServer

SHA = "a" * 40


def member(
    url: str, fleet: str, replica: str, *, places: int = 1, timeout: float = 30.0
) -> PostgresFleet:
    return PostgresFleet(
        Secret("LIVE_PULL_FLEET_URL", url, None), FleetIdentity(fleet, replica, places, timeout)
    )


@pytest.fixture
def fleet_name(request: pytest.FixtureRequest) -> str:
    return f"file:///{request.node.name}#main"


def test_three_replicas_run_the_release_step_once(
    postgres: PostgresServer, fleet_name: str, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    members = [member(postgres.url(), fleet_name, name) for name in "abc"]
    outcomes: dict[str, str] = {}
    stop = threading.Event()

    def release(fleet: PostgresFleet) -> None:
        def step() -> None:
            with ran.open("a") as out:
                out.write(fleet.me.replica + "\n")
            time.sleep(1.0)  # the others arrive while it runs

        outcomes[fleet.me.replica] = fleet.release_once(SHA, step, stop)

    threads = [threading.Thread(target=release, args=(fleet,)) for fleet in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    runner = ran.read_text().split()
    assert len(runner) == 1
    assert outcomes[runner[0]] == "ran"
    assert sorted(outcomes.values()) == ["done by " + runner[0]] * 2 + ["ran"]
    # Done is done: a replica that comes later does not run it either.
    late = member(postgres.url(), fleet_name, "d")
    assert late.release_once(SHA, lambda: pytest.fail("ran twice"), stop) == f"done by {runner[0]}"
    for fleet in [*members, late]:
        fleet.close()


def test_a_failed_step_is_refused_for_every_replica(
    postgres: PostgresServer, fleet_name: str
) -> None:
    a, b = member(postgres.url(), fleet_name, "a"), member(postgres.url(), fleet_name, "b")
    stop = threading.Event()
    holding = threading.Event()
    b_ran: list[str] = []
    b_outcome: list[BaseException] = []

    def failing() -> None:
        holding.set()
        time.sleep(1.0)  # b waits meanwhile, looking every half second
        raise RevisionError("release step failed code=3")

    def b_waits() -> None:
        holding.wait(10)
        try:
            b.release_once(SHA, lambda: b_ran.append("b"), stop)
        except RevisionError as exc:
            b_outcome.append(exc)

    waiter = threading.Thread(target=b_waits)
    waiter.start()
    with pytest.raises(RevisionError, match="code=3"):
        a.release_once(SHA, failing, stop)
    waiter.join(30)
    # Refused as the lock was given back: the waiting replica never ran the step.
    assert b_ran == []
    assert [str(exc) for exc in b_outcome] == ["refused by replica a: release step failed code=3"]
    b.refuse(SHA, "a later reason")  # the first reason stays
    assert b.verdict(SHA) == "refused by replica a: release step failed code=3"
    assert b.verdict("b" * 40) is None
    a.close()
    b.close()


def test_at_most_max_switching_replicas_switch_at_once(
    postgres: PostgresServer, fleet_name: str
) -> None:
    members = [member(postgres.url(), fleet_name, name, places=2) for name in "abc"]
    stop = threading.Event()
    inside: list[str] = []
    entered: list[str] = []
    most = 0
    lock = threading.Lock()
    done = threading.Event()  # the holders give their places back

    def switch(fleet: PostgresFleet) -> None:
        nonlocal most
        with fleet.switching(30.0, stop):
            with lock:
                inside.append(fleet.me.replica)
                entered.append(fleet.me.replica)
                most = max(most, len(inside))
            done.wait(30)
            with lock:
                inside.remove(fleet.me.replica)

    threads = [threading.Thread(target=switch, args=(fleet,)) for fleet in members]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(inside) == 2, 15, lambda: f"two replicas switching: {inside}")
    time.sleep(1.0)  # the third would be in by now if it could
    assert (len(inside), most) == (2, 2)
    done.set()
    for thread in threads:
        thread.join(30)
    assert sorted(entered) == ["a", "b", "c"]  # the third, once a place was given back
    # A place that is never given back runs out the waiting replica's budget.
    with (
        members[0].switching(30.0, stop),
        members[1].switching(30.0, stop),
        pytest.raises(TransientError, match="LIVE_PULL_FLEET_MAX_SWITCHING"),
        members[2].switching(0.5, stop),
    ):
        pytest.fail("a third replica switched")
    for fleet in members:
        fleet.close()


def test_a_push_announced_by_one_reaches_the_others(
    postgres: PostgresServer, fleet_name: str
) -> None:
    heard: dict[str, float] = {}
    members = [member(postgres.url(), fleet_name, name) for name in "abc"]
    other_fleet = member(postgres.url(), fleet_name + "-other", "x")
    for fleet in [*members, other_fleet]:
        board = StatusBoard("repo", "main")
        name = fleet.me.replica

        def on_push(name: str = name) -> None:
            heard.setdefault(name, time.monotonic())

        fleet.start(on_push, board)
    wait_until(lambda: all(board_ready(fleet) for fleet in members), 15, "listening")
    announced = time.monotonic()
    members[0].announce()
    wait_until(lambda: {"b", "c"} <= set(heard), 10, lambda: f"pushes heard: {heard}")
    assert max(heard.values()) - announced < 5.0  # at once, not by a poll
    time.sleep(0.5)
    assert "a" not in heard  # not its own
    assert "x" not in heard  # nor another fleet's
    for fleet in [*members, other_fleet]:
        fleet.close()


def board_ready(fleet: PostgresFleet) -> bool:
    return fleet._thread.running and fleet._thread.error is None and fleet._listening.is_set()


def test_a_store_that_is_down_is_transient_and_never_shows_its_password(fleet_name: str) -> None:
    down = f"postgresql://live:{PASSWORD}@127.0.0.1:{unused_port()}/postgres"
    fleet = member(down, fleet_name, "a")
    stop = threading.Event()
    with pytest.raises(TransientError, match="fleet store") as caught:
        fleet.release_once(SHA, lambda: pytest.fail("ran without the lock"), stop)
    assert PASSWORD not in str(caught.value)
    assert fleet.verdict(SHA) is None  # unknown: the replica decides alone
    with pytest.raises(TransientError), fleet.switching(5.0, stop):
        pytest.fail("switched without a place")
    fleet.close()


KILLED_HOLDER = """
import sys, threading, time
from entrypoint.auth import Secret
from entrypoint.fleet.postgres import PostgresFleet
from entrypoint.fleet.store import FleetIdentity

fleet = PostgresFleet(Secret("LIVE_PULL_FLEET_URL", sys.argv[1], None),
                      FleetIdentity(sys.argv[2], "doomed", 1, 30.0))
def step():
    print("holding", flush=True)
    time.sleep(60)
fleet.release_once(sys.argv[3], step, threading.Event())
"""


def test_a_holder_killed_mid_step_leaves_the_step_to_another(
    postgres: PostgresServer, fleet_name: str
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", KILLED_HOLDER, postgres.url(), fleet_name, SHA],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        waiting = member(postgres.url(), fleet_name, "b")
        ran = threading.Event()
        threading.Timer(1.0, holder.kill).start()
        started = time.monotonic()
        assert waiting.release_once(SHA, ran.set, threading.Event()) == "ran"
        assert ran.is_set()
        assert time.monotonic() - started >= 0.9  # it waited for the holder
        waiting.close()
    finally:
        holder.kill()
        holder.wait()


def test_a_step_killed_by_a_stop_is_not_refused(postgres: PostgresServer, fleet_name: str) -> None:
    """A replica stopped mid-step (a rollout, a drain) says nothing of the revision: the
    next replica runs the step."""
    a, b = member(postgres.url(), fleet_name, "a"), member(postgres.url(), fleet_name, "b")
    stop = threading.Event()

    def killed_by_the_stop() -> None:
        stop.set()  # as run_release_step ends a step when the agent stops
        raise RevisionError("release step failed code=-9 (killed: agent stopping)")

    with pytest.raises(RevisionError, match="agent stopping"):
        a.release_once(SHA, killed_by_the_stop, stop)
    assert b.verdict(SHA) is None
    assert b.release_once(SHA, lambda: None, threading.Event()) == "ran"
    a.close()
    b.close()


def test_an_unparsable_url_never_shows_its_password() -> None:
    url = "postgresql://live_pull:Tr0ub4dor%3&horse@db/app"
    fleet = member(url, "file:///x#main", "a")
    with pytest.raises(TransientError) as caught:
        fleet.release_once(SHA, lambda: pytest.fail("ran"), threading.Event())
    assert "Tr0ub4dor" not in str(caught.value)
    assert "***" in str(caught.value)
    fleet.close()


def test_two_apps_of_one_repository_are_two_fleets() -> None:
    def identity(**extra: str) -> str:
        env = {"REPO_URL": "https://git.example.invalid/org/mono.git", "REPO_REF": "main"}
        return FleetIdentity.of(load_settings({**env, **extra})).fleet

    assert identity(LIVE_PULL_APP_DIR="services/api") != identity(
        LIVE_PULL_APP_DIR="services/billing"
    )
    assert identity() == "https://git.example.invalid/org/mono.git#main"
