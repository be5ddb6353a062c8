"""Submodules: off by default; opt-in fetches each at its recorded commit, same rules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import git
import pytest

from entrypoint.credentials import parse_repo_url
from entrypoint.errors import RevisionError
from entrypoint.sample import SampleRepo, create_sample_repo
from entrypoint.submodules import resolve_url
from tests.conftest import AgentProcess, wait_until

Factory = Callable[..., AgentProcess]


def add_submodule(sample: SampleRepo, root: Path) -> tuple[str, str]:
    """A library repository beside the app's, added as submodule `lib` by relative URL."""
    lib = create_sample_repo(root / "lib", message="library")
    lib_sha = lib.commit({"VERSION": "lib 1\n"}, "lib v1")
    target = sample.remote.parent / "lib.git"
    lib.remote.rename(target)
    repo = git.Repo(sample.work)
    repo.git.execute(
        ["git", "-c", "protocol.file.allow=always", "submodule", "add", "../lib.git", "lib"]
    )
    sha = sample.commit({}, "add lib as a submodule")
    return sha, lib_sha


def test_submodules_off_by_default_and_fetched_when_on(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    sha, lib_sha = add_submodule(sample, tmp_path / "libsrc")
    off = agent_factory(sample.url, home=tmp_path / "home-off")
    off.wait_serving(sha)
    assert not (off.home / "releases" / sha / "lib" / "VERSION").exists()
    assert off.stop()[0] == 0

    on = agent_factory(sample.url, home=tmp_path / "home-on", LIVE_PULL_SUBMODULES="true")
    on.wait_serving(sha)
    version = on.home / "releases" / sha / "lib" / "VERSION"
    assert version.read_text() == "lib 1\n"
    assert wait_until(lambda: "submodule exported" in on.output())
    assert lib_sha


@pytest.mark.parametrize(
    ("parent", "url", "expected"),
    [
        ("https://host.example/org/app.git", "../lib.git", "https://host.example/org/lib.git"),
        ("git@host.example:org/app.git", "../lib.git", "git@host.example:org/lib.git"),
        ("file:///srv/app.git", "../lib.git", "file:///srv/lib.git"),
    ],
)
def test_relative_urls_resolve_like_git(parent: str, url: str, expected: str) -> None:
    assert resolve_url(parse_repo_url(parent), url).url == expected


@pytest.mark.parametrize(
    "url", ["ext::sh -c touch% /tmp/x", "file:///etc/secrets.git", "ftp://host/x.git"]
)
def test_submodule_urls_follow_the_transport_rules(url: str) -> None:
    with pytest.raises(RevisionError, match="submodule URL refused"):
        resolve_url(parse_repo_url("https://host.example/org/app.git"), url)
