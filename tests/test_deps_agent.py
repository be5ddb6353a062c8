"""Dependencies as the agent handles them: installed only when the lockfile changes,
built beside the running revision, never replacing it when the install fails."""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from entrypoint.installers import pick_installer
from entrypoint.sample import APP, SampleRepo
from tests.conftest import AgentProcess, wait_until
from tests.faults.processes import marker, wait_gone

Factory = Callable[..., AgentProcess]

DEPS_APP = APP.format(message="placeholder").replace(
    "MESSAGE = 'placeholder'",
    "import tinypkg\nMESSAGE = os.environ.get('GREETING', 'hi') + ' tinypkg=' + tinypkg.VERSION",
)


@pytest.fixture
def uv_log(tmp_path: Path) -> tuple[Path, Path]:
    """A `uv` on PATH that records every invocation, then runs the real one."""
    real = pick_installer("uv").uv_path
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "uv-invocations.log"
    wrapper = bin_dir / "uv"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return bin_dir, log


def deps_env(wheelhouse: Path, **extra: str) -> dict[str, str]:
    return {"LIVE_PULL_INSTALL_ARGS": f"--no-index --find-links {wheelhouse}", **extra}


def app_files(pin: str, greeting: str = "hi") -> dict[str, str]:
    app = DEPS_APP.replace("'hi'", repr(greeting))
    return {"app.py": app, "Procfile": "web: python app.py\n", "requirements.txt": pin + "\n"}


def installs_run(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line != "--version"]


def test_unchanged_lockfile_costs_no_install_on_update_or_restart(
    sample: SampleRepo, agent_factory: Factory, wheelhouse: Path, uv_log: tuple[Path, Path]
) -> None:
    bin_dir, log = uv_log
    path = f"{bin_dir}:{os.environ['PATH']}"
    first = sample.commit(app_files("tinypkg==1.0"), "deps")
    agent = agent_factory(sample.url, PATH=path, **deps_env(wheelhouse))
    assert "tinypkg=1.0" in agent.wait_serving(first)
    status = agent.wait_status(state="running", installs=1)
    digest = status["deps_digest"]
    assert (agent.home / "venvs" / digest).is_dir()
    assert status["last_install_seconds"] > 0
    before = len(installs_run(log))
    assert before >= 1

    second = sample.commit(app_files("tinypkg==1.0", greeting="hello"), "code only")
    assert "hello tinypkg=1.0" in agent.wait_serving(second)
    status = agent.wait_status(state="running", updates=1)
    assert (status["installs"], status["deps_digest"]) == (1, digest)
    assert len(installs_run(log)) == before
    assert agent.stop()[0] == 0

    again = agent_factory(sample.url, home=agent.home, PATH=path, **deps_env(wheelhouse))
    again.wait_serving(second)
    status = again.wait_status(state="running")
    assert (status["installs"], status["deps_digest"]) == (0, digest)
    assert len(installs_run(log)) == before  # no installer process ran at all
    assert "installing dependencies" not in again.output()


def test_changed_lockfile_installs_once_into_a_new_environment(
    sample: SampleRepo, agent_factory: Factory, wheelhouse: Path
) -> None:
    first = sample.commit(app_files("tinypkg==1.0"), "v1")
    agent = agent_factory(sample.url, **deps_env(wheelhouse))
    agent.wait_serving(first)
    old = agent.wait_status(state="running")["deps_digest"]
    second = sample.commit(app_files("tinypkg==2.0"), "v2")
    assert "tinypkg=2.0" in agent.wait_serving(second)
    status = agent.wait_status(state="running", installs=2)
    assert status["deps_digest"] != old
    venvs = {p.name for p in (agent.home / "venvs").iterdir()}
    assert venvs == {old, status["deps_digest"]}  # the old one stays with its release
    progress = [line for line in agent.output().splitlines() if "install: " in line]
    assert any("+ tinypkg==2.0" in line and "elapsed=" in line for line in progress)
    assert "packages=2)" in progress[-1]


