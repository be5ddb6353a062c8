"""The two slots of `web`: one supervisord fcgi-program whose processes share the
listening socket. The new revision starts in the free slot while the old one serves;
once it is promoted, the old slot gets SIGTERM and drains (start_first.py decides when),
or, proxied, stands by while the new one bakes: its proxy accepts nothing, its app keeps
running, and a rollback within the bake has it serve again at once.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from entrypoint.errors import AppFailed, SupervisorError
from entrypoint.files import write_atomic
from entrypoint.health import wait_healthy
from entrypoint.identity import AS_AGENT, Identity
from entrypoint.ports import unused_port
from entrypoint.processes import BEHIND_PROXY
from entrypoint.supervisor import STARTED_STATES, Supervisor, is_running
from entrypoint.supervisor_config import HOLDER_NAME, SLOT_NAMES, ProgramSpec, SharedSocket
from entrypoint.switching.launch import (
    FRESH,
    PROBATION_UNTIL,
    STANDING_BY,
    assignment_path,
    read_assignment,
)
from entrypoint.switching.plan import RESUME, STAND_BY, ProxyPlan

log = logging.getLogger(__name__)

PROXY_PROOF_MARGIN = 10.0


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


@dataclass(frozen=True)
class Ready:
    """A slot running the release `sha`, ready to serve: a proxied one standing by, its
    app on `plan`'s port; or one a quick start began (no `plan`: handed the socket)."""

    sha: str
    slot: str
    plan: ProxyPlan | None


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
        self.ready: Ready | None = None  # the slot standing by, if one does
        self._proven_pid = 0  # the pid of the active slot when it was promoted
        self._assigned: dict[str, dict[str, Any]] = {}  # what each slot was told to run

    def hold_socket(self) -> None:
        """The socket's holder runs (supervisor_config.py): started with the program,
        and again if it was stopped (supervisord restarts it when it exits)."""
        try:
            failed = self.supervisor.start_stopped([HOLDER_NAME])
        except SupervisorError as exc:
            failed = {HOLDER_NAME: str(exc)}
        for why in failed.values():  # the slots serve without it, as before
            log.warning("the shared socket's holder did not start error=%s", why)

    def free(self) -> str:
        return SLOT_NAMES[1] if self.active == SLOT_NAMES[0] else SLOT_NAMES[0]

    def start(self, web: ProgramSpec, plan: ProxyPlan | None) -> str:
        """Start `web` in the free slot (behind the proxy of `plan`, if any) and wait
        until supervisord has it RUNNING. On failure the slot is stopped again."""
        self.let_go()  # a slot standing by holds the free one
        slot = self.free()
        self._assign(
            slot,
            {
                "cwd": str(web.directory),
                "env": web.environment,
                "command": web.command,
                "proxy": asdict(plan) if plan else None,
                STANDING_BY: False,  # a proxy slot restarted while it stands by stays so
            },
        )
        log.info("starting web in slot=%s beside slot=%s", slot, self.active or "-")
        try:
            self.supervisor.start_process(self.shared.name, slot)
            self.supervisor.wait_running([slot])
        except (AppFailed, SupervisorError):
            self.stop(slot)
            raise
        return slot

    def adopt(self, sha: str, web: ProgramSpec, *, proxied: bool) -> Ready | None:
        """At the first start: the slot a quick start began (quickstart.py), if it runs
        this very `web`, serves on, taken as started. Any other slot running then stops."""
        if self.active is not None or self._assigned:
            return None
        states = self.supervisor.states()
        adopted: Ready | None = None
        for slot in SLOT_NAMES:
            if states.get(slot, {}).get("statename") not in STARTED_STATES:
                continue
            assignment = self._assignment_on_disk(slot)
            if adopted is None and _runs(assignment, web, proxied):
                self._assigned[slot] = assignment
                proxy = assignment.get("proxy")
                adopted = Ready(sha, slot, ProxyPlan.from_json(proxy) if proxy else None)
            else:
                self.stop(slot)
        if adopted is None:
            return None
        log.info("the web a quick start began serves on slot=%s", adopted.slot)
        try:
            self.supervisor.wait_running([adopted.slot])
        except (AppFailed, SupervisorError):
            self.stop(adopted.slot)
            del self._assigned[adopted.slot]
            return None
        return adopted

    def _assignment_on_disk(self, slot: str) -> dict[str, Any]:
        try:
            return read_assignment(self.shared.slots_dir, slot)
        except (OSError, ValueError):
            return {}

    def _assign(self, slot: str, assignment: dict[str, Any]) -> None:
        """What the slot runs, for its launcher (launch.py) when supervisord (re)starts it."""
        write_atomic(assignment_path(self.shared.slots_dir, slot), json.dumps(assignment))
        self._assigned[slot] = assignment

    def _reassign(self, slot: str, **changes: Any) -> None:
        self._assign(slot, {**self._assigned[slot], **changes})

    def _tell(self, slot: str, order: str, stand_by: bool) -> None:
        """Give a proxy slot an order (see plan.py), and keep its assignment in step, so
        that supervisord restarting it (its app crashed) restarts it in the same mode."""
        self._reassign(slot, **{**FRESH, STANDING_BY: stand_by})
        self.supervisor.signal_process(self.shared.name, slot, order)

    def proxy_plan(self) -> ProxyPlan:
        return ProxyPlan(
            port=unused_port(private=True),
            proof_path=self.proof.url_path,
            any_but_5xx=self.proof.any_but_5xx,
            # The agent's proof decides (and stops the slot); the proxy's own outlasts it,
            # so the reason reported is what the app answered, not that the proxy quit.
            proof_timeout=self.proof.timeout + PROXY_PROOF_MARGIN,
            drain_seconds=self.shared.drain_seconds,
            app_stop_seconds=self.supervisor.timings.stop_timeout,
        )

    def wait_proxied_app(self, slot: str, plan: ProxyPlan) -> None:
        """The agent proves the app on its private port too (the proxy starts accepting
        as soon as it sees the same)."""
        self._wait_answers(slot, plan.url(plan.proof_path))

    def wait_joined(self, slot: str) -> None:
        """The proof through the shared socket itself: only when no other slot serves
        (at start), so the answer can only come from `slot`."""
        assert self.active is None, "a serving slot could answer the proof"
        self._wait_answers(slot, self.shared.local_url(self.proof.url_path))

    def _wait_answers(self, slot: str, url: str) -> None:
        """The proof's answer from `url`, while the slot stays up."""
        wait_healthy(
            url,
            self.proof.timeout,
            lambda: self._running(slot),
            any_but_5xx=self.proof.any_but_5xx,
        )

    def _running(self, slot: str) -> bool:
        return is_running(self.supervisor.states(), slot)

    def promote(self, slot: str, bake_seconds: float = 0.0) -> str | None:
        """`slot` serves from now on; returns the slot it replaces, left to drain. For
        `bake_seconds` (its bake), a start of it by supervisord is held back (launch.py):
        its web exited, so the previous release goes back, and a web started again would
        take connections on the shared socket and drop them if it fell again."""
        if bake_seconds > 0:
            self._reassign(slot, **{PROBATION_UNTIL: time.monotonic() + bake_seconds})
        self._proven_pid = int(self.supervisor.states().get(slot, {}).get("pid") or 0)
        old, self.active = self.active, slot
        return old if old != slot else None

    def withdraw(self) -> None:
        """The serving slot stops if its web fell (see _fell). Then no slot serves: a web
        that fell again would take connections on the shared socket and drop them, where
        now they wait in its queue for the next slot."""
        active = self.active
        if active is None or not self._fell(active):
            return
        log.warning("the serving web fell, its slot stops first slot=%s", active)
        self.stop(active)
        self.active = None

    def _fell(self, slot: str) -> bool:
        """Not running; or, in its bake (where a start of it is held back), not the
        process proven. Past the bake supervisord's restarts are the norm."""
        states = self.supervisor.states()
        if not is_running(states, slot):
            return True
        until = float(self._assigned.get(slot, {}).get(PROBATION_UNTIL, 0.0))
        on_probation = until > time.monotonic()
        return on_probation and states[slot].get("pid") != self._proven_pid

    def lift_probation(self) -> None:
        """The serving slot's bake ends early (another switch starts): supervisord's
        restarts of it are no longer held back."""
        active = self.active
        if active is not None and self._assigned.get(active, {}).get(PROBATION_UNTIL):
            self._reassign(active, **{PROBATION_UNTIL: 0.0})

    def stand_by(self, slot: str, sha: str) -> bool:
        """`slot`, just replaced, stops accepting and keeps its app running, ready to
        serve `sha` again. Only a proxied slot can: False when it cannot."""
        proxy = self._assigned.get(slot, {}).get("proxy")
        if proxy is None:
            return False
        try:
            self._tell(slot, STAND_BY, stand_by=True)
        except (SupervisorError, OSError) as exc:
            log.warning("the previous release cannot stand by slot=%s error=%s", slot, exc)
            return False
        self.ready = Ready(sha, slot, ProxyPlan.from_json(proxy))
        log.info("the previous release stands by sha=%s slot=%s", sha[:12], slot)
        return True

    def resume(self, sha: str) -> Ready | None:
        """The slot standing by with `sha` accepts again, if it still runs; any other
        that stands by is stopped. None if nothing was resumed."""
        ready = self.ready
        if ready is None or ready.sha != sha or not self._running(ready.slot):
            self.let_go()
            return None
        self.ready = None
        try:
            self._tell(ready.slot, RESUME, stand_by=False)
        except (SupervisorError, OSError) as exc:
            log.warning("the release standing by did not resume error=%s", exc)
            self.stop(ready.slot)
            return None
        log.info("the release standing by serves again sha=%s slot=%s", sha[:12], ready.slot)
        return ready

    def let_go(self) -> None:
        """The slot standing by, if any, stops (the bake is over, or its slot is needed)."""
        ready, self.ready = self.ready, None
        if ready is not None:
            log.info("the release standing by stops sha=%s slot=%s", ready.sha[:12], ready.slot)
            self.stop(ready.slot)

    def stop(self, slot: str) -> None:
        """SIGTERM: the slot drains, and is stopped with what its proxied app left behind
        (daemons keep its tag)."""
        log.info("stopping web slot=%s", slot)
        self.supervisor.stop_process(self.shared.name, slot, also=[slot + BEHIND_PROXY])


def _runs(assignment: dict[str, Any], web: ProgramSpec, proxied: bool) -> bool:
    """Does a slot so assigned run `web`, proxied or not?"""
    return (
        assignment.get("cwd") == str(web.directory)
        and assignment.get("env") == web.environment
        and assignment.get("command") == web.command
        and (assignment.get("proxy") is not None) == proxied
    )
