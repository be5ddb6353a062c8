"""Python projects as they are laid out: each through code-only updates (old releases
collected) and one lock change, counting installs and checking that the code served
is the new release's own, run by the project's own console script."""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path

import pytest

from entrypoint.sample import SampleRepo
from tests import projects
from tests.conftest import AgentProcess, wait_until

Factory = Callable[..., AgentProcess]
Layout = Callable[[SampleRepo, Path, str, str], dict[str, str]]
CODE_ONLY_UPDATES = 4


def _workspace(sample: SampleRepo, wheelhouse: Path, message: str, pin: str) -> dict[str, str]:
    files = projects.uv_workspace(message, pin)
    sample.commit(files, "work tree for uv lock")  # uv lock reads the tree it locks
    return {**files, "uv.lock": projects.uv_lock(sample.work, wheelhouse)}


def _poetry(sample: SampleRepo, wheelhouse: Path, message: str, pin: str) -> dict[str, str]:
    return projects.poetry_project(message, pin, wheelhouse)


def _requirements(sample: SampleRepo, wheelhouse: Path, message: str, pin: str) -> dict[str, str]:
    return projects.requirements_project(message, pin)


def _unlocked(sample: SampleRepo, wheelhouse: Path, message: str, pin: str) -> dict[str, str]:
    return {"pyproject.toml": projects.pep621([f"tinypkg=={pin}"]), **projects.package(message)}


LAYOUTS: dict[str, tuple[Layout, str, bool]] = {
    # name: (files, app directory, locked)
    "uv-workspace-member": (_workspace, "backend", True),
    "poetry-package": (_poetry, "", True),
    "requirements-r-c-e": (_requirements, "", True),
    "src-layout-unlocked": (_unlocked, "", False),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_through_code_updates_and_a_lock_change(
    name: str, sample: SampleRepo, agent_factory: Factory, wheelhouse: Path
) -> None:
    layout, app_dir, locked = LAYOUTS[name]
    first = sample.commit(layout(sample, wheelhouse, "v0", "1.0"), f"{name} at v0")
    agent = agent_factory(
        sample.url,
        LIVE_PULL_APP_DIR=app_dir,
        LIVE_PULL_KEEP_RELEASES="2",
        LIVE_PULL_INSTALL_ARGS=f"--no-index --find-links {wheelhouse}",
    )
    _serves(agent, first, app_dir, "v0", "tinypkg=1.0")
    status = agent.wait_status(state="running", installs=1)
    assert status["deps_locked"] is locked
    digest = status["deps_digest"]

    for number in range(1, CODE_ONLY_UPDATES + 1):
        sha = sample.commit(layout(sample, wheelhouse, f"v{number}", "1.0"), f"code {number}")
        _serves(agent, sha, app_dir, f"v{number}", "tinypkg=1.0")
        status = agent.wait_status(state="running", updates=number)
        assert (status["installs"], status["deps_digest"]) == (1, digest)
    assert not (agent.home / "releases" / first).exists()  # collected: the code is not
    layers = sorted(p.name for p in (agent.home / "layers").iterdir())
    assert layers == sorted([*status["retained"], status["revision"]])

    changed = sample.commit(layout(sample, wheelhouse, "v9", "2.0"), "lock change")
    _serves(agent, changed, app_dir, "v9", "tinypkg=2.0")
    status = agent.wait_status(state="running", updates=CODE_ONLY_UPDATES + 1)
    assert status["installs"] == 2 and status["deps_digest"] != digest
    if not locked:
        assert "dependencies are not locked: pyproject.toml" in agent.output()


def _serves(agent: AgentProcess, sha: str, app_dir: str, message: str, dependency: str) -> None:
    """The new release answers with its own code, its project metadata and the pin."""
    text = agent.wait_serving(sha)
    own = agent.home / "releases" / sha / app_dir / "src" / "webapp" / "web.py"
    assert f"{message} webapp=1.2.3 {dependency} file={own.resolve()}" in text, text


def _refused(agent: AgentProcess, sample: SampleRepo, files: dict[str, str], good: str) -> str:
    """A revision refused before it runs: one line in /status, the old one serving."""
    bad = sample.commit(files, "refused")
    wait_until(lambda: bad in (agent.status().get("failed_revisions") or {}))
    status = agent.status()
    assert status["revision"] == good and status["ready"] is True
    assert f"revision {good[:12]}" in (agent.app() or "")
    assert "\n" not in status["last_error"]
    return str(status["last_error"])


def test_a_python_the_image_lacks_and_uv_cannot_obtain_is_refused_by_name(
    sample: SampleRepo, agent_factory: Factory, wheelhouse: Path
) -> None:
    good = sample.commit(_unlocked(sample, wheelhouse, "v0", "1.0"), "good")
    agent = agent_factory(
        sample.url,
        LIVE_PULL_INSTALL_ARGS=f"--no-index --find-links {wheelhouse}",
        UV_PYTHON_DOWNLOADS="never",  # the tests never reach the internet
    )
    _serves(agent, good, "", "v0", "tinypkg=1.0")
    wants = {**_unlocked(sample, wheelhouse, "v1", "1.0"), ".python-version": "3.99\n"}
    error = _refused(agent, sample, wants, good)
    image = platform.python_version()
    assert error.startswith("python: the app asks for .python-version 3.99, requires-python >=3.9")
    assert f"available: {image} (the image's)" in error
    pythons = agent.home / "pythons"  # uv's own bookkeeping only, no interpreter
    assert not [p for p in pythons.iterdir() if not p.name.startswith(".")]

    ranged = _unlocked(sample, wheelhouse, "v2", "1.0")
    ranged["pyproject.toml"] = ranged["pyproject.toml"].replace(">=3.9", ">=3.99")
    assert "requires-python >=3.99" in _refused(agent, sample, ranged, good)

    fits = {**_unlocked(sample, wheelhouse, "v3", "1.0"), ".python-version": f"{image}\n"}
    _serves(agent, sample.commit(fits, "the image's own"), "", "v3", "tinypkg=1.0")


def test_a_workspace_lock_out_of_date_is_refused_and_can_be_named(
    sample: SampleRepo, agent_factory: Factory, wheelhouse: Path
) -> None:
    good = sample.commit(_workspace(sample, wheelhouse, "v0", "1.0"), "good")
    agent = agent_factory(
        sample.url,
        LIVE_PULL_APP_DIR="backend",
        LIVE_PULL_LOCKFILE="../uv.lock",
        LIVE_PULL_INSTALL_ARGS=f"--no-index --find-links {wheelhouse}",
    )
    _serves(agent, good, "backend", "v0", "tinypkg=1.0")
    stale = projects.uv_workspace("v1", "2.0")  # pyproject.toml moved, uv.lock did not
    error = _refused(agent, sample, stale, good)
    assert error == "uv.lock is out of date with pyproject.toml (tinypkg): run uv lock"
    assert agent.status()["installs"] == 1
    relocked = _workspace(sample, wheelhouse, "v2", "2.0")
    _serves(agent, sample.commit(relocked, "relocked"), "backend", "v2", "tinypkg=2.0")
