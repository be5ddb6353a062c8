"""The fleet kept in Kubernetes Leases, against a stand-in API server over TLS: the
release step once per revision (also when its holder is SIGKILLed), verdicts, the
switching places, push notices, and an API that fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from entrypoint import config
from entrypoint.board import StatusBoard
from entrypoint.errors import RevisionError, TransientError
from entrypoint.fleet.kubernetes import KubernetesFleet
from entrypoint.fleet.store import FleetIdentity, open_fleet
from tests.conftest import wait_until
from tests.kubernetes_standin import KubernetesStandIn

FLEET = "https://git.example.invalid/org/app.git#main"
SHA = "a" * 40
LEASE_SECONDS = 3  # renewed every second: a slow machine does not let one lapse
REPO = Path(__file__).resolve().parent.parent

Factory = Callable[..., KubernetesFleet]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubernetesStandIn]:
    certs = tmp_path / "certs"
    certs.mkdir()
    with KubernetesStandIn(certs) as standin:
        yield standin


@pytest.fixture
def account(tmp_path: Path, api: KubernetesStandIn) -> Path:
    """The pod's service account, as Kubernetes mounts it."""
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text(api.token + "\n")
    (directory / "namespace").write_text("default")
    (directory / "ca.crt").write_bytes(api.ca_file.read_bytes())
    return directory


@pytest.fixture
def fleet(api: KubernetesStandIn, account: Path) -> Iterator[Factory]:
    made: list[KubernetesFleet] = []

    def make(replica: str, max_switching: int = 1, url: str | None = None) -> KubernetesFleet:
        identity = FleetIdentity(FLEET, replica, max_switching, release_timeout=10.0)
        made.append(
            KubernetesFleet(
                identity,
                url or api.url,
                service_account=account,
                lease_seconds=LEASE_SECONDS,
            )
        )
        return made[-1]

    yield make
    for one in made:
        one.close()


