"""The command of every slot of the `web` fcgi-program: run the revision assigned to
this slot. supervisord's socket arrives on fd 0 and is passed on untouched.

Slots let two revisions share one listening socket: the group's configuration never
changes across updates, only which revision each slot's file names.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from entrypoint.processes import TAG_VARIABLE, tag
from entrypoint.shell import shell_line

SLOTS_VARIABLE = "LIVE_PULL_SLOTS"
SD_LISTEN_FDS_START = 3  # systemd's first passed descriptor (sd_listen_fds(3))


def main() -> None:
    slot = os.environ["SUPERVISOR_PROCESS_NAME"]
    assignment = json.loads((Path(os.environ[SLOTS_VARIABLE]) / f"{slot}.json").read_text())
    # The group's tag (from supervisord) names the group; each slot's processes carry
    # the slot's name. Read before the revision's environment, which may hold another.
    home = os.environ[TAG_VARIABLE].rsplit(":", 1)[0]
    os.chdir(assignment["cwd"])
    os.environ.update(assignment["env"])
    os.environ[TAG_VARIABLE] = tag(home, slot)
    hand_socket_to_servers()
    os.execv("/bin/sh", ["/bin/sh", "-c", shell_line(assignment["command"])])


def hand_socket_to_servers() -> None:
    """The shared socket reaches the web command through every door common servers
    have, so a Procfile need not name it: fd 0 as before (`gunicorn --bind fd://0`,
    `uvicorn --fd 0`), and fd 3 with systemd's socket activation variables (gunicorn
    uses them instead of its --bind) and `UVICORN_FD` (uvicorn's --fd, over its
    --host/--port). The shell execs a simple command, so LISTEN_PID is the server's."""
    os.dup2(0, SD_LISTEN_FDS_START, inheritable=True)
    os.environ.update(
        {
            "LISTEN_FDS": "1",
            "LISTEN_PID": str(os.getpid()),
            "UVICORN_FD": str(SD_LISTEN_FDS_START),
        }
    )


if __name__ == "__main__":
    try:
        main()
    except (KeyError, OSError, ValueError) as exc:
        print(f"live-pull launch: cannot start slot: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
