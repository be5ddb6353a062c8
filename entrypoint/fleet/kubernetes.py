"""The fleet kept in Kubernetes: Leases (coordination.k8s.io/v1) in the pod's namespace,
reached through the pod's service account.

- The release step runs under a Lease per (fleet, sha), `live-pull-release-<hash>`, held
  with holderIdentity = this replica and renewed by a thread while the step runs. A
  holder that dies stops renewing: a waiting replica takes the Lease once it has seen no
  renewal for leaseDurationSeconds (by its own clock; no clocks are compared across
  pods), finds no record, and runs the step again.
- The record is kept on that Lease: the annotation live-pull.dev/released-by, or
  live-pull.dev/refused-reason and refused-by (the first reason stays).
- The switching semaphore: LIVE_PULL_FLEET_MAX_SWITCHING Leases, held the same way.
- The fleet Lease, `live-pull-fleet-<hash>`, carries a push counter (live-pull.dev/push)
  and each replica's report (live-pull.dev/replica-<hash>: JSON), for /status.

leases.py makes the calls (every write a compare-and-swap on resourceVersion). Per
replica: the store thread GETs the fleet Lease every POLL_SECONDS and PUTs it every
REPORT_EVERY seconds (and once per push heard here); an update adds a few GETs and PUTs
of its release and switching Leases, and a PUT per third of a lease duration while it
holds one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from entrypoint.board import StatusBoard
from entrypoint.config import SERVICE_ACCOUNT_DIR
from entrypoint.errors import RevisionError, TransientError
from entrypoint.fleet.leases import (
    REQUEST_TIMEOUT,
    Change,
    Hold,
    Lease,
    LeaseApi,
    micro_time,
    notes_of,
    spec_of,
    writable_notes,
)
from entrypoint.fleet.store import (
    FORGET_AFTER,
    WAIT_SLACK,
    FleetIdentity,
    ReleaseStep,
    ReplicaReport,
    StoreThread,
    fleet_revision,
    fleet_view,
    refused_by,
    wait_for,
    waiting_for_place,
    waiting_for_release,
)

log = logging.getLogger(__name__)

MARK = "live-pull.dev/"
RELEASED_BY = MARK + "released-by"
RELEASED_AT = MARK + "released-at"
REFUSED_REASON = MARK + "refused-reason"
REFUSED_BY = MARK + "refused-by"
REFUSED_AT = MARK + "refused-at"
REVISION = MARK + "revision"
PUSH = MARK + "push"
REPORT = MARK + "replica-"
LEASE_SECONDS = 15  # a holder that stops renewing loses its Lease after this long
POLL_SECONDS = 0.5  # how often the store thread reads the fleet Lease (push notices)
REPORT_EVERY = 10.0  # seconds between reports of an unchanged replica


class KubernetesFleet:
    alone = False

    def __init__(
        self,
        me: FleetIdentity,
        api_url: str,
        *,
        service_account: Path = SERVICE_ACCOUNT_DIR,
        lease_seconds: int = LEASE_SECONDS,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.me = me
        self.fleet_id = digest(me.fleet)
        self._fleet_lease = f"live-pull-fleet-{self.fleet_id}"  # pushes and reports
        self._heard: str | None = None  # the last push notice read from the fleet Lease
        self._read_once = False
        labels = {"app.kubernetes.io/managed-by": "live-pull", MARK + "fleet": self.fleet_id}
        self.api = LeaseApi(api_url, service_account, labels)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self._observed: dict[str, tuple[object, float]] = {}  # a peer's Lease, first seen
        self._holds: set[Hold] = set()
        self._announced = threading.Event()
        self._thread = StoreThread("kubernetes", me.replica)  # peers and the view
        self._reported: tuple[object, ...] | None = None
        self._next_report = 0.0

    def close(self) -> None:
        """Stop the store thread; the Leases still held are given back."""
        self._thread.stop(self.poll_seconds + 2 * REQUEST_TIMEOUT)
        for hold in list(self._holds):
            with contextlib.suppress(TransientError):
                self._let_go(hold)

    # -- holding Leases -----------------------------------------------------------------

    def _take(self, lease: Lease) -> bool:
        """Hold the Lease if it is free, lapsed, or held under this replica's name (by an
        earlier life of it: a restarted container)."""
        spec = spec_of(lease)
        holder = spec.get("holderIdentity")
        if holder and holder != self.me.replica and not self._lapsed(lease):
            return False
        now = micro_time()
        if holder != self.me.replica:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(
            holderIdentity=self.me.replica,
            leaseDurationSeconds=self.lease_seconds,
            acquireTime=now,
            renewTime=now,
        )
        return True

    def _lapsed(self, lease: Lease) -> bool:
        """A peer's Lease unchanged for its duration, as this replica has watched it."""
        spec, name = spec_of(lease), lease["metadata"]["name"]
        seen = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"))
        now = time.monotonic()
        last, since = self._observed.get(name, (None, now))
        if last != seen:
            self._observed[name] = (seen, now)
            return False
        return now - since > float(spec.get("leaseDurationSeconds") or self.lease_seconds)

    def _hold(self, name: str) -> Hold:
        self._observed.pop(name, None)
        hold = Hold(self.api, name, self.me.replica, self.lease_seconds)
        self._holds.add(hold)
        return hold

    def _let_go(self, hold: Hold, record: Change | None = None) -> None:
        self._holds.discard(hold)
        hold.release(record)

    # -- verdicts -----------------------------------------------------------------------

    def _release_lease(self, sha: str) -> str:
        return f"live-pull-release-{digest(self.me.fleet, 'release', sha)}"

    def verdict(self, sha: str) -> str | None:
        try:
            lease = self.api.get(self._release_lease(sha))
        except TransientError as exc:
            log.warning("fleet verdict unknown, deciding alone error=%s", exc)
            return None
        notes = notes_of(lease)
        reason = notes.get(REFUSED_REASON)
        return None if reason is None else refused_by(notes.get(REFUSED_BY), reason)

    def serving(self) -> str | None:
        try:
            lease = self.api.get(self._fleet_lease)
        except TransientError as exc:
            log.warning("the fleet's revision unknown error=%s", exc)
            return None
        return fleet_revision(reports(lease), leaving_out=self.me.replica)

    def refuse(self, sha: str, reason: str) -> None:
        """The first reason stays: replicas refusing after it only agree."""
        try:
            self.api.modify(self._release_lease(sha), self._refusal(sha, reason))
        except TransientError as exc:
            log.warning("fleet not told of the refused revision sha=%s error=%s", sha[:12], exc)

    def _refusal(self, sha: str, reason: str) -> Change:
        def record(lease: Lease) -> bool:
            notes = writable_notes(lease)
            if REFUSED_REASON in notes:
                return False
            notes.update(
                {
                    REVISION: sha,
                    REFUSED_REASON: reason[:2000],
                    REFUSED_BY: self.me.replica,
                    REFUSED_AT: wall_time(),
                }
            )
            return True

        return record

    # -- the release step ---------------------------------------------------------------

    def release_once(self, sha: str, step: ReleaseStep, stop: threading.Event) -> str:
        name = self._release_lease(sha)
        try:
            return self._release_or_wait(sha, name, step, stop)
        finally:
            self._observed.pop(name, None)  # what was watched of its holder

    def _release_or_wait(
        self, sha: str, name: str, step: ReleaseStep, stop: threading.Event
    ) -> str:
        def take(lease: Lease) -> bool:
            notes = writable_notes(lease)
            if RELEASED_BY in notes or REFUSED_REASON in notes:
                return False
            notes[REVISION] = sha
            return self._take(lease)

        def attempt() -> str | None:
            lease, taken = self.api.modify(name, take)
            notes = notes_of(lease)
            if REFUSED_REASON in notes:
                raise RevisionError(refused_by(notes.get(REFUSED_BY), notes[REFUSED_REASON]))
            if RELEASED_BY in notes:
                return f"done by {notes[RELEASED_BY]}"
            return self._run_held(sha, name, step, stop) if taken else None

        budget = self.me.release_timeout + WAIT_SLACK
        waiting, overdue = waiting_for_release(sha, budget)
        return wait_for(attempt, budget, stop, waiting=waiting, overdue=overdue)

    def _run_held(self, sha: str, name: str, step: ReleaseStep, stop: threading.Event) -> str:
        hold = self._hold(name)
        try:
            step()
        except BaseException as exc:
            # A refusal is recorded as the Lease is let go: no waiting peer runs it again.
            # A step killed by a stop says nothing of the revision.
            failed = isinstance(exc, RevisionError) and not stop.is_set()
            refused = self._refusal(sha, str(exc)) if failed else None
            with contextlib.suppress(TransientError):
                self._let_go(hold, refused)
            raise

        def record(lease: Lease) -> bool:
            notes = writable_notes(lease)
            notes.update({RELEASED_BY: self.me.replica, RELEASED_AT: wall_time()})
            return True

        self._let_go(hold, record)
        return "ran"

    # -- switching ----------------------------------------------------------------------

    @contextlib.contextmanager
    def switching(self, budget: float, stop: threading.Event) -> Iterator[None]:
        places = [f"live-pull-switch-{self.fleet_id}-{n}" for n in range(self.me.max_switching)]
        hold = self._take_place(places, budget, stop)
        log.info("fleet switching place taken of=%d", len(places))
        try:
            yield
        finally:
            log.info("fleet switching place given back")  # said first: logs stay in order
            with contextlib.suppress(TransientError):
                self._let_go(hold)

    def _take_place(self, places: list[str], budget: float, stop: threading.Event) -> Hold:
        def attempt() -> Hold | None:
            for name in places:
                if self.api.modify(name, self._take)[1]:
                    return self._hold(name)
            return None

        waiting, overdue = waiting_for_place(len(places), budget)
        return wait_for(attempt, budget, stop, waiting=waiting, overdue=overdue)

    # -- peers: the store's thread ------------------------------------------------------

    def announce(self) -> None:
        self._announced.set()

    def start(self, on_push: Callable[[], None], board: StatusBoard) -> None:
        self._thread.start(lambda: self._serve_peers(on_push, board), board)

    def _serve_peers(self, on_push: Callable[[], None], board: StatusBoard) -> None:
        """Read the fleet Lease until stopped (StoreThread backs off after a fault)."""
        name = self._fleet_lease
        while not self._thread.stopped.is_set():
            lease = self._read_or_write(name, board)
            self._thread.reachable()
            push = notes_of(lease).get(PUSH)
            # The first read only learns where the counter is; one after an outage hears
            # what was pushed meanwhile.
            if push != self._heard and self._read_once and from_peer(push, self.me.replica):
                log.info("push heard from a peer, checking")
                on_push()
            self._heard, self._read_once = push, True
            board.update(fleet=fleet_view("kubernetes", self.me.replica, reports(lease), None))
            self._thread.stopped.wait(self.poll_seconds)

    def _read_or_write(self, name: str, board: StatusBoard) -> Lease | None:
        """The fleet Lease, with this replica's push notice and report written first
        when there is one to write."""
        snapshot = board.snapshot()
        report = (snapshot["revision"], snapshot["state"])
        due = report != self._reported or time.monotonic() >= self._next_report
        push = self._announced.is_set()
        if not (due or push):
            return self.api.get(name)
        self._announced.clear()

        def write(lease: Lease) -> bool:
            notes = writable_notes(lease)
            if push:
                notes[PUSH] = next_push(notes.get(PUSH), self.me.replica)
            if due:
                write_report(notes, self.me.replica, report)
            return True

        try:
            lease, _ = self.api.modify(name, write)
        except TransientError:
            if push:
                self._announced.set()  # told at the next attempt
            raise
        if due:
            self._reported, self._next_report = report, time.monotonic() + REPORT_EVERY
        return lease


