"""What happened, once per outcome: the event model and the recorder that hands each
event to its sinks (history.py, metrics.py, notify.py).

The updater calls the Recorder as an update or rollback goes: `checked` after asking the
remote, `begin` when a new revision is seen (or a rollback starts), `fetched`, `installed`
and `released` as its steps go, then `succeeded` or `failed` once. Other parts of the
agent record their own events in one call, e.g. a pause:

    recorder.record(Event(kind="pause", reason="paused by operator"))

A sink that fails is logged and skipped: recording never breaks an update.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from entrypoint.board import bounded

log = logging.getLogger(__name__)

# kind: update, rollback (and pause, resume: recorded by whoever pauses)
# trigger: start, poll, sync, webhook, signal, peer (updates); rollback, crash (rollbacks)
SUCCEEDED = "succeeded"
FAILED = "failed"
ROLLED_BACK = "rolled_back"  # a rollback brought an earlier release back
OUTCOMES = (SUCCEEDED, FAILED, ROLLED_BACK)
CHECK_RESULTS = ("new", "unchanged", "skipped", "error")
SUBJECTS_KEPT = 64


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str | None = None
    author: str | None = None


# What the repository says of a commit (subject, author), if it can.
Describe = Callable[[str], Commit | None]


@dataclass(frozen=True)
class Event:
    """One entry of the history; every field but `kind` may be left out."""

    kind: str
    outcome: str | None = None  # succeeded, failed, rolled_back; None for pause, resume
    reason: str | None = None
    trigger: str | None = None
    from_revision: str | None = None
    from_subject: str | None = None
    to_revision: str | None = None
    to_subject: str | None = None
    author: str | None = None  # of to_revision
    deps_digest: str | None = None
    installed: bool | None = None  # an environment was built for it
    install_seconds: float | None = None
    release_seconds: float | None = None  # the release step (Procfile `release`)
    duration_seconds: float | None = None  # from the revision seen to it serving (or failing)
    at: str = field(default_factory=now_iso)


class Sink:
    """Where events go; each sink overrides what it cares about."""

    def record(self, event: Event) -> None:
        """An event is over (an outcome, a pause)."""

    def starting(self, event: Event) -> None:
        """An update begins: its new revision is fetched (no outcome yet)."""

    def checked(self, result: str) -> None:
        """The remote was asked: new, unchanged, skipped (known to fail) or error."""

    def installed(self, seconds: float) -> None:
        """A dependency environment was built."""


@dataclass
class _Attempt:
    kind: str
    trigger: str
    from_revision: str | None
    to_revision: str | None
    reason: str | None
    seen: float = field(default_factory=time.monotonic)
    install_seconds: float | None = None
    release_seconds: float | None = None


class Recorder:
    """Called by the control loop's thread only; fans every call out to the sinks."""

    def __init__(self, sinks: Iterable[Sink] = (), describe: Describe | None = None) -> None:
        self.sinks = list(sinks)
        self._describe = describe or (lambda sha: None)
        self._commits: dict[str, Commit] = {}
        self._attempt: _Attempt | None = None

    # -- the update's steps -------------------------------------------------------------

    def checked(self, result: str) -> None:
        self._fan_out("checked", result)

    def begin(
        self,
        kind: str,
        trigger: str,
        from_revision: str | None,
        to_revision: str | None,
        reason: str | None = None,
    ) -> None:
        """A new revision was seen (or a rollback asked for): the clock starts."""
        self._attempt = _Attempt(kind, trigger, from_revision, to_revision, reason)

    def fetched(self, sha: str) -> None:
        """The update's revision is here (its subject can be told): it is starting."""
        attempt = self._attempt
        if attempt is not None:
            attempt.to_revision = sha
            self._fan_out("starting", self._event(attempt, None, None, None))

    def installed(self, seconds: float | None) -> None:
        seconds = seconds or 0.0
        if self._attempt is not None:
            self._attempt.install_seconds = seconds
        self._fan_out("installed", seconds)

    def released(self, seconds: float) -> None:
        if self._attempt is not None:
            self._attempt.release_seconds = round(seconds, 3)

    def succeeded(self, deps_digest: str | None) -> None:
        attempt = self._attempt
        if attempt is not None:
            outcome = ROLLED_BACK if attempt.kind == "rollback" else SUCCEEDED
            self._finish(attempt, outcome, attempt.reason, deps_digest)

    def failed(self, error: str) -> None:
        attempt = self._attempt
        if attempt is not None:
            reason = f"{attempt.reason}; {error}" if attempt.reason else error
            self._finish(attempt, FAILED, reason, None)

    def refused(self, kind: str, trigger: str, from_revision: str | None, error: str) -> None:
        """An attempt that failed before it had a target (no release to roll back to)."""
        self.begin(kind, trigger, from_revision, None)
        self.failed(error)

    # -- events from elsewhere ------------------------------------------------------------

    def record(self, event: Event) -> None:
        self._fan_out("record", event)

    # -- inside -------------------------------------------------------------------------

    def _finish(
        self, attempt: _Attempt, outcome: str, reason: str | None, digest: str | None
    ) -> None:
        self._attempt = None
        self.record(self._event(attempt, outcome, reason, digest))

    def _event(
        self, attempt: _Attempt, outcome: str | None, reason: str | None, digest: str | None
    ) -> Event:
        to = self._commit(attempt.to_revision)
        ended = outcome is not None
        return Event(
            kind=attempt.kind,
            outcome=outcome,
            reason=bounded(reason),
            trigger=attempt.trigger,
            from_revision=attempt.from_revision,
            from_subject=self._commit(attempt.from_revision).subject,
            to_revision=attempt.to_revision,
            to_subject=to.subject,
            author=to.author,
            deps_digest=digest,
            installed=attempt.install_seconds is not None if ended else None,
            install_seconds=attempt.install_seconds,
            release_seconds=attempt.release_seconds,
            duration_seconds=round(time.monotonic() - attempt.seen, 3) if ended else None,
        )

    def _commit(self, sha: str | None) -> Commit:
        """Subject and author, asked of the repository once per commit."""
        if sha is None:
            return Commit("")
        known = self._commits.get(sha)
        if known is not None:
            return known
        try:
            known = self._describe(sha)
        except Exception as exc:  # a subject is a nicety: never a reason to fail
            log.debug("commit not described sha=%s error=%s", sha[:12], exc)
        if known is None:  # not fetched yet, perhaps: asked again next time
            return Commit(sha)
        if len(self._commits) >= SUBJECTS_KEPT:
            self._commits.pop(next(iter(self._commits)))
        self._commits[sha] = known
        return known

    def _fan_out(self, method: str, argument: object) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, method)(argument)
            except Exception as exc:
                log.warning(
                    "recording failed sink=%s call=%s error=%s", type(sink).__name__, method, exc
                )
