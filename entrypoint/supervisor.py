"""supervisord as the agent's child: start it, change its programs, watch them, stop it.

Programs are changed through reloadConfig and per-group remove/add over
XML-RPC on a unix socket, the way `supervisorctl update` does; supervisord itself
is never restarted or sent SIGHUP.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import signal
import subprocess
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Collection, Iterable
from http.client import HTTPException
from pathlib import Path
from typing import Any
from xml.parsers.expat import ExpatError

from entrypoint import unix_rpc
from entrypoint.errors import AppFailed, OutOfResources, SupervisorError
from entrypoint.identity import AS_AGENT, Identity
from entrypoint.processes import (
    alive,
    end_leftovers,
    end_tagged,
    terminate_escapees,
)
from entrypoint.quickstart import remember
from entrypoint.relay import SUPERVISORD, AppOutput, Inherited
from entrypoint.supervisor_config import (
    ProgramSpec,
    SharedSocket,
    Timings,
    process_programs,
    program_name,
    render_programs,
)
from entrypoint.supervisord import (
    CONF_NAME,
    PROGRAMS_NAME,
    leftover_supervisord,
    remove_socket_dir,
    socket_path,
    spawn_supervisord,
)

log = logging.getLogger(__name__)
# The agent's own limits: a call that fails with one of these says nothing of the app.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EAGAIN})

POLL = 0.2
STARTED_STATES = frozenset({"STARTING", "RUNNING", "BACKOFF"})  # startProcess refuses these
ALREADY_STARTED = "ALREADY_STARTED"  # the fault of a startProcess that came too late
READY_POLL = 0.005  # at start, when every moment until the app serves counts
RPC_USER = "live-pull"
RPC_SLACK = 30.0


class Supervisor:
    def __init__(
        self,
        run_dir: Path,
        timings: Timings,
        home: str,
        run_as: Identity = AS_AGENT,
        output: AppOutput | None = None,
        socket: Path | None = None,
    ) -> None:
        """`home`: the home id its processes are tagged with (see processes.py);
        `run_as`: who the app's programs run as (supervisord itself stays the agent's);
        `output`: where supervisord and the programs write (see relay.py); `socket`:
        its XML-RPC socket, when a quick start chose it (quickstart.py)."""
        self.run_dir = run_dir
        self.run_as = run_as
        self.output: AppOutput = output or Inherited()
        self.timings = timings
        self.home = home
        self.conf = run_dir / CONF_NAME
        self.programs_file = run_dir / PROGRAMS_NAME
        self.socket = socket or socket_path(run_dir)
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._known_pids: set[int] = set()
        self._password = secrets.token_hex(16)

    # -- lifecycle ----------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start supervisord with no programs and wait until it answers."""
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start supervisord with no programs (wait_ready waits for it to answer).

        The caller holds the home's lock, so a supervisord of this home still running
        belongs to a dead agent: it is stopped (and whatever it or the dead agent
        started) before the socket path is reused. Unlinking the socket of a
        supervisord that is still running would let it, as it exits, unlink ours.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)  # whatever the umask: the quick start asks (quickstart.py)
        self._end_leftovers()
        with self.output.child_streams(SUPERVISORD) as streams:
            self._process = spawn_supervisord(
                self.run_dir, self.socket, "", self._password, streams
            )

    def adopt(self, process: subprocess.Popen[bytes], password: str) -> None:
        """The supervisord the quick start spawned (quickstart.py) is this one."""
        self._process, self._password = process, password

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self._process is not None, "wait_ready before spawn"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise SupervisorError(
                    f"supervisord exited at start code={self._process.returncode}"
                )
            with contextlib.suppress(OSError, SupervisorError):
                self._call(lambda rpc: rpc.supervisor.getState())
                return
            time.sleep(READY_POLL)
        raise SupervisorError(f"supervisord did not answer within {timeout:g}s")

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop the app gracefully (whole process groups), then supervisord; then what is
        left of this home: escaped children, one-off commands, and the app of a
        supervisord that died on its own."""
        process = self._process
        if process is None:
            return
        deadline = time.monotonic() + self.timings.stop_timeout
        termed: list[int] = []
        if process.poll() is None:
            termed = self._terminate_escapees(None, also={process.pid})
            self._stop_supervisord(process)
        else:  # it died on its own: its programs never got their SIGTERM
            end_tagged(self.home, None, deadline)
        for pid in self._known_pids:
            end_group(pid, deadline)
        # What left its group, and one-off commands.
        end_tagged(self.home, None, deadline, termed=termed)
        remove_socket_dir(self.socket)

    def _stop_supervisord(self, process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.timings.stop_timeout + 3)
        except subprocess.TimeoutExpired:
            log.warning("supervisord did not stop in time, killing it")
            process.kill()
            process.wait()

    def _end_leftovers(self) -> None:
        """A dead agent's supervisord, its apps and its one-off commands."""
        stop_wait = self.timings.stop_timeout + 5
        pid = leftover_supervisord(self.run_dir)
        if pid is not None:
            log.warning("stopping the supervisord a previous agent left pid=%d", pid)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, time.monotonic() + stop_wait):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, time.monotonic() + 5)
        end_leftovers(self.home, time.monotonic() + self.timings.stop_timeout)

    # -- programs -------------------------------------------------------------------

    def apply(self, programs: list[ProgramSpec], shared: SharedSocket | None = None) -> set[str]:
        """Make supervisord run exactly `programs`; changed ones are restarted. Returns
        the groups left as they were: a process of them that stopped (a quick start's
        that went FATAL) stays so (see start_stopped)."""
        with self._lock:
            user = self.run_as.supervisor_user()
            self.output.prepare(process_programs(programs, shared))
            rendered = render_programs(
                programs, self.timings, shared, self.home, user, self.output.logs_dir
            )
            self.programs_file.write_text(rendered)
            result = self._call(lambda rpc: rpc.supervisor.reloadConfig())
            added, changed, removed = result[0]
            for name in [*removed, *changed]:
                self._remove_group(name)
            for name in [*changed, *added]:
                self._add_group(name)
            groups = set(process_programs(programs, shared).values())
            return groups - {*changed, *added}

    def _add_group(self, name: str) -> None:
        self._call(lambda rpc: rpc.supervisor.addProcessGroup(name))

    def _remove_group(self, name: str) -> None:
        members = [info for info in self.states().values() if info["group"] == name]
        pids = [info["pid"] for info in members]
        # The group's processes are tagged with their own names (the slots of an
        # fcgi-program: web_0, web_1), or the group's.
        names = {name, *(info["name"] for info in members)}
        deadline = time.monotonic() + self.timings.stop_timeout
        termed = self._terminate_escapees(names)
        with contextlib.suppress(SupervisorError):
            self._call(lambda rpc: rpc.supervisor.stopProcessGroup(name, True))
        self._call(lambda rpc: rpc.supervisor.removeProcessGroup(name))
        for pid in pids:
            end_group(pid, deadline)
        end_tagged(self.home, names, deadline, termed=termed)

    def remember(self, names: list[str], answers: str | None, release: Path) -> None:
        """For the quick start of this home's next agent (quickstart.py): the programs as
        applied, the processes `names` to start, in order, where the web `answers`, and
        the `release` they run."""
        programs = self.programs_file.read_text()
        remember(self.run_dir, self.timings, programs, names, answers, release)

    def start_stopped(self, names: Iterable[str]) -> dict[str, str]:
        """Start those of the processes `names` that do not run, in order; the others are
        left as they are (a quick start's programs, the socket's holder). Returns those
        that could not be started, with why: the caller says whether that matters."""
        states = self.states()
        failed: dict[str, str] = {}
        for name in names:
            info = states.get(name)
            if info is None:
                failed[name] = "supervisord has no such process"
            elif info["statename"] not in STARTED_STATES:
                try:
                    self.start_process(info["group"], name)
                except SupervisorError as exc:
                    if ALREADY_STARTED not in str(exc):  # else started meanwhile (autostart)
                        failed[name] = str(exc)
        return failed

    def start_process(self, group: str, name: str) -> None:
        """Start one process (a slot); its state is then awaited with wait_running."""
        self._call(lambda rpc: rpc.supervisor.startProcess(f"{group}:{name}", False))

    def stop_process(self, group: str, name: str, also: Collection[str] = ()) -> None:
        """Stop one process: SIGTERM to its group, SIGKILL after stopwaitsecs; then
        whatever of it left the group, and what carries the tags `also` (which the
        process stops itself, in its own order)."""
        deadline = time.monotonic() + self.timings.stop_timeout
        termed = self._terminate_escapees([name])
        with contextlib.suppress(SupervisorError):  # already stopped, or FATAL
            self._call(lambda rpc: rpc.supervisor.stopProcess(f"{group}:{name}", True))
        end_tagged(self.home, [name, *also], deadline, termed=termed)

    def signal_process(self, group: str, name: str, signal_name: str) -> None:
        """Send one process (not its group) a signal, by name: a slot's proxy is told
        to stand by or to serve again."""
        self._call(lambda rpc: rpc.supervisor.signalProcess(f"{group}:{name}", signal_name))

    def states(self) -> dict[str, dict[str, Any]]:
        infos = self._call(lambda rpc: rpc.supervisor.getAllProcessInfo())
        return {info["name"]: info for info in infos}

    def wait_running(self, names: Iterable[str]) -> None:
        """Wait until every named process is RUNNING; raise AppFailed if one goes FATAL."""
        wanted = set(names)
        t = self.timings
        timeout = (t.start_retries + 1) * (t.start_seconds + t.start_retries + 1) + 10
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.states()
            fatal = first_fatal(states, wanted)
            if fatal is not None:
                raise AppFailed(fatal)
            if all(is_running(states, name) for name in wanted):
                self._remember_pids(states)
                return
            time.sleep(POLL)
        raise AppFailed(f"programs did not reach RUNNING within {timeout}s")

    # -- plumbing -------------------------------------------------------------------

    def _call(self, method: Callable[[Any], Any]) -> Any:
        # A fresh proxy per call: a transport holds its connection, and is not safe to
        # share between the poller and the watchdog.
        proxy = unix_rpc.server(self.socket, RPC_USER, self._password, self._rpc_timeout())
        try:
            return method(proxy)
        except xmlrpc.client.Fault as exc:
            raise SupervisorError(f"supervisord refused: {exc.faultString}") from exc
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                raise OutOfResources(f"the agent could not call supervisord: {exc!r}") from exc
            raise SupervisorError(f"supervisord unreachable: {exc!r}") from exc
        except (xmlrpc.client.ProtocolError, HTTPException, ExpatError) as exc:
            raise SupervisorError(f"supervisord unreachable: {exc!r}") from exc

    def _rpc_timeout(self) -> float:
        """Longer than any call that waits for a stop (stopwaitsecs), so only a wedged
        supervisord times out; then the caller gets a SupervisorError, not a hang."""
        return self.timings.stop_timeout + RPC_SLACK

    def _terminate_escapees(
        self, names: Collection[str] | None, also: Collection[int] = ()
    ) -> list[int]:
        """SIGTERM, as their programs are stopped, the processes that left the programs'
        process groups (setsid, double fork), which stopasgroup no longer reaches; they
        are killed at the same deadline. Every running program leads its own group."""
        try:
            states = self.states()
        except SupervisorError:
            return []  # stop() ends what is left by the tag alone
        self._remember_pids(states)
        groups = {info["pid"] for info in states.values() if info["pid"]} | set(also)
        return terminate_escapees(self.home, names, groups)

    def _remember_pids(self, states: dict[str, dict[str, Any]] | None = None) -> None:
        """The latest running pids (process groups), for stop() should supervisord no
        longer answer then. Only the latest: an older pid may belong to a stranger by
        now, and what an old program left carries the tag anyway."""
        with contextlib.suppress(SupervisorError):
            states = states if states is not None else self.states()
            self._known_pids = {info["pid"] for info in states.values() if info["pid"]}


def end_group(pgid: int, deadline: float) -> None:
    """Wait for what is left of a stopped program's process group, then kill it.

    supervisord only escalates to SIGKILL while the program's own pid lives; a
    shell that dies on SIGTERM would leave its children running otherwise.
    """
    if pgid <= 0:
        return
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except OSError:
            return
        time.sleep(POLL)
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)
        log.warning("killed what was left of a stopped program pgid=%d", pgid)


def is_running(states: dict[str, dict[str, Any]], name: str) -> bool:
    """Is process `name` RUNNING in `states` (Supervisor.states)?"""
    return states.get(name, {}).get("statename") == "RUNNING"


def first_fatal(states: dict[str, dict[str, Any]], only: Iterable[str] | None = None) -> str | None:
    """A one-line description of the first FATAL program (among `only`), if any."""
    watched = set(only) if only is not None else set(states)
    for name, info in sorted(states.items()):
        if name in watched and info.get("statename") == "FATAL":
            detail = info.get("spawnerr") or info.get("description") or "exited too quickly"
            return f"program {program_name(name)} went FATAL after its retries: {detail}"
    return None


def _wait_gone(pid: int, deadline: float) -> bool:
    """Wait for a process that is not our child to exit (or turn zombie)."""
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True
