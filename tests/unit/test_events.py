"""Events (history, metrics, notifications) as the update sequence records them, against
the in-memory repository and supervisord; the history file and the metrics are real."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from entrypoint.cli import history_table
from entrypoint.demo import free_port
from entrypoint.errors import RevisionError
from entrypoint.events import Commit, Event, Recorder, Sink
from entrypoint.history import MAX_EVENTS, History
from entrypoint.metrics import Metrics
from entrypoint.notify import Notifier
from tests.unit.standins import World


class Heard(Sink):
    """A sink that keeps what it hears."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.started: list[Event] = []

    def record(self, event: Event) -> None:
        self.events.append(event)

    def starting(self, event: Event) -> None:
        self.started.append(event)


class Broken(Sink):
    def record(self, event: Event) -> None:
        raise RuntimeError("sink down")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "home")


def wire(world: World) -> tuple[History, Metrics, Heard]:
    history, metrics, heard = History(world.home / "history"), Metrics(world.board), Heard()
    world.updater.recorder = Recorder(
        [Broken(), history, metrics, heard], lambda sha: Commit(sha, f"subject {sha[:4]}", "Ann")
    )
    return history, metrics, heard


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# -- through the update sequence --------------------------------------------------------


def test_updates_failures_and_rollbacks_are_recorded_once_each(world: World) -> None:
    history, metrics, heard = wire(world)
    a = world.commit()
    world.updater.check(trigger="start")
    b = world.commit(**{"app.py": "2"})
    world.updater.check(trigger="webhook")
    bad = world.commit(**{"app.py": "3"})
    world.supervisor.fail("web", bad)
    with pytest.raises(RevisionError):
        world.updater.check(trigger="poll")
    world.updater.check()  # the failed one is skipped
    world.updater.rollback(a, "rolled back by operator")

    kinds = [(e["kind"], e["trigger"], e["outcome"]) for e in history.events()]
    assert kinds == [
        ("update", "start", "succeeded"),
        ("update", "webhook", "succeeded"),
        ("update", "poll", "failed"),
        ("rollback", "rollback", "rolled_back"),
    ]
    first, second, failed, rollback = history.events()
    assert first["from_revision"] is None and first["to_revision"] == a
    assert second["from_revision"] == a and second["to_revision"] == b
    assert second["to_subject"] == f"subject {b[:4]}" and second["author"] == "Ann"
    assert second["from_subject"] == f"subject {a[:4]}"
    assert second["installed"] is False and second["duration_seconds"] >= 0
    assert failed["to_revision"] == bad and "failed to start" in failed["reason"]
    assert rollback["from_revision"] == b and rollback["to_revision"] == a
    assert rollback["reason"] == "rolled back by operator"
    assert [e.to_revision for e in heard.started] == [a, b, bad]  # updates, as fetched

    seen = samples(metrics)
    assert seen[("live_pull_updates_total", (("result", "succeeded"),))] == 2
    assert seen[("live_pull_updates_total", (("result", "failed"),))] == 1
    assert seen[("live_pull_updates_total", (("result", "rolled_back"),))] == 1
    assert seen[("live_pull_checks_total", (("result", "new"),))] == 3
    assert seen[("live_pull_checks_total", (("result", "skipped"),))] == 1
    assert seen[("live_pull_update_duration_seconds_count", ())] == 2
    assert seen[("live_pull_revision_info", (("ref", "refs/heads/main"), ("revision", a)))] == 1
    assert seen[("live_pull_paused", ())] == 0


def test_a_remote_down_is_a_check_error_and_no_event(world: World) -> None:
    history, metrics, _ = wire(world)
    world.commit()
    world.updater.check()
    world.commit(**{"app.py": "2"})
    world.repo.remote_down = True
    with pytest.raises(Exception, match="connection refused"):
        world.updater.check()
    assert len(history.events()) == 1
    assert samples(metrics)[("live_pull_checks_total", (("result", "error"),))] == 1


def test_a_transient_failure_after_the_revision_was_seen_is_a_failed_attempt(
    world: World,
) -> None:
    history, _, _ = wire(world)
    world.commit()
    world.updater.check()
    world.commit(**{"app.py": "2"})
    world.repo.disk_full()
    with pytest.raises(OSError):
        world.updater.check()
    last = history.events()[-1]
    assert last["outcome"] == "failed" and "No space left" in last["reason"]


