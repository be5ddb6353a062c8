"""LIVE_PULL_NOTIFY_URLS and LIVE_PULL_NOTIFY_ON: checked before any work, one line
naming the variable, and the URLs (which hold tokens) never shown."""

from __future__ import annotations

from pathlib import Path

from entrypoint.config import load_settings, split_urls
from entrypoint.events import Event
from entrypoint.notify import Notifier
from tests.conftest import wait_until
from tests.test_config import GOOD_URL, run_cli
from tests.test_events import Receiver

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


def test_urls_are_split_as_apprise_splits_them() -> None:
    """Before the next scheme only: an URL's own commas and spaces are its own; nothing
    is left out (a piece that is no URL is one, which Apprise then refuses)."""
    mail = f"mailto://user:{TOKEN}@example.com?to=a@example.com,b@example.com&name=Live Pull"
    given = f" json://127.0.0.1:9/{TOKEN}, {mail};\n\n discord://1/{TOKEN} , "
    assert split_urls(given) == (f"json://127.0.0.1:9/{TOKEN}", mail, f"discord://1/{TOKEN}")
    assert split_urls(f"# the team\noops, json://127.0.0.1:9/{TOKEN}") == (
        "# the team",
        "oops",
        f"json://127.0.0.1:9/{TOKEN}",
    )
    assert split_urls(" \n ,") == ()


def test_an_url_with_commas_of_its_own_is_accepted_a_piece_that_is_none_is_not(
    tmp_path: Path,
) -> None:
    mail = f"mailto://user:{TOKEN}@example.com?to=a@example.com,b@example.com"
    env = {"REPO_URL": GOOD_URL, "LIVE_PULL_HOME": str(tmp_path), "LIVE_PULL_NOTIFY_URLS": mail}
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    typo = {**env, "LIVE_PULL_NOTIFY_URLS": f"json://127.0.0.1:9/{TOKEN}\noops, {mail}"}
    result = run_cli("check-config", env=typo)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "live-pull: configuration error: LIVE_PULL_NOTIFY_URLS: URL 2 (?://...) is not one"
        " Apprise can send to"
    ]
    assert TOKEN not in result.stdout + result.stderr


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


def test_urls_from_a_file_are_checked_and_one_setting_only(tmp_path: Path) -> None:
    urls = tmp_path / "urls"
    urls.write_text(f"json://127.0.0.1:9/{TOKEN}\nnosuchservice://{TOKEN}@host/x\n")
    env = {"REPO_URL": GOOD_URL, "LIVE_PULL_HOME": str(tmp_path / "home")}
    bad_file = run_cli("check-config", env={**env, "LIVE_PULL_NOTIFY_URLS_FILE": str(urls)})
    inline = f"json://127.0.0.1:9/{TOKEN}"
    both = {**env, "LIVE_PULL_NOTIFY_URLS_FILE": str(urls), "LIVE_PULL_NOTIFY_URLS": inline}
    for result, line in (
        (
            bad_file,
            "LIVE_PULL_NOTIFY_URLS_FILE: URL 2 (nosuchservice://...) is not one Apprise can"
            " send to",
        ),
        (
            run_cli("check-config", env=both),
            "LIVE_PULL_NOTIFY_URLS: set either it or LIVE_PULL_NOTIFY_URLS_FILE, not both",
        ),
    ):
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [f"live-pull: configuration error: {line}"]
        assert TOKEN not in result.stdout + result.stderr


def test_a_rotated_url_file_is_read_at_the_next_message(tmp_path: Path) -> None:
    first, second = Receiver(), Receiver()
    urls = tmp_path / "urls"
    urls.write_text(first.url)
    settings = load_settings({"REPO_URL": GOOD_URL, "LIVE_PULL_NOTIFY_URLS_FILE": str(urls)})
    secret = settings.notify_urls
    assert secret is not None
    notifier = Notifier(lambda: split_urls(secret.read()), settings.notify_on, GOOD_URL, "main")
    try:
        notifier.record(Event(kind="update", outcome="failed", to_revision="a" * 40))
        wait_until(lambda: first.messages, 30, "the first message")
        urls.write_text(second.url)
        notifier.record(Event(kind="rollback", outcome="rolled_back", to_revision="b" * 40))
        wait_until(lambda: second.messages, 30, "the second message, to the new URL")
        assert [m["title"] for m in first.messages] == ["live-pull: update to aaaaaaaaaaaa failed"]
        assert second.messages[0]["title"] == "live-pull: rolled back to bbbbbbbbbbbb"
    finally:
        notifier.close(10)
        for receiver in (first, second):
            receiver.server.shutdown()
            receiver.server.server_close()


def test_a_failure_that_repeats_is_notified_once_until_something_else_happens() -> None:
    receiver = Receiver()
    notifier = Notifier(lambda: [receiver.url], ("failure", "success"), GOOD_URL, "main")
    down = Event(kind="update", outcome="failed", to_revision="a" * 40, reason="remote down")
    try:
        for _ in range(3):  # the retries of one fault
            notifier.record(down)
        notifier.record(Event(kind="update", outcome="failed", to_revision="a" * 40, reason="disk"))
        notifier.record(Event(kind="update", outcome="succeeded", to_revision="a" * 40))
        notifier.record(down)  # the same fault, after a success: said again
        wait_until(lambda: len(receiver.messages) >= 4, 30, "four messages")
        notifier.close(10)
        reasons = [m["message"].split("reason: ")[-1].split("\n")[0] for m in receiver.messages]
        titles = [m["title"] for m in receiver.messages]
        assert titles == [
            "live-pull: update to aaaaaaaaaaaa failed",
            "live-pull: update to aaaaaaaaaaaa failed",
            "live-pull: aaaaaaaaaaaa is live",
            "live-pull: update to aaaaaaaaaaaa failed",
        ]
        assert [reasons[0], reasons[1], reasons[3]] == ["remote down", "disk", "remote down"]
    finally:
        notifier.close(10)
        receiver.server.shutdown()
        receiver.server.server_close()
