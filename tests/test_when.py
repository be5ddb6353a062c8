"""Control over when, on real processes: a pause holds updates (checks go on, /status
shows what waits) across an agent restart until resumed; a closed update window holds
an update, a plain sync too, and `sync --now` goes ahead."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import git

from entrypoint.sample import SampleRepo, app_files
from tests.conftest import AgentProcess, wait_until

Factory = Callable[..., AgentProcess]


def cli(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIVE_PULL_STATUS_PORT": str(agent.status_port)}
    return subprocess.run(
        [sys.executable, "-m", "entrypoint", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_waiting(agent: AgentProcess, sha: str, held_by: str) -> dict[str, Any]:
    """Until /status shows `sha` waiting, held by `held_by`; the status then."""

    def waiting() -> dict[str, Any] | None:
        status = agent.status()
        shown = status.get("waiting") or {}
        return status if (shown.get("sha"), shown.get("held_by")) == (sha, held_by) else None

    return dict(wait_until(waiting, what=lambda: f"{sha[:12]} waiting: {agent.status()}"))


def closed_window() -> str:
    """A daily window that opens in an hour: closed for as long as the test runs."""
    now = datetime.now(UTC)
    return f"{now + timedelta(hours=1):%H:%M}-{now + timedelta(hours=2):%H:%M} UTC"


def test_a_pause_outlives_a_restart_and_a_closed_window_waits_for_sync_now(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    first = git.Repo(sample.work).head.commit.hexsha
    agent = agent_factory(sample.url)
    agent.wait_serving(first)

    paused = cli(agent, "pause", "--reason", "release freeze")
    assert paused.returncode == 0 and paused.stdout.strip() == "paused", paused
    second = sample.commit(app_files("second"), "second")
    status = wait_waiting(agent, second, "pause")
    assert status["revision"] == first and status["paused"]["reason"] == "release freeze"
    assert f"revision {first[:12]}" in (agent.app() or "")
    shown = cli(agent, "status").stdout
    assert "release freeze" in shown and f"{second[:12]} (held by pause)" in shown

    assert "paused reason=release freeze" in agent.output()
    assert agent.stop()[0] == 0
    agent = agent_factory(sample.url, home=agent.home)
    agent.wait_serving(first)
    status = wait_waiting(agent, second, "pause")  # checked again after the restart: held
    assert status["paused"]["reason"] == "release freeze"

    resumed = cli(agent, "resume")
    assert resumed.returncode == 0 and resumed.stdout.strip() == "resumed", resumed
    agent.wait_serving(second)
    agent.wait_status(paused=None, waiting=None, updates=1)
    assert "resumed" in agent.output()
    assert agent.stop()[0] == 0

    agent = agent_factory(sample.url, home=agent.home, LIVE_PULL_UPDATE_WINDOW=closed_window())
    agent.wait_serving(second)
    third = sample.commit(app_files("third"), "third")
    status = wait_waiting(agent, third, "update window")
    assert status["waiting"]["next_window"] is not None and status["revision"] == second
    checks = status["checks"]
    assert cli(agent, "sync").returncode == 0
    wait_until(lambda: agent.status().get("checks", 0) >= checks + 2, what="two more checks")
    status = wait_waiting(agent, third, "update window")  # a plain sync waits too
    assert status["revision"] == second

    assert cli(agent, "sync", "--now").returncode == 0
    assert "third from revision" in agent.wait_serving(third)
    agent.wait_status(waiting=None)
