"""The fleet kept in PostgreSQL: advisory locks, two small tables, LISTEN/NOTIFY.

- The release step runs under a session advisory lock keyed by (fleet, sha): when the
  replica holding it dies, its connection ends and PostgreSQL frees the lock, so a
  waiting replica takes it, finds no record, and runs the step again.
- `live_pull_revisions` records per (fleet, sha) that the step is done, or why the
  revision was refused; `live_pull_replicas` what each replica serves, for /status.
- The switching semaphore is LIVE_PULL_FLEET_MAX_SWITCHING advisory locks, tried in turn.
- A push heard by one replica is a NOTIFY on one channel; every replica LISTENs.

Two connections per replica: the control loop's (locks, records) and the store
thread's (LISTEN, NOTIFY, the view). psycopg is imported here only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from entrypoint.auth import Secret
from entrypoint.board import StatusBoard
from entrypoint.config import url_secrets
from entrypoint.errors import RevisionError, TransientError
from entrypoint.fleet.store import (
    FORGET_AFTER,
    STALE_SECONDS,
    WAIT_SLACK,
    FleetIdentity,
    ReleaseStep,
    ReplicaReport,
    StoreThread,
    fleet_view,
    one_line,
    refused_by,
    wait_for,
    waiting_for_place,
    waiting_for_release,
)

log = logging.getLogger(__name__)

CHANNEL = "live_pull"
SCHEMA = """
CREATE TABLE IF NOT EXISTS live_pull_revisions (
    fleet text NOT NULL,
    sha text NOT NULL,
    released_at timestamptz,
    released_by text,
    refused_reason text,
    refused_by text,
    refused_at timestamptz,
    PRIMARY KEY (fleet, sha)
);
CREATE TABLE IF NOT EXISTS live_pull_replicas (
    fleet text NOT NULL,
    replica text NOT NULL,
    revision text,
    state text,
    seen_at timestamptz NOT NULL,
    PRIMARY KEY (fleet, replica)
);
"""
CONNECT_TIMEOUT = 5  # seconds; a store that does not answer is a transient error
# A replica gone with its machine (no FIN) frees its locks within about 25 s, not the
# kernel's default two hours: libpq's keepalives, and the server's for its side.
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
SERVER_KEEPALIVES = (
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
)
IDLE_SESSION_TIMEOUT_SINCE = 140000  # PostgreSQL 14 ends idle sessions if so configured
STATEMENT_TIMEOUT_MS = 10_000
LISTEN_STEP = 0.2  # how long the store thread waits for a notice before other work
VIEW_EVERY = 2.0  # seconds between reports of this replica (and reads of the others')
KEEP_RECORDS = "90 days"  # a revision's record (done, refused) is kept this long


def lock_key(*parts: str) -> int:
    """A 64-bit advisory lock key for these names (the same in every replica)."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresFleet:
    alone = False

    def __init__(self, url: Secret, me: FleetIdentity) -> None:
        self.url = url  # read at every connection: a rotated secret file is taken up
        self.me = me
        self.fleet_id = hashlib.sha256(me.fleet.encode()).hexdigest()[:16]
        self._control: psycopg.Connection[Any] | None = None  # the control loop's only
        # A push to tell the peers of: one pending notice says it all, however many came.
        self._push_pending = threading.Event()
        self._thread = StoreThread("postgresql", me.replica)  # peers and the view
        self._listening = threading.Event()  # peers' notices reach this replica now
        self._schema_ready = False

    # -- connections --------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        url = self.url.read().strip()
        try:
            conn = psycopg.connect(
                url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                application_name=f"live-pull {self.me.replica}"[:63],
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} {SERVER_KEEPALIVES}",
                **KEEPALIVES,
            )
        except psycopg.Error as exc:  # libpq may quote the URL, password and all
            raise psycopg.OperationalError(masked(one_line(exc), url)) from None
        if conn.info.server_version >= IDLE_SESSION_TIMEOUT_SINCE:
            # A connection idle through a long release step holds its lock: never ended.
            conn.execute("SET idle_session_timeout = 0")
        if not self._schema_ready:
            self._ensure_schema(conn)
        return conn

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        """The tables, created once by the first replica (and not asked of a database
        user who may use them but not create them, once they are there)."""
        row = conn.execute(
            "SELECT to_regclass('live_pull_revisions') IS NOT NULL"
            " AND to_regclass('live_pull_replicas') IS NOT NULL"
        ).fetchone()
        if not (row and row[0]):
            with conn.transaction():  # replicas starting together create it once
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("live-pull schema"),))
                conn.execute(SCHEMA)
        self._schema_ready = True

    @contextlib.contextmanager
    def _store(self) -> Iterator[psycopg.Connection[Any]]:
        """The control loop's connection, made again after it failed."""
        try:
            if self._control is None or self._control.closed or self._control.broken:
                self._control = self._connect()
            yield self._control
        except psycopg.Error as exc:
            self._drop_control()
            raise TransientError(f"fleet store: {one_line(exc)}") from exc

    def _drop_control(self) -> None:
        control, self._control = self._control, None
        if control is not None:
            with contextlib.suppress(psycopg.Error):
                control.close()

    def close(self) -> None:
        self._thread.stop(2 * LISTEN_STEP + CONNECT_TIMEOUT)
        self._drop_control()

    # -- verdicts -----------------------------------------------------------------------

    def verdict(self, sha: str) -> str | None:
        try:
            with self._store() as db:
                row = db.execute(
                    "SELECT refused_by, refused_reason FROM live_pull_revisions"
                    " WHERE fleet = %s AND sha = %s AND refused_reason IS NOT NULL",
                    (self.me.fleet, sha),
                ).fetchone()
        except TransientError as exc:
            log.warning("fleet verdict unknown, deciding alone error=%s", exc)
            return None
        return None if row is None else refused_by(row[0], row[1])

    def refuse(self, sha: str, reason: str) -> None:
        try:
            with self._store() as db:
                self._record_refusal(db, sha, reason)
        except TransientError as exc:
            log.warning("fleet not told of the refused revision sha=%s error=%s", sha[:12], exc)

    def _record_refusal(self, db: psycopg.Connection[Any], sha: str, reason: str) -> None:
        """The first reason stays: replicas refusing after it only agree."""
        db.execute(
            "INSERT INTO live_pull_revisions (fleet, sha, refused_reason, refused_by,"
            " refused_at) VALUES (%s, %s, %s, %s, now())"
            " ON CONFLICT (fleet, sha) DO UPDATE SET"
            " refused_reason = EXCLUDED.refused_reason,"
            " refused_by = EXCLUDED.refused_by, refused_at = EXCLUDED.refused_at"
            " WHERE live_pull_revisions.refused_reason IS NULL",
            (self.me.fleet, sha, reason[:2000], self.me.replica),
        )

    def serving(self) -> str | None:
        try:
            with self._store() as db:
                row = db.execute(
                    "SELECT revision FROM live_pull_replicas WHERE fleet = %s"
                    " AND replica <> %s AND revision IS NOT NULL"
                    " AND seen_at > now() - make_interval(secs => %s)"
                    " GROUP BY revision ORDER BY count(*) DESC, max(seen_at) DESC LIMIT 1",
                    (self.me.fleet, self.me.replica, STALE_SECONDS),
                ).fetchone()
        except TransientError as exc:
            log.warning("the fleet's revision unknown error=%s", exc)
            return None
        return None if row is None else str(row[0])

    # -- the release step ---------------------------------------------------------------

    def release_once(self, sha: str, step: ReleaseStep, stop: threading.Event) -> str:
        key = lock_key(self.me.fleet, "release", sha)

        def attempt() -> str | None:
            with self._store() as db:
                done_by = self._release_record(db, sha)
                if done_by is not None:
                    return f"done by {done_by}"
                if not self._try_lock(db, key):
                    return None
                try:
                    return self._release_locked(db, sha, step, stop)
                finally:
                    self._unlock(db, key)

        budget = self.me.release_timeout + WAIT_SLACK
        waiting, overdue = waiting_for_release(sha, budget)
        return wait_for(attempt, budget, stop, waiting=waiting, overdue=overdue)

    def _release_locked(
        self, db: psycopg.Connection[Any], sha: str, step: ReleaseStep, stop: threading.Event
    ) -> str:
        """Holding the lock: a peer may have finished just before we took it."""
        done_by = self._release_record(db, sha)
        if done_by is not None:
            return f"done by {done_by}"
        try:
            step()
        except RevisionError as exc:
            if not stop.is_set():  # a step killed by a stop says nothing of the revision
                self._refuse_holding_the_lock(db, sha, str(exc))
            raise
        db.execute(
            "INSERT INTO live_pull_revisions (fleet, sha, released_at, released_by)"
            " VALUES (%s, %s, now(), %s) ON CONFLICT (fleet, sha) DO UPDATE SET"
            " released_at = EXCLUDED.released_at, released_by = EXCLUDED.released_by",
            (self.me.fleet, sha, self.me.replica),
        )
        db.execute(
            "DELETE FROM live_pull_revisions WHERE fleet = %s"
            f" AND coalesce(released_at, refused_at) < now() - interval '{KEEP_RECORDS}'",
            (self.me.fleet,),
        )
        return "ran"

    def _refuse_holding_the_lock(self, db: psycopg.Connection[Any], sha: str, reason: str) -> None:
        """Recorded before the lock is given back, so no waiting replica runs it again."""
        with contextlib.suppress(psycopg.Error):
            self._record_refusal(db, sha, reason)

    def _release_record(self, db: psycopg.Connection[Any], sha: str) -> str | None:
        """Who ran the step, if anyone did; RevisionError if the fleet refused it."""
        row = db.execute(
            "SELECT released_by, refused_by, refused_reason FROM live_pull_revisions"
            " WHERE fleet = %s AND sha = %s",
            (self.me.fleet, sha),
        ).fetchone()
        if row is None:
            return None
        if row[2] is not None:
            raise RevisionError(refused_by(row[1], row[2]))
        return str(row[0]) if row[0] is not None else None

    # -- switching ----------------------------------------------------------------------

    @contextlib.contextmanager
    def switching(self, budget: float, stop: threading.Event) -> Iterator[None]:
        places = [
            lock_key(self.me.fleet, "switching", str(n)) for n in range(self.me.max_switching)
        ]
        key = self._take_place(places, budget, stop)
        log.info("fleet switching place taken of=%d", len(places))
        try:
            yield
        finally:
            log.info("fleet switching place given back")  # said first: logs stay in order
            with contextlib.suppress(TransientError), self._store() as db:
                self._unlock(db, key)

    def _take_place(self, places: list[int], budget: float, stop: threading.Event) -> int:
        def attempt() -> int | None:
            with self._store() as db:
                return next((key for key in places if self._try_lock(db, key)), None)

        waiting, overdue = waiting_for_place(len(places), budget)
        return wait_for(attempt, budget, stop, waiting=waiting, overdue=overdue)

    @staticmethod
    def _try_lock(db: psycopg.Connection[Any], key: int) -> bool:
        row = db.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        return bool(row and row[0])

    def _unlock(self, db: psycopg.Connection[Any], key: int) -> None:
        """A broken connection has freed its locks already; one that failed to free it
        is ended, which frees it."""
        try:
            db.execute("SELECT pg_advisory_unlock(%s)", (key,))
        except psycopg.Error:
            self._drop_control()

    # -- peers: the store's thread ---------------------------------------------------------

    def announce(self) -> None:
        self._push_pending.set()

    def start(self, on_push: Callable[[], None], board: StatusBoard) -> None:
        self._thread.start(lambda: self._listen(on_push, board), board)

    def _listen(self, on_push: Callable[[], None], board: StatusBoard) -> None:
        """One connection's life: LISTEN, then serve the peers until it fails."""
        try:
            with self._connect() as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                self._listening.set()
                self._thread.reachable()
                self._serve_peers(conn, on_push, board)
        finally:
            self._listening.clear()

    def _serve_peers(
        self, conn: psycopg.Connection[Any], on_push: Callable[[], None], board: StatusBoard
    ) -> None:
        next_view = 0.0
        while not self._thread.stopped.is_set():
            self._send_notice(conn)
            for notice in conn.notifies(timeout=LISTEN_STEP):
                if self._from_peer(notice.payload):
                    log.info("push heard from a peer, checking")
                    on_push()
            if time.monotonic() >= next_view:
                board.update(fleet=self._report_and_view(conn, board))
                next_view = time.monotonic() + VIEW_EVERY

    def _send_notice(self, conn: psycopg.Connection[Any]) -> None:
        if self._push_pending.is_set():
            self._push_pending.clear()
            payload = json.dumps({"fleet": self.fleet_id, "from": self.me.replica})
            try:
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            except psycopg.Error:
                self._push_pending.set()  # sent once the store is back
                raise

    def _from_peer(self, payload: str) -> bool:
        try:
            notice = json.loads(payload)
        except ValueError:
            return False
        return (
            isinstance(notice, dict)
            and notice.get("fleet") == self.fleet_id
            and notice.get("from") != self.me.replica
        )

    def _report_and_view(self, conn: psycopg.Connection[Any], board: StatusBoard) -> dict[str, Any]:
        """Say what this replica serves; read what the others said."""
        snapshot = board.snapshot()
        conn.execute(
            "INSERT INTO live_pull_replicas (fleet, replica, revision, state, seen_at)"
            " VALUES (%s, %s, %s, %s, now()) ON CONFLICT (fleet, replica) DO UPDATE SET"
            " revision = EXCLUDED.revision, state = EXCLUDED.state, seen_at = now()",
            (self.me.fleet, self.me.replica, snapshot["revision"], snapshot["state"]),
        )
        rows = conn.execute(
            "SELECT replica, revision, state, extract(epoch FROM now() - seen_at)::float8"
            " FROM live_pull_replicas WHERE fleet = %s"
            " AND seen_at > now() - make_interval(secs => %s) ORDER BY replica",
            (self.me.fleet, FORGET_AFTER),
        ).fetchall()
        reports = [ReplicaReport(str(r[0]), r[1], r[2], float(r[3])) for r in rows]
        return fleet_view("postgresql", self.me.replica, reports, None)


def masked(text: str, url: str) -> str:
    """`text` without the URL or its password in it: libpq quotes what it cannot parse
    (the whole URL, or the password's token as written)."""
    secrets = set(url_secrets(url))
    with contextlib.suppress(psycopg.Error):
        secrets.add(str(conninfo_to_dict(url).get("password") or ""))
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
