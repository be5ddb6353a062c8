"""Zero-downtime rollover of `web`: two slots of one supervisord fcgi-program share the
listening socket. The new revision starts in the free slot while the old one serves;
only when it is proven does the old slot get SIGTERM and drain.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from entrypoint.errors import AppFailed, SupervisorError
from entrypoint.files import write_atomic
from entrypoint.supervisor import Supervisor
from entrypoint.supervisor_config import SharedSocket

log = logging.getLogger(__name__)

SLOTS = ("web_0", "web_1")


class WebSlots:
    def __init__(self, supervisor: Supervisor, shared: SharedSocket) -> None:
        self.supervisor = supervisor
        self.shared = shared
        self.active: str | None = None  # the slot serving the running revision
        log.info(
            "web is served start-first on the shared socket %s, handed to it as fd 0 and "
            "as fd 3 with LISTEN_FDS (gunicorn) and UVICORN_FD (uvicorn)",
            shared.listen,
        )

    def free(self) -> str:
        return SLOTS[1] if self.active == SLOTS[0] else SLOTS[0]

    def start(self, cwd: Path, env: dict[str, str], command: str) -> str:
        """Start the revision in the free slot and wait until it has stayed up.

        On failure the new slot is stopped and the active one never noticed.
        """
        slot = self.free()
        assignment = {"cwd": str(cwd), "env": env, "command": command}
        write_atomic(self.shared.slots_dir / f"{slot}.json", json.dumps(assignment))
        log.info("starting web in slot=%s beside slot=%s", slot, self.active or "-")
        try:
            self.supervisor.start_process(self.shared.name, slot)
            self.supervisor.wait_running([slot])
        except (AppFailed, SupervisorError):
            self.supervisor.stop_process(self.shared.name, slot)
            raise
        return slot

    def promote(self, slot: str) -> None:
        """`slot` serves from now on; the old one drains (SIGTERM) and is stopped."""
        old, self.active = self.active, slot
        if old is not None and old != slot:
            log.info("draining web slot=%s", old)
            self.supervisor.stop_process(self.shared.name, old)

    def abandon(self, slot: str) -> None:
        self.supervisor.stop_process(self.shared.name, slot)
