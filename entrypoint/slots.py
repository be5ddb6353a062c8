"""Zero-downtime rollover of `web`: two slots of one supervisord fcgi-program share the
listening socket. The new revision starts in the free slot while the old one serves;
only when it is proven does the old slot get SIGTERM and drain.

A web command with a door for the socket (doors.py) is handed it, after a probe
instance of it proved itself on a private socket; any other runs behind live-pull's
proxy (proxy.py), which accepts only once the app answers on its private port.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from entrypoint.doors import Handoff, handoff
from entrypoint.errors import AppFailed, SupervisorError
from entrypoint.files import write_atomic
from entrypoint.health import probe_before_joining, wait_healthy
from entrypoint.identity import AS_AGENT, Identity
from entrypoint.ports import unused_port
from entrypoint.processes import BEHIND_PROXY
from entrypoint.proxy import ProxyPlan
from entrypoint.supervisor import Supervisor
from entrypoint.supervisor_config import SharedSocket

log = logging.getLogger(__name__)

SLOTS = ("web_0", "web_1")
PROXY_PROOF_MARGIN = 10.0


def program_name(process: str) -> str:
    """What an operator calls a process: either slot is `web`."""
    return "web" if process in SLOTS else process


@dataclass(frozen=True)
class Proof:
    """What proves a new web before it joins: `path` answers 2xx when configured
    (LIVE_PULL_HEALTHCHECK_PATH), else `/` answers anything but a 5xx."""

    path: str | None
    timeout: float

    @property
    def url_path(self) -> str:
        return self.path or "/"

    @property
    def any_but_5xx(self) -> bool:
        return self.path is None


class WebSlots:
    def __init__(
        self,
        supervisor: Supervisor,
        shared: SharedSocket,
        proof: Proof,
        run_as: Identity = AS_AGENT,
    ) -> None:
        self.supervisor = supervisor
        self.shared = shared
        self.proof = proof
        self.run_as = run_as
        self.active: str | None = None  # the slot serving the running revision
        self._said: tuple[Handoff, str] | None = None

    def free(self) -> str:
        return SLOTS[1] if self.active == SLOTS[0] else SLOTS[0]

    def start(self, cwd: Path, env: dict[str, str], command: str) -> str:
        """Start the revision in the free slot, proven before it takes a connection.

        On failure the new slot is stopped and the active one never noticed.
        """
        way = self._handoff(command)
        if way == "socket":
            probe_before_joining(
                cwd, env, command, self.proof.url_path, self.proof.timeout, self.run_as,
                any_but_5xx=self.proof.any_but_5xx,
            )  # fmt: skip
        slot = self.free()
        plan = self._proxy_plan() if way == "proxy" else None
        assignment = {
            "cwd": str(cwd),
            "env": env,
            "command": command,
            "proxy": asdict(plan) if plan else None,
        }
        write_atomic(self.shared.slots_dir / f"{slot}.json", json.dumps(assignment))
        log.info("starting web in slot=%s beside slot=%s", slot, self.active or "-")
        try:
            self.supervisor.start_process(self.shared.name, slot)
            self.supervisor.wait_running([slot])
            if plan is not None:
                self._wait_proxied_app(slot, plan)
        except (AppFailed, SupervisorError):
            self._stop(slot)
            raise
        return slot

    def _handoff(self, command: str) -> Handoff:
        """How the socket reaches the command; said in the log whenever it changes."""
        way, why = handoff(command, self.shared.handoff)
        if self._said != (way, why):
            self._said = (way, why)
            door = "handed the shared socket" if way == "socket" else "proxied"
            log.info("web is served start-first on %s, %s: %s", self.shared.listen, door, why)
        return way

    def _proxy_plan(self) -> ProxyPlan:
        return ProxyPlan(
            port=unused_port(),
            proof_path=self.proof.url_path,
            any_but_5xx=self.proof.any_but_5xx,
            # The agent's proof decides (and stops the slot); the proxy's own outlasts it,
            # so the reason reported is what the app answered, not that the proxy quit.
            proof_timeout=self.proof.timeout + PROXY_PROOF_MARGIN,
            drain_seconds=self.shared.drain_seconds,
            app_stop_seconds=self.supervisor.timings.stop_timeout,
        )

    def _wait_proxied_app(self, slot: str, plan: ProxyPlan) -> None:
        """The agent proves the app on its private port too (the proxy starts accepting
        as soon as it sees the same), while the slot stays up."""
        wait_healthy(
            plan.url(plan.proof_path),
            self.proof.timeout,
            lambda: self._running(slot),
            any_but_5xx=plan.any_but_5xx,
        )

    def _running(self, slot: str) -> bool:
        return self.supervisor.states().get(slot, {}).get("statename") == "RUNNING"

    def promote(self, slot: str) -> None:
        """`slot` serves from now on; the old one drains (SIGTERM) and is stopped."""
        old, self.active = self.active, slot
        if old is not None and old != slot:
            log.info("draining web slot=%s", old)
            self._stop(old)

    def abandon(self, slot: str) -> None:
        self._stop(slot)

    def _stop(self, slot: str) -> None:
        """The slot, and what its proxied app left behind (daemons keep its tag)."""
        self.supervisor.stop_process(self.shared.name, slot, also=[slot + BEHIND_PROXY])
