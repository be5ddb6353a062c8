"""Dependency faults: a package that does not exist, a damaged environment, an installer
that hangs or is killed, a lockfile that goes back and forth.

Pass criterion throughout: the old revision serves while the new one's environment is
built; a failed install is recorded with the installer's words and not retried until
the ref moves; a damaged or half-made environment is never used.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
from pathlib import Path

import pytest

from entrypoint.installers import pick_installer
from entrypoint.sample import APP, create_sample_repo
from tests.conftest import wait_until
from tests.faults.agents import Agent, Family, Launcher, Prober
from tests.faults.processes import marker, pids_with, wait_gone
from tests.faults.remote import FaultyRemote


def deps_app(label: str) -> str:
    return APP.format(message="placeholder").replace(
        "MESSAGE = 'placeholder'",
        f"import tinypkg\nMESSAGE = {label!r} + ' tinypkg=' + tinypkg.VERSION",
    )


def files(label: str, requirements: str = "tinypkg==1.0\n") -> dict[str, str]:
    return {
        "app.py": deps_app(label),
        "Procfile": "web: python app.py\n",
        "requirements.txt": requirements,
    }


@pytest.fixture(scope="module")
def installer_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A `uv` first on PATH that records each invocation, then runs the real one."""
    real = pick_installer("uv").uv_path
    assert real is not None
    bin_dir = tmp_path_factory.mktemp("bin")
    log = bin_dir / "invocations.log"
    wrapper = bin_dir / "uv"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return bin_dir, log


def installs_run(log: Path) -> int:
    lines = log.read_text().splitlines() if log.exists() else []
    return sum(1 for line in lines if line.startswith("pip install"))


@pytest.fixture(scope="module")
def family(
    tmp_path_factory: pytest.TempPathFactory,
    module_launcher: Launcher,
    wheelhouse: Path,
    installer_log: tuple[Path, Path],
) -> Family:
    bin_dir, _ = installer_log
    return Family(
        tmp_path_factory.mktemp("deps-family"),
        module_launcher,
        good=files,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        LIVE_PULL_INSTALL_ARGS=f"--no-index --find-links {wheelhouse}",
        LIVE_PULL_INSTALL_TIMEOUT="6",
    )


@pytest.fixture
def agent(family: Family) -> Agent:
    return family.ready()


def _running(agent: Agent) -> str:
    return str(agent.status()["revision"])


def _refused_install(family: Family, agent: Agent, requirements: str, *words: str) -> str:
    """The install fails beside the running revision, which serves throughout."""
    running = _running(agent)
    with Prober(agent, running) as probe:
        bad = family.commit(files("bad deps", requirements), "bad dependencies")
        status = agent.wait_failed(bad)
    probe.assert_served()
    assert status["error_kind"] == "rejected"
    assert status["revision"] == running
    message = str(status["last_error"]).lower()
    assert "install" in message and "output in the log" in message
    # The installer's words are in the log; /status has a short reason only.
    assert all(word in agent.output().lower() for word in words), agent.output()[-2000:]
    return bad


def test_package_missing_from_the_index(
    family: Family, agent: Agent, installer_log: tuple[Path, Path]
) -> None:
    _, log = installer_log
    bad = _refused_install(family, agent, "tinypkg==1.0\nnosuchpkg==1.0\n", "nosuchpkg")
    # Skipped until the ref moves: no installer runs for it on later checks.
    installs, checks = installs_run(log), agent.checks()
    wait_until(lambda: agent.checks() >= checks + 2, what="two more checks")
    assert installs_run(log) == installs
    assert bad in agent.failed()
    fixed = family.good("fixed pins")
    assert "tinypkg=1.0" in agent.wait_serving(fixed)


def test_requirements_file_is_garbage(family: Family, agent: Agent) -> None:
    _refused_install(family, agent, "tinypkg===>>>1.0 !!\n")
    fixed = family.good("fixed requirements")
    agent.wait_serving(fixed)


def _environment(agent: Agent) -> Path:
    digest = agent.status()["deps_digest"]
    assert digest
    return agent.home / "venvs" / str(digest)


def _rebuilt_for_the_next_commit(family: Family, agent: Agent) -> None:
    """A code-only commit (same digest) must not run on the damaged environment."""
    before = int(agent.status()["installs"])
    newer = family.good("after damage")
    assert "tinypkg=1.0" in agent.wait_serving(newer)
    status = agent.wait_status(revision=newer, ready=True)
    assert status["installs"] == before + 1, "the damaged environment was reused"
    assert list(_environment(agent).glob("lib/python*/site-packages/tinypkg/__init__.py"))


