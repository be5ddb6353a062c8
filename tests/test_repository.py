"""The local repository on real git: remotes other users own."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import git
import pytest

from entrypoint.auth import AuthSettings, GitAuth
from entrypoint.credentials import parse_repo_url
from entrypoint.repository import Repository, _trusting_upload_pack
from entrypoint.sample import SampleRepo, create_sample_repo

OTHER_UID = 12345
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mount)")


def repository(home: Path, url: str) -> Repository:
    home.mkdir(parents=True, exist_ok=True)
    auth = GitAuth(AuthSettings(), home)
    return Repository(home / "repo", parse_repo_url(url), depth=1, timeout=30, auth=auth)


def fetched(home: Path, sample: SampleRepo) -> tuple[Repository, str]:
    repo = repository(home, sample.url)
    repo.open()
    return repo, repo.fetch(repo.resolve("main"))


def head(sample: SampleRepo) -> str:
    return git.Repo(sample.work).head.commit.hexsha


def chown_tree(path: Path, uid: int) -> None:
    for item in [path, *path.rglob("*")]:
        os.lchown(item, uid, uid)


# -- a file:// remote another user owns (a bind mount) -------------------------------


@needs_root
@pytest.mark.parametrize("form", ["plain", "space in path", "trailing slash", "no .git suffix"])
def test_fetch_from_a_file_remote_another_user_owns(
    form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = create_sample_repo(tmp_path / "remote")
    served = tmp_path / "srv" / ("a b" if form == "space in path" else "") / "app.git"
    shutil.copytree(sample.remote, served)  # alone in its directory, for "no .git suffix"
    chown_tree(served, OTHER_UID)
    url = served.as_uri() + ("/" if form == "trailing slash" else "")
    url = url.removesuffix(".git") if form == "no .git suffix" else url
    # As in a container: no HOME, no global or system configuration.
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    bare_env = {"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1"}
    plain = subprocess.run(
        ["git", "ls-remote", url], env=bare_env, capture_output=True, text=True, timeout=30
    )
    assert plain.returncode != 0 and "dubious ownership" in plain.stderr  # git refuses it

    repo = repository(tmp_path / "home", url)
    repo.open()
    remote = repo.resolve(None)
    assert (remote.sha, remote.ref_name) == (head(sample), "refs/heads/main")
    assert repo.fetch(repo.resolve("main")) == head(sample)
    (tmp_path / "release").mkdir()
    repo.export(remote.sha, tmp_path / "release")
    assert (tmp_path / "release" / "app.py").is_file()


def test_only_the_remotes_own_paths_are_trusted() -> None:
    assert _trusting_upload_pack(None) == []
    key, _, command = _trusting_upload_pack("/srv/my app.git")[1].partition("=")
    assert key == "remote.origin.uploadpack"
    argv = shlex.split(command)
    trusted = [arg.partition("=")[2] for arg in argv if arg.startswith("safe.directory=")]
    assert trusted == [
        "/srv/my app.git/.git",
        "/srv/my app.git",
        "/srv/my app.git.git/.git",
        "/srv/my app.git.git",
    ]
    assert argv[0] == "git" and argv[-1] == "upload-pack"
