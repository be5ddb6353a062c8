"""The quick start (entrypoint/quickstart.py): a restart with nothing changed starts
what served before the agent's modules load, and the agent takes it over without
starting anything again; anything that differs is replaced, as at any start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from entrypoint.demo import free_port
from entrypoint.quickstart import RECORD_NAME
from entrypoint.sample import PROCFILE, SampleRepo, app_files
from tests.conftest import AgentProcess

Factory = Callable[..., AgentProcess]
TAKEN_OVER = "taking over the quick start"
ADOPTED = "the web a quick start began serves on slot=web_0"
WORKER = "worker: python -c \"import time; print('worker up', flush=True); time.sleep(3600)\"\n"


def same_start() -> dict[str, str]:
    """What makes two starts of a home the same to the quick start: one environment."""
    return {"PORT": str(free_port()), "LIVE_PULL_STATUS_PORT": str(free_port())}


def served_then_stopped(
    factory: Factory, sample: SampleRepo, env: dict[str, str], procfile: str = PROCFILE
) -> str:
    """A first start of a new revision (no quick start: no record yet); returns its sha."""
    sha = sample.commit({**app_files("quick"), "Procfile": procfile}, "v1")
    first = factory(sample.url, **env)
    first.wait_serving(sha)
    assert TAKEN_OVER not in first.output()
    assert first.stop()[0] == 0
    assert (first.home / "run" / RECORD_NAME).is_file()
    return sha


@pytest.mark.parametrize("listen", ["", "off"], ids=["shared-socket", "listen-off"])
def test_a_restart_with_nothing_changed_takes_over_what_the_quick_start_began(
    sample: SampleRepo, agent_factory: Factory, listen: str
) -> None:
    env = {**same_start(), **({"LIVE_PULL_LISTEN": listen} if listen else {})}
    sha = served_then_stopped(agent_factory, sample, env, PROCFILE + WORKER)

    again = agent_factory(sample.url, **env)
    again.wait_serving(sha)

    out = again.output()
    assert TAKEN_OVER in out
    assert out.count("worker up") == 1  # started once, by the quick start, and kept
    if listen:
        assert out.count("spawned: 'web' with pid") == 1, out
    else:
        assert ADOPTED in out
        assert out.count("spawned: 'web_0' with pid") == 1, out
        assert "starting web in slot=" not in out
    assert again.status()["state"] == "running"


def test_another_environment_starts_as_always(sample: SampleRepo, agent_factory: Factory) -> None:
    env = same_start()
    sha = served_then_stopped(agent_factory, sample, env)

    again = agent_factory(sample.url, **env, SOMETHING_NEW="1")
    again.wait_serving(sha)

    out = again.output()
    assert TAKEN_OVER not in out
    assert "starting web in slot=web_0 beside slot=-" in out


def test_prepare_leaves_the_next_start_to_the_agent(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    """`live-pull prepare` makes another revision the one to serve: what the record names
    must not serve again, not even for the moment before the agent replaces it."""
    env = same_start()
    served_then_stopped(agent_factory, sample, env)
    newer = sample.commit(app_files("prepared"), "v2")
    prepared = subprocess.run(
        [sys.executable, "-m", "entrypoint", "prepare"],
        env={**os.environ, "REPO_URL": sample.url, "LIVE_PULL_HOME": str(tmp_path / "home"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert prepared.returncode == 0, prepared.stderr
    assert not (tmp_path / "home" / "run" / RECORD_NAME).exists()

    again = agent_factory(sample.url, **env)
    again.wait_serving(newer)
    assert TAKEN_OVER not in again.output()


def test_a_home_held_by_another_agent_starts_nothing(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    env = same_start()
    sha = served_then_stopped(agent_factory, sample, env)
    serving = agent_factory(sample.url, **env)
    serving.wait_serving(sha)

    second = agent_factory(sample.url, **env)

    assert second.wait_exit() != 0
    out = second.output()
    assert "another live-pull agent" in out
    assert "supervisord started" not in out
    assert "quick start" not in out
    assert serving.app() is not None and serving.status()["revision"] == sha


@pytest.mark.parametrize("listen", ["", "off"], ids=["shared-socket", "listen-off"])
def test_a_quick_start_of_a_release_gone_from_disk_is_mended(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path, listen: str
) -> None:
    """The web the quick start began fails (its release is gone: FATAL at once, with no
    retries); the agent exports the revision again and starts it, though supervisord's
    configuration is unchanged."""
    env = {
        **same_start(),
        "LIVE_PULL_START_RETRIES": "0",
        **({"LIVE_PULL_LISTEN": listen} if listen else {}),
    }
    sha = served_then_stopped(agent_factory, sample, env)
    shutil.rmtree(tmp_path / "home" / "releases" / sha)

    again = agent_factory(sample.url, **env)
    again.wait_serving(sha)
    assert TAKEN_OVER in again.output()


def test_a_slot_assigned_something_else_is_stopped_and_replaced(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    env = same_start()
    sha = served_then_stopped(agent_factory, sample, env)
    assignment = tmp_path / "home" / "run" / "slots" / "web_0.json"
    changed = json.loads(assignment.read_text())
    changed["env"]["CHANGED_BY_HAND"] = "1"
    assignment.write_text(json.dumps(changed))

    again = agent_factory(sample.url, **env)
    again.wait_serving(sha)

    out = again.output()
    assert TAKEN_OVER in out
    assert ADOPTED not in out
    assert "stopping web slot=web_0" in out
    assert "starting web in slot=web_0 beside slot=-" in out
