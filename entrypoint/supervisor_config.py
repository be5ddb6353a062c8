"""Render supervisord's configuration: a fixed main file and one file of programs.

The main file includes the programs file, so an update rewrites only that and
asks supervisord to reread it (reloadConfig), never restarting supervisord.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from entrypoint.processes import TAG_VARIABLE, tag
from entrypoint.shell import shell_line
from entrypoint.supervisord import escape

SLOTS = 2  # processes of the shared socket's program that serve (see switching/slots.py)
SLOT_NAMES = ("web_0", "web_1")  # as supervisord names them: `<program>_<n>`
# The program's last process serves nothing: it holds the socket open.
HOLDER_NAME = f"web_{SLOTS}"
# The holder: a shell that sleeps, and exits 0 when stopped (a clean stop in the log);
# without a `sleep` it ends at once, and supervisord gives up on it after its retries.
HOLD = 'trap "exit 0" TERM; while sleep 3600 & wait $!; do :; done'


def program_name(process: str) -> str:
    """What an operator calls a process: either slot is `web`."""
    return "web" if process in SLOT_NAMES else process


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    command: str
    directory: Path
    environment: dict[str, str]  # values must be simple: digits, hex, names


@dataclass(frozen=True)
class SharedSocket:
    """The `web` program as a supervisord fcgi-program: one socket, two slots."""

    listen: str  # tcp://host:port
    slots_dir: Path
    drain_seconds: float
    handoff: str = "auto"  # LIVE_PULL_HANDOFF: how the socket reaches web (doors.py)
    name: str = "web"

    def local_url(self, path: str) -> str:
        """`path` on the shared socket, as a client on this machine reaches it."""
        return local_url(self.listen, 0, path)


def local_url(listen: str | None, port: int, path: str) -> str:
    """`path` where the app serves (LIVE_PULL_LISTEN's address, else 127.0.0.1 and
    PORT), as a client on this machine reaches it."""
    host, port_text = "127.0.0.1", str(port)
    if listen is not None:
        host, port_text = listen.removeprefix("tcp://").rsplit(":", 1)
        host = host.strip("[]")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port_text}{path}"


@dataclass(frozen=True)
class Timings:
    start_seconds: int
    start_retries: int
    stop_timeout: float


def render_programs(
    programs: list[ProgramSpec],
    timings: Timings,
    shared: SharedSocket | None = None,
    home: str = "",
    user: str | None = None,
    logs_dir: Path | None = None,
) -> str:
    """`home` (the home id) tags every process with LIVE_PULL_PROCESS (see processes.py);
    `user`: the app user every program runs as (see identity.py); `logs_dir`: where each
    process writes, `<process>.stdout|stderr` (None: the agent's stdout and stderr)."""
    parts = [
        _render_program(_tagged(program, home), timings, _output(logs_dir, escape(program.name)))
        for program in programs
    ]
    if shared is not None:
        parts.append(_render_shared(shared, timings, home, logs_dir))
    return "\n".join(_as_user(part, user) for part in parts)


def process_programs(programs: list[ProgramSpec], shared: SharedSocket | None) -> dict[str, str]:
    """Every process supervisord may run, with the program it belongs to (both slots of
    the shared socket are its program, `web`)."""
    found = {program.name: program.name for program in programs}
    if shared is not None:
        found.update({f"{shared.name}_{slot}": shared.name for slot in range(SLOTS + 1)})
    return found


def _output(logs_dir: Path | None, process: str) -> tuple[str, str]:
    """stdout_logfile and stderr_logfile of a process; `process` as the configuration
    spells it (supervisord expands %(process_num)s)."""
    if logs_dir is None:
        return "/dev/fd/1", "/dev/fd/2"
    base = f"{escape(str(logs_dir))}/{process}"
    return f"{base}.stdout", f"{base}.stderr"


def _as_user(section: str, user: str | None) -> str:
    """supervisord switches to `user` before it executes the program's command."""
    return section if user is None else f"{section}user={escape(user)}\n"


def _tagged(program: ProgramSpec, home: str) -> ProgramSpec:
    environment = {**program.environment, TAG_VARIABLE: tag(home, program.name)}
    return ProgramSpec(program.name, program.command, program.directory, environment)


def _render_shared(shared: SharedSocket, timings: Timings, home: str, logs_dir: Path | None) -> str:
    """Two slots behind one socket, and the holder of the socket: supervisord closes it
    whenever none of the program's processes runs (a crash of the one slot serving),
    refusing connections that would otherwise wait in its backlog for the restart.

    The configuration is the same for every revision (the launcher reads which
    revision a slot runs), so updates never reload the group or close the socket.
    """
    command = shlex.join(["/bin/sh", "-c", _shared_line()])
    output = _output(logs_dir, f"{shared.name}_%(process_num)s")
    environment = f'LIVE_PULL_SLOTS="{shared.slots_dir}",{TAG_VARIABLE}="{tag(home, shared.name)}"'
    return f"""\
[fcgi-program:{shared.name}]
socket={shared.listen}
command={escape(command)}
process_name=%(program_name)s_%(process_num)s
numprocs={SLOTS + 1}
environment={escape(environment)}
autostart=false
{_lifecycle(timings, shared.drain_seconds + timings.stop_timeout, output)}"""


def _shared_line() -> str:
    """Every process of the shared program runs this line: the slots the launcher
    (switching/launch.py), the holder the shell alone. The holder starts beside a slot at
    every start, and a Python start of its own would take the slot's cores meanwhile."""
    launcher = shlex.join([sys.executable, "-m", "entrypoint.switching.launch"])
    holder = f'[ "$SUPERVISOR_PROCESS_NAME" = {HOLDER_NAME} ]'
    return f"if {holder}; then {HOLD}; exit 1; fi; exec {launcher}"  # exit: its sleep died


def _render_program(program: ProgramSpec, timings: Timings, output: tuple[str, str]) -> str:
    # Procfile commands are shell lines ($PORT, &&, ;).
    command = shlex.join(["/bin/sh", "-c", shell_line(program.command)])
    environment = ",".join(f'{key}="{value}"' for key, value in program.environment.items())
    return f"""\
[program:{program.name}]
command={escape(command)}
directory={escape(str(program.directory))}
environment={escape(environment)}
autostart=true
{_lifecycle(timings, timings.stop_timeout, output)}"""


def _lifecycle(timings: Timings, stop_wait: float, output: tuple[str, str]) -> str:
    """How every process starts, stops (whole process group) and logs (`output`)."""
    stdout, stderr = output
    return f"""\
autorestart=true
startsecs={timings.start_seconds}
startretries={timings.start_retries}
stopsignal=TERM
stopwaitsecs={max(1, round(stop_wait))}
stopasgroup=true
killasgroup=true
stdout_logfile={stdout}
stdout_logfile_maxbytes=0
stderr_logfile={stderr}
stderr_logfile_maxbytes=0
"""
