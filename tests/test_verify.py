"""LIVE_PULL_VERIFY: unsigned, badly signed or wrongly signed revisions never go live."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import git
import pytest

from entrypoint.sample import AUTHOR, SampleRepo, app_files
from tests import sshd
from tests.conftest import AgentProcess, wait_until

Factory = Callable[..., AgentProcess]


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An allowed signing key, another key, and the allowed signers file naming the first."""
    allowed = sshd.keygen(tmp_path / "signer")
    other = sshd.keygen(tmp_path / "intruder")
    signers = tmp_path / "allowed_signers"
    public = allowed.with_suffix(".pub").read_text().split()
    signers.write_text(f'{AUTHOR[1]} namespaces="git" {public[0]} {public[1]}\n')
    return allowed, other, signers


def signed(repo: git.Repo, key: Path) -> git.Git:
    """Run git with SSH signing by `key` switched on."""
    repo.git.update_environment(
        GIT_CONFIG_COUNT="3",
        GIT_CONFIG_KEY_0="gpg.format",
        GIT_CONFIG_VALUE_0="ssh",
        GIT_CONFIG_KEY_1="user.signingkey",
        GIT_CONFIG_VALUE_1=str(key),
        GIT_CONFIG_KEY_2="commit.gpgsign",
        GIT_CONFIG_VALUE_2="true",
    )
    return repo.git


def commit(sample: SampleRepo, message: str, key: Path | None) -> str:
    repo = git.Repo(sample.work)
    (sample.work / "app.py").write_text(app_files(message)["app.py"])
    repo.git.add("--all")
    runner = signed(repo, key) if key else repo.git
    name, email = AUTHOR
    runner.commit(
        "-m",
        message,
        author=f"{name} <{email}>",
        env={"GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email},
    )
    repo.git.push("--force", "origin", "HEAD:refs/heads/main")
    return repo.head.commit.hexsha


def refused(agent: AgentProcess, sha: str) -> str:
    failed = wait_until(
        lambda: (agent.status().get("failed_revisions") or {}).get(sha),
        30,
        lambda: f"{sha[:12]} refused: {agent.status()}",
    )
    return str(failed)


def test_only_commits_signed_by_allowed_keys_go_live(
    sample: SampleRepo, agent_factory: Factory, keys: tuple[Path, Path, Path]
) -> None:
    allowed, other, signers = keys
    good = commit(sample, "signed", allowed)
    agent = agent_factory(
        sample.url, LIVE_PULL_VERIFY="commit", LIVE_PULL_ALLOWED_SIGNERS_FILE=str(signers)
    )
    agent.wait_serving(good)
    for key, reason in ((None, "commit unsigned"), (other, "signed by a key that is not allowed")):
        bad = commit(sample, f"bad {reason}", key)
        assert reason in refused(agent, bad)
        assert not (agent.home / "releases" / bad).exists()  # never checked out
        assert os.readlink(agent.home / "current") == f"releases/{good}"
        assert f"revision {good[:12]}" in (agent.app() or "")
    newer = commit(sample, "signed again", allowed)
    agent.wait_serving(newer)
    assert "signature verified kind=commit" in agent.output()


def test_unsigned_first_revision_is_refused_at_start(
    sample: SampleRepo, agent_factory: Factory, keys: tuple[Path, Path, Path]
) -> None:
    _, _, signers = keys
    agent = agent_factory(
        sample.url, LIVE_PULL_VERIFY="commit", LIVE_PULL_ALLOWED_SIGNERS_FILE=str(signers)
    )
    assert agent.wait_exit() == 4
    assert "refused" in agent.output() and "unsigned" in agent.output()
    assert not (agent.home / "current").exists()


def test_tags_must_carry_an_allowed_signature(
    sample: SampleRepo, agent_factory: Factory, keys: tuple[Path, Path, Path]
) -> None:
    allowed, other, signers = keys
    repo = git.Repo(sample.work)
    first = repo.head.commit.hexsha
    signed(repo, allowed).tag("-s", "-m", "release", "release")
    repo.git.push("origin", "--tags")
    agent = agent_factory(
        sample.url,
        REPO_REF="release",
        LIVE_PULL_VERIFY="tag",
        LIVE_PULL_ALLOWED_SIGNERS_FILE=str(signers),
    )
    agent.wait_serving(first)
    for key, flags, reason in ((other, ["-s"], "not allowed"), (None, ["-a"], "unsigned")):
        sha = sample.commit(app_files(f"moved {reason}"), f"moved {reason}")
        runner = signed(git.Repo(sample.work), key) if key else git.Repo(sample.work).git
        runner.tag("-f", *flags, "-m", "moved", "release")
        git.Repo(sample.work).git.push("--force", "origin", "--tags")
        assert reason in refused(agent, sha)
        assert f"revision {first[:12]}" in (agent.app() or "")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LIVE_PULL_VERIFY": "commit"}, "LIVE_PULL_VERIFY: needs LIVE_PULL_ALLOWED_SIGNERS_FILE"),
        (
            {"LIVE_PULL_VERIFY": "tag", "LIVE_PULL_ALLOWED_SIGNERS_FILE": "/etc/hostname"},
            "LIVE_PULL_VERIFY: =tag needs REPO_REF naming a tag",
        ),
        (
            {"LIVE_PULL_VERIFY": "always"},
            "LIVE_PULL_VERIFY: Input should be 'off', 'commit' or 'tag'",
        ),
    ],
)
def test_bad_verify_configuration(env: dict[str, str], message: str) -> None:
    from tests.test_config import run_cli

    result = run_cli("check-config", env={"REPO_URL": "https://host.example/a.git", **env})
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"live-pull: configuration error: {message}")


def test_gpg_signatures_against_a_keyring(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(gnupg)}
    name, email = AUTHOR
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            f"{name} <{email}>",
            "ed25519",
            "sign",
            "never",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    keyring = tmp_path / "allowed.asc"
    keyring.write_bytes(
        subprocess.run(
            ["gpg", "--armor", "--export"], env=env, check=True, capture_output=True, timeout=30
        ).stdout
    )
    repo = git.Repo(sample.work)
    (sample.work / "app.py").write_text(app_files("gpg signed")["app.py"])
    repo.git.add("--all")
    repo.git.commit(
        "-S",
        f"--gpg-sign={email}",
        "-m",
        "gpg signed",
        env={
            "GNUPGHOME": str(gnupg),
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
        },
    )
    repo.git.push("--force", "origin", "HEAD:refs/heads/main")
    good = repo.head.commit.hexsha
    agent = agent_factory(sample.url, LIVE_PULL_VERIFY="commit", LIVE_PULL_GPG_KEYRING=str(keyring))
    agent.wait_serving(good)
    bad = commit(sample, "unsigned after gpg", None)
    assert "unsigned" in refused(agent, bad)
