"""How a web command can be handed the listening socket, if at all.

Servers with a door for an inherited socket that needs no change to their command:
gunicorn (systemd's LISTEN_FDS/LISTEN_PID, taken over its --bind) and uvicorn
(UVICORN_FD, taken over --host/--port). A command that names fd 0 itself (`--fd 0`,
`fd://0`) takes it too. The others, read in their sources: hypercorn takes a socket
only from `--bind fd://N` and daphne only from `--fd N` on their command line;
granian has no option to adopt a socket; werkzeug reads WERKZEUG_SERVER_FD only in
its own reloader's child. Those, and any server unknown here, bind $PORT themselves:
they are served through live-pull's proxy (proxy.py) on a private port. So is
uvicorn (alone or as gunicorn's worker), unless LIVE_PULL_HANDOFF=socket: its door
works, but the way it stops loses requests (below).
"""

from __future__ import annotations

import re
import shlex
from typing import Literal

from entrypoint.shell import is_simple_command

Handoff = Literal["socket", "proxy"]

SERVERS_WITH_A_DOOR = {"gunicorn": "LISTEN_FDS", "uvicorn": "UVICORN_FD"}
NAMES_FD_0 = re.compile(r"(--fd[= ]0\b|fd://0\b)")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def handoff(command: str, setting: str = "auto") -> tuple[Handoff, str]:
    """How the socket reaches `command`, and why (for the log). `setting` is
    LIVE_PULL_HANDOFF: `auto`, or `socket`/`proxy` to decide for the command."""
    if setting == "socket":
        return "socket", "LIVE_PULL_HANDOFF=socket"
    if setting == "proxy":
        return "proxy", "LIVE_PULL_HANDOFF=proxy"
    if NAMES_FD_0.search(command):
        return "socket", "the command takes fd 0"
    if not is_simple_command(command):  # the server would not be the process exec'd
        return "proxy", "a shell line, not one command, behind live-pull's proxy"
    server = server_name(command)
    if server in SERVERS_WITH_A_DOOR and "uvicorn" in command:
        # uvicorn's shutdown closes the connections it accepted and has not read yet
        # (Server.shutdown): on a shared socket some requests of each drain would fail.
        # Behind the proxy, the proxy stops accepting first and uvicorn then stops idle.
        return "proxy", f"{server} with uvicorn drops connections accepted as it stops"
    if server in SERVERS_WITH_A_DOOR:
        return "socket", f"{server} takes it through {SERVERS_WITH_A_DOOR[server]}"
    shown = server or "the command"
    return "proxy", f"{shown} has no door for a socket: it binds $PORT, behind live-pull's proxy"


def server_name(command: str) -> str | None:
    """The program a shell line runs: past `exec`, `env`, variable assignments and
    `python -m`; None when it is not one plain command."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    while words and (words[0] in ("exec", "env") or ASSIGNMENT.match(words[0])):
        words = words[1:]
    if not words:
        return None
    program = words[0].rsplit("/", 1)[-1]
    if re.fullmatch(r"python[0-9.]*", program) and words[1:2] == ["-m"] and len(words) > 2:
        return words[2]
    return program
