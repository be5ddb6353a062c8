"""Whether an update waits: an operator's pause, or outside LIVE_PULL_UPDATE_WINDOW.

Only updates wait. The first start (nothing serving yet), rollbacks (manual and after a
crash) and `sync --now` are never held; the updater asks here only for an update.
What waits is shown in /status (`waiting`), and logged once per revision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from entrypoint.state import Paused
from entrypoint.windows import UpdateWindows

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
PAUSE = "pause"
WINDOW = "update window"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Held:
    by: str  # PAUSE or WINDOW
    next_window: datetime | None  # when a window opens next (None: open, or none set)


class UpdateGate:
    def __init__(self, windows: UpdateWindows | None, clock: Clock = utc_now) -> None:
        self.windows = windows
        self.clock = clock
        self._noted: tuple[str, str, str] | None = None  # (sha, by, since) last logged

    def held(self, paused: Paused | None) -> Held | None:
        """Why an update must wait now, or None when it may go live."""
        moment = self.clock()
        if self.windows is None:
            return Held(PAUSE, None) if paused is not None else None
        next_window = self.windows.next_opening(moment)
        if paused is not None:
            return Held(PAUSE, None if next_window == moment else next_window)
        return None if next_window == moment else Held(WINDOW, next_window)

    def waiting(self, sha: str, ref: str | None, held: Held) -> dict[str, Any]:
        """What /status shows of the revision that waits; logged when it changes."""
        since = self._since(sha, held.by)
        shown = held.next_window.isoformat(timespec="seconds") if held.next_window else None
        return {"sha": sha, "ref": ref, "held_by": held.by, "since": since, "next_window": shown}

    def _since(self, sha: str, by: str) -> str:
        if self._noted is None or self._noted[:2] != (sha, by):
            since = self.clock().astimezone(UTC).isoformat(timespec="seconds")
            self._noted = (sha, by, since)
            log.info("update held sha=%s by=%s", sha[:12], by.replace(" ", "-"))
        return self._noted[2]
