"""The one small interface every way of switching revisions has.

The update sequence (updater.go_live) calls, in this order and without knowing which
strategy it holds: withdraw_fallen (urgent switches only), start_beside, prove, promote
(any failure: abandon), then drain; let_go once the new revision baked.

- stop_then_start.py: LIVE_PULL_LISTEN=off, or a revision without `web`.
- start_first.py: the web handed the shared socket (SocketHandoff), or served behind
  live-pull's proxy (Proxied); doors.py says which a command gets.

picking.py chooses one for each revision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from entrypoint.supervisor_config import ProgramSpec


@dataclass(frozen=True)
class Lineup:
    """One revision's programs, ready for supervisord: `web` (if any) and the others."""

    sha: str
    web: ProgramSpec | None
    workers: list[ProgramSpec] = field(default_factory=list)

    @property
    def programs(self) -> list[ProgramSpec]:
        return [*([self.web] if self.web else []), *self.workers]

    @property
    def worker_names(self) -> list[str]:
        return [spec.name for spec in self.workers]


class Switch(Protocol):
    """How `new` replaces `old` (None at the first start)."""

    def withdraw_fallen(self) -> None:
        """Before an urgent switch (what serves fell over): a web of it that fell, and
        would take connections to drop them if it fell again, stops first."""

    def start_beside(self, new: Lineup, old: Lineup | None) -> None:
        """Start what `new` runs, as far as can be done while `old` serves."""

    def prove(self, new: Lineup) -> None:
        """Raise (AppFailed, SupervisorError, HealthCheckFailed) unless `new` is sound."""

    def promote(self, new: Lineup, bake_seconds: float) -> None:
        """`new` takes the traffic. For `bake_seconds` (its bake) it is on probation: if
        its web exits, the previous release goes back, so a start of it again is held
        back where it would take connections (switching/launch.py)."""

    def drain(self, old: Lineup | None, keep_ready: bool) -> None:
        """What is left of `old` finishes its requests and stops; with `keep_ready` (the
        new one bakes), it may instead stand by, ready to serve again, until let_go."""

    def let_go(self) -> None:
        """What stood by (see drain) stops."""

    def standing_by(self) -> str | None:
        """The revision standing by (see drain), if one does."""

    def abandon(self, new: Lineup, old: Lineup | None) -> str:
        """Undo a failed start: stop what was started for `new`, keep or bring back `old`.
        Never raises; returns what to add to the failure's message if `old` could not
        be brought back."""

    def watched(self, lineup: Lineup) -> set[str]:
        """The processes of the running `lineup` whose FATAL means the app cannot stay up."""

    def restarted(self, lineup: Lineup) -> list[str]:
        """The processes that serve the running `lineup`, in the order a quick start of
        the next agent starts them (quickstart.py); what stands by is not among them."""
