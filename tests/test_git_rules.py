"""git under the agent's rules only: no configuration, hook or insteadOf from a place the
app can write, and credentials for REPO_URL's own origin alone."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path

import git
import pytest

from entrypoint.config import load_settings
from entrypoint.credentials import credential_origin, parse_repo_url, plain_http_elsewhere
from entrypoint.errors import ConfigError
from entrypoint.sample import SampleRepo, app_files, create_sample_repo
from tests.conftest import AgentProcess, wait_until
from tests.git_http import GitHttpServer

Factory = Callable[..., AgentProcess]
TOKEN = "ghs_gitRulesToken0123456789abcdef"


def test_hostile_config_and_hooks_are_ignored_and_a_revert_wins(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    """What a bad revision (running as the agent's uid) could leave: a ~/.gitconfig and
    an XDG config sending the remote elsewhere, and a hook plus insteadOf in the local
    repository. The next fetch still goes to REPO_URL and runs nothing."""
    attacker = create_sample_repo(tmp_path / "attacker", message="attacker")
    attacker_sha = attacker.commit(app_files("attacker"), "attacker's")
    marker = tmp_path / "hook-ran"
    home = tmp_path / "app-home"
    (home / ".config" / "git").mkdir(parents=True)
    redirect = f'[url "{attacker.url}"]\n\tinsteadOf = {sample.url}\n'
    (home / ".gitconfig").write_text(redirect)
    (home / ".config" / "git" / "config").write_text(redirect)
    agent = agent_factory(sample.url, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    first = git.Repo(sample.work).head.commit.hexsha
    agent.wait_serving(first)

    repo = agent.home / "repo"
    hook = repo / "hooks" / "reference-transaction"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    for key, value in (
        (f"url.{attacker.url}.insteadOf", sample.url),
        ("core.hooksPath", str(repo / "hooks")),
        ("core.fsmonitor", f"touch {marker}"),
    ):
        subprocess.run(["git", "-C", str(repo), "config", key, value], check=True)
    (repo / "objects" / "info").mkdir(exist_ok=True)
    (repo / "objects" / "info" / "alternates").write_text(str(attacker.remote / "objects"))

    reverted = sample.commit(app_files("reverted"), "the operator's revert")
    assert "reverted" in agent.wait_serving(reverted)
    assert not marker.exists()
    assert attacker_sha not in (agent.home / "state.json").read_text()
    config = subprocess.run(
        ["git", "-C", str(repo), "config", "--local", "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "insteadof" not in config.lower() and "hookspath" not in config.lower()
    assert not (repo / "objects" / "info" / "alternates").exists()
    assert "removing configuration live-pull did not write" in agent.output()


def _with_submodule_elsewhere(sample: SampleRepo, lib: SampleRepo, url: str) -> str:
    """A gitlink `lib` (a clone in place, which `git add` records as one) and its URL."""
    git.Repo.clone_from(lib.work, sample.work / "lib")
    gitmodules = f'[submodule "lib"]\n\tpath = lib\n\turl = {url}\n'
    return sample.commit({".gitmodules": gitmodules}, "a submodule on another host")


def test_a_submodule_on_another_origin_gets_no_credentials(
    agent_factory: Factory, tmp_path: Path
) -> None:
    app_root, lib_root = tmp_path / "app", tmp_path / "lib"
    sample = create_sample_repo(app_root)
    lib = create_sample_repo(lib_root, message="library")
    good = git.Repo(sample.work).head.commit.hexsha
    with (
        GitHttpServer(app_root, credentials=("x-access-token", TOKEN)) as main,
        GitHttpServer(lib_root, credentials=("x-access-token", "other")) as other,
    ):
        agent = agent_factory(
            main.url(sample.remote.name),
            LIVE_PULL_GIT_TOKEN=TOKEN,
            LIVE_PULL_SUBMODULES="true",
        )
        agent.wait_serving(good)
        _with_submodule_elsewhere(sample, lib, other.url(lib.remote.name))
        error = wait_until(
            lambda: (
                "submodule lib" in str(agent.status().get("last_error"))
                and str(agent.status()["last_error"])
            ),
            60,
            lambda: agent.output()[-3000:],
        )
        assert other.requests, "the submodule's server was never asked"
        sent = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
        assert all(sent not in header for header in other.authorizations)
        assert main.authorizations  # the main repository did get its credentials
        assert f"only {main.base_url} does" in error
        assert agent.status()["revision"] == good  # the good one keeps serving


@pytest.mark.parametrize(
    ("url", "elsewhere"),
    [
        ("http://git.internal.example/app.git", True),
        ("http://127.0.0.1:8080/app.git", False),
        ("http://[::1]:8080/app.git", False),
        ("http://localhost/app.git", False),
        ("https://git.internal.example/app.git", False),
    ],
)
def test_plain_http_credentials_only_to_this_machine(url: str, elsewhere: bool) -> None:
    assert plain_http_elsewhere(parse_repo_url(url)) is elsewhere


def test_http_credentials_elsewhere_need_the_operators_word() -> None:
    env = {"REPO_URL": "http://git.internal.example/app.git", "LIVE_PULL_GIT_TOKEN": TOKEN}
    with pytest.raises(ConfigError, match="LIVE_PULL_ALLOW_HTTP_CREDENTIALS=true"):
        load_settings(env)
    allowed = load_settings({**env, "LIVE_PULL_ALLOW_HTTP_CREDENTIALS": "true"})
    assert allowed.auth.origin == "http://git.internal.example"
    assert load_settings({"REPO_URL": "http://git.internal.example/app.git"}).auth.kind == "none"
    secret = parse_repo_url("https://user:pw@Git.Example:8443/org/app.git")
    assert credential_origin(secret) == "https://git.example:8443"
