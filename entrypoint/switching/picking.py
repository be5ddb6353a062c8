"""Which strategy switches a revision: start-first when live-pull owns the public port
(LIVE_PULL_LISTEN) and the revision has a web to put on it, else stop-then-start."""

from __future__ import annotations

import threading

from entrypoint.board import StatusBoard
from entrypoint.config import Settings
from entrypoint.identity import AS_AGENT, Identity
from entrypoint.supervisor import Supervisor
from entrypoint.supervisor_config import SharedSocket, local_url
from entrypoint.switching.slots import Proof, WebSlots
from entrypoint.switching.start_first import ByCommand
from entrypoint.switching.stop_then_start import StopThenStart
from entrypoint.switching.strategy import Lineup, Switch


class Switches:
    def __init__(self, stop_then_start: Switch, start_first: ByCommand | None) -> None:
        self.stop_then_start = stop_then_start
        self.start_first = start_first

    def pick(self, lineup: Lineup) -> Switch:
        if self.start_first is None or lineup.web is None:
            return self.stop_then_start
        return self.start_first.for_command(lineup.web.command)


def switches_for(
    settings: Settings,
    supervisor: Supervisor,
    board: StatusBoard,
    stopping: threading.Event,
    shared: SharedSocket | None,
    run_as: Identity = AS_AGENT,
) -> Switches:
    path = settings.healthcheck_path
    health_url = local_url(None, settings.port, path) if path is not None else None
    timeout = settings.healthcheck_timeout
    stop_then_start = StopThenStart(supervisor, board, health_url, timeout, stopping)
    if shared is None:
        return Switches(stop_then_start, None)
    slots = WebSlots(supervisor, shared, Proof(path, timeout), run_as)
    return Switches(stop_then_start, ByCommand(slots, supervisor))
