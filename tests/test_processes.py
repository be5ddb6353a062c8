"""The agent's processes: one agent per home, nothing of a revision outlives it, one-off
commands die with the agent, and the app's output lands beside the agent's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import git

from entrypoint.demo import free_port
from entrypoint.processes import alive, find_tagged, home_id
from entrypoint.sample import APP, SampleRepo
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


def test_second_agent_on_a_home_exits_1_and_touches_nothing(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    first = agent_factory(sample.url)
    first.wait_serving(head(sample))
    socket = first.home / "run" / "supervisor.sock"
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
    agent = agent_factory(sample.url, LIVE_PULL_STOP_TIMEOUT="2")
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
    sha = sample.commit({"Procfile": "web: echo app-line-$PORT; exec python app.py\n"}, "echo")
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
    assert f"app-line-{agent.port}" in text
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
