"""Bad input: one line naming the variable, exit 2, no work done."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint import config
from entrypoint.config import load_settings
from entrypoint.credentials import parse_repo_url
from entrypoint.errors import ConfigError

GOOD_URL = "https://example.invalid/org/app.git"

BAD = [
    ({}, "REPO_URL: is required"),
    ({"REPO_URL": ""}, "REPO_URL: must not be empty"),
    ({"REPO_URL": "ext::sh -c touch% /tmp/pwned"}, "REPO_URL: is neither a URL"),
    ({"REPO_URL": "ftp://host/repo.git"}, "REPO_URL: transport 'ftp' is not allowed"),
    ({"REPO_URL": "fd::17"}, "REPO_URL: is neither a URL"),
    ({"REPO_URL": "https:///nohost"}, "REPO_URL: URL has no host"),
    ({"REPO_URL": "ssh://me:pw@host/r.git"}, "REPO_URL: passwords in ssh URLs are not supported"),
    ({"REPO_REF": "bad ref"}, "REPO_REF: is not a valid git ref name"),
    ({"REPO_REF": "--upload-pack=x"}, "REPO_REF: is not a valid git ref name"),
    ({"REPO_REF": "semver:>>1"}, "REPO_REF: '>>1' is not a PEP 440 version specifier set"),
    ({"LIVE_PULL_HOME": "relative/dir"}, "LIVE_PULL_HOME: must be an absolute path"),
    (
        {"LIVE_PULL_POLL_INTERVAL": "soon"},
        "LIVE_PULL_POLL_INTERVAL: Input should be a valid number",
    ),
    ({"LIVE_PULL_POLL_INTERVAL": "-5"}, "LIVE_PULL_POLL_INTERVAL: Input should be greater than"),
    ({"LIVE_PULL_APP_DIR": "../outside"}, "LIVE_PULL_APP_DIR: '../outside' leaves the repository"),
    ({"LIVE_PULL_APP_DIR": "a/../../b"}, "LIVE_PULL_APP_DIR: 'a/../../b' leaves the repository"),
    ({"LIVE_PULL_APP_DIR": "/etc"}, "LIVE_PULL_APP_DIR: '/etc' must be relative"),
    (
        {"LIVE_PULL_LOCKFILE": "../uv.lock"},
        "LIVE_PULL_LOCKFILE: '../uv.lock' leaves the repository",
    ),
    (
        {"LIVE_PULL_APP_DIR": "backend", "LIVE_PULL_LOCKFILE": "../../uv.lock"},
        "LIVE_PULL_LOCKFILE: '../../uv.lock' leaves the repository",
    ),
    ({"LIVE_PULL_LOCKFILE": "/etc/passwd"}, "LIVE_PULL_LOCKFILE: each file must be a relative"),
    ({"LIVE_PULL_SHARED_PATHS": "db.sqlite3,../x"}, "LIVE_PULL_SHARED_PATHS: '../x' leaves"),
    ({"LIVE_PULL_SHARED_PATHS": ".git"}, "LIVE_PULL_SHARED_PATHS: '.git' cannot be shared"),
    ({"LIVE_PULL_STATUS_PORT": "99999"}, "LIVE_PULL_STATUS_PORT: Input should be less than"),
    ({"PORT": "http"}, "PORT: Input should be a valid integer"),
    ({"PORT": "0"}, "PORT: Input should be greater than or equal to 1"),
    ({"LIVE_PULL_KEEP_RELEASES": "0"}, "LIVE_PULL_KEEP_RELEASES: Input should be greater"),
    ({"LIVE_PULL_LOG_LEVEL": "LOUD"}, "LIVE_PULL_LOG_LEVEL: Input should be"),
    ({"LIVE_PULL_LOG_FORMAT": "xml"}, "LIVE_PULL_LOG_FORMAT: Input should be 'text' or 'json'"),
    ({"LIVE_PULL_POLL_INTERVALL": "5"}, "LIVE_PULL_POLL_INTERVALL: unknown setting"),
    ({"LIVE_PULL_GIT_AUTH": "token"}, "LIVE_PULL_GIT_AUTH: is token but the settings give none"),
    ({"LIVE_PULL_GIT_AUTH": "ssh"}, "LIVE_PULL_GIT_AUTH: Input should be"),
    (
        {"LIVE_PULL_FLEET_URL": "mysql://db/fleet"},
        "LIVE_PULL_FLEET_URL: must be a postgresql:// URL or `kubernetes`",
    ),
    ({"LIVE_PULL_FLEET_MAX_SWITCHING": "0"}, "LIVE_PULL_FLEET_MAX_SWITCHING: Input should be"),
    ({"LIVE_PULL_FLEET_REPLICA": "a b"}, "LIVE_PULL_FLEET_REPLICA: 'a b' is not a replica name"),
]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "REPO_URL" and not k.startswith("LIVE_")}
    return subprocess.run(
        [sys.executable, "-m", "entrypoint", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "message"), BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)]
)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_configuration_exits_2_with_one_line(
    env: dict[str, str], message: str, command: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    full = {"REPO_URL": GOOD_URL, "LIVE_PULL_HOME": str(home), **env}
    if env == {}:
        full.pop("REPO_URL")
    result = run_cli(command, env=full)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"live-pull: configuration error: {message}"), lines[0]
    assert not home.exists()  # validated before any work


def test_secret_never_echoed_in_config_errors() -> None:
    result = run_cli("check-config", env={"REPO_URL": "ftp://user:hunter2secret@host/r.git"})
    assert result.returncode == 2
    assert "hunter2secret" not in result.stderr + result.stdout
    fleet = {"REPO_URL": GOOD_URL, "LIVE_PULL_FLEET_URL": "postgres:/u:hunter2secret@db/x"}
    result = run_cli("check-config", env=fleet)
    assert result.returncode == 2
    assert "LIVE_PULL_FLEET_URL" in result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout


def test_check_config_prints_effective_configuration_redacted(tmp_path: Path) -> None:
    url = "https://deploy:tok3n-value@git.example.invalid/org/app.git"
    result = run_cli(
        "check-config",
        env={
            "REPO_URL": url,
            "LIVE_PULL_HOME": str(tmp_path),
            "LIVE_PULL_SHARED_PATHS": "media/,db",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "tok3n-value" not in result.stdout
    assert "deploy" not in result.stdout
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert lines["REPO_URL"] == "https://***@git.example.invalid/org/app.git"
    assert lines["LIVE_PULL_SHARED_PATHS"] == "media/,db"
    assert lines["LIVE_PULL_POLL_INTERVAL"] == "30"
    assert lines["PORT"] == "8000"


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/app.git",
        "http://127.0.0.1:8080/app.git",
        "ssh://git@host.example:2222/org/app.git",
        "git://host.example/app.git",
        "file:///srv/git/app.git",
        "git@github.com:org/app.git",
    ],
)
def test_accepted_urls(url: str) -> None:
    parsed = load_settings({"REPO_URL": url}).repo_url
    assert parsed.url == url
    assert parsed.credentials is None


def test_credentials_are_split_off() -> None:
    parsed = parse_repo_url("https://user:p%40ss@host.example/r.git")
    assert parsed.url == "https://host.example/r.git"
    assert parsed.credentials is not None
    assert (parsed.credentials.username, parsed.credentials.password) == ("user", "p@ss")
    assert "p@ss" not in repr(parsed)
    token_only = parse_repo_url("https://ghp_tokenvalue@host.example/r.git")
    assert token_only.redacted() == "https://***@host.example/r.git"


def test_load_settings_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^PORT: "):
        load_settings({"REPO_URL": GOOD_URL, "PORT": "-1"})


def test_version_command() -> None:
    result = run_cli("version", env={})
    assert result.returncode == 0
    assert result.stdout.startswith("live-pull ")


def test_status_without_agent_is_one_clear_line() -> None:
    from entrypoint.demo import free_port

    result = run_cli("status", env={"LIVE_PULL_STATUS_PORT": str(free_port())})
    assert result.returncode == 1
    assert result.stderr.startswith("live-pull: error: no live-pull agent answering at")
    assert len(result.stderr.strip().splitlines()) == 1


def env_file(text: str) -> dict[str, str]:
    """Read `check-config` output as docker --env-file would."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def round_trip_cases(tmp_path: Path) -> list[dict[str, str]]:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value\n")
    return [
        {"REPO_URL": GOOD_URL},
        {
            "REPO_URL": "https://deploy:tok3n@git.example.invalid/org/app.git",
            "REPO_REF": "v1.2",
            "LIVE_PULL_SHARED_PATHS": "media/,db.sqlite3",
            "LIVE_PULL_INSTALL_ARGS": "--index-url 'http://127.0.0.1:1/a b' -q",
            "LIVE_PULL_APP_DIR": "backend",
            "LIVE_PULL_LOCKFILE": "a/requirements.txt,../uv.lock",
            "LIVE_PULL_POLL_INTERVAL": "0.25",
            "LIVE_PULL_INSTALL_TIMEOUT": "1234567",
            "LIVE_PULL_LISTEN": "tcp://0.0.0.0:8000",
            "LIVE_PULL_HEALTHCHECK_PATH": "/healthz",
            "LIVE_PULL_COMMAND": "gunicorn --bind fd://0 app:app",
            "LIVE_PULL_WEBHOOK_SECRET": "hook-s3cret",
        },
        {
            "REPO_URL": GOOD_URL,
            "LIVE_PULL_GIT_USERNAME": "deployer",
            "LIVE_PULL_GIT_TOKEN_FILE": str(secret),
            "LIVE_PULL_WEBHOOK_SECRET_FILE": str(secret),
            "LIVE_PULL_VERIFY": "commit",
            "LIVE_PULL_ALLOWED_SIGNERS_FILE": str(secret),
        },
        {"REPO_URL": GOOD_URL, "LIVE_PULL_GIT_PASSWORD": "pw-s3cret", "LIVE_PULL_GIT_AUTH": ""},
        {
            "REPO_URL": "git@host.example:org/app.git",
            "LIVE_PULL_SSH_KEY_FILE": str(secret),
            "LIVE_PULL_SSH_KNOWN_HOSTS_FILE": str(secret),
            "LIVE_PULL_GIT_AUTH": "ssh-key",
        },
        {
            "REPO_URL": GOOD_URL,
            "LIVE_PULL_GITHUB_APP_ID": "12",
            "LIVE_PULL_GITHUB_APP_PRIVATE_KEY_FILE": str(secret),
            "LIVE_PULL_GITHUB_APP_INSTALLATION_ID": "34",
        },
    ]


