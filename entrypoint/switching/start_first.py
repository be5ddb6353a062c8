"""Start-first: the new web starts in the free slot beside the serving one, joins the
shared socket only once proven, and the old slot drains after. Workers cannot share
anything, so they are replaced first (stop-then-start) and must be up before the web
joins: a revision whose worker fails never answers a request.

Two ways to reach the socket, picked by the web command (doors.py):
- SocketHandoff: the command takes the socket itself; a probe instance proves the
  revision on a private socket before a slot joins.
- Proxied: the slot runs live-pull's proxy on the socket and the command behind it on
  a private port; the proxy accepts once the app answers there. While a new revision
  bakes, the slot it replaced stands by (slots.py) instead of stopping.
"""

from __future__ import annotations

import logging

from entrypoint.health import probe_before_joining
from entrypoint.supervisor import Supervisor
from entrypoint.supervisor_config import HOLDER_NAME, ProgramSpec
from entrypoint.switching.doors import Handoff, handoff
from entrypoint.switching.plan import ProxyPlan
from entrypoint.switching.slots import WebSlots
from entrypoint.switching.strategy import Lineup, Switch

log = logging.getLogger(__name__)


class StartFirst:
    """What both ways share: workers, slots, draining and undoing."""

    def __init__(self, slots: WebSlots, supervisor: Supervisor) -> None:
        self.slots = slots
        self.supervisor = supervisor
        self.joining: str | None = None  # the slot started for the new revision
        self.left: str | None = None  # the slot the new revision replaced

    def withdraw_fallen(self) -> None:
        self.slots.hold_socket()  # the socket stays open with no slot
        self.slots.withdraw()

    def start_beside(self, new: Lineup, old: Lineup | None) -> None:
        self.slots.lift_probation()  # a bake ends with the next switch
        # The slots' group must exist before a slot starts (a no-op once it does).
        if old is not None:
            self.supervisor.apply(old.workers, self.slots.shared)
        unchanged = self.supervisor.apply(new.workers, self.slots.shared)
        self.supervisor.start_stopped(unchanged & set(new.worker_names))
        self.slots.hold_socket()
        self.supervisor.wait_running(new.worker_names)

    def _join(self, web: ProgramSpec, plan: ProxyPlan | None) -> None:
        self.joining = self.slots.start(web, plan)  # stops the slot itself on failure

    def promote(self, new: Lineup, bake_seconds: float) -> None:
        assert self.joining is not None, "promote before a slot started"
        self.left = self.slots.promote(self.joining, bake_seconds)
        self.joining = None

    def drain(self, old: Lineup | None, keep_ready: bool) -> None:
        left, self.left = self.left, None
        if left is None:
            return
        if keep_ready and old is not None and self.slots.stand_by(left, old.sha):
            return  # its proxy drains; the app stays
        log.info("draining web slot=%s", left)
        self.slots.stop(left)

    def let_go(self) -> None:
        self.slots.let_go()

    def standing_by(self) -> str | None:
        return self.slots.ready.sha if self.slots.ready else None

    def abandon(self, new: Lineup, old: Lineup | None) -> str:
        joining, self.joining = self.joining, None
        try:
            if joining is not None:
                self.slots.stop(joining)
            if old is not None:  # the old workers again, if the new ones replaced them
                self.supervisor.apply(old.workers, self.slots.shared)
        except Exception as exc:
            log.error("restoring the previous revision's workers failed error=%s", exc)
            return f"; restoring the workers of {old.sha[:12] if old else '-'} failed: {exc}"
        return ""

    def watched(self, lineup: Lineup) -> set[str]:
        serving = {self.slots.active} if self.slots.active else set()
        return serving | set(lineup.worker_names)

    def restarted(self, lineup: Lineup) -> list[str]:
        """The serving slot first (every moment until it serves counts), then the
        socket's holder."""
        serving = [self.slots.active, HOLDER_NAME] if self.slots.active else []
        return [*serving, *lineup.worker_names]


class SocketHandoff(StartFirst):
    def prove(self, new: Lineup) -> None:
        """A probe instance of the web command, on a private socket, as the app user.
        When no web serves yet (at start), nothing is gained by proving it apart: the
        slot itself is proven as it joins (see promote), which halves the start."""
        assert new.web is not None
        if self.slots.active is None:
            return
        proof = self.slots.proof
        with self.supervisor.output.child_streams(self.slots.shared.name) as streams:
            probe_before_joining(
                new.web.directory, new.web.environment, new.web.command, proof.url_path,
                proof.timeout, self.slots.run_as, any_but_5xx=proof.any_but_5xx,
                streams=streams,
            )  # fmt: skip

    def promote(self, new: Lineup, bake_seconds: float) -> None:
        """Proven: an instance of it joins the socket (and takes connections at once)."""
        assert new.web is not None
        first = self.slots.active is None
        adopted = self.slots.adopt(new.sha, new.web, proxied=False) if first else None
        if adopted is not None:
            self.joining = adopted.slot
        else:
            self._join(new.web, None)
        if first:
            assert self.joining is not None
            self.slots.wait_joined(self.joining)
        super().promote(new, bake_seconds)


class Proxied(StartFirst):
    def __init__(self, slots: WebSlots, supervisor: Supervisor) -> None:
        super().__init__(slots, supervisor)
        self.plan: ProxyPlan | None = None

    def start_beside(self, new: Lineup, old: Lineup | None) -> None:
        """The slot starts at once: its proxy holds back until the app answers. A slot
        standing by with the revision (a rollback within the bake) serves again instead."""
        super().start_beside(new, old)
        assert new.web is not None
        ready = self.slots.resume(new.sha) or self.slots.adopt(new.sha, new.web, proxied=True)
        if ready is not None:
            self.joining, self.plan = ready.slot, ready.plan
            return
        self.plan = self.slots.proxy_plan()
        self._join(new.web, self.plan)

    def prove(self, new: Lineup) -> None:
        assert self.joining is not None and self.plan is not None
        self.slots.wait_proxied_app(self.joining, self.plan)


class ByCommand:
    """Picks SocketHandoff or Proxied for a web command (LIVE_PULL_HANDOFF, doors.py),
    and says in the log which and why whenever that changes."""

    def __init__(self, slots: WebSlots, supervisor: Supervisor) -> None:
        self.slots = slots
        self.ways: dict[Handoff, Switch] = {
            "socket": SocketHandoff(slots, supervisor),
            "proxy": Proxied(slots, supervisor),
        }
        self._said: tuple[Handoff, str] | None = None

    def for_command(self, command: str) -> Switch:
        shared = self.slots.shared
        way, why = handoff(command, shared.handoff)
        if self._said != (way, why):
            self._said = (way, why)
            door = "handed the shared socket" if way == "socket" else "proxied"
            log.info("web is served start-first on %s, %s: %s", shared.listen, door, why)
        return self.ways[way]