# -- the annotations ------------------------------------------------------------------


def next_push(previous: str | None, me: str) -> str:
    """The push notice: a counter (so that every push is a change), who, and when."""
    count = 0
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        count = int(json.loads(previous or "{}").get("count", 0))
    return json.dumps({"count": count + 1, "from": me, "at": wall_time()})


def from_peer(push: str | None, me: str) -> bool:
    try:
        notice = json.loads(push or "")
    except ValueError:
        return False
    return isinstance(notice, dict) and notice.get("from") != me


def write_report(notes: dict[str, str], me: str, report: tuple[str | None, str | None]) -> None:
    """This replica's report, in place; replicas gone for FORGET_AFTER are dropped."""
    now = time.time()
    for key, value in list(notes.items()):
        if key.startswith(REPORT) and now - _seen(value) > FORGET_AFTER:
            del notes[key]
    revision, state = report
    notes[REPORT + digest(me)[:12]] = json.dumps(
        {"name": me, "revision": revision, "state": state, "seen": round(now, 3)}
    )


def reports(lease: Lease | None) -> list[ReplicaReport]:
    found = []
    now = time.time()
    for key, value in notes_of(lease).items():
        if not key.startswith(REPORT):
            continue
        with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
            report = json.loads(value)
            found.append(
                ReplicaReport(
                    str(report["name"]),
                    report.get("revision"),
                    report.get("state"),
                    max(0.0, now - float(report["seen"])),
                )
            )
    return sorted(found, key=lambda report: report.name)


def _seen(value: str) -> float:
    try:
        return float(json.loads(value)["seen"])
    except (ValueError, TypeError, KeyError):
        return 0.0


def digest(*parts: str) -> str:
    """16 hex digits naming these parts (the same in every replica)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def wall_time() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
