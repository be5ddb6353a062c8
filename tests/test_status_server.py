"""The status port under floods, bounded in counts and seconds, on 127.0.0.1: idle
connections, slow bodies, bad webhook deliveries. /healthz keeps answering, memory
stays bounded, a good delivery is never refused because of bad ones."""

from __future__ import annotations

import hashlib
import hmac
import resource
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import git
import pytest
import requests

from entrypoint.auth import Secret
from entrypoint.board import StatusBoard
from entrypoint.sample import SampleRepo
from entrypoint.status import HEAD_SECONDS, Controls, StatusServer
from entrypoint.webhook import MAX_BODY, Webhook
from tests.conftest import AgentProcess, wait_until
from tests.git_http import GitHttpServer

Factory = Callable[..., AgentProcess]
SECRET = "flood-secret"
IDLE = 2000
SLOW = 300


@pytest.fixture
def server() -> Iterator[tuple[StatusServer, list[str]]]:
    board = StatusBoard("file:///srv/app.git", "main")
    asked: list[str] = []
    webhook = Webhook(Secret("LIVE_PULL_WEBHOOK_SECRET", SECRET), lambda: None, lambda: None)
    status = StatusServer(
        "127.0.0.1",
        0,
        board,
        lambda: asked.append("sync"),
        webhook=webhook,
        controls=Controls(
            rollback=lambda sha: "abc",
            pause=lambda reason: asked.append(f"pause {reason}"),
            resume=lambda: asked.append("resume"),
            sync_now=lambda: asked.append("sync now"),
        ),
    )
    status.start()
    yield status, asked
    status.stop()


def _url(server: StatusServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def _healthz_seconds(server: StatusServer) -> float:
    started = time.monotonic()
    assert requests.get(_url(server, "/healthz"), timeout=5).status_code == 200
    return time.monotonic() - started


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _connect(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


@pytest.fixture
def many_files() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * IDLE + SLOW + 512:
        pytest.skip(f"open-file hard limit {hard} is too low for {IDLE} connections each side")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@pytest.mark.usefixtures("many_files")
def test_idle_connections_and_slow_bodies_leave_healthz_answering(
    server: tuple[StatusServer, list[str]],
) -> None:
    status, _ = server
    before = _rss_mb()
    idle = _connect(status.port, IDLE)
    slow = _connect(status.port, SLOW)
    head = f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY}\r\n\r\n"
    for sock in slow:
        sock.sendall(head.encode() + b"x" * 100)
    try:
        assert _healthz_seconds(status) < 1.0  # the bench shows the real figure
        assert _rss_mb() - before < 50
        # The idle ones are closed once they have sent nothing for their deadline.
        wait_until(lambda: _closed_by_server(idle[0]), HEAD_SECONDS + 10, "idle closed")
        assert _healthz_seconds(status) < 1.0
    finally:
        for sock in idle + slow:
            sock.close()


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_oversized_body_is_refused_at_once(server: tuple[StatusServer, list[str]]) -> None:
    status, _ = server
    big = b"x" * (MAX_BODY + 1)
    assert requests.post(_url(status, "/webhook"), data=big, timeout=10).status_code == 413


def test_bad_deliveries_never_make_a_good_one_429(
    server: tuple[StatusServer, list[str]],
) -> None:
    status, _ = server
    body = b'{"ref": "refs/heads/main"}'
    with requests.Session() as session:
        for _ in range(500):
            bad = session.post(_url(status, "/webhook"), data=body, timeout=5)
            assert bad.status_code == 401
        signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        good = session.post(
            _url(status, "/webhook"),
            data=body,
            headers={"X-Hub-Signature-256": signature, "X-GitHub-Event": "push"},
            timeout=5,
        )
    assert good.status_code == 202


def test_every_route_answers_as_before(server: tuple[StatusServer, list[str]]) -> None:
    status, asked = server
    assert requests.get(_url(status, "/status"), timeout=5).json()["ref"] == "main"
    assert requests.get(_url(status, "/readyz"), timeout=5).status_code == 503
    assert requests.post(_url(status, "/sync"), timeout=5).status_code == 202
    assert asked == ["sync"]
    reply = requests.post(_url(status, "/rollback?sha=abc"), timeout=5)
    assert reply.status_code == 202 and reply.json()["to"] == "abc"
    assert requests.get(_url(status, "/nope"), timeout=5).status_code == 404


def test_pause_resume_and_sync_now(server: tuple[StatusServer, list[str]]) -> None:
    status, asked = server
    reply = requests.post(_url(status, "/pause"), params={"reason": "freeze\nfriday"}, timeout=5)
    assert reply.status_code == 202 and reply.json()["reason"] == "freeze | friday"
    assert requests.post(_url(status, "/pause"), timeout=5).json()["reason"] is None
    assert requests.post(_url(status, "/resume"), timeout=5).status_code == 202
    assert requests.post(_url(status, "/sync?now=1"), timeout=5).json()["now"] is True
    assert asked == ["pause freeze | friday", "pause None", "resume", "sync now"]


def test_what_changes_what_runs_is_refused_from_elsewhere(
    server: tuple[StatusServer, list[str]],
) -> None:
    """From 127.0.0.2 (not this machine's own address as the rule spells it): 403, and
    nothing is asked of the loop; a plain /sync is still accepted."""
    status, asked = server
    for path in ("/pause?reason=x", "/resume", "/rollback", "/sync?now=1"):
        code, body = _post_from("127.0.0.2", status.port, path)
        assert code == 403 and "localhost only" in body, (path, body)
    assert asked == []
    assert _post_from("127.0.0.2", status.port, "/sync")[0] == 202
    assert asked == ["sync"]


def _post_from(source: str, port: int, path: str) -> tuple[int, str]:
    """A bodyless POST from `source` (any 127.x address is this machine's on Linux)."""
    with socket.create_connection(("127.0.0.1", port), 5, (source, 0)) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.decode().partition("\r\n")
    return int(status_line.split()[1]), rest.partition("\r\n\r\n")[2]


def test_a_sync_flood_waits_out_a_failing_remotes_backoff(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    """2,000 unauthenticated POST /sync while the remote fails: the checks wait for the
    backoff, coalesced, instead of hammering the remote."""
    with GitHttpServer(sample.remote.parent) as server:
        agent = agent_factory(
            server.url(sample.remote.name),
            LIVE_PULL_POLL_INTERVAL="30",
            LIVE_PULL_MAX_BACKOFF="20",
        )
        agent.wait_serving(git.Repo(sample.work).head.commit.hexsha)
        server.credentials = ("someone", "else")  # from now on every request is refused
        requests.post(agent.status_url("/sync"), timeout=5)
        wait_until(lambda: agent.status().get("error_kind") == "transient", 30, "a failure")
        asked = len(server.requests)
        with requests.Session() as session:
            for _ in range(2000):
                assert session.post(agent.status_url("/sync"), timeout=5).status_code == 202
        time.sleep(2)  # what a burst would have set off by now, it has
        assert len(server.requests) - asked <= 2, server.requests[asked:]
        assert agent.process is not None and agent.process.poll() is None