def in_threads(*calls: Callable[[], object]) -> list[object]:
    """Run the calls at once; their results (or what they raised), in order."""
    results: list[object] = [None] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        try:
            results[index] = call()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_release_step_runs_once_across_three_replicas(fleet: Factory, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    never = threading.Event()

    def step_of(name: str) -> Callable[[], None]:
        def step() -> None:
            with ran.open("a") as out:
                out.write(f"{name}\n")
            time.sleep(1.5)  # longer than a third of the lease: renewed meanwhile

        return step

    replicas = [fleet(name) for name in ("a", "b", "c")]
    outcomes = in_threads(
        *(
            (lambda one=one: one.release_once(SHA, step_of(one.me.replica), never))
            for one in replicas
        )
    )
    lines = ran.read_text().splitlines()
    assert len(lines) == 1, lines
    runner = lines[0]
    assert sorted(map(str, outcomes)) == sorted(["ran", f"done by {runner}", f"done by {runner}"])
    # Later replicas find the record without waiting.
    assert fleet("d").release_once(SHA, step_of("d"), never) == f"done by {runner}"


def test_a_killed_holder_lets_another_replica_run_the_step(
    fleet: Factory, api: KubernetesStandIn, account: Path, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    holder = textwrap.dedent(
        f"""
        import threading, time
        from pathlib import Path
        from entrypoint.fleet.kubernetes import KubernetesFleet
        from entrypoint.fleet.store import FleetIdentity

        def step():
            Path({str(started)!r}).write_text("killed\\n")
            time.sleep(120)

        identity = FleetIdentity({FLEET!r}, "killed", 1, 10.0)
        fleet = KubernetesFleet(
            identity, {api.url!r}, service_account=Path({str(account)!r}),
            lease_seconds={LEASE_SECONDS},
        )
        fleet.release_once({SHA!r}, step, threading.Event())
        """
    )
    process = subprocess.Popen([sys.executable, "-c", holder], cwd=REPO)
    survivor = fleet("survivor")

    def step() -> None:
        with started.open("a") as out:
            out.write("survivor\n")

    outcome: list[object] = []
    try:
        wait_until(started.exists, 20, "the holder's step to start")
        waiting = threading.Thread(
            target=lambda: outcome.append(survivor.release_once(SHA, step, threading.Event()))
        )
        waiting.start()
        time.sleep(1.5 * LEASE_SECONDS)  # a holder that renews keeps its Lease
        assert not outcome and started.read_text() == "killed\n"
        (held,) = [
            lease
            for lease in api.stored()
            if lease["metadata"]["name"].startswith("live-pull-release-")
        ]
        assert held["spec"]["holderIdentity"] == "killed"
        assert held["spec"]["renewTime"] > held["spec"]["acquireTime"]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        killed_at = time.monotonic()
        waiting.join(LEASE_SECONDS + 10)
        waited = time.monotonic() - killed_at
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert outcome == ["ran"]
    assert started.read_text().splitlines() == ["killed", "survivor"]
    # It took the Lease only after seeing it unrenewed for its whole duration (the last
    # renewal came up to a second before the kill).
    assert LEASE_SECONDS - 1.5 <= waited < LEASE_SECONDS + 8, waited
    assert fleet("late").release_once(SHA, step, threading.Event()) == "done by survivor"


def test_a_refused_revision_is_refused_everywhere(fleet: Factory) -> None:
    a, b, c = fleet("a"), fleet("b"), fleet("c")
    assert b.verdict(SHA) is None
    stepping, finish = threading.Event(), threading.Event()

    def slow_step() -> None:
        stepping.set()
        finish.wait(10)

    holding = threading.Thread(target=a.release_once, args=(SHA, slow_step, threading.Event()))
    holding.start()
    try:
        stepping.wait(10)
        waiter = in_threads(
            lambda: b.release_once(SHA, slow_step, threading.Event()),
            lambda: (time.sleep(0.6), c.refuse(SHA, "crashed on start")),
        )[0]
    finally:
        finish.set()
        holding.join(10)
    # b was waiting for a's step when c refused the revision: b stops waiting.
    assert isinstance(waiter, RevisionError)
    assert str(waiter) == "refused by replica c: crashed on start"
    b.refuse(SHA, "a second reason")  # the first reason stays
    assert a.verdict(SHA) == "refused by replica c: crashed on start"
    with pytest.raises(RevisionError, match="refused by replica c"):
        fleet("d").release_once(SHA, slow_step, threading.Event())


def test_a_step_that_fails_is_refused_before_a_waiting_replica_takes_over(
    fleet: Factory,
) -> None:
    a, b = fleet("a"), fleet("b")
    stepping = threading.Event()
    b_ran: list[str] = []

    def failing() -> None:
        stepping.set()
        time.sleep(1.0)  # b waits meanwhile
        raise RevisionError("release step failed code=3")

    def a_runs() -> str:
        return a.release_once(SHA, failing, threading.Event())

    def b_waits() -> str:
        stepping.wait(10)
        return b.release_once(SHA, lambda: b_ran.append("b"), threading.Event())

    outcomes = in_threads(a_runs, b_waits)
    assert [str(outcome) for outcome in outcomes] == [
        "release step failed code=3",
        "refused by replica a: release step failed code=3",
    ]
    assert b_ran == []  # the lease was let go with the refusal on it


def test_at_most_max_switching_replicas_switch_at_once(fleet: Factory) -> None:
    replicas = [fleet(name, max_switching=2) for name in ("a", "b", "c", "d")]
    lock = threading.Lock()
    inside: list[int] = [0, 0]  # now, most at once

    def switch(one: KubernetesFleet) -> str:
        with one.switching(20.0, threading.Event()):
            with lock:
                inside[0] += 1
                inside[1] = max(inside)
            time.sleep(0.8)
            with lock:
                inside[0] -= 1
        return one.me.replica

    done = in_threads(*((lambda one=one: switch(one)) for one in replicas))
    assert done == ["a", "b", "c", "d"]
    assert inside[1] == 2


def test_a_full_fleet_is_a_transient_error_after_the_budget(fleet: Factory) -> None:
    a, b = fleet("a"), fleet("b")
    with a.switching(5.0, threading.Event()):
        started = time.monotonic()
        with (
            pytest.raises(TransientError, match="LIVE_PULL_FLEET_MAX_SWITCHING"),
            b.switching(1.0, threading.Event()),
        ):
            pass
        assert time.monotonic() - started < 8  # its budget (1 s), not the holder's 5 s
        stopping = threading.Event()
        stopping.set()
        with pytest.raises(RevisionError, match="the agent is stopping"):
            b.switching(30.0, stopping).__enter__()
    with b.switching(1.0, threading.Event()):  # given back: free at once
        pass


def test_a_push_reaches_the_other_replicas(fleet: Factory) -> None:
    a, b = fleet("a"), fleet("b")
    heard = {"a": threading.Event(), "b": threading.Event()}
    boards = {
        name: StatusBoard("https://git.example.invalid/org/app.git", "main") for name in heard
    }
    boards["a"].update(revision=SHA, state="idle")
    a.start(heard["a"].set, boards["a"])
    b.start(heard["b"].set, boards["b"])
    wait_until(lambda: len(boards["b"].snapshot()["fleet"]["replicas"]) == 2, 10, "both reports")
    a.announce()
    started = time.monotonic()
    assert heard["b"].wait(5.0), "the push did not reach b within 5 s (a poll: minutes)"
    assert time.monotonic() - started < 5.0
    time.sleep(1.0)
    assert not heard["a"].is_set()  # not its own
    view = boards["b"].snapshot()["fleet"]
    assert view["store"] == "kubernetes" and view["replica"] == "b"
    assert {r["name"]: r["revision"] for r in view["replicas"]} == {"a": SHA, "b": None}
    assert view["error"] is None
    assert b.serving() == SHA  # what the others serve: a new replica starts it
    assert a.serving() is None  # its own report is left out


def test_an_unreachable_api_is_a_transient_error(fleet: Factory) -> None:
    nowhere = fleet("a", url="https://127.0.0.1:9")  # discard port: refused
    with pytest.raises(TransientError, match=r"^kubernetes API GET leases/live-pull-release-"):
        nowhere.release_once(SHA, lambda: None, threading.Event())
    assert nowhere.verdict(SHA) is None  # deciding alone
    nowhere.refuse(SHA, "told no one")  # best effort: no raise


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        ("forbidden", "HTTP 403: the service account may not update leases"),
        ("token", "HTTP 401: the service account token was not accepted"),
        ("down", "HTTP 503 etcdserver: request timed out"),
    ],
)
def test_api_refusals_are_one_line_transient_errors(
    fleet: Factory, api: KubernetesStandIn, account: Path, failure: str, message: str
) -> None:
    a = fleet("a")
    with a.switching(1.0, threading.Event()):
        pass  # created and given back: the next take is an update
    if failure == "forbidden":
        api.forbidden.add("update")
    elif failure == "token":
        (account / "token").write_text("rotated-but-wrong")
    else:
        api.failing = 503
    with pytest.raises(TransientError) as caught, a.switching(1.0, threading.Event()):
        pass
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_open_fleet_reaches_the_api_through_the_pods_settings(
    api: KubernetesStandIn, account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "SERVICE_ACCOUNT_DIR", account)
    port = api.url.rsplit(":", 1)[1]
    settings = config.load_settings(
        {
            "REPO_URL": "https://git.example.invalid/org/app.git",
            "LIVE_PULL_FLEET_URL": "kubernetes",
            "LIVE_PULL_FLEET_REPLICA": "pod-1",
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": port,
        }
    )
    opened = open_fleet(settings)
    try:
        assert isinstance(opened, KubernetesFleet)
        assert opened.release_once(SHA, lambda: None, threading.Event()) == "ran"
    finally:
        opened.close()
    (lease,) = api.stored()
    assert lease["metadata"]["annotations"]["live-pull.dev/released-by"] == "pod-1"
    assert lease["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "live-pull"