def test_check_config_output_is_accepted_as_the_environment(tmp_path: Path) -> None:
    for env in round_trip_cases(tmp_path):
        first = run_cli("check-config", env=env)
        assert first.returncode == 0, first.stderr
        assert "s3cret" not in first.stdout and "tok3n" not in first.stdout
        again = run_cli("check-config", env=env_file(first.stdout))
        assert again.returncode == 0, f"{env}: {again.stderr}"
        assert again.stdout == first.stdout  # the same configuration, line for line
        printed = env_file(first.stdout)
        assert set(env) <= set(printed)  # every variable given is shown
        assert printed["LIVE_PULL_GIT_AUTH"] == load_settings(env).auth.kind


@pytest.mark.parametrize(
    ("declared", "env"),
    [
        ("none", {"REPO_URL": GOOD_URL}),
        ("url", {"REPO_URL": "https://u:p@git.example.invalid/a.git"}),
        ("token", {"REPO_URL": GOOD_URL, "LIVE_PULL_GIT_TOKEN": "t"}),
        ("password", {"REPO_URL": GOOD_URL, "LIVE_PULL_GIT_PASSWORD": "p"}),
    ],
)
def test_git_auth_must_agree_with_the_credentials(declared: str, env: dict[str, str]) -> None:
    assert load_settings({**env, "LIVE_PULL_GIT_AUTH": declared}).auth.kind == declared
    other = "password" if declared == "token" else "token"
    with pytest.raises(ConfigError) as caught:
        load_settings({**env, "LIVE_PULL_GIT_AUTH": other})
    message = str(caught.value)
    assert message.startswith(f"LIVE_PULL_GIT_AUTH: is {other} but the settings give {declared}")
    assert "\n" not in message
    assert "LIVE_PULL_GIT_" + other.upper() in message  # says what to set


