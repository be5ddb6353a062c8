"""Following the branch: real repositories, real supervisord, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import git
import pytest
import requests

from entrypoint.sample import APP, SampleRepo, app_files
from tests.conftest import AgentProcess, wait_until
from tests.git_http import GitHttpServer

Factory = Callable[..., AgentProcess]


def first_sha(sample: SampleRepo) -> str:
    return git.Repo(sample.work).head.commit.hexsha


def test_new_commit_is_served_over_file_url(sample: SampleRepo, agent_factory: Factory) -> None:
    agent = agent_factory(sample.url)
    agent.wait_serving(first_sha(sample))
    sha = sample.commit(app_files("second"), "second")
    assert "second from revision" in agent.wait_serving(sha)
    status = agent.wait_status(state="running", revision=sha, updates=1)
    assert status["ref"] == "refs/heads/main"
    assert os.readlink(agent.home / "current") == f"releases/{sha}"
    code, _ = agent.stop()
    assert code == 0


def test_new_commit_is_served_over_smart_http(
    sample: SampleRepo, agent_factory: Factory, git_http: GitHttpServer
) -> None:
    agent = agent_factory(git_http.url(sample.remote.name))
    agent.wait_serving(first_sha(sample))
    sha = sample.commit(app_files("over http"), "http")
    assert "over http" in agent.wait_serving(sha)
    assert any("git-upload-pack" in path for path in git_http.requests)


def test_force_push_backwards_is_followed(sample: SampleRepo, agent_factory: Factory) -> None:
    old = first_sha(sample)
    new = sample.commit(app_files("newer"), "newer")
    agent = agent_factory(sample.url)
    agent.wait_serving(new)
    repo = git.Repo(sample.work)
    repo.git.reset("--hard", old)
    repo.git.push("--force", "origin", "HEAD:refs/heads/main")
    agent.wait_serving(old)


def test_tag_annotated_tag_and_commit_refs(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    tagged = first_sha(sample)
    repo = git.Repo(sample.work)
    repo.git.tag("light-v1")
    repo.git.tag("-a", "v1", "-m", "release v1")
    repo.git.push("origin", "--tags")
    head = sample.commit(app_files("after the tags"), "later")
    for ref, expected in (("light-v1", tagged), ("v1", tagged), (tagged, tagged), ("main", head)):
        agent = agent_factory(sample.url, home=tmp_path / f"home-{ref}", REPO_REF=ref)
        agent.wait_serving(expected)
        assert agent.stop()[0] == 0


def test_annotated_tag_moved_is_followed(sample: SampleRepo, agent_factory: Factory) -> None:
    repo = git.Repo(sample.work)
    repo.git.tag("-a", "stable", "-m", "stable")
    repo.git.push("origin", "--tags")
    agent = agent_factory(sample.url, REPO_REF="stable")
    agent.wait_serving(first_sha(sample))
    sha = sample.commit(app_files("stable two"), "two")
    repo.git.tag("-f", "-a", "stable", "-m", "stable again")
    repo.git.push("--force", "origin", "--tags")
    agent.wait_serving(sha)


def test_app_dir_and_two_process_types(sample: SampleRepo, agent_factory: Factory) -> None:
    worker = (
        "import os, pathlib, time\n"
        "path = pathlib.Path(os.environ['HEARTBEAT'])\n"
        "path.write_text(os.environ['LIVE_PULL_REVISION'] + ' ' + os.getcwd())\n"
        "time.sleep(3600)\n"
    )
    files = {
        "services/web/app.py": APP.format(message="nested"),
        "services/web/worker.py": worker,
        "services/web/Procfile": "web: python app.py\nworker: python worker.py\n",
    }
    sha = sample.commit(files, "nested app with a worker")
    heartbeat = sample.remote.parent / "heartbeat"
    agent = agent_factory(sample.url, LIVE_PULL_APP_DIR="services/web", HEARTBEAT=str(heartbeat))
    assert "nested" in agent.wait_serving(sha)
    revision, cwd = wait_until(lambda: heartbeat.exists() and heartbeat.read_text()).split(" ")
    assert revision == sha
    assert cwd == str(agent.home / "releases" / sha / "services" / "web")
    names = {line.split()[0] for line in _supervisor_status(agent)}
    # web's two slots, one serving, and the holder of its socket
    assert names == {"web:web_0", "web:web_1", "web:web_2", "worker"}


def _supervisor_status(agent: AgentProcess) -> list[str]:
    conf = agent.home / "run" / "supervisord.conf"
    result = subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "status"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_sighup_and_sync_check_at_once(sample: SampleRepo, agent_factory: Factory) -> None:
    agent = agent_factory(sample.url, LIVE_PULL_POLL_INTERVAL="0")
    agent.wait_serving(first_sha(sample))
    sha = sample.commit(app_files("after hup"), "hup")
    os.kill(agent.pid, signal.SIGHUP)
    agent.wait_serving(sha, timeout=20)
    sha = sample.commit(app_files("after sync"), "sync")
    response = requests.post(agent.status_url("/sync"), timeout=5)
    assert response.status_code == 202
    agent.wait_serving(sha, timeout=20)


def test_polling_off_never_checks_by_itself(sample: SampleRepo, agent_factory: Factory) -> None:
    agent = agent_factory(sample.url, LIVE_PULL_POLL_INTERVAL="0")
    first = first_sha(sample)
    agent.wait_serving(first)
    sample.commit(app_files("unseen"), "unseen")
    time.sleep(4)
    assert f"revision {first[:12]}" in (agent.app() or "")


def test_shared_paths_persist_across_releases(sample: SampleRepo, agent_factory: Factory) -> None:
    counter_app = APP.replace(
        "def do_GET(self):\n",
        "def do_GET(self):\n"
        "        import pathlib\n"
        "        db = pathlib.Path('data/count.txt')\n"
        "        n = int(db.read_text()) + 1 if db.exists() else 1\n"
        "        db.write_text(str(n))\n"
        "        pathlib.Path('notes.txt').open('a').write('x')\n",
    )
    files = {
        "app.py": counter_app.format(message="counter"),
        "Procfile": "web: python app.py\n",
        "data/.keep": "",
    }
    sha = sample.commit(files, "counter")
    agent = agent_factory(sample.url, LIVE_PULL_SHARED_PATHS="data/,notes.txt")
    agent.wait_serving(sha)
    agent.app()
    new = sample.commit({"app.py": counter_app.format(message="counter two")}, "two")
    agent.wait_serving(new)
    shared = agent.home / "shared"
    count = int((shared / "data" / "count.txt").read_text())
    assert count >= 3  # requests to both releases added to one file
    assert (shared / "notes.txt").read_text().count("x") == count
    assert (agent.home / "releases" / new / "data").resolve() == (shared / "data").resolve()


def test_old_releases_are_collected(sample: SampleRepo, agent_factory: Factory) -> None:
    agent = agent_factory(sample.url, LIVE_PULL_KEEP_RELEASES="2")
    shas = [first_sha(sample)]
    agent.wait_serving(shas[0])
    for n in range(3):
        shas.append(sample.commit(app_files(f"release {n}"), f"release {n}"))
        agent.wait_serving(shas[-1])
    agent.wait_status(state="running", updates=3)
    releases = sorted(p.name for p in (agent.home / "releases").iterdir())
    assert releases == sorted(shas[-2:])


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_file_remote_owned_by_another_user(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    # A bind-mounted repository whose files belong to another uid than the agent's.
    for item in [sample.remote, *sample.remote.rglob("*")]:
        os.lchown(item, 12345, 12345)
    empty_home = tmp_path / "empty-home"  # no global git configuration to lean on
    empty_home.mkdir()
    agent = agent_factory(sample.url, HOME=str(empty_home))
    agent.wait_serving(first_sha(sample))
    assert "dubious ownership" not in agent.output()
