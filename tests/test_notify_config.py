"""LIVE_PULL_NOTIFY_URLS and LIVE_PULL_NOTIFY_ON: checked before any work, one line
naming the variable, and the URLs (which hold tokens) never shown."""

from __future__ import annotations

from pathlib import Path

from tests.test_config import GOOD_URL, run_cli

TOKEN = "tok3n-in-the-url"


def test_an_unknown_event_name_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = {"REPO_URL": GOOD_URL, "LIVE_PULL_HOME": str(tmp_path / "home")}
    result = run_cli("check-config", env={**env, "LIVE_PULL_NOTIFY_ON": "failure,deploy"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "live-pull: configuration error: LIVE_PULL_NOTIFY_ON: 'deploy' is not an event"
        " (failure, rollback, success, start)"
    ]


def test_an_url_apprise_cannot_use_exits_2_without_showing_it(tmp_path: Path) -> None:
    urls = f"json://127.0.0.1:9/{TOKEN}, nosuchservice://{TOKEN}@host/x"
    env = {"REPO_URL": GOOD_URL, "LIVE_PULL_NOTIFY_URLS": urls}
    for command in ("check-config", "run"):
        result = run_cli(command, env={**env, "LIVE_PULL_HOME": str(tmp_path / command)})
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "live-pull: configuration error: LIVE_PULL_NOTIFY_URLS: URL 2 (nosuchservice://...)"
            " is not one Apprise can send to"
        ]
        assert TOKEN not in result.stdout + result.stderr
        assert not (tmp_path / command).exists()


def test_check_config_masks_the_urls(tmp_path: Path) -> None:
    env = {
        "REPO_URL": GOOD_URL,
        "LIVE_PULL_HOME": str(tmp_path),
        "LIVE_PULL_NOTIFY_URLS": f"json://127.0.0.1:9/{TOKEN},discord://1234/{TOKEN}",
        "LIVE_PULL_NOTIFY_ON": " Failure , success ",
    }
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert lines["LIVE_PULL_NOTIFY_URLS"] == "***"
    assert lines["LIVE_PULL_NOTIFY_ON"] == "failure,success"
