"""The quick start of `live-pull run`: the app serves again before the agent has loaded.

A restart with nothing changed (the same environment, the same live-pull, the same
user: one digest, the record's `key`) starts supervisord and what served when the last
agent of this home left off, from the record that agent wrote (`remember`), before the
agent's own modules (pydantic, aiohttp, GitPython) are imported. The agent then starts
as always and takes over what runs: supervisord (boot.py), and the programs, which its
unchanged configuration leaves running, and the web's slot (switching/slots.py
`adopt`). If anything is not as it was, the agent replaces it, as at any start.

Up to supervisord's spawn this module imports only the standard library and
live-pull's light modules: every moment until the app serves counts. Anything it
cannot do (no record, another key, the home's lock taken, a supervisord left running)
leaves the start to the agent, which says what is wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from entrypoint.files import write_atomic, write_private
from entrypoint.homelock import DEFAULT_HOME, HomeLock
from entrypoint.processes import end_leftovers, home_id, tag_children
from entrypoint.supervisord import (
    leftover_supervisord,
    remove_socket_dir,
    socket_path,
    spawn_supervisord,
)

if TYPE_CHECKING:
    from entrypoint.supervisor_config import Timings

RECORD_NAME = "quickstart.json"
SUPERVISORD_READY_SECONDS = 10.0
AWAIT_ANSWER_SECONDS = 2.0  # the agent's start waits this long at most (see _await_answer)
ANSWER_POLL = 0.01
PACKAGE = Path(__file__).resolve().parent
RECORD_KEYS = frozenset(
    {"key", "timings", "programs", "start", "answers", "release", "unset", "set"}
)
STOP_SLACK = 5.0  # supervisord's own, past the programs' stop timeout


class Begun(NamedTuple):
    """What the quick start left running, for the agent to take over."""

    home: Path
    lock: HomeLock
    process: subprocess.Popen[bytes]
    password: str
    socket: Path  # supervisord's (a temporary directory's, for a long home)
    release: Path | None  # the release it runs (the app user's: see boot.separate)
    stop_timeout: float  # the programs'; supervisord gets this long, and 5 s, to stop


class Skipped(Exception):
    """The quick start cannot be made: the agent starts as always."""


_key: str | None = None  # this start's, once computed: what `remember` writes
_environ_at_start: dict[str, str] = {}
_begun: Begun | None = None
_stop_asked = False
_why_not: str | None = None
_handlers: dict[int, Any] = {}  # the signals' own, while the quick start notes them


def quick_start(argv: Sequence[str]) -> None:
    """From main.py, before anything else: for `live-pull run`, start what the record
    names, if it is this start's. Never raises: the agent's own start says what is wrong."""
    global _key, _begun, _why_not
    if list(argv) != ["run"]:
        return
    try:
        _environ_at_start.update(os.environ)
        _key = environment_key(_environ_at_start)
        home = Path(os.environ.get("LIVE_PULL_HOME") or DEFAULT_HOME)
        _record(home, _key)
    except Skipped as exc:
        _why_not = str(exc)
        return
    except FileNotFoundError:
        _why_not = (
            "no record of what served (a first start, `live-pull prepare` since, or"
            " LIVE_PULL_LOG_FORMAT=json)"
        )
        return
    except Exception as exc:  # not one of ours, or unreadable
        _why_not = f"the record cannot be read: {exc}"
        return
    lock = HomeLock(home)
    try:
        lock.acquire()
    except Exception:  # another agent holds it: the agent's start says so
        return
    try:
        _begun = _start(home, lock, _record(home, _key))  # again: `prepare` may have run
    except Exception as exc:
        _why_not = str(exc)
        lock.release()


def why_not() -> str | None:
    """Why no quick start was made (None: one was, or `run` was not the command)."""
    return _why_not


def taken_over(home: Path) -> Begun | None:
    """What the quick start began, for the agent of `home` (once)."""
    global _begun
    begun, _begun = _begun, None
    if begun is None or begun.home == home:
        return begun
    end(begun)  # for another home (the settings read LIVE_PULL_HOME otherwise)
    return None


def end_untaken() -> None:
    """What the quick start began and no agent took over (its start failed before:
    bad settings) stops in order, not by the death of this process (main.py)."""
    global _begun
    begun, _begun = _begun, None
    if begun is not None:
        end(begun)


def end(begun: Begun) -> None:
    """The agent cannot take over: supervisord stops what it started; the lock goes."""
    _stop(begun.process, begun.stop_timeout)
    _undo(begun.socket)
    begun.lock.release()


def stop_asked() -> bool:
    """Was the agent told to stop (SIGTERM, SIGINT) while the quick start's app served
    and the agent had not yet its own handlers? It stops in order then (agent.py)."""
    return _stop_asked


def _note_stop(signum: int, frame: object) -> None:
    global _stop_asked
    _stop_asked = True


def environment_key(environ: dict[str, str]) -> str:
    """The digest of what a start depends on: its environment, the user, the Python and
    live-pull's own files (their sizes and times: an image with another live-pull)."""
    files = sorted(_package_files(str(PACKAGE)))
    made_of = {
        "environ": sorted(environ.items()),
        "uid": os.getuid(),
        "python": sys.executable,
        "live_pull": files,
    }
    return hashlib.sha256(json.dumps(made_of).encode()).hexdigest()


