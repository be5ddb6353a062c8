"""Release step faults: it fails, hangs, floods, leaves children, dies with the agent.

Pass criterion throughout: the release step runs before anything is stopped, so the
old revision serves until a new one is proven; nothing the step started outlives it.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from entrypoint.sample import APP, create_sample_repo
from tests.conftest import wait_until
from tests.faults.agents import Agent, Family, Launcher, Prober, head
from tests.faults.processes import marker, pids_with, wait_gone

RELEASE_TIMEOUT = "3"


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory, module_launcher: Launcher) -> Family:
    return Family(
        tmp_path_factory.mktemp("release-family"),
        module_launcher,
        LIVE_PULL_RELEASE_TIMEOUT=RELEASE_TIMEOUT,
    )


@pytest.fixture
def agent(family: Family) -> Agent:
    return family.ready()


def with_release(step: str, message: str) -> dict[str, str]:
    return {
        "Procfile": f"release: {step}\nweb: python app.py\n",
        "app.py": APP.format(message=message),
    }


def _running(agent: Agent) -> str:
    return str(agent.status()["revision"])


def _refused(family: Family, agent: Agent, step: str) -> dict[str, object]:
    running = _running(agent)
    with Prober(agent, running) as probe:
        bad = family.commit(with_release(step, "never served"), "bad release step")
        status = agent.wait_failed(bad)
    probe.assert_served()
    assert status["error_kind"] == "rejected"
    assert status["revision"] == running
    assert agent.readyz() == 200
    return status


def test_release_step_fails(family: Family, agent: Agent) -> None:
    status = _refused(family, agent, "echo migration exploded; exit 7")
    assert "code=7" in str(status["last_error"])
    assert "migration exploded" not in str(status["last_error"])  # in the log only
    assert "release: migration exploded" in agent.output()
    fixed = family.good("migration fixed")
    agent.wait_serving(fixed)


def test_release_step_hangs(family: Family, agent: Agent) -> None:
    sleeping = marker()
    status = _refused(family, agent, f"sleep {sleeping}")
    assert f"timed out after {RELEASE_TIMEOUT}s" in str(status["last_error"])
    wait_gone(sleeping)
    fixed = family.good("migration fixed")
    agent.wait_serving(fixed)


def test_release_step_floods_its_output_then_fails(family: Family, agent: Agent) -> None:
    flood = (
        "python -c \"import sys; sys.stdout.write('y' * 5000000 + chr(10)); "
        "[print('line', i) for i in range(20000)]; sys.exit(9)\""
    )
    status = _refused(family, agent, flood)
    assert "code=9" in str(status["last_error"])
    assert len(str(status["last_error"])) < 8000  # the tail, not the flood
    assert len(json.dumps(agent.status())) < 100_000
    fixed = family.good("quiet again")
    agent.wait_serving(fixed)


def test_release_step_background_child_does_not_survive(family: Family, agent: Agent) -> None:
    sleeping = marker()
    sha = family.commit(with_release(f"sleep {sleeping} & echo started", "bg"), "bg child")
    agent.wait_serving(sha)
    wait_gone(sleeping)


def test_release_step_setsid_child_does_not_survive(family: Family, agent: Agent) -> None:
    sleeping = marker()
    step = (
        "python -c \"import subprocess; subprocess.Popen(['sleep', '"
        + sleeping
        + "'], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\""
    )
    sha = family.commit(with_release(step, "setsid child"), "setsid child")
    agent.wait_serving(sha)
    wait_gone(sleeping)


def test_release_step_reading_stdin_does_not_block(family: Family, agent: Agent) -> None:
    sha = family.commit(with_release("read line; echo read=$line", "stdin"), "reads stdin")
    agent.wait_serving(sha)
    agent.wait_status(revision=sha, ready=True)


def test_release_step_dies_with_the_agent(launcher: Launcher, tmp_path: Path) -> None:
    sample = create_sample_repo(tmp_path / "remote")
    env = {"LIVE_PULL_RELEASE_TIMEOUT": "120"}
    agent = launcher.agent(sample.url, tmp_path / "home", **env)
    running = head(sample)
    agent.wait_serving(running)
    slow, gate, sleeping = tmp_path / "slow", tmp_path / "gate", marker()
    slow.write_text("")
    gate.write_text("")
    step = (
        f"if [ -e {slow} ]; then sleep {sleeping}; fi; "
        f"while [ -e {gate} ]; do sleep 0.1; done; echo migrated"
    )
    pending = sample.commit(with_release(step, "after the kill"), "slow release step")
    wait_until(lambda: pids_with(sleeping), what="the release step under way")
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait_exit()
    wait_gone(sleeping)  # the step's processes die with the agent
    slow.unlink()
    again = launcher.agent(sample.url, agent.home, **env)
    again.wait_serving(running)  # the last good one, at once, while the step waits
    gate.unlink()
    again.wait_serving(pending)  # then the interrupted revision, tried again
    assert pending not in again.failed()
