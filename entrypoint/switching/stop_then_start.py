"""Stop-then-start: supervisord runs the new revision's programs in place of the old
ones, so the web is down between the two (LIVE_PULL_LISTEN=off, or no web at all).
A revision that fails to come up is replaced by the old one again."""

from __future__ import annotations

import logging
import threading

from entrypoint.board import StatusBoard
from entrypoint.health import wait_healthy
from entrypoint.supervisor import Supervisor
from entrypoint.switching.strategy import Lineup

log = logging.getLogger(__name__)


class StopThenStart:
    def __init__(
        self,
        supervisor: Supervisor,
        board: StatusBoard,
        health_url: str | None,
        health_timeout: float,
        stopping: threading.Event,
    ) -> None:
        self.supervisor = supervisor
        self.board = board
        self.health_url = health_url  # LIVE_PULL_HEALTHCHECK_PATH on PORT, if set
        self.health_timeout = health_timeout
        self.stopping = stopping

    def withdraw_fallen(self) -> None:
        """The start stops the old programs anyway."""

    def start_beside(self, new: Lineup, old: Lineup | None) -> None:
        """Nothing runs beside: the old programs stop as the new ones start."""
        self.board.serving(False)
        names = [spec.name for spec in new.programs]
        unchanged = self.supervisor.apply(new.programs)
        self.supervisor.start_stopped(unchanged & set(names))
        self.supervisor.wait_running(names)

    def prove(self, new: Lineup) -> None:
        """Only the health path, when one is configured (a web here may not speak HTTP)."""
        if self.health_url is not None and new.web is not None:
            wait_healthy(self.health_url, self.health_timeout)

    def promote(self, new: Lineup, bake_seconds: float) -> None:
        """It serves already (and its programs are restarted by supervisord if they exit:
        they hold no shared socket that a restart could take connections on)."""

    def drain(self, old: Lineup | None, keep_ready: bool) -> None:
        """It stopped already."""

    def let_go(self) -> None:
        """Nothing stands by."""

    def standing_by(self) -> str | None:
        return None

    def abandon(self, new: Lineup, old: Lineup | None) -> str:
        if old is None or self.stopping.is_set():
            return ""
        log.error("revision failed to start, restoring sha=%s", old.sha[:12])
        try:
            self.start_beside(old, None)
            self.prove(old)
        except Exception as exc:
            log.error("restoring the previous revision failed error=%s", exc)
            return f"; restoring {old.sha[:12]} failed too: {exc}"
        self.board.serving(True)
        return ""

    def watched(self, lineup: Lineup) -> set[str]:
        return {spec.name for spec in lineup.programs}

    def restarted(self, lineup: Lineup) -> list[str]:
        return [spec.name for spec in lineup.programs]