def test_blank_optional_settings_mean_unset() -> None:
    blank = {
        "LIVE_PULL_GIT_TOKEN": "",
        "LIVE_PULL_SSH_KNOWN_HOSTS_FILE": " ",
        "LIVE_PULL_GIT_AUTH": "",
        "REPO_REF": "",
    }
    settings = load_settings({"REPO_URL": GOOD_URL, **blank})
    assert settings.auth.kind == "none"
    assert settings.ssh_known_hosts_file is None and settings.repo_ref is None


def outside_a_pod() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_kubernetes_fleet_outside_a_pod_exits_2(command: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"REPO_URL": GOOD_URL, "LIVE_PULL_HOME": str(home), "LIVE_PULL_FLEET_URL": "kubernetes"}
    result = subprocess.run(
        [sys.executable, "-m", "entrypoint", command],
        env={**outside_a_pod(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "live-pull: configuration error: LIVE_PULL_FLEET_URL: kubernetes, but not in a pod"
        " (no KUBERNETES_SERVICE_HOST)"
    )
    assert not home.exists()


def test_a_kubernetes_fleet_needs_the_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = tmp_path / "serviceaccount"
    monkeypatch.setattr(config, "SERVICE_ACCOUNT_DIR", account)
    pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    stored = tmp_path / "fleet-url"
    stored.write_text("kubernetes\n")
    for fleet in ({"LIVE_PULL_FLEET_URL": "kubernetes"}, {"LIVE_PULL_FLEET_URL_FILE": str(stored)}):
        with pytest.raises(ConfigError, match=r"kubernetes, but the pod has no service account"):
            load_settings({"REPO_URL": GOOD_URL, **pod, **fleet})
    account.mkdir()
    (account / "token").write_text("t")
    (account / "namespace").write_text("default")
    settings = load_settings({"REPO_URL": GOOD_URL, **pod, "LIVE_PULL_FLEET_URL": "kubernetes"})
    assert settings.kubernetes_api == "https://10.96.0.1:443"
    ipv6 = load_settings({"REPO_URL": GOOD_URL, "KUBERNETES_SERVICE_HOST": "fd00::1"})
    assert ipv6.kubernetes_api == "https://[fd00::1]:443"
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_PORT is not a port"):
        load_settings(
            {
                "REPO_URL": GOOD_URL,
                **pod,
                "KUBERNETES_SERVICE_PORT": "https",
                "LIVE_PULL_FLEET_URL": "kubernetes",
            }
        )


def test_the_pods_variables_are_neither_shown_nor_taken_from_the_app() -> None:
    pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    settings = load_settings({"REPO_URL": GOOD_URL, **pod})
    assert not any(name.startswith("KUBERNETES_") for name in settings.effective())
    environ = {"REPO_URL": GOOD_URL, **pod}
    config.scrub_environ(settings, environ)
    assert environ == {"REPO_URL": GOOD_URL, **pod}  # the app's Kubernetes clients need them