def test_a_pause_and_a_resume_are_events_and_the_gauge_follows(world: World) -> None:
    history, metrics, heard = wire(world)
    world.commit()
    world.updater.check()
    world.updater.pause("release freeze")
    assert samples(metrics)[("live_pull_paused", ())] == 1
    world.commit(**{"app.py": "2"})
    world.updater.check()  # held: a check, no attempt
    world.updater.resume()
    assert samples(metrics)[("live_pull_paused", ())] == 0
    assert [(e["kind"], e["reason"]) for e in history.events()[1:]] == [
        ("pause", "release freeze"),
        ("resume", None),
    ]
    assert [e.outcome for e in heard.events] == ["succeeded", None, None]
    assert samples(metrics)[("live_pull_updates_total", (("result", "succeeded"),))] == 1


# -- the history file ---------------------------------------------------------------------


def test_history_keeps_the_last_200_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "history"
    history = History(path)
    for n in range(MAX_EVENTS + 50):
        history.record(Event(kind="update", outcome="succeeded", reason=str(n)))
    assert len(path.read_text().splitlines()) == MAX_EVENTS
    again = History(path).events()
    assert len(again) == MAX_EVENTS
    assert again[0]["reason"] == "50" and again[-1]["reason"] == str(MAX_EVENTS + 49)
    assert not list(tmp_path.glob(".history.tmp"))


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe not utf-8", b"{not json\n", b"[1, 2, 3]\n", b'{"kind": 5}\n'],
    ids=["binary", "truncated", "wrong-shape", "wrong-type"],
)
def test_an_unreadable_history_starts_empty_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        history = History(path)
    assert history.events() == []
    assert "history" in caplog.text and "unreadable" in caplog.text
    history.record(Event(kind="update", outcome="failed"))
    assert [e["outcome"] for e in History(path).events()] == ["failed"]


def test_a_damaged_line_costs_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "history"
    good = json.dumps({"kind": "update", "outcome": "succeeded", "at": "2026-01-01T00:00:00"})
    path.write_text(f"{good}\n{good[:20]}\n{good}\n")
    assert len(History(path).events()) == 2


def test_a_history_that_cannot_be_written_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history"
    path.mkdir()  # in the way of the file
    history = History(path)
    with caplog.at_level(logging.WARNING):
        history.record(Event(kind="update", outcome="succeeded"))
    assert "history not saved" in caplog.text
    assert len(history.events()) == 1


# -- what a person and a chat see -----------------------------------------------------------


def test_history_table_lines_up() -> None:
    events = [
        Event(kind="update", outcome="succeeded", trigger="poll", to_revision="a" * 40),
        Event(
            kind="rollback",
            outcome="rolled_back",
            trigger="crash",
            from_revision="a" * 40,
            to_revision="b" * 40,
            to_subject="Fix it",
            duration_seconds=2.25,
            reason="failed within the bake time",
        ),
    ]
    header, *rows = history_table([asdict(e) for e in events])
    assert header.split() == ["WHEN", "KIND", "TRIGGER", "FROM", "TO", "OUTCOME", "TOOK", "REASON"]
    assert rows[1].index("rolled_back") == header.index("OUTCOME")
    assert "bbbbbbbbbbbb Fix it" in rows[1] and "2.2s" in rows[1]


def test_a_message_names_the_commit_the_outcome_and_the_reason() -> None:
    notifier = Notifier(list, ["failure"], "https://git.example/app.git", "main")
    event = Event(
        kind="update",
        outcome="failed",
        trigger="poll",
        reason="revision failed to start",
        from_revision="a" * 40,
        to_revision="b" * 40,
        to_subject="Break things",
        author="Ann",
    )
    message = notifier.message(event, "failure")
    notifier.close(1)
    assert message.title == "live-pull: update to bbbbbbbbbbbb failed"
    assert message.level == "failure"
    assert "commit: bbbbbbbbbbbb Break things (Ann)" in message.body
    assert "outcome: failed (trigger: poll)" in message.body
    assert "reason: revision failed to start" in message.body
    assert "repository: https://git.example/app.git (main)" in message.body


def test_a_failed_send_is_a_warning_that_shows_no_url(caplog: pytest.LogCaptureFixture) -> None:
    token = "s3cret-path-token"
    url = f"json://127.0.0.1:{free_port()}/{token}"  # nothing listens there
    notifier = Notifier(lambda: [url], ["failure"], "https://git.example/app.git", "main")
    with caplog.at_level(logging.DEBUG):
        notifier.record(Event(kind="update", outcome="failed", to_revision="b" * 40))
        notifier.record(Event(kind="update", outcome="succeeded"))  # not asked for
        notifier.close(30)
    assert caplog.text.count("notification not sent service=json") == 1
    assert token not in caplog.text
