"""The local repository on real git: remotes other users own, and telling damage
(rebuild) from a remote's failure (keep the repository, back off)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import git
import pytest

from entrypoint.auth import AuthSettings, GitAuth
from entrypoint.credentials import parse_repo_url
from entrypoint.demo import free_port
from entrypoint.errors import GitDiskError, GitError, LocalGitError
from entrypoint.repository import FETCHED_REF, RemoteRevision, Repository, _trusting_upload_pack
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


# -- healthy(): a remote's failure is not damage ------------------------------------


def test_healthy_after_the_remote_vanished(sample: SampleRepo, tmp_path: Path) -> None:
    repo, sha = fetched(tmp_path / "home", sample)
    shutil.move(sample.remote, tmp_path / "moved.git")
    for attempt in (lambda: repo.resolve("main"), lambda: repo.fetch(RemoteRevision(sha, None))):
        with pytest.raises(GitError) as caught:
            attempt()
        assert not isinstance(caught.value, LocalGitError), caught.value
    assert repo.healthy()
    assert repository(tmp_path / "home", sample.url).healthy()  # a fresh look agrees


def test_healthy_when_nothing_listens(sample: SampleRepo, tmp_path: Path) -> None:
    fetched(tmp_path / "home", sample)
    repo = repository(tmp_path / "home", f"http://127.0.0.1:{free_port()}/app.git")
    repo.open()  # same repository, the remote moved
    with pytest.raises(GitError) as caught:
        repo.fetch(RemoteRevision("0" * 40, "refs/heads/main"))
    assert not isinstance(caught.value, LocalGitError), caught.value
    assert repo.healthy()


# -- healthy(): damage ------------------------------------------------------------------


def object_file(repo: Repository, sha: str) -> Path:
    path = repo.path / "objects" / sha[:2] / sha[2:]
    assert path.is_file(), "expected a loose object (small fetches are unpacked)"
    return path


def truncate(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: text.index("[remote") + 5])


DAMAGE: dict[str, Callable[[Repository, str], None]] = {
    "objects removed": lambda repo, sha: shutil.rmtree(repo.path / "objects"),
    "HEAD garbage": lambda repo, sha: (repo.path / "HEAD").write_text("garbage\n"),
    "config truncated": lambda repo, sha: truncate(repo.path / "config"),
    "config emptied": lambda repo, sha: (repo.path / "config").write_text(""),
    "fetched ref garbage": lambda repo, sha: (repo.path / FETCHED_REF).write_text("garbage\n"),
    "fetched commit missing": lambda repo, sha: object_file(repo, sha).unlink(),
    "fetched commit corrupt": lambda repo, sha: object_file(repo, sha).write_bytes(b"x" * 64),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_unhealthy_when_damaged(damage: str, sample: SampleRepo, tmp_path: Path) -> None:
    repo, sha = fetched(tmp_path / "home", sample)
    assert repo.healthy()
    DAMAGE[damage](repo, sha)
    assert not repo.healthy()
    assert not repository(tmp_path / "home", sample.url).healthy()
    repo.rebuild()
    assert repo.fetch(repo.resolve("main")) == sha
    assert repo.healthy()


def test_a_corrupt_pack_found_by_a_read_is_damage(sample: SampleRepo, tmp_path: Path) -> None:
    repo, sha = fetched(tmp_path / "home", sample)
    subprocess.run(["git", "repack", "-a", "-d", "-q"], cwd=repo.path, check=True, timeout=30)
    (pack,) = (repo.path / "objects" / "pack").glob("*.pack")
    data = bytearray(pack.read_bytes())
    middle = 12 + (len(data) - 32) // 2  # past the header, before the trailer
    data[middle : middle + 8] = b"\xff" * 8
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    (tmp_path / "release").mkdir()
    with pytest.raises(LocalGitError) as caught:
        repo.export(sha, tmp_path / "release")
    assert "corrupt" in str(caught.value)
    assert not repo.healthy()  # a cheap check cannot see it; the failed read did
    repo.rebuild()
    assert repo.fetch(repo.resolve("main")) == sha and repo.healthy()


# -- a full disk: local, not damage ---------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
        capture_output=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True, timeout=30)


@needs_root
def test_disk_full_is_a_local_error_not_damage(
    sample: SampleRepo, small_disk: Path, tmp_path: Path
) -> None:
    big = os.urandom(2 * 1024 * 1024).hex()  # incompressible, larger than the disk
    sha = sample.commit({"big.txt": big}, "too big for the disk")
    repo = repository(small_disk / "home", sample.url)
    repo.open()
    with pytest.raises(GitDiskError) as caught:
        repo.fetch(RemoteRevision(sha, "refs/heads/main"))
    assert "No space left on device" in str(caught.value)
    assert repo.healthy()


# -- the remote's default branch -------------------------------------------------------


def test_the_default_branch_is_learnt_and_learnt_again(
    sample: SampleRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checks ask for the learnt branch alone (not every ref of the remote); a new
    default branch is learnt at the 10th check or once the learnt one is old, a branch
    gone at once."""
    repo = repository(tmp_path / "home", sample.url)
    repo.open()
    main = head(sample)
    assert repo.resolve(None) == RemoteRevision(main, "refs/heads/main")
    remote = git.Repo(sample.remote)
    other = sample.commit({"other.txt": "x"}, "on other", branch="other")
    remote.git.symbolic_ref("HEAD", "refs/heads/other")
    assert repo.resolve(None) == RemoteRevision(main, "refs/heads/main")  # learnt: main
    monkeypatch.setattr("entrypoint.repository.DEFAULT_BRANCH_SECONDS", 0.0)
    assert repo.resolve(None) == RemoteRevision(other, "refs/heads/other")  # too old
    monkeypatch.undo()
    remote.git.symbolic_ref("HEAD", "refs/heads/main")
    seen = [repo.resolve(None).ref_name for _ in range(10)]
    assert seen == ["refs/heads/other"] * 9 + ["refs/heads/main"], seen  # the 10th check
    remote.git.symbolic_ref("HEAD", "refs/heads/other")
    remote.git.branch("-D", "main")
    assert repo.resolve(None) == RemoteRevision(other, "refs/heads/other")  # main is gone
