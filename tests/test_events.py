"""History, metrics and notifications on real processes: one agent through a good
update, a broken revision and a receiver that hangs, then restarted on the same home."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import git
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from entrypoint.sample import SampleRepo, app_files
from tests.conftest import AgentProcess, wait_until

Factory = Callable[..., AgentProcess]
CRASH = {"Procfile": "web: python -c 'import sys; sys.exit(3)'\n"}
READ_TIMEOUT = 60  # what a notifier that waited for the receiver would cost an update


class Receiver:
    """An Apprise json:// endpoint on 127.0.0.1 that records each message; while held,
    it keeps requests waiting, as a receiver that hangs does."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.held = 0
        self._open = threading.Event()
        self._open.set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/?rto={READ_TIMEOUT}"

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def titled(self, words: str) -> dict[str, Any] | None:
        return next((m for m in self.messages if words in m["title"]), None)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not receiver._open.is_set():
                    receiver.held += 1
                    receiver._open.wait(READ_TIMEOUT)
                receiver.messages.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.release()
    receiver.server.shutdown()
    receiver.server.server_close()


def metrics(agent: AgentProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(agent.status_url("/metrics"), timeout=5)
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_history_metrics_and_notifications(
    sample: SampleRepo, agent_factory: Factory, receiver: Receiver
) -> None:
    settings = {
        "LIVE_PULL_NOTIFY_URLS": receiver.url,
        "LIVE_PULL_NOTIFY_ON": "start,success,failure,rollback",
        "LIVE_PULL_START_RETRIES": "1",
        "LIVE_PULL_BAKE_SECONDS": "0",
    }
    agent = agent_factory(sample.url, **settings)
    first = git.Repo(sample.work).head.commit.hexsha
    agent.wait_serving(first)
    wait_until(lambda: receiver.titled(f"{first[:12]} is live"), what="first success message")

    # A broken revision: one message saying which, by whom, and why.
    bad = sample.commit(CRASH, "Break the web")
    failed = wait_until(lambda: receiver.titled(f"update to {bad[:12]} failed"), what="failure")
    assert failed["type"] == "failure"
    assert f"commit: {bad[:12]} Break the web (live-pull demo)" in failed["message"]
    assert "outcome: failed (trigger: poll)" in failed["message"]
    assert "reason: revision" in failed["message"]

    # A receiver that hangs holds up no update.
    receiver.hold()
    good = sample.commit(app_files("third"), "Third time lucky")
    seen = time.monotonic()
    agent.wait_serving(good)
    assert time.monotonic() - seen < READ_TIMEOUT / 2
    wait_until(lambda: receiver.held >= 1, what="a message held by the receiver")
    receiver.release()
    wait_until(lambda: receiver.titled(f"{good[:12]} is live"), what="the held message sent")

    seen_metrics = metrics(agent)
    assert seen_metrics[("live_pull_updates_total", (("result", "succeeded"),))] == 2
    assert seen_metrics[("live_pull_updates_total", (("result", "failed"),))] == 1
    revision = (("ref", "refs/heads/main"), ("revision", good))
    assert seen_metrics[("live_pull_revision_info", revision)] == 1
    assert seen_metrics[("live_pull_checks_total", (("result", "new"),))] >= 3
    assert seen_metrics[("live_pull_update_duration_seconds_count", ())] == 2
    assert seen_metrics[("live_pull_last_update_timestamp_seconds", ())] > 0
    assert seen_metrics[("live_pull_installs_total", ())] == 0
    assert seen_metrics[("live_pull_paused", ())] == 0

    # The history survives a restart; the CLI shows it.
    assert agent.stop()[0] == 0
    again = agent_factory(sample.url, home=agent.home, **settings)
    again.wait_serving(good)
    listing = requests.get(again.status_url("/history"), timeout=5).json()
    assert [(e["to_revision"], e["outcome"], e["trigger"]) for e in listing] == [
        (first, "succeeded", "start"),
        (bad, "failed", "poll"),
        (good, "succeeded", "poll"),
    ]
    last = listing[-1]
    assert last["from_revision"] == first and last["to_subject"] == "Third time lucky"
    assert last["duration_seconds"] < READ_TIMEOUT / 2
    assert json.loads(again.cli("history", "--json")) == listing
    table = again.cli("history").splitlines()
    assert table[0].split()[:4] == ["WHEN", "KIND", "TRIGGER", "FROM"]
    assert len(table) == 4 and "failed" in table[2] and f"{good[:12]} Third time" in table[3]
