"""Every way of authenticating, against real servers on 127.0.0.1; nothing secret leaks."""

from __future__ import annotations

import getpass
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import git
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from entrypoint.sample import SampleRepo, app_files
from tests import sshd
from tests.conftest import AgentProcess
from tests.git_http import GitHttpServer
from tests.github_standin import GitHubStandIn
from tests.test_secrets import ENV_DUMP_APP

Factory = Callable[..., AgentProcess]
TOKEN = "ghs-rotating-token-0001"
NEW_TOKEN = "ghs-rotating-token-0002"


def assert_never_leaked(agent: AgentProcess, secret: str, status: str, argv: list[str]) -> None:
    assert not [line for line in argv if secret in line], "secret in a process's argv"
    assert secret not in agent.output()
    assert secret not in status
    for path in agent.home.rglob("*"):
        if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_token_file_is_reread_so_rotation_works(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    dump = tmp_path / "env.json"
    sha = sample.commit({"app.py": ENV_DUMP_APP.format(message="tok")}, "env dump")
    token_file = tmp_path / "secret" / "token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)  # as a Kubernetes Secret is often mounted
    with GitHttpServer(sample.remote.parent, credentials=("x-access-token", TOKEN)) as server:
        agent = agent_factory(
            server.url(sample.remote.name),
            LIVE_PULL_GIT_TOKEN_FILE=str(token_file),
            ENV_DUMP=str(dump),
        )
        agent.wait_serving(sha)
        server.credentials = ("x-access-token", NEW_TOKEN)  # the host rotates the token...
        token_file.write_text(NEW_TOKEN + "\n")  # ...and the Secret is updated in place
        newer = sample.commit({"app.py": ENV_DUMP_APP.format(message="rotated")}, "rotated")
        agent.wait_serving(newer)
        status, argv = json.dumps(agent.status()), server.git_client_argv()
        assert agent.stop()[0] == 0
    for secret in (TOKEN, NEW_TOKEN):
        assert_never_leaked(agent, secret, status, argv)
        assert secret not in dump.read_text()


def test_username_and_password_from_environment(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    dump = tmp_path / "env.json"
    sha = sample.commit({"app.py": ENV_DUMP_APP.format(message="pw")}, "env dump")
    with GitHttpServer(sample.remote.parent, credentials=("deployer", "pa55word-xyz")) as server:
        agent = agent_factory(
            server.url(sample.remote.name),
            LIVE_PULL_GIT_USERNAME="deployer",
            LIVE_PULL_GIT_PASSWORD="pa55word-xyz",
            ENV_DUMP=str(dump),
        )
        agent.wait_serving(sha)
        status, argv = json.dumps(agent.status()), server.git_client_argv()
    app_env = json.loads(dump.read_text())
    assert "LIVE_PULL_GIT_PASSWORD" not in app_env
    assert "pa55word-xyz" not in json.dumps(app_env)
    assert_never_leaked(agent, "pa55word-xyz", status, argv)


def test_wrong_token_names_the_method(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-the-token")
    with GitHttpServer(sample.remote.parent, credentials=("x-access-token", TOKEN)) as server:
        agent = agent_factory(
            server.url(sample.remote.name),
            LIVE_PULL_GIT_TOKEN_FILE=str(token_file),
            LIVE_PULL_START_TIMEOUT="2",
        )
        assert agent.wait_exit(timeout=30) == 4
    assert "authentication failed (method: HTTPS token from LIVE_PULL_GIT_TOKEN_FILE)" in (
        agent.output()
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {
                "LIVE_PULL_GIT_TOKEN": "tok-secret-value",
                "LIVE_PULL_GIT_TOKEN_FILE": "/etc/hostname",
            },
            "LIVE_PULL_GIT_TOKEN: set either it or LIVE_PULL_GIT_TOKEN_FILE, not both",
        ),
        (
            {"LIVE_PULL_GIT_TOKEN_FILE": "/nonexistent/token"},
            "LIVE_PULL_GIT_TOKEN_FILE: cannot read /nonexistent/token",
        ),
        (
            {
                "LIVE_PULL_GIT_TOKEN": "tok-secret-value",
                "LIVE_PULL_GIT_PASSWORD": "pw-secret-value",
            },
            "LIVE_PULL_GIT_PASSWORD: only one authentication method at a time",
        ),
        (
            {"REPO_URL": "git@host.example:org/app.git", "LIVE_PULL_GIT_TOKEN": "tok-secret-value"},
            "LIVE_PULL_GIT_TOKEN: needs an https:// or http:// REPO_URL",
        ),
        (
            {"LIVE_PULL_SSH_KEY_FILE": "/etc/hostname"},
            "LIVE_PULL_SSH_KEY_FILE: needs an ssh:// or user@host:path REPO_URL",
        ),
        (
            {"LIVE_PULL_SSH_STRICT_HOST_KEY_CHECKING": "maybe"},
            "LIVE_PULL_SSH_STRICT_HOST_KEY_CHECKING: Input should be a valid boolean",
        ),
    ],
)
def test_bad_auth_configuration(env: dict[str, str], message: str, tmp_path: Path) -> None:
    from tests.test_config import run_cli

    full = {"REPO_URL": "https://host.example/app.git", "LIVE_PULL_HOME": str(tmp_path), **env}
    result = run_cli("check-config", env=full)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"live-pull: configuration error: {message}")
    assert "secret-value" not in result.stderr