def _package_files(directory: str) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of the package's modules, with os.scandir (pathlib's rglob
    is slower, and every moment before the spawn counts)."""
    found = []
    for entry in os.scandir(directory):
        if entry.is_dir() and entry.name != "__pycache__":
            found.extend(_package_files(entry.path))
        elif entry.name.endswith(".py"):
            stat = entry.stat()
            found.append((entry.path, stat.st_size, stat.st_mtime_ns))
    return found


def remember(
    run_dir: Path,
    timings: Timings,
    programs: str,
    start: Sequence[str],
    answers: str | None,
    release: Path | None,
) -> None:
    """The record for the next start of this home: supervisord's `programs` (its
    configuration as last applied), the processes to start, in order, the URL where the
    web `answers` (None: no web), the `release` they run, and how this agent's
    environment differs from the one it was started with (secrets scrubbed: their names
    only). None when this start computed no key (an agent not started by main.py), lest
    an older record outlive what it names."""
    if _key is None:
        forget(run_dir)
        return
    after = dict(os.environ)
    changed = {name: value for name, value in after.items() if _environ_at_start.get(name) != value}
    record = {
        "key": _key,
        "timings": [timings.start_seconds, timings.start_retries, timings.stop_timeout],
        "programs": programs,
        "start": list(start),
        "answers": answers,
        "release": str(release) if release else None,
        "unset": sorted(set(_environ_at_start) - set(after)),
        "set": changed,
    }
    write_private(run_dir / RECORD_NAME, json.dumps(record))


def forget(run_dir: Path) -> None:
    """No quick start from this home's record (what it names no longer serves)."""
    with contextlib.suppress(OSError):
        (run_dir / RECORD_NAME).unlink(missing_ok=True)


def _record(home: Path, key: str) -> dict[str, Any]:
    """The record, if it is this start's and only the agent could have written it: it
    names commands that supervisord starts. As root, the home too must be the agent's
    alone (a home an older image left to the app user is claimed by the agent's start);
    an agent that is not root runs the app as itself, so the home's owner is not asked."""
    if not home.is_absolute():
        raise Skipped(f"LIVE_PULL_HOME={home} is not an absolute path")
    run_dir = home / "run"
    path = run_dir / RECORD_NAME
    ways = (home, run_dir) if os.geteuid() == 0 else (run_dir,)
    if not all(_agent_only(where, 0o022) for where in ways):
        raise Skipped(f"{run_dir} is not the agent's alone")
    if not _agent_only(path, 0o077):
        raise Skipped(f"{path} is not the agent's alone")
    record: dict[str, Any] = json.loads(path.read_text())
    if not isinstance(record, dict) or set(record) != RECORD_KEYS:
        raise Skipped(f"{path} is not a record of this live-pull")
    if record["key"] != key:
        raise Skipped("the environment, the user or live-pull differ from the last start's")
    return record


def _agent_only(path: Path, others_bits: int) -> bool:
    info = path.stat()
    return info.st_uid == os.geteuid() and not info.st_mode & others_bits


