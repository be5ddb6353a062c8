"""What the update sequence asks of a fleet, and the fleet of one (no store).

A store keeps, per fleet (the repository and ref that its replicas follow):
- the release step's record: run once per revision, under a lock that the store frees
  when its holder dies (so another replica runs the step again);
- the verdict on a revision: refused on one replica, skipped by all;
- a switching semaphore: at most LIVE_PULL_FLEET_MAX_SWITCHING replicas switch at once;
- push notices: a webhook or a sync heard by one replica reaches the others;
- each replica's revision and state, for /status's view of the fleet.

The control loop's thread makes the calls that block (release_once, switching); the
store's own thread listens for peers and refreshes the view.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from entrypoint.backoff import Backoff
from entrypoint.board import StatusBoard
from entrypoint.errors import RevisionError, TransientError

if TYPE_CHECKING:
    from entrypoint.config import Settings

log = logging.getLogger(__name__)

# The release step: raises if it failed.
ReleaseStep = Callable[[], None]


class Fleet(Protocol):
    alone: bool  # no store: nothing to wait for, nothing to tell

    def start(self, on_push: Callable[[], None], board: StatusBoard) -> None:
        """Listen for peers' push notices (on_push asks for a check) and keep the
        board's `fleet` view fresh, on the store's own thread."""

    def close(self) -> None:
        """Stop listening; locks held end with the connections."""

    def announce(self) -> None:
        """A push was heard here (webhook, sync): tell the peers. Never blocks."""

    def verdict(self, sha: str) -> str | None:
        """Why the fleet refused the revision, or None (also when the store is down)."""

    def refuse(self, sha: str, reason: str) -> None:
        """Record the revision as refused for the whole fleet (best effort)."""

    def serving(self) -> str | None:
        """The revision most of the other live replicas serve (None: none, or unknown)."""

    def release_once(self, sha: str, step: ReleaseStep, stop: threading.Event) -> str:
        """Run the release step here, or wait for a peer's: 'ran' or 'done by <replica>'.

        Raises RevisionError when a peer refused the revision meanwhile, TransientError
        when the store cannot be reached or a peer's step outlasts the release timeout.
        """

    def switching(
        self, budget: float, stop: threading.Event
    ) -> contextlib.AbstractContextManager[None]:
        """Hold one of the fleet's switching places while the body runs."""


class Solo:
    """No store: a replica on its own (LIVE_PULL_FLEET_URL unset)."""

    alone = True

    def start(self, on_push: Callable[[], None], board: StatusBoard) -> None:
        pass

    def close(self) -> None:
        pass

    def announce(self) -> None:
        pass

    def verdict(self, sha: str) -> str | None:
        return None

    def refuse(self, sha: str, reason: str) -> None:
        pass

    def serving(self) -> str | None:
        return None

    def release_once(self, sha: str, step: ReleaseStep, stop: threading.Event) -> str:
        step()
        return "ran"

    @contextlib.contextmanager
    def switching(self, budget: float, stop: threading.Event) -> Iterator[None]:
        yield


def open_fleet(settings: Settings) -> Fleet:
    """The fleet that LIVE_PULL_FLEET_URL names; its client is imported only then."""
    store = settings.fleet_url
    if store is None:
        return Solo()
    from entrypoint.config import fleet_store_kind

    identity = FleetIdentity.of(settings)
    if fleet_store_kind(store.read()) == "kubernetes":
        from entrypoint.config import SERVICE_ACCOUNT_DIR
        from entrypoint.errors import ConfigError
        from entrypoint.fleet.kubernetes import KubernetesFleet

        api = settings.kubernetes_api
        if api is None:  # the file's store changed to kubernetes since the settings' check
            raise ConfigError("LIVE_PULL_FLEET_URL: kubernetes needs to run in a pod")
        return KubernetesFleet(identity, api, service_account=SERVICE_ACCOUNT_DIR)
    from entrypoint.fleet.postgres import PostgresFleet

    return PostgresFleet(store, identity)


class FleetIdentity:
    """Who is asking: the fleet (what its replicas follow), this replica, and the
    limits that the fleet's settings give."""

    def __init__(
        self, fleet: str, replica: str, max_switching: int, release_timeout: float
    ) -> None:
        self.fleet = fleet
        self.replica = replica
        self.max_switching = max_switching
        self.release_timeout = release_timeout

    @classmethod
    def of(cls, settings: Settings) -> FleetIdentity:
        # The app's directory too: two apps of one repository are two fleets.
        fleet = f"{settings.repo_url.redacted()}#{settings.repo_ref or 'HEAD'}"
        if settings.app_dir:
            fleet += f":{settings.app_dir}"
        return cls(
            fleet, settings.fleet_replica, settings.fleet_max_switching, settings.release_timeout
        )


# A replica waiting for a peer's release step allows the holder's own release timeout
# and this much more.
WAIT_SLACK = 30.0