def test_environments_of_dropped_releases_are_collected(
    sample: SampleRepo, agent_factory: Factory, wheelhouse: Path
) -> None:
    first = sample.commit(app_files("tinypkg==1.0"), "v1")
    agent = agent_factory(sample.url, LIVE_PULL_KEEP_RELEASES="1", **deps_env(wheelhouse))
    agent.wait_serving(first)
    second = sample.commit(app_files("tinypkg==2.0"), "v2")
    agent.wait_serving(second)
    status = agent.wait_status(state="running", installs=2)
    venvs = wait_until(
        lambda: [p.name for p in (agent.home / "venvs").iterdir()] == [status["deps_digest"]]
    )
    assert venvs


def test_failing_install_keeps_the_old_revision_serving(
    sample: SampleRepo, agent_factory: Factory, wheelhouse: Path
) -> None:
    good = sample.commit(app_files("tinypkg==1.0"), "good")
    agent = agent_factory(sample.url, **deps_env(wheelhouse))
    agent.wait_serving(good)
    bad = sample.commit(app_files("tinypkg==9.9"), "a pin that does not exist")
    wait_until(lambda: bad in (agent.status().get("failed_revisions") or {}))
    status = agent.status()
    assert "install failed" in status["last_error"]
    # The installer's own lines are in the log, never in /status (they may hold anything
    # the installer read).
    assert "(output in the log)" in status["last_error"]
    assert "tinypkg" not in status["last_error"]
    assert wait_until(lambda: "install: " in agent.output() and "9.9" in agent.output())
    assert status["revision"] == good and status["ready"] is True
    assert f"revision {good[:12]}" in (agent.app() or "")
    assert "install failed" in agent.output()
    fixed = sample.commit(app_files("tinypkg==2.0"), "fixed")
    assert "tinypkg=2.0" in agent.wait_serving(fixed)


def test_install_killed_midway_is_never_reused(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    slow = tmp_path / "slow"
    slow.write_text("")
    sleeping = marker()  # `sleep <marker>` is this test's install, and no other process
    command = (
        f'if [ -e {slow} ]; then touch "$LIVE_PULL_ENV/started"; sleep {sleeping}; fi; '
        'echo installed > "$LIVE_PULL_ENV/done"'
    )
    files = {"app.py": APP.format(message="custom"), "Procfile": "web: python app.py\n"}
    sha = sample.commit(files, "custom install")
    env = {"LIVE_PULL_INSTALL_COMMAND": command}
    agent = agent_factory(sample.url, **env)
    venvs = agent.home / "venvs"
    wait_until(lambda: list(venvs.glob(".tmp-*/started")), what="install started")
    # A silent install still shows, every few seconds, that it is running.
    wait_until(lambda: "install running elapsed=" in agent.output(), 30, "progress line")
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait_exit()
    # The install dies with the agent (its wrapper ends everything it started).
    wait_gone(sleeping)
    assert [p.name for p in venvs.iterdir() if not p.name.startswith(".tmp-")] == []
    slow.unlink()
    again = agent_factory(sample.url, home=agent.home, **env)
    again.wait_serving(sha)
    status = again.wait_status(state="running", installs=1)
    assert (venvs / status["deps_digest"] / "done").read_text() == "installed\n"
    assert [p.name for p in venvs.iterdir()] == [status["deps_digest"]]


def test_install_command_for_non_python_apps(sample: SampleRepo, agent_factory: Factory) -> None:
    app = APP.format(message="placeholder").replace(
        "MESSAGE = 'placeholder'",
        "MESSAGE = open(os.path.join(os.environ['LIVE_PULL_ENV'], 'modules.txt')).read().strip()",
    )
    files = {"app.py": app, "Procfile": "web: python app.py\n", "package-lock.json": "v1"}
    first = sample.commit(files, "node-ish")
    env = {
        "LIVE_PULL_INSTALL_COMMAND": 'cp package-lock.json "$LIVE_PULL_ENV/modules.txt"',
        "LIVE_PULL_LOCKFILE": "package-lock.json",
    }
    agent = agent_factory(sample.url, **env)
    assert "v1 from revision" in agent.wait_serving(first)
    second = sample.commit({"package-lock.json": "v2"}, "lock change")
    assert "v2 from revision" in agent.wait_serving(second)
    agent.wait_status(state="running", installs=2)
    third = sample.commit({"README": "docs only"}, "no lock change")
    agent.wait_serving(third)
    assert agent.wait_status(state="running", updates=2)["installs"] == 2
