"""The command of every slot of the `web` fcgi-program: run the revision assigned to
this slot. supervisord's socket arrives on fd 0: it is passed on to a web command
that can take it (see doors.py), or served by live-pull's proxy (proxy.py) in front
of a web command that binds $PORT itself.

Slots let two revisions share one listening socket: the group's configuration never
changes across updates, only which revision each slot's file names.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from entrypoint.processes import TAG_VARIABLE, tag
from entrypoint.shell import socket_handoff_line
from entrypoint.switching.behind import start_app
from entrypoint.switching.plan import ProxyPlan, ignore_orders

SLOTS_VARIABLE = "LIVE_PULL_SLOTS"
# In an assignment: while its revision bakes, the time.monotonic() (one clock for the
# whole machine) until which a start of the slot is held back (slots.promote says why).
PROBATION_UNTIL = "probation_until"
STANDING_BY = "stand_by"  # in an assignment: a proxy slot that (re)starts stands by
# An assignment as a fresh start of its slot has it: serving, in no bake.
FRESH = {STANDING_BY: False, PROBATION_UNTIL: 0.0}
HOLD_BACK_SECONDS = 5.0  # at most: the agent's time to roll back (its loop may be busy)


def main() -> int:
    slot = os.environ["SUPERVISOR_PROCESS_NAME"]  # a slot: the holder is no launcher
    assignment = _held_back(slot, _assignment(slot))
    # The group's tag (from supervisord) names the group; each slot's processes carry
    # the slot's name. Read before the revision's environment, which may hold another.
    home = os.environ[TAG_VARIABLE].rsplit(":", 1)[0]
    os.chdir(assignment["cwd"])
    os.environ.update(assignment["env"])
    os.environ[TAG_VARIABLE] = tag(home, slot)
    if assignment.get("proxy") is not None:
        plan = ProxyPlan.from_json(assignment["proxy"])
        app = start_app(assignment["command"], dict(os.environ), plan)
        ignore_orders()  # after the app started: it keeps the signals' own meaning
        # aiohttp only in proxy slots, and imported while the app starts
        from entrypoint.switching.proxy import serve

        return serve(app, plan, lambda: bool(_assignment(slot).get(STANDING_BY)))
    os.execv("/bin/sh", ["/bin/sh", "-c", socket_handoff_line(assignment["command"])])


def _held_back(slot: str, assignment: dict[str, Any]) -> dict[str, Any]:
    """A slot that starts again within its bake (its web exited) waits, accepting
    nothing (connections wait in the socket's queue), for the agent to roll back, which
    stops it; it starts once the bake is over or HOLD_BACK_SECONDS passed. Returns the
    assignment as it is then (the agent may have lifted the probation meanwhile)."""
    left = float(assignment.get(PROBATION_UNTIL, 0.0)) - time.monotonic()
    if left <= 0:
        return assignment
    print(
        "live-pull launch: web exited within its bake, held back for the agent to roll back",
        file=sys.stderr,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stopped: a clean exit
    time.sleep(min(left, HOLD_BACK_SECONDS))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return _assignment(slot)


def _assignment(slot: str) -> dict[str, Any]:
    return read_assignment(Path(os.environ[SLOTS_VARIABLE]), slot)


def assignment_path(slots_dir: Path, slot: str) -> Path:
    return slots_dir / f"{slot}.json"


def read_assignment(slots_dir: Path, slot: str) -> dict[str, Any]:
    """What the agent assigned the slot (slots.py writes it atomically)."""
    path = assignment_path(slots_dir, slot)
    found = json.loads(path.read_text())
    if not isinstance(found, dict):
        raise ValueError(f"{path} holds no assignment")
    return found


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyError, OSError, ValueError) as exc:
        print(f"live-pull launch: cannot start slot: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
