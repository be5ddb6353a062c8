"""supervisord's files in the run directory, and its process: spawned by the agent
(supervisor.py) and by the quick start (quickstart.py), which may import only light
modules, hence a module of its own."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from entrypoint.files import write_private
from entrypoint.processes import die_with_parent

SOCKET_NAME = "supervisor.sock"
PIDFILE_NAME = "supervisord.pid"
CONF_NAME = "supervisord.conf"
PROGRAMS_NAME = "programs.conf"
SOCKET_DIR_PREFIX = "live-pull-"  # of the temporary directory of a socket (a long home)
# sun_path holds 107 bytes; supervisord binds "<path>.<pid>" first, then renames.
UNIX_PATH_MAX = 107 - 12


def socket_path(run_dir: Path) -> Path:
    """Unix sockets have a short path limit; fall back to a private temp dir."""
    candidate = run_dir / SOCKET_NAME
    if len(str(candidate)) <= UNIX_PATH_MAX:
        return candidate
    return Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX)) / SOCKET_NAME


def remove_socket_dir(socket: Path) -> None:
    """The temporary directory of socket_path's fallback, if `socket` is in one."""
    if socket.parent.name.startswith(SOCKET_DIR_PREFIX):
        shutil.rmtree(socket.parent, ignore_errors=True)


def leftover_supervisord(run_dir: Path) -> int | None:
    """The pid in the pidfile, if that process is a supervisord run on this very
    configuration (a reused pid is never taken for it)."""
    try:
        pid = int((run_dir / PIDFILE_NAME).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    named = any(b"supervisord" in part for part in cmdline)
    return pid if named and str(run_dir / CONF_NAME).encode() in cmdline else None


def spawn_supervisord(
    run_dir: Path,
    socket: Path,
    programs: str,
    password: str,
    streams: dict[str, int] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """supervisord on `run_dir`'s configuration, with `programs` loaded (none started).
    Its own session: a terminal's Ctrl-C reaches the agent, which stops the app in
    order. Called from the main thread (see die_with_parent): it gets SIGTERM, and stops
    the app, if the agent dies without stopping it. `streams`: its stdout and stderr,
    when not ours (see relay.py); `env`: its environment, when not ours."""
    streams = streams or {}
    socket.unlink(missing_ok=True)
    programs_file = run_dir / PROGRAMS_NAME
    programs_file.write_text(programs)
    conf = run_dir / CONF_NAME
    write_private(conf, render_main(socket, run_dir / PIDFILE_NAME, programs_file, password))
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
        start_new_session=True,
        preexec_fn=die_with_parent(signal.SIGTERM),
        stdin=subprocess.DEVNULL,
        stdout=streams.get("stdout"),  # None: ours (LIVE_PULL_LOG_FORMAT=text)
        stderr=streams.get("stderr"),
        env=env,
    )


def escape(value: str) -> str:
    """supervisord expands %(name)s in values; a literal % is written %%."""
    return value.replace("%", "%%")


def render_main(socket: Path, pidfile: Path, programs_file: Path, password: str) -> str:
    """The file holds the XML-RPC password: write it mode 0600."""
    # Naming the user we already are silences supervisord's warning about root.
    user = f"user={getpass.getuser()}\n" if os.geteuid() == 0 else ""
    return f"""\
[unix_http_server]
file={escape(str(socket))}
chmod=0700
username=live-pull
password={password}

[supervisord]
{user}nodaemon=true
logfile=/dev/null
logfile_maxbytes=0
pidfile={escape(str(pidfile))}
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{escape(str(socket))}
username=live-pull
password={password}

[include]
files = {escape(str(programs_file))}
"""
