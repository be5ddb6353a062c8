"""The agent's processes: one agent per home, nothing of a revision outlives it, one-off
commands die with the agent, and the app's output lands beside the agent's."""

from __future__ import annotations

import gc
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path

import git
import pytest

from entrypoint import unix_rpc
from entrypoint.demo import free_port
from entrypoint.errors import AnotherAgent, SupervisorError
from entrypoint.homelock import HomeLock
from entrypoint.processes import TAG_VARIABLE, alive, find_tagged, home_id
from entrypoint.sample import APP, SampleRepo
from entrypoint.supervisor import RPC_USER, Supervisor
from entrypoint.supervisor_config import ProgramSpec, SharedSocket, Timings
from tests.conftest import AgentProcess, wait_until

Factory = Callable[..., AgentProcess]

# An app that leaves behind a grandchild in a session of its own (setsid + double
# fork), marked by a sleep length no other test uses, then serves as usual.
ESCAPING_APP = (
    "import os, subprocess\nsubprocess.Popen(['setsid', 'sh', '-c', 'sleep {marker} & exit 0'])\n"
) + APP


def head(sample: SampleRepo) -> str:
    return git.Repo(sample.work).head.commit.hexsha


def pids_running(marker: str) -> list[int]:
    """Live processes whose argv is exactly `sleep <marker>`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"sleep", marker.encode()] and alive(int(proc.name)):
                found.append(int(proc.name))
    return found


def supervisor_socket(home: Path) -> Path:
    """Where supervisord listens: under the home's run/, or a temporary directory when
    that path is too long for a unix socket (as pytest's are under xdist)."""
    conf = (home / "run" / "supervisord.conf").read_text()
    return Path(re.search(r"^file=(.+)$", conf, re.M).group(1))  # type: ignore[union-attr]


def test_second_agent_on_a_home_exits_1_and_touches_nothing(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    first = agent_factory(sample.url)
    first.wait_serving(head(sample))
    socket = supervisor_socket(first.home)
    inode = socket.stat().st_ino
    second = agent_factory(sample.url, home=first.home)
    assert second.wait_exit() == 1
    assert f"another live-pull agent (pid {first.pid}) owns LIVE_PULL_HOME=" in second.output()
    assert "Traceback" not in second.output()
    time.sleep(2)  # give a wrongly started second supervisord time to do harm
    assert socket.stat().st_ino == inode
    assert first.process is not None and first.process.poll() is None
    first.wait_serving(head(sample))
    new = sample.commit({"app.py": APP.format(message="still followed")}, "next")
    first.wait_serving(new)


def test_restart_after_sigkill_reuses_the_home_cleanly(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    first = agent_factory(sample.url)
    first.wait_serving(head(sample))
    first.stop(signal.SIGKILL)
    again = agent_factory(sample.url, home=first.home)
    again.wait_serving(head(sample))
    new = sample.commit({"app.py": APP.format(message="after a kill")}, "next")
    again.wait_serving(new)
    assert again.stop()[0] == 0


def test_escaped_children_end_with_their_revision_and_with_the_agent(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    first = sample.commit({"app.py": ESCAPING_APP.format(marker="4711.25", message="a")}, "a")
    # Revision a stands by while b bakes (3 s), and ends with its escaped child after.
    agent = agent_factory(sample.url, LIVE_PULL_STOP_TIMEOUT="2", LIVE_PULL_BAKE_SECONDS="3")
    agent.wait_serving(first)
    wait_until(lambda: pids_running("4711.25"), what="the escaped child of revision a")
    second = sample.commit({"app.py": ESCAPING_APP.format(marker="4711.5", message="b")}, "b")
    agent.wait_serving(second)
    wait_until(lambda: not pids_running("4711.25"), 20, "revision a's escaped child ended")
    assert pids_running("4711.5")
    assert agent.stop()[0] == 0
    wait_until(lambda: not pids_running("4711.5"), 20, "revision b's escaped child ended")
    assert not find_tagged(home_id(agent.home))


def test_release_step_dies_with_a_killed_agent(sample: SampleRepo, agent_factory: Factory) -> None:
    agent = agent_factory(sample.url)
    agent.wait_serving(head(sample))
    sample.commit({"Procfile": "release: sleep 4711.75\nweb: python app.py\n"}, "slow release")
    wait_until(lambda: pids_running("4711.75"), what="the release step running")
    agent.stop(signal.SIGKILL)
    wait_until(lambda: not pids_running("4711.75"), 20, "the release step killed with the agent")


def test_web_command_that_says_exec_runs(sample: SampleRepo, agent_factory: Factory) -> None:
    agent = agent_factory(sample.url, LIVE_PULL_COMMAND="exec python app.py")
    agent.wait_serving(head(sample))


def test_app_output_is_appended_to_a_file_stdout(sample: SampleRepo, tmp_path: Path) -> None:
    """`live-pull run > agent.log`: a plain `>` redirect, no append mode."""
    procfile = "web: echo app-line-$LIVE_PULL_REVISION; exec python app.py\n"
    sha = sample.commit({"Procfile": procfile}, "echo")
    agent = AgentProcess(tmp_path / "home", _env(sample, tmp_path), tmp_path)
    log = tmp_path / "agent.log"
    with open(log, "w") as out:  # O_WRONLY|O_TRUNC, no O_APPEND
        agent.process = subprocess.Popen(
            [sys.executable, "-m", "entrypoint", "run"],
            env=agent.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        agent.wait_serving(sha)
        assert agent.stop()[0] == 0
    finally:
        if agent.process.poll() is None:
            agent.process.kill()
    text = log.read_text(errors="replace")
    assert f"app-line-{sha}" in text
    assert "\0" not in text, "a writer's offset left a hole of NUL bytes"
    assert "live-pull starting" in text and "stopped" in text


def _env(sample: SampleRepo, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "REPO_URL": sample.url,
        "LIVE_PULL_HOME": str(tmp_path / "home"),
        "LIVE_PULL_POLL_INTERVAL": "1",
        "LIVE_PULL_STATUS_PORT": str(free_port()),
        "PORT": str(free_port()),
    }


# -- the same guarantees one layer down: Supervisor, HomeLock and run_logged on their own --

TIMINGS = Timings(start_seconds=1, start_retries=1, stop_timeout=3)
# `sleep <marker>` in a session of its own, then the program's own long sleep.
ESCAPING = "setsid sh -c 'sleep {marker} & exit 0'; exec sleep 1000"
# The program's own process ignores SIGTERM: stopping it takes the whole stop timeout.
STUBBORN = "exec python3 -c 'import signal, time; signal.signal(15, 1); time.sleep(1000)'"


@pytest.fixture
def supervisors(tmp_path: Path) -> Iterator[Callable[[Path], Supervisor]]:
    """Started Supervisors on homes under tmp_path; every one is stopped at the end."""
    made: list[Supervisor] = []

    def make(home: Path) -> Supervisor:
        supervisor = Supervisor(home / "run", TIMINGS, home_id(home))
        made.append(supervisor)
        supervisor.start()
        return supervisor

    yield make
    for supervisor in made:
        supervisor.stop()


def program(name: str, command: str, home: Path) -> ProgramSpec:
    return ProgramSpec(name, command, home, {})


def shared_web(tmp_path: Path, commands: dict[str, str]) -> SharedSocket:
    """The `web` fcgi-program, its slots assigned `commands` run in tmp_path."""
    shared = SharedSocket(f"tcp://127.0.0.1:{free_port()}", tmp_path / "slots", 2.0)
    shared.slots_dir.mkdir(exist_ok=True)
    for slot, command in commands.items():
        assignment = {"cwd": str(tmp_path), "env": {}, "command": command}
        (shared.slots_dir / f"{slot}.json").write_text(json.dumps(assignment))
    return shared


def test_apply_names_the_groups_it_left_and_start_stopped_what_did_not_start(
    tmp_path: Path, supervisors: Callable[[Path], Supervisor]
) -> None:
    """What a quick start's takeover relies on: the groups apply left running, and the
    processes start_stopped could not start (the holder's warning comes from there)."""
    supervisor = supervisors(tmp_path / "home")
    shared = shared_web(tmp_path, {"web_0": "sleep 30"})
    first = [program("a", "sleep 31", tmp_path), program("b", "sleep 32", tmp_path)]
    assert supervisor.apply(first, shared) == set()  # all of them new
    again = [first[0], program("b", "sleep 33", tmp_path)]
    assert supervisor.apply(again, shared) == {"a", "web"}
    failed = supervisor.start_stopped(["web_0", "a", "web_9"])
    assert failed == {"web_9": "supervisord has no such process"}
    supervisor.wait_running(["web_0", "a", "b"])


def test_supervisord_refuses_another_password_and_the_error_names_none(
    tmp_path: Path, supervisors: Callable[[Path], Supervisor]
) -> None:
    supervisor = supervisors(tmp_path / "home")
    guess = "a-guessed-password-4711"
    with pytest.raises(xmlrpc.client.ProtocolError) as refused:
        unix_rpc.server(supervisor.socket, RPC_USER, guess, 5.0).supervisor.getState()
    assert refused.value.errcode == 401
    assert guess not in f"{refused.value} {refused.value!r} {refused.value.url}"


def test_each_call_to_supervisord_closes_its_connection(
    tmp_path: Path, supervisors: Callable[[Path], Supervisor]
) -> None:
    """The agent calls supervisord for as long as it runs: no socket may wait for the
    garbage collector, after an answer or after an error."""
    supervisor = supervisors(tmp_path / "home")
    gc.disable()
    try:
        before = len(os.listdir("/proc/self/fd"))
        errors = []
        for _ in range(20):
            supervisor.states()
            try:
                supervisor.start_process("nothing", "nothing")
            except SupervisorError as exc:
                errors.append(exc)  # kept: its traceback must not hold a socket open
        assert len(errors) == 20
        assert len(os.listdir("/proc/self/fd")) <= before
    finally:
        gc.enable()


def test_a_removed_group_takes_its_escaped_children_and_no_other_homes(
    tmp_path: Path, supervisors: Callable[[Path], Supervisor]
) -> None:
    mine, other = supervisors(tmp_path / "mine"), supervisors(tmp_path / "other")
    mine.apply([program("worker", ESCAPING.format(marker="4712.1"), tmp_path)])
    other.apply([program("worker", ESCAPING.format(marker="4712.2"), tmp_path)])
    mine.wait_running(["worker"])
    other.wait_running(["worker"])
    wait_until(lambda: pids_running("4712.1") and pids_running("4712.2"), 10, "escapees")
    mine.apply([])
    assert not pids_running("4712.1")
    assert pids_running("4712.2"), "another home's process was ended"
    other.stop()
    assert not pids_running("4712.2")


def test_a_stopped_slot_takes_its_escaped_children(
    tmp_path: Path, supervisors: Callable[[Path], Supervisor]
) -> None:
    supervisor = supervisors(tmp_path / "home")
    commands = {
        "web_0": ESCAPING.format(marker="4712.3"),
        "web_1": ESCAPING.format(marker="4712.4"),
    }
    supervisor.apply([], shared_web(tmp_path, commands))
    supervisor.start_process("web", "web_0")
    supervisor.start_process("web", "web_1")
    supervisor.wait_running(["web_0", "web_1"])
    wait_until(lambda: pids_running("4712.3") and pids_running("4712.4"), 10, "escapees")
    [escapee] = pids_running("4712.3")
    assert f"{TAG_VARIABLE}={home_id(tmp_path / 'home')}:web_0" in environ(escapee)
    supervisor.stop_process("web", "web_0")
    assert not pids_running("4712.3")
    assert pids_running("4712.4")
    supervisor.apply([])  # the whole fcgi group goes
    assert not pids_running("4712.4")


def test_escaped_children_get_the_same_grace_as_their_program(
    tmp_path: Path, supervisors: Callable[[Path], Supervisor]
) -> None:
    """The program's own process ignores SIGTERM, so its stop takes the whole timeout;
    its escaped child still gets SIGTERM when the program does, not a SIGKILL after."""
    supervisor = supervisors(tmp_path / "home")
    graceful = "trap 'touch termed-$0; exit 0' TERM; while :; do sleep 0.1; done"
    command = f"setsid sh -c {shlex.quote(graceful)} {{}} & {STUBBORN}"
    worker = program("worker", command.format("worker"), tmp_path)
    supervisor.apply([worker], shared_web(tmp_path, {"web_0": command.format("web_0")}))
    supervisor.start_process("web", "web_0")
    supervisor.wait_running(["worker", "web_0"])
    supervisor.stop_process("web", "web_0")
    assert (tmp_path / "termed-web_0").exists()
    supervisor.apply([])
    assert (tmp_path / "termed-worker").exists()


def test_stop_ends_the_app_of_a_supervisord_that_died(
    tmp_path: Path, supervisors: Callable[[Path], Supervisor]
) -> None:
    supervisor = supervisors(tmp_path / "home")
    supervisor.apply([program("worker", ESCAPING.format(marker="4712.8"), tmp_path)])
    supervisor.wait_running(["worker"])
    worker = supervisor.states()["worker"]["pid"]
    wait_until(lambda: pids_running("4712.8"), 10, "the escapee")
    assert supervisor._process is not None
    supervisor._process.kill()
    supervisor._process.wait()
    assert alive(worker), "the app outlives its supervisord"
    supervisor.stop()
    assert not alive(worker)
    assert not pids_running("4712.8")


def test_a_dead_agents_supervisord_is_stopped_before_its_socket_is_reused(
    tmp_path: Path, supervisors: Callable[[Path], Supervisor]
) -> None:
    """Its supervisord is still stopping a stubborn app when the next one starts; as it
    exits it must not take the new supervisord's socket with it."""
    home = tmp_path / "home"
    old_agent = subprocess.Popen(
        [sys.executable, "-c", OLD_AGENT, str(home), STUBBORN], stdout=subprocess.PIPE, text=True
    )
    try:
        assert old_agent.stdout is not None
        # supervisord's own lines come first: the agent's is the bare pid.
        old_supervisord = int(next(ln for ln in old_agent.stdout if ln.strip().isdigit()))
    finally:
        old_agent.kill()
        old_agent.wait()
    supervisor = supervisors(home)
    assert not alive(old_supervisord)
    assert supervisor.states() == {}
    time.sleep(1)
    assert supervisor.states() == {}


def test_a_pid_reused_by_another_process_is_never_signalled(
    tmp_path: Path, supervisors: Callable[[Path], Supervisor]
) -> None:
    stranger = subprocess.Popen(["sleep", "1000"])
    try:
        (tmp_path / "home" / "run").mkdir(parents=True)
        (tmp_path / "home" / "run" / "supervisord.pid").write_text(f"{stranger.pid}\n")
        supervisors(tmp_path / "home")
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_start_up_ends_a_dead_agents_one_off_commands_but_not_its_own(
    tmp_path: Path, supervisors: Callable[[Path], Supervisor]
) -> None:
    home = tmp_path / "home"
    env = {**os.environ, TAG_VARIABLE: f"{home_id(home)}:oneoff"}
    leftover = ["setsid", "sh", "-c", "sleep 4712.5 & exit 0"]
    subprocess.run(leftover, env=env, check=True, timeout=10)
    mine = subprocess.Popen(["sleep", "4712.6"], env=env)
    try:
        wait_until(lambda: pids_running("4712.5"), 10, "the leftover")
        supervisors(home)
        assert not pids_running("4712.5")
        assert mine.poll() is None, "the agent's own child was ended"
    finally:
        mine.kill()
        mine.wait()


def test_one_off_commands_die_with_the_agent(tmp_path: Path) -> None:
    """The command itself gets the parent-death signal (its own children are ended by
    the next agent's start-up, see above)."""
    runner = subprocess.Popen([sys.executable, "-c", RUN_LOGGED, str(tmp_path)])
    try:
        wait_until(lambda: pids_running("4712.7"), 10, "the one-off command running")
    finally:
        runner.kill()
        runner.wait()
    wait_until(lambda: not pids_running("4712.7"), 10, "the one-off command ended")


def test_one_agent_per_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(home)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    child = int(holder.stdout.readline())
    try:
        before = sorted(str(path) for path in home.rglob("*"))
        content = (home / "lock").read_text()
        with pytest.raises(AnotherAgent) as raised:
            HomeLock(home).acquire()
        assert str(raised.value) == (
            f"another live-pull agent (pid {holder.pid}) owns LIVE_PULL_HOME={home}; "
            "only one agent may run per home"
        )
        assert sorted(str(path) for path in home.rglob("*")) == before
        assert (home / "lock").read_text() == content == f"{holder.pid}\n"
    finally:
        holder.kill()
        holder.wait()
    try:  # the holder's child outlives it and does not keep the lock
        assert alive(child)
        lock = HomeLock(home)
        lock.acquire()
        assert (home / "lock").read_text() == f"{os.getpid()}\n"
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)


def environ(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")


OLD_AGENT = """\
import sys, time
from pathlib import Path
from entrypoint.processes import home_id
from entrypoint.supervisor import Supervisor
from entrypoint.supervisor_config import ProgramSpec, Timings

home = Path(sys.argv[1])
supervisor = Supervisor(home / "run", Timings(1, 1, 3), home_id(home))
supervisor.start()
supervisor.apply([ProgramSpec("stubborn", sys.argv[2], home, {})])
supervisor.wait_running(["stubborn"])
print((home / "run" / "supervisord.pid").read_text().strip(), flush=True)
time.sleep(1000)
"""

RUN_LOGGED = """\
import sys, threading
from pathlib import Path
from entrypoint.commands import run_logged

cwd = Path(sys.argv[1])
run_logged(
    ["sleep", "4712.7"],
    cwd=cwd, env={"PATH": "/usr/bin:/bin"}, timeout=100,
    stop=threading.Event(), on_line=print,
)
"""

HOLD_LOCK = """\
import subprocess, sys, time
from pathlib import Path
from entrypoint.homelock import HomeLock

HomeLock(Path(sys.argv[1])).acquire()
child = subprocess.Popen(["sleep", "1000"], close_fds=False)
print(child.pid, flush=True)
time.sleep(1000)
"""
