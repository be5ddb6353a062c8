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
import sys
import time
from pathlib import Path
from typing import Any

from entrypoint.processes import TAG_VARIABLE, tag
from entrypoint.shell import socket_handoff_line
from entrypoint.supervisor_config import HOLDER_NAME
from entrypoint.switching.behind import start_app
from entrypoint.switching.plan import ProxyPlan, ignore_orders

SLOTS_VARIABLE = "LIVE_PULL_SLOTS"
# In an assignment: while its revision bakes, the time.monotonic() (one clock for the
# whole machine) until which the slot does not start again (slots.promote says why).
PROBATION_UNTIL = "probation_until"
# The holder: a shell that sleeps, and exits 0 when stopped (a clean stop in the log).
HOLD = 'trap "exit 0" TERM; while :; do sleep 3600 & wait $!; done'


def main() -> int:
    slot = os.environ["SUPERVISOR_PROCESS_NAME"]
    if slot == HOLDER_NAME:  # while it runs, supervisord keeps the socket open
        os.execv("/bin/sh", ["/bin/sh", "-c", HOLD])
    assignment = _assignment(slot)
    if time.monotonic() < float(assignment.get(PROBATION_UNTIL, 0.0)):
        print(
            "live-pull launch: web exited within its bake and is not started again: "
            "the previous release goes back live",
            file=sys.stderr,
        )
        return 1
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

        return serve(app, plan, lambda: bool(_assignment(slot).get("stand_by")))
    os.execv("/bin/sh", ["/bin/sh", "-c", socket_handoff_line(assignment["command"])])


def _assignment(slot: str) -> dict[str, Any]:
    """What the agent assigned the slot (slots.py writes it atomically)."""
    return dict(json.loads((Path(os.environ[SLOTS_VARIABLE]) / f"{slot}.json").read_text()))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyError, OSError, ValueError) as exc:
        print(f"live-pull launch: cannot start slot: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
