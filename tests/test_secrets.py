"""A token in REPO_URL works, and shows up nowhere: argv, logs, /status, the app, disk."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import git

from entrypoint.demo import free_port
from entrypoint.sample import APP, SampleRepo
from tests.conftest import AgentProcess, wait_until
from tests.git_http import GitHttpServer

Factory = Callable[..., AgentProcess]
USER = "deploy-bot"
TOKEN = "s3cr3t-t0ken-value-1234"

ENV_DUMP_APP = APP.replace(
    "REVISION = ",
    "import json, pathlib\n"
    "pathlib.Path(os.environ['ENV_DUMP']).write_text(json.dumps(dict(os.environ)))\n"
    "REVISION = ",
)


def test_token_in_url_is_used_and_never_leaks(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    files = {"app.py": ENV_DUMP_APP.format(message="private"), "Procfile": "web: python app.py\n"}
    sha = sample.commit(files, "private app")
    dump = tmp_path / "app-env.json"
    with GitHttpServer(sample.remote.parent, credentials=(USER, TOKEN)) as server:
        url = server.url(sample.remote.name, userinfo=f"{USER}:{TOKEN}")
        agent = agent_factory(url, ENV_DUMP=str(dump))
        agent.wait_serving(sha)
        newer = sample.commit({"app.py": ENV_DUMP_APP.format(message="private two")}, "two")
        agent.wait_serving(newer)
        status_text = json.dumps(agent.status())
        argv = server.git_client_argv()
        code, _ = agent.stop()

    assert code == 0
    assert not [line for line in argv if TOKEN in line], "token in some process's argv"
    assert TOKEN not in agent.output()
    assert USER not in agent.output()
    assert TOKEN not in status_text
    assert f"http://***@127.0.0.1:{server.base_url.rsplit(':', 1)[1]}" in status_text
    app_env = json.loads(dump.read_text())
    assert TOKEN not in json.dumps(app_env)
    assert app_env["REPO_URL"] == server.url(sample.remote.name)
    assert app_env["LIVE_PULL_REVISION"] == newer
    _assert_only_private_files_hold(agent.home, TOKEN)


def _assert_only_private_files_hold(home: Path, secret: str) -> None:
    holders = []
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
            holders.append(path)
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == 0o600, f"{path} holds the secret with mode {oct(mode)}"
    assert holders == [home / "credentials"]


def test_wrong_token_fails_fast_with_clear_error(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    with GitHttpServer(sample.remote.parent, credentials=(USER, TOKEN)) as server:
        url = server.url(sample.remote.name, userinfo=f"{USER}:wrong-{TOKEN}")
        agent = agent_factory(url, LIVE_PULL_START_TIMEOUT="2")
        assert agent.wait_exit(timeout=30) == 4
    assert "Authentication failed" in agent.output()
    assert TOKEN not in agent.output()


def test_no_credentials_never_prompts(sample: SampleRepo, agent_factory: Factory) -> None:
    with GitHttpServer(sample.remote.parent, credentials=(USER, TOKEN)) as server:
        agent = agent_factory(server.url(sample.remote.name), LIVE_PULL_START_TIMEOUT="2")
        assert agent.wait_exit(timeout=30) == 4
    assert "could not start" in agent.output()


def test_credentials_file_removed_when_url_has_none(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    with GitHttpServer(sample.remote.parent, credentials=(USER, TOKEN)) as server:
        agent = agent_factory(server.url(sample.remote.name, userinfo=f"{USER}:{TOKEN}"))
        agent.wait_serving(git.Repo(sample.work).head.commit.hexsha)
        assert (agent.home / "credentials").exists()
        assert agent.stop()[0] == 0
    again = agent_factory(sample.url, home=agent.home, PORT=str(free_port()))
    wait_until(lambda: again.status().get("checks", 0) >= 1)
    assert not (agent.home / "credentials").exists()
    assert os.path.exists(agent.home / "current")