@pytest.fixture
def ssh_setup(tmp_path: Path, sample: SampleRepo) -> Iterator[tuple[sshd.SshServer, Path, str]]:
    if not sshd.available():
        pytest.skip("no sshd (Debian's openssh-server) on this machine: SSH tests skipped")
    client_key = sshd.keygen(tmp_path / "deploy_key")
    server_dir = tmp_path / "sshd"
    server_dir.mkdir()
    with sshd.SshServer(server_dir, client_key.with_suffix(".pub")) as server:
        url = f"ssh://{getpass.getuser()}@127.0.0.1:{server.port}{sample.remote}"
        yield server, client_key, url


def test_ssh_deploy_key_with_known_hosts(
    sample: SampleRepo,
    agent_factory: Factory,
    ssh_setup: tuple[sshd.SshServer, Path, str],
    tmp_path: Path,
) -> None:
    server, key, url = ssh_setup
    key.chmod(0o644)  # mounted loosely: live-pull's private copy is what ssh reads
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(server.known_hosts_line())
    agent = agent_factory(
        url, LIVE_PULL_SSH_KEY_FILE=str(key), LIVE_PULL_SSH_KNOWN_HOSTS_FILE=str(known_hosts)
    )
    agent.wait_serving(git.Repo(sample.work).head.commit.hexsha)
    sha = sample.commit(app_files("over ssh"), "ssh")
    agent.wait_serving(sha)
    copy = agent.home / "ssh" / "deploy-key"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    private = key.read_text()
    argv = server.git_client_argv()
    assert_never_leaked(agent, private.splitlines()[1], json.dumps(agent.status()), argv)


def test_ssh_wrong_host_key_is_refused(
    sample: SampleRepo,
    agent_factory: Factory,
    ssh_setup: tuple[sshd.SshServer, Path, str],
    tmp_path: Path,
) -> None:
    server, key, url = ssh_setup
    other = sshd.keygen(tmp_path / "other_host_key").with_suffix(".pub").read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{server.port} {other[0]} {other[1]}\n")
    agent = agent_factory(
        url,
        LIVE_PULL_SSH_KEY_FILE=str(key),
        LIVE_PULL_SSH_KNOWN_HOSTS_FILE=str(known_hosts),
        LIVE_PULL_START_TIMEOUT="2",
    )
    assert agent.wait_exit(timeout=60) == 4
    output = agent.output()
    assert "authentication failed (method: SSH deploy key from LIVE_PULL_SSH_KEY_FILE)" in output
    assert "Host key verification failed" in output or "HOST IDENTIFICATION HAS CHANGED" in output


def test_ssh_host_key_checking_off_warns_at_start(
    sample: SampleRepo, agent_factory: Factory, ssh_setup: tuple[sshd.SshServer, Path, str]
) -> None:
    _server, key, url = ssh_setup
    agent = agent_factory(
        url, LIVE_PULL_SSH_KEY_FILE=str(key), LIVE_PULL_SSH_STRICT_HOST_KEY_CHECKING="false"
    )
    agent.wait_serving(git.Repo(sample.work).head.commit.hexsha)
    assert "SSH host key checking is OFF" in agent.output()
    assert os.readlink(agent.home / "current").startswith("releases/")


def _app_key(tmp_path: Path) -> tuple[Path, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "app.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return path, key


def test_github_app_token_obtained_and_renewed_before_expiry(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    key_file, key = _app_key(tmp_path)
    with GitHttpServer(sample.remote.parent, credentials=("x-access-token", "none yet")) as server:

        def accept(token: str) -> None:
            server.credentials = ("x-access-token", token)  # only the newest token works

        # Tokens live 5 min + 3 s: each is renewed 3 s after it was issued.
        with GitHubStandIn(key.public_key(), "4242", "77", 303, accept) as github:
            agent = agent_factory(
                server.url(sample.remote.name),
                LIVE_PULL_GITHUB_APP_ID="4242",
                LIVE_PULL_GITHUB_APP_PRIVATE_KEY_FILE=str(key_file),
                LIVE_PULL_GITHUB_APP_INSTALLATION_ID="77",
                LIVE_PULL_GITHUB_API_URL=github.url,
            )
            agent.wait_serving(git.Repo(sample.work).head.commit.hexsha)
            time.sleep(4)
            sha = sample.commit(app_files("after renewal"), "renewal")
            agent.wait_serving(sha)
            assert len(github.issued) >= 2 and github.refused == 0
            status, argv = json.dumps(agent.status()), server.git_client_argv()
    for token in github.issued:
        assert_never_leaked(agent, token, status, argv)


def test_github_app_with_wrong_key_names_the_method(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    key_file, _ = _app_key(tmp_path)
    (tmp_path / "other").mkdir()
    _, other = _app_key(tmp_path / "other")
    with GitHubStandIn(other.public_key(), "4242", "77", 3600, lambda token: None) as github:
        agent = agent_factory(
            "https://github.invalid/org/app.git",
            LIVE_PULL_GITHUB_APP_ID="4242",
            LIVE_PULL_GITHUB_APP_PRIVATE_KEY_FILE=str(key_file),
            LIVE_PULL_GITHUB_APP_INSTALLATION_ID="77",
            LIVE_PULL_GITHUB_API_URL=github.url,
            LIVE_PULL_START_TIMEOUT="2",
        )
        assert agent.wait_exit(timeout=30) == 4
    assert (
        "authentication failed (method: GitHub App 4242 installation): "
        "GitHub App token request failed: HTTP 401 Bad credentials"
    ) in agent.output()
