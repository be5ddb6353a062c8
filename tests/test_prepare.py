"""`live-pull prepare` end to end: a real repository, real installs from local wheels, a
real release step; then `live-pull run` on the prepared home, offline, then online."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from entrypoint.processes import find_tagged, home_id
from entrypoint.sample import SampleRepo
from tests.conftest import AgentProcess
from tests.git_http import GitHttpServer
from tests.test_deps_agent import app_files, deps_env

Factory = Callable[..., AgentProcess]

RELEASE = 'release: python -c "import tinypkg; print(tinypkg.VERSION)" > migrated\n'
PREPARE_TIMEOUT = 120.0


def prepare(url: str, home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REPO_URL": url, "LIVE_PULL_HOME": str(home), **extra}
    return subprocess.run(
        [sys.executable, "-m", "entrypoint", "prepare", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=PREPARE_TIMEOUT,
        check=False,
    )


def with_release_step(files: dict[str, str], step: str = RELEASE) -> dict[str, str]:
    return {**files, "Procfile": files["Procfile"] + step}


def test_prepared_home_serves_offline_then_follows(
    sample: SampleRepo, agent_factory: Factory, wheelhouse: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    sha = sample.commit(with_release_step(app_files("tinypkg==1.0", "baked")), "v1")

    done = prepare(sample.url, home, **deps_env(wheelhouse))

    assert done.returncode == 0, done.stderr
    line = re.fullmatch(r"prepared sha=(\w+) digest=(\w+) release=ran in [\d.]+s\n", done.stdout)
    assert line is not None and line[1] == sha, done.stdout
    assert (home / "venvs" / line[2]).is_dir()
    assert (home / "releases" / sha / "migrated").read_text() == "1.0\n"  # in its environment
    assert os.readlink(home / "current") == f"releases/{sha}"
    assert not (home / "run").exists()  # supervisord never started
    assert find_tagged(home_id(home)) == []  # and nothing of this home still runs

    offline = sample.remote.rename(sample.remote.with_name("moved.git"))
    agent = agent_factory(sample.url, home=home, **deps_env(wheelhouse))
    assert "baked tinypkg=1.0" in agent.wait_serving(sha)
    busy = prepare(sample.url, home, **deps_env(wheelhouse))
    assert busy.returncode == 1
    assert busy.stderr.splitlines()[-1].startswith("live-pull: error: another live-pull agent")

    offline.rename(sample.remote)
    newer = sample.commit(with_release_step(app_files("tinypkg==1.0", "followed")), "v2")
    assert "followed tinypkg=1.0" in agent.wait_serving(newer)
    assert agent.wait_status(state="running")["installs"] == 0  # the baked environment
    assert agent.stop()[0] == 0


def test_failed_release_step_exits_non_zero_with_one_line_and_runs_again_next_time(
    sample: SampleRepo, tmp_path: Path
) -> None:
    """An init container that failed (its database not up yet) is started again: the
    step runs again, though the release is on disk and no state.json was written."""
    database = tmp_path / "database-up"
    step = f"release: test -e {database} || {{ echo no database >&2; exit 3; }}; touch migrated\n"
    sha = sample.commit(with_release_step(app_files("tinypkg==1.0"), step), "needs a database")
    home = tmp_path / "home"

    done = prepare(sample.url, home, LIVE_PULL_INSTALL_COMMAND="true")

    assert done.returncode == 1
    assert done.stdout == ""
    last = done.stderr.splitlines()[-1]
    assert last == "live-pull: error: release step failed code=3 (output in the log)"
    assert not (home / "current").exists()  # nothing recorded as good

    database.touch()
    again = prepare(sample.url, home, LIVE_PULL_INSTALL_COMMAND="true")
    assert again.returncode == 0, again.stderr
    assert f"prepared sha={sha} " in again.stdout and "release=ran in" in again.stdout
    assert (home / "releases" / sha / "migrated").exists()
    once_more = prepare(sample.url, home, LIVE_PULL_INSTALL_COMMAND="true")
    assert "release=done-before" in once_more.stdout, once_more.stdout  # ran, and recorded


@pytest.mark.parametrize("newer_migrates", [False, True], ids=["no-step-since", "a-step-since"])
def test_a_rollback_to_a_release_prepared_without_its_step(
    sample: SampleRepo,
    agent_factory: Factory,
    wheelhouse: Path,
    tmp_path: Path,
    newer_migrates: bool,
) -> None:
    """`prepare --skip-release` leaves the step to the release's first start. That
    start failed (the database was not up) and the remote's newer revision served
    instead. A rollback to the prepared release runs its step before it serves, unless
    a step ran since (the newer revision's): the database is ahead then, where the old
    step fails (as Alembic does), and has nothing left to do."""
    database, ahead = tmp_path / "database-up", tmp_path / "schema-ahead"
    step = (
        f"release: test -e {database} || {{ echo no database >&2; exit 3; }};"
        f" test ! -e {ahead} || {{ echo unknown revision >&2; exit 4; }}; touch migrated\n"
    )
    files = app_files("tinypkg==1.0", "prepared")
    prepared = sample.commit(with_release_step(files, step), "needs a database")
    home = tmp_path / "home"
    done = prepare(sample.url, home, "--skip-release", **deps_env(wheelhouse))
    assert done.returncode == 0, done.stderr
    assert f"prepared sha={prepared} " in done.stdout and "release=skipped" in done.stdout

    newer_step = f"release: touch {ahead}\n" if newer_migrates else ""
    newer_files = with_release_step(app_files("tinypkg==1.0", "newer"), newer_step)
    newer = sample.commit(newer_files, "newer")
    agent = agent_factory(sample.url, home=home, **deps_env(wheelhouse))
    assert "newer" in agent.wait_serving(newer)
    assert ahead.exists() == newer_migrates
    assert not (home / "releases" / prepared / "migrated").exists()

    database.touch()
    rolled = agent.cli("rollback", prepared)
    assert f"serving {prepared[:12]}" in rolled, rolled
    assert "prepared" in agent.wait_serving(prepared)
    # Its step ran before it served, or not at all when a newer one had run.
    assert (home / "releases" / prepared / "migrated").exists() != newer_migrates
    assert agent.stop()[0] == 0


def test_no_credential_is_left_in_the_home(sample: SampleRepo, tmp_path: Path) -> None:
    token = "ghp_prepare-secret-0123456789"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    home = tmp_path / "home"
    with GitHttpServer(sample.remote.parent, credentials=("x-access-token", token)) as server:
        done = prepare(
            server.url(sample.remote.name), home, LIVE_PULL_GIT_TOKEN_FILE=str(token_file)
        )
    assert done.returncode == 0, done.stderr
    assert not (home / "credentials").exists()
    leaked = [p for p in home.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert leaked == []
    assert token not in done.stdout + done.stderr