def _start(home: Path, lock: HomeLock, record: dict[str, Any]) -> Begun:
    """supervisord with the recorded programs, then those started. On failure
    supervisord is stopped again, and with it what it started."""
    run_dir = home / "run"
    timings = record["timings"]  # start seconds, retries, stop timeout
    if leftover_supervisord(run_dir) is not None:
        raise Skipped("a supervisord of this home still runs")
    process_home = home_id(home)
    end_leftovers(process_home, time.monotonic() + float(timings[2]))
    tag_children(process_home)
    # The agent's environment as its settings leave it (they read this one still).
    env = {name: value for name, value in os.environ.items() if name not in record["unset"]}
    env.update(record["set"])
    password = os.urandom(16).hex()  # as secrets.token_hex, which imports more
    stop_timeout = float(timings[2])
    _note_stops()  # the app is about to serve: a stop is the agent's, in order
    socket = socket_path(run_dir)
    process: subprocess.Popen[bytes] | None = None
    try:
        process = spawn_supervisord(run_dir, socket, record["programs"], password, env=env)
        _start_programs(process, password, socket, home, process_home, timings, record["start"])
        if record["answers"] is not None:
            _await_answer(record["answers"], AWAIT_ANSWER_SECONDS)
    except BaseException:
        if process is not None:
            _stop(process, stop_timeout)
        _undo(socket)
        raise
    release = _release(home, record["release"])
    return Begun(home, lock, process, password, socket, release, stop_timeout)


def _release(home: Path, recorded: str | None) -> Path | None:
    """The release the record names, if it is one of the home's releases."""
    if recorded is None:
        return None
    release = Path(recorded)
    return release if release.parent == home / "releases" else None


def _note_stops() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        _handlers[sig] = signal.signal(sig, _note_stop)


def _restore_stops() -> None:
    """The signals' own handlers again (an agent not taking over stops as it would)."""
    for sig, handler in _handlers.items():
        signal.signal(sig, handler)
    _handlers.clear()


def _start_programs(
    process: subprocess.Popen[bytes],
    password: str,
    socket: Path,
    home: Path,
    process_home: str,
    timings: list[float],
    names: list[str],
) -> None:
    """Those of `names` that do not start on their own (autostart: all but the web's
    slots), once supervisord answers."""
    # Imported only now, while supervisord boots (on the other core, for that long).
    from entrypoint.supervisor import Supervisor
    from entrypoint.supervisor_config import Timings

    run_dir = home / "run"
    start_seconds, retries, stop_timeout = timings
    timed = Timings(int(start_seconds), int(retries), stop_timeout)
    supervisor = Supervisor(run_dir, timed, process_home, socket=socket)
    supervisor.adopt(process, password)
    for name in names:
        _refresh_assignment(run_dir / "slots", name)
    supervisor.wait_ready(SUPERVISORD_READY_SECONDS)
    supervisor.start_stopped(names)


def _undo(socket: Path) -> None:
    """What the quick start set up besides supervisord: the socket's temporary
    directory (a long home's), and its note of the signals."""
    remove_socket_dir(socket)
    _restore_stops()


def _stop(process: subprocess.Popen[bytes], stop_timeout: float) -> None:
    """supervisord stops what it started on SIGTERM, each program within its stop
    timeout (the agent ends whatever is left, as it does a dead agent's)."""
    process.terminate()
    try:
        process.wait(stop_timeout + STOP_SLACK)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _await_answer(url: str, seconds: float) -> None:
    """Until the web answers `url` (whatever it answers) or `seconds` passed: the
    agent's own start would take the CPU the web's start needs (two cores here, and the
    agent's imports are the longest part of its start)."""
    import http.client  # only here: what comes before supervisord's spawn counts
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=left)
        try:
            connection.request("GET", parts.path or "/")
            connection.getresponse().read()
            return
        except OSError:  # not listening yet (LIVE_PULL_LISTEN=off), or cut off
            time.sleep(ANSWER_POLL)
        except http.client.HTTPException:
            return  # it answered, if not in HTTP
        finally:
            connection.close()


def _refresh_assignment(slots_dir: Path, name: str) -> None:
    """A slot's assignment (launch.py), if `name` is a slot: as a fresh start has it, not
    in a bake (a restart is no crash in one), not standing by."""
    from entrypoint.switching.launch import FRESH, assignment_path, read_assignment

    try:
        assignment = read_assignment(slots_dir, name)
    except FileNotFoundError:
        return
    write_atomic(assignment_path(slots_dir, name), json.dumps({**assignment, **FRESH}))