def test_package_deleted_from_the_environment(family: Family, agent: Agent) -> None:
    running = _running(agent)
    for package in _environment(agent).glob("lib/python*/site-packages/tinypkg"):
        shutil.rmtree(package)
    assert agent.serves(running)
    _rebuilt_for_the_next_commit(family, agent)


def test_interpreter_deleted_from_the_environment(family: Family, agent: Agent) -> None:
    (_environment(agent) / "bin" / "python").unlink()
    _rebuilt_for_the_next_commit(family, agent)


def test_environment_replaced_by_a_file(family: Family, agent: Agent) -> None:
    environment = _environment(agent)
    aside = environment.with_name("aside-" + environment.name)
    environment.rename(aside)  # the running app keeps what it has loaded
    environment.write_text("not an environment\n")
    try:
        _rebuilt_for_the_next_commit(family, agent)
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    venvs = agent.home / "venvs"
    wait_until(
        lambda: all(p.is_dir() and not p.name.startswith(".") for p in venvs.iterdir()),
        what=lambda: f"only environments left in venvs/: {sorted(os.listdir(venvs))}",
    )


def test_lockfile_back_and_forth_reuses_environments(
    family: Family, agent: Agent, installer_log: tuple[Path, Path]
) -> None:
    _, log = installer_log
    two = family.commit(files("two", "tinypkg==2.0\n"), "to 2.0")
    assert "tinypkg=2.0" in agent.wait_serving(two)
    installs, status = installs_run(log), agent.wait_status(revision=two)
    for label, pin, version in [("one", "1.0", "1.0"), ("two again", "2.0", "2.0")]:
        sha = family.commit(files(label, f"tinypkg=={pin}\n"), label)
        assert f"tinypkg={version}" in agent.wait_serving(sha)
    assert installs_run(log) == installs  # both environments were kept and reused
    assert agent.wait_status(revision=sha)["installs"] == status["installs"]
    family.good("back to 1.0")


def test_install_hangs_on_an_index_that_never_answers(
    family: Family, agent: Agent, tmp_path: Path
) -> None:
    venvs = agent.home / "venvs"
    before = set(os.listdir(venvs))
    with FaultyRemote(tmp_path / "no-index") as index:
        index.set("blackhole")
        requirements = f"--find-links {index.url('')}\nhangpkg==1.0\n"
        _refused_install(family, agent, requirements, "timed out")
    wait_until(
        lambda: not {n for n in os.listdir(venvs) if n.startswith(".tmp-")} - before,
        what=lambda: f"the half-made environment removed: {sorted(os.listdir(venvs))}",
    )
    staging = str(venvs / ".tmp-")
    assert not [pid for pid in _pids_mentioning(staging)], "an installer outlived its timeout"
    fixed = family.good("index fixed")
    agent.wait_serving(fixed)


def _pids_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_installer_killed_with_the_agent(launcher: Launcher, tmp_path: Path) -> None:
    slow, sleeping = tmp_path / "slow", marker()
    slow.write_text("")
    command = (
        f'if [ -e {slow} ]; then touch "$LIVE_PULL_ENV/started"; sleep {sleeping}; fi; '
        'echo installed > "$LIVE_PULL_ENV/done"'
    )
    sample = create_sample_repo(tmp_path / "remote")
    sha = sample.commit({"package-lock.json": "v1"}, "an install command")
    env = {"LIVE_PULL_INSTALL_COMMAND": command, "LIVE_PULL_LOCKFILE": "package-lock.json"}
    agent = launcher.agent(sample.url, tmp_path / "home", **env)
    venvs = agent.home / "venvs"
    wait_until(lambda: pids_with(sleeping), what="the install under way")
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait_exit()
    wait_gone(sleeping)  # the installer dies with the agent
    complete = [p for p in venvs.iterdir() if not p.name.startswith(".tmp-")]
    assert complete == [], "a half-made environment under its final name"
    slow.unlink()
    again = launcher.agent(sample.url, agent.home, **env)
    again.wait_serving(sha)
    status = again.wait_status(revision=sha, ready=True)
    assert status["installs"] == 1
    assert (venvs / str(status["deps_digest"]) / "done").read_text() == "installed\n"
    wait_until(lambda: [p.name for p in venvs.iterdir()] == [status["deps_digest"]])
