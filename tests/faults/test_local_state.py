"""Local state faults: state.json, `current`, releases, the repository cache, the disk,
a second agent. The home is a small tmpfs where one can be mounted.

Pass criterion throughout: the app keeps serving, the shared data survives every
fault ("nothing is lost"), the error shows, and the next commit deploys.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from entrypoint.quickstart import RECORD_NAME
from tests.conftest import wait_until
from tests.faults.agents import Agent, Family, Launcher, Prober
from tests.faults.disk import Mounts, disk_full, read_only
from tests.faults.remote import remote_away

SHARED = "data/db.sqlite"


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory, module_launcher: Launcher) -> Iterator[Family]:
    mounts = Mounts()
    family = Family(
        tmp_path_factory.mktemp("local-family"),
        module_launcher,
        make_home=mounts.tmpfs,
        LIVE_PULL_SHARED_PATHS=SHARED,
    )
    family.on_restart.append(_seed_shared_data)
    try:
        yield family
    finally:
        module_launcher.close()  # nothing may run on the mounts when they go
        mounts.close()


def _seed_shared_data(family: Family) -> None:
    """What the app keeps in its shared path: it must survive every fault."""
    kept = family.home / "shared" / SHARED
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(f"precious {uuid.uuid4().hex}\n")
    family.notes["precious"] = kept.read_text()


def _nothing_lost(family: Family) -> None:
    kept = family.home / "shared" / SHARED
    assert kept.read_text() == family.notes["precious"]
    live = family.home / "current" / SHARED
    assert live.read_text() == family.notes["precious"]


@pytest.fixture
def agent(family: Family) -> Agent:
    return family.ready()


def _running(agent: Agent) -> str:
    return str(agent.status()["revision"])


def _state(home: Path) -> dict[str, object]:
    return dict(json.loads((home / "state.json").read_text()))


# -- restarts on a damaged home --------------------------------------------------------------


def _no_state(home: Path) -> Path:
    """Remove state.json, whatever it is now (a scenario before may have left a directory)."""
    state = home / "state.json"
    if state.is_dir() and not state.is_symlink():
        shutil.rmtree(state)
    else:
        state.unlink(missing_ok=True)
    return state


def _garbage(home: Path) -> None:
    _no_state(home).write_bytes(b"{{{ not json \x00\xff")


def _wrong_types(home: Path) -> None:
    _no_state(home).write_text('{"last_good": 12345}')


def _empty(home: Path) -> None:
    _no_state(home).write_text("")


def _a_directory(home: Path) -> None:
    state = _no_state(home)
    state.mkdir()
    (state / "junk").write_text("not a state file\n")


def _deleted(home: Path) -> None:
    _no_state(home)


def _current_deleted(home: Path) -> None:
    (home / "current").unlink()


@pytest.mark.parametrize(
    "damage",
    [_garbage, _wrong_types, _empty, _a_directory, _deleted, _current_deleted],
    ids=[
        "state-garbage",
        "state-wrong-types",
        "state-empty",
        "state-a-directory",
        "state-deleted",
        "current-deleted",
    ],
)
def test_start_offline_on_a_damaged_home(
    family: Family, agent: Agent, damage: Callable[[Path], None]
) -> None:
    """The remote is down too: what is on disk must be enough to serve at once."""
    running = _running(agent)
    home = agent.home
    family.stop()
    damage(home)
    try:
        with remote_away(family.sample):
            again = family.launch()
            again.wait_serving(running, timeout=30)
            status = again.wait_error(revision=running)  # the remote is down: it says so
            assert again.readyz() == 200
            assert status["ready"] is True
        newer = family.good("remote back")
        again.wait_serving(newer)
        again.wait_status(revision=newer, ready=True)
        wait_until(
            lambda: _state_names(home, newer), what="state.json rebuilt, naming the new revision"
        )
        _nothing_lost(family)
    finally:
        if (home / "state.json").is_dir():  # not healed: leave no trap for the next scenario
            _no_state(home)


def _state_names(home: Path, sha: str) -> bool:
    try:
        return _state(home).get("last_good") == sha
    except (OSError, ValueError):
        return False


def test_start_with_current_pointing_at_a_missing_release(family: Family, agent: Agent) -> None:
    running = _running(agent)
    home = agent.home
    family.stop()
    shutil.rmtree(home / "releases" / running)
    (home / "state.json").unlink()
    again = family.launch()
    again.wait_serving(running)  # fetched again: the remote is up
    newer = family.good("after a dangling current")
    again.wait_serving(newer)
    assert os.readlink(home / "current") == f"releases/{newer}"
    _nothing_lost(family)


def _objects_removed(repo: Path) -> None:
    shutil.rmtree(repo / "objects")
    (repo / "objects").mkdir()


def _head_garbage(repo: Path) -> None:
    (repo / "HEAD").write_bytes(b"garbage \x00\xff\n")


def _stale_locks(repo: Path) -> None:
    for name in ("shallow.lock", "index.lock", "config.lock", "HEAD.lock", "packed-refs.lock"):
        (repo / name).write_text("")
    (repo / "refs" / "live-pull").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "live-pull" / "fetched.lock").write_text("")


REPO_DAMAGE = [_objects_removed, _head_garbage, _stale_locks]
REPO_IDS = ["objects-removed", "HEAD-garbage", "stale-lock-files"]


@pytest.mark.parametrize("damage", REPO_DAMAGE, ids=REPO_IDS)
def test_repository_damaged_at_start(
    family: Family, agent: Agent, damage: Callable[[Path], None]
) -> None:
    home = agent.home
    family.stop()
    damage(home / "repo")
    newer = family.good("pushed while stopped")
    again = family.launch()
    again.wait_serving(newer)
    again.wait_status(revision=newer, ready=True, last_error=None)
    _nothing_lost(family)


# -- damage while running ------------------------------------------------------------------


@pytest.mark.parametrize("damage", REPO_DAMAGE, ids=REPO_IDS)
def test_repository_damaged_while_running(
    family: Family, agent: Agent, damage: Callable[[Path], None]
) -> None:
    damage(agent.home / "repo")
    newer = family.good("pushed after damage")
    agent.wait_serving(newer)
    agent.wait_status(revision=newer, ready=True)
    _nothing_lost(family)


def _unlink_current(home: Path) -> None:
    (home / "current").unlink()


def _current_to_nowhere(home: Path) -> None:
    (home / "current").unlink()
    (home / "current").symlink_to(Path("releases") / ("0" * 40))


def _running_release_deleted(home: Path) -> None:
    shutil.rmtree(home / "releases" / os.readlink(home / "current").split("/")[-1])


@pytest.mark.parametrize(
    "damage",
    [_unlink_current, _current_to_nowhere, _running_release_deleted],
    ids=["current-deleted", "current-to-a-missing-release", "running-release-deleted"],
)
def test_releases_damaged_while_running(
    family: Family, agent: Agent, damage: Callable[[Path], None]
) -> None:
    running = _running(agent)
    checks = agent.checks()
    damage(agent.home)
    wait_until(lambda: agent.checks() >= checks + 1, what="one more check")
    assert agent.serves(running)
    assert agent.alive()
    newer = family.good("after damage")
    agent.wait_serving(newer)
    assert os.readlink(agent.home / "current") == f"releases/{newer}"
    _nothing_lost(family)


def test_releases_directory_replaced_by_a_file(family: Family, agent: Agent) -> None:
    before = agent.status()
    running = str(before["revision"])
    releases = agent.home / "releases"
    aside = agent.home / "releases.aside"
    releases.rename(aside)
    releases.write_text("not a directory\n")
    try:
        with Prober(agent, running) as probe:
            pending = family.good("while releases/ is a file")
            status = agent.wait_error(after=before)
            # The loop survives it: it checks again, and says it is alive.
            wait_until(lambda: agent.checks() >= int(status.get("checks") or 0) + 1)
            assert agent.healthz() == 200
            assert agent.readyz() == 200
        probe.assert_served()
        assert "releases" in str(status["last_error"])
    finally:
        releases.unlink()
        aside.rename(releases)
    agent.wait_serving(pending)  # by itself, once the fault is gone
    assert pending not in agent.failed()
    newer = family.good("next commit")
    agent.wait_serving(newer)
    _nothing_lost(family)


def test_home_read_only_while_running(family: Family, agent: Agent) -> None:
    before = agent.status()
    running = str(before["revision"])
    with read_only(agent.home), Prober(agent, running) as probe:
        pending = family.good("while read-only")
        status = agent.wait_error(after=before)
        assert "read-only" in str(status["last_error"]).lower()
        assert agent.healthz() == 200
        assert agent.readyz() == 200
        assert agent.alive()
    probe.assert_served()
    agent.wait_serving(pending)  # by itself, once writable again
    assert pending not in agent.failed()
    _nothing_lost(family)


def test_home_full_while_running(family: Family, agent: Agent) -> None:
    if not os.path.ismount(agent.home):
        pytest.skip("no tmpfs could be mounted here (needs root): cannot fill the disk")
    before = agent.status()
    running = str(before["revision"])
    with disk_full(agent.home), Prober(agent, running) as probe:
        pending = family.good("while the disk is full")
        status = agent.wait_error(after=before)
        assert "no space" in str(status["last_error"]).lower()
        assert agent.healthz() == 200
        assert agent.readyz() == 200
        assert agent.alive()
    probe.assert_served()
    agent.wait_serving(pending)  # by itself, once there is room again
    assert pending not in agent.failed()
    _nothing_lost(family)


def test_commit_turns_a_shared_paths_parent_into_a_file(family: Family, agent: Agent) -> None:
    running = _running(agent)
    parent = SHARED.split("/")[0]
    with Prober(agent, running) as probe:
        bad = family.commit({parent: "a file where the shared directory goes\n"}, "bad")
        status = agent.wait_failed(bad)
        assert status["error_kind"] == "rejected"
        assert parent in str(status["last_error"])
        assert agent.healthz() == 200
        assert agent.alive()
    probe.assert_served()
    (family.sample.work / parent).unlink()
    fixed = family.good("shared path fixed")
    agent.wait_serving(fixed)
    assert bad in agent.failed()
    _nothing_lost(family)


def test_second_agent_on_the_same_home(family: Family, agent: Agent, launcher: Launcher) -> None:
    home = agent.home
    run = home / "run"
    before = _supervisords_files(run)
    second = launcher.agent(family.url, home)
    assert second.wait_exit() == 1
    final = [line for line in second.stderr_lines() if line.startswith("live-pull: ")]
    assert len(final) == 1, second.tail()
    assert str(agent.pid) in final[0]
    assert _supervisords_files(run) == before  # supervisord's socket and files untouched
    assert agent.alive()
    newer = family.good("still the first agent's")
    agent.wait_serving(newer)
    _nothing_lost(family)


def _supervisords_files(run: Path) -> dict[str, tuple[int, int]]:
    """What is in `run/`, by inode and mtime, but for what the first agent itself rewrites
    as its last switch settles and its bake ends (the slots' assignments, the record)."""
    rewritten = {"slots", RECORD_NAME}
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in run.iterdir()
        if p.name not in rewritten
    }