def refused_by(replica: str | None, reason: str) -> str:
    """A fleet's verdict, as every store words it."""
    return f"refused by replica {replica or '?'}: {reason}"


# A replica that has not reported for this long is shown as stale and left out of the
# fleet's revision (a pod gone, or cut off from the store).
STALE_SECONDS = 30.0
# ...and after this long it leaves the view altogether.
FORGET_AFTER = 3600.0


class ReplicaReport(NamedTuple):
    name: str
    revision: str | None
    state: str | None
    seen_seconds_ago: float


def live(reports: list[ReplicaReport]) -> list[ReplicaReport]:
    """The reports of replicas that are not stale."""
    return [report for report in reports if report.seen_seconds_ago <= STALE_SECONDS]


def fleet_revision(reports: list[ReplicaReport], leaving_out: str | None = None) -> str | None:
    """The revision most of the live replicas serve (`leaving_out` one of them)."""
    counts = collections.Counter(
        report.revision
        for report in live(reports)
        if report.revision and report.name != leaving_out
    )
    return counts.most_common(1)[0][0] if counts else None


def fleet_view(
    store: str, me: str, reports: list[ReplicaReport], error: str | None
) -> dict[str, Any]:
    """/status's `fleet`: which revision the fleet is on and what each replica reported."""
    serving = {report.revision for report in live(reports)}
    revision = fleet_revision(reports)
    return {
        "store": store,
        "replica": me,
        "revision": revision,
        "converged": serving == {revision} and revision is not None,
        "replicas": [
            {
                "name": report.name,
                "revision": report.revision,
                "state": report.state,
                "seen_seconds_ago": round(report.seen_seconds_ago, 1),
                "stale": report.seen_seconds_ago > STALE_SECONDS,
            }
            for report in reports
        ],
        "error": error,
    }


# -- what every store does alike ------------------------------------------------------


def one_line(error: object) -> str:
    """An error's message on one line (its type's name if it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


WAIT_STEP = 0.5  # how often a replica waiting for a peer's step or a place looks again
T = TypeVar("T")


def wait_for(
    attempt: Callable[[], T | None],
    budget: float,
    stop: threading.Event,
    *,
    waiting: str,
    overdue: str,
) -> T:
    """What `attempt` gives once it gives something (a peer's step done, a place
    free): `waiting` is said once, a TransientError(`overdue`) comes after `budget`."""
    deadline = time.monotonic() + budget
    said = False
    while True:
        outcome = attempt()
        if outcome is not None:
            return outcome
        if not said:
            log.info("%s", waiting)
            said = True
        if time.monotonic() > deadline:
            raise TransientError(overdue)
        if stop.wait(WAIT_STEP):
            raise RevisionError("the agent is stopping")


def waiting_for_release(sha: str, budget: float) -> tuple[str, str]:
    """What a replica waiting for a peer's release step says, then says when overdue."""
    return (
        f"release step running on another replica, waiting sha={sha[:12]}",
        f"the release step of {sha[:12]} did not finish on another replica within {budget:g}s",
    )


def waiting_for_place(places: int, budget: float) -> tuple[str, str]:
    return (
        f"waiting for a switching place held by other replicas of={places}",
        f"other replicas held every switching place for {budget:g}s"
        " (LIVE_PULL_FLEET_MAX_SWITCHING)",
    )


RETRY_FIRST = 1.0  # seconds before the store thread tries an unreachable store again,
RETRY_CAP = 30.0  # doubled after each failure up to this


class StoreThread:
    """The store's own thread: `serve` (listen to peers, keep the view) again and again
    for as long as the agent runs, with a backoff after a fault; the log says once that
    the store is unreachable and once that it is back, /status's `fleet` says why."""

    def __init__(self, store: str, replica: str) -> None:
        self.store = store
        self.replica = replica
        self.error: str | None = None
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, serve: Callable[[], None], board: StatusBoard) -> None:
        board.update(fleet=fleet_view(self.store, self.replica, [], None))
        self._thread = threading.Thread(
            target=self._run, args=(serve, board), name="fleet", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self.stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def reachable(self) -> None:
        if self.error is not None:
            log.info("fleet store reachable again")
        self.error = None

    def _run(self, serve: Callable[[], None], board: StatusBoard) -> None:
        backoff = Backoff(RETRY_FIRST, RETRY_CAP)
        while not self.stopped.is_set():
            try:
                serve()
            except Exception as exc:  # the thread must outlive any fault: retried
                if self.error is None:  # reached since the last failure: start again
                    backoff.reset()
                self._unreachable(one_line(exc))
                board.update(fleet=fleet_view(self.store, self.replica, [], self.error))
                self.stopped.wait(backoff.next_delay())

    def _unreachable(self, error: str) -> None:
        if error != self.error:
            log.warning("fleet store unreachable, retrying error=%s", error)
        self.error = error
