"""The quick start (entrypoint/quickstart.py): a restart with nothing changed starts
what served before the agent's modules load, and the agent takes it over without
starting anything again; anything that differs is replaced, as at any start."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from entrypoint.demo import free_port
from entrypoint.processes import find_tagged, home_id
from entrypoint.quickstart import RECORD_NAME
from entrypoint.sample import APP, PROCFILE, SampleRepo, app_files
from tests.conftest import AgentProcess, wait_until

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
    first.wait_status(state="running", revision=sha)  # the record is written by then
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
    assert TAKEN_OVER in out, out[-4000:]
    assert out.count("worker up") == 1  # started once, by the quick start, and kept
    if listen:
        assert out.count("spawned: 'web' with pid") == 1, out
    else:
        assert ADOPTED in out
        assert out.count("spawned: 'web_0' with pid") == 1, out
        assert "starting web in slot=" not in out
    again.wait_status(state="running")


def test_another_environment_starts_as_always(sample: SampleRepo, agent_factory: Factory) -> None:
    env = same_start()
    sha = served_then_stopped(agent_factory, sample, env)

    again = agent_factory(sample.url, **env, SOMETHING_NEW="1")
    again.wait_serving(sha)

    out = again.output()
    assert TAKEN_OVER not in out
    assert "no quick start: the environment, the user or live-pull differ" in out
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
    assert TAKEN_OVER in again.output(), again.output()[-4000:]


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
    assert TAKEN_OVER in out, out[-4000:]
    assert ADOPTED not in out
    assert "stopping web slot=web_0" in out
    assert "starting web in slot=web_0 beside slot=-" in out


def test_a_record_others_could_have_written_is_not_used(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    """It names commands that a root supervisord starts: only the agent's own counts."""
    env = same_start()
    sha = served_then_stopped(agent_factory, sample, env)
    record = tmp_path / "home" / "run" / RECORD_NAME
    record.chmod(0o644)

    again = agent_factory(sample.url, **env)
    again.wait_serving(sha)

    out = again.output()
    assert f"no quick start: {record} is not the agent's alone" in out
    assert TAKEN_OVER not in out
    # Written anew by the agent once the revision serves: after /status names it.
    wait_until(
        lambda: stat.S_IMODE(record.stat().st_mode) == 0o600,
        what="the record written anew, the agent's alone",
    )


def test_an_agent_killed_while_the_old_web_drains_starts_the_new_revision_next_time(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    """The new revision serves once proven: an agent killed before the old web has
    drained (it ignores SIGTERM) leaves neither its state nor its record naming the old
    one, so the next start serves the new one, and no quick start brings back the old."""
    stubborn = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    first = sample.commit({"app.py": stubborn + APP.format(message="stubborn")}, "stubborn")
    env = {**same_start(), "LIVE_PULL_STOP_TIMEOUT": "6", "LIVE_PULL_BAKE_SECONDS": "0"}
    agent = agent_factory(sample.url, **env)
    agent.wait_serving(first)
    second = sample.commit(app_files("second"), "second")
    agent.wait_serving(second)
    agent.wait_status(state="draining")  # the stubborn web holds it there for 6 s
    agent.kill(timeout=30)

    sample.remote.rename(sample.remote.with_name("moved-away.git"))
    again = agent_factory(sample.url, **env)
    again.wait_serving(second, timeout=15)  # from disk: the remote is gone

    out = again.output()
    assert TAKEN_OVER not in out, out[-4000:]
    assert f"starting revision sha={first[:12]}" not in out


def test_a_stop_while_the_quick_start_waits_for_the_web_is_an_orderly_one(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    """SIGTERM before the agent has its own handlers (the quick start waits for a web
    that is slow to answer): the agent starts, then stops the app in order, exit 0."""
    env = same_start()
    served_then_stopped(agent_factory, sample, env, "web: sleep 3 && python app.py\n")

    again = agent_factory(sample.url, **env)
    wait_until(lambda: "spawned: 'web_0'" in again.output(), what="the quick start's web")
    code, _ = again.stop()

    out = again.output()
    assert code == 0, out
    assert "stopping: asked to while the quick start served" in out
    assert "stopping app and supervisord" in out
    assert find_tagged(home_id(tmp_path / "home")) == []


def test_what_the_quick_start_began_stops_when_the_agent_cannot_serve_it(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    """The release step left to this start fails: the agent fetches instead (from a
    remote that is gone: it retries), and the web the quick start began, which the agent
    does not serve, stops meanwhile."""
    env = {**same_start(), "LIVE_PULL_START_TIMEOUT": "300"}
    flag = tmp_path / "release-fails"
    procfile = f"{PROCFILE}release: test ! -e {flag}\n"
    sha = served_then_stopped(agent_factory, sample, env, procfile)
    state_path = tmp_path / "home" / "state.json"
    state = json.loads(state_path.read_text())
    state["unreleased"] = [sha]
    state_path.write_text(json.dumps(state))
    flag.write_text("")
    sample.remote.rename(sample.remote.with_name("gone.git"))

    again = agent_factory(sample.url, **env)

    wait_until(lambda: "last good revision did not start" in again.output())
    assert TAKEN_OVER in again.output(), again.output()[-4000:]
    wait_until(lambda: again.app() is None, 15, "the quick start's web to stop")
    assert "stopping app and supervisord" not in again.output()  # the agent retries on


@pytest.mark.parametrize("listen", ["", "off"], ids=["shared-socket", "listen-off"])
def test_a_worker_the_quick_start_left_fatal_is_started_again(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path, listen: str
) -> None:
    """The worker fails once, in the quick start (FATAL at once: no retries). The
    configuration is the agent's own, so applying it starts nothing: the agent starts
    the worker again itself, and the revision serves on, with no fetch."""
    marker = tmp_path / "worker-ran-once"
    worker = f"worker: test -e {marker} && exec sleep 3600 || {{ touch {marker}; exit 1; }}\n"
    env = {
        **same_start(),
        "LIVE_PULL_START_RETRIES": "0",
        **({"LIVE_PULL_LISTEN": listen} if listen else {}),
    }
    marker.write_text("")  # the first start's worker runs at once
    sha = served_then_stopped(agent_factory, sample, env, PROCFILE + worker)
    marker.unlink()

    again = agent_factory(sample.url, **env)
    again.wait_serving(sha)
    again.wait_status(state="running")

    out = again.output()
    assert TAKEN_OVER in out, out[-4000:]
    assert "gave up: worker entered FATAL state" in out
    assert "last good revision did not start" not in out
    assert again.status()["app_down"] is None
