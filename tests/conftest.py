"""Fixtures: sample repositories, the agent as a real process, a smart-HTTP git server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from entrypoint import ports
from entrypoint.demo import free_port
from entrypoint.processes import end_tagged, find_tagged, home_id
from entrypoint.sample import SampleRepo, create_sample_repo
from tests.git_http import GitHttpServer
from tests.postgres import PostgresServer, server_binaries
from tests.wheels import build_wheel


def _share_ports_among_workers() -> None:
    """Each pytest-xdist worker picks ports from its own share of the range: an agent's
    PORT, picked by one worker, stays unbound until its first revision is ready, and the
    other worker must not pick it meanwhile."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker.startswith("gw") and count > 1:
        lowest, end = ports.public_range
        share = (end - lowest) // count
        first = lowest + int(worker.removeprefix("gw")) * share
        ports.public_range = (first, first + share)


_share_ports_among_workers()

WAIT = 45.0


def wait_until(
    predicate: Callable[[], Any], timeout: float = WAIT, what: str | Callable[[], str] = ""
) -> Any:
    """Poll until predicate is truthy; `what` (or what it returns, at failure) names it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    described = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout:g}s waiting for {described or predicate}")


class AgentProcess:
    """`python -m entrypoint run` as a real process, with its output in files."""

    def __init__(self, home: Path, env: dict[str, str], logs: Path) -> None:
        self.home = home
        self.port = int(env["PORT"])
        self.status_port = int(env["LIVE_PULL_STATUS_PORT"])
        self.env = env
        self.stdout_path = logs / f"agent-{time.monotonic_ns()}.out"
        self.stderr_path = self.stdout_path.with_suffix(".err")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "entrypoint", "run"],
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def app(self, path: str = "/") -> str | None:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=2).text
        except requests.RequestException:
            return None

    def status(self) -> dict[str, Any]:
        try:
            return dict(requests.get(self.status_url("/status"), timeout=2).json())
        except (requests.RequestException, ValueError):
            return {}

    def status_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.status_port}{path}"

    def cli(self, *args: str) -> str:
        """What `live-pull <args>` (status, history, ...) prints, asked of this agent the
        way an operator in its container would ask it; it must succeed."""
        env = {**os.environ, "LIVE_PULL_STATUS_PORT": str(self.status_port)}
        env.pop("REPO_URL", None)
        shown = subprocess.run(
            [sys.executable, "-m", "entrypoint", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shown.returncode == 0, shown.stderr
        return shown.stdout

    def wait_serving(self, sha: str, timeout: float = WAIT) -> str:
        """Wait until the app answers from revision `sha` and the agent has recorded it
        as the running one (`current` moves once the revision is proven); return the
        app's answer."""

        def serving() -> str | None:
            text = self.app()
            if text and f"revision {sha[:12]}" in text and self.status().get("revision") == sha:
                return text
            return None

        return str(
            wait_until(
                serving,
                timeout,
                lambda: f"app serving {sha[:12]}\n--- agent output ---\n{self.output()}",
            )
        )

    def wait_status(self, timeout: float = WAIT, **expected: Any) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            status = self.status()
            ok = status and all(status.get(k) == v for k, v in expected.items())
            return status if ok else None

        return dict(wait_until(matches, timeout, lambda: f"status {expected}: {self.status()}"))

    def wait_exit(self, timeout: float = WAIT) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> tuple[int, float]:
        """Send `sig`; return the exit code and how long the exit took."""
        assert self.process is not None
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self, timeout: float = 60.0) -> None:
        """SIGKILL the agent, as an OOM kill or a grace period run out does; return once
        what it started has ended (its supervisord stops the app on the parent's death)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        tag = home_id(self.home)
        wait_until(lambda: find_tagged(tag) == [], timeout, "the killed agent's app to end")


@pytest.fixture
def sample(tmp_path: Path) -> SampleRepo:
    return create_sample_repo(tmp_path / "remote", message="hello")


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Build agents against a repository; every one still running is stopped at the end."""
    started: list[AgentProcess] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def make(
        repo_url: str, home: Path | None = None, start: bool = True, **extra: str
    ) -> AgentProcess:
        home = home or tmp_path / "home"
        env = {
            **os.environ,
            "REPO_URL": repo_url,
            "LIVE_PULL_HOME": str(home),
            "LIVE_PULL_POLL_INTERVAL": "1",
            "LIVE_PULL_STATUS_PORT": str(free_port()),
            "LIVE_PULL_START_TIMEOUT": "20",
            "LIVE_PULL_MAX_BACKOFF": "2",
            "PORT": str(free_port()),
            **extra,
        }
        agent = AgentProcess(home, env, logs)
        started.append(agent)
        return agent.start() if start else agent

    yield make
    for agent in started:
        if agent.process is not None and agent.process.poll() is None:
            agent.process.terminate()  # a clean stop ends the app and supervisord
            try:
                agent.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait()
        _end_what_the_agent_left(agent.home)


def _end_what_the_agent_left(home: Path) -> None:
    """A test may SIGKILL its agent: then its supervisord (SIGTERM by parent-death
    signal) stops on its own; anything else the agent started for this home carries
    the home's tag and is ended here (see entrypoint.processes)."""
    if home.is_dir():
        end_tagged(home_id(home), None, time.monotonic() + 10)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny wheels: tinydep 1.0, and tinypkg 1.0 and 2.0 (both requiring tinydep)."""
    house = tmp_path_factory.mktemp("wheelhouse")
    build_wheel(house, "tinydep", "1.0")
    build_wheel(house, "tinypkg", "1.0", ("tinydep>=1",))
    build_wheel(house, "tinypkg", "2.0", ("tinydep>=1",))
    return house


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (each test its own fleet, by repository)."""
    if server_binaries() is None:
        pytest.skip(
            "no PostgreSQL server (Debian's postgresql) on this machine: fleet tests skipped"
        )
    with PostgresServer() as server:
        yield server


@pytest.fixture
def git_http(tmp_path: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(tmp_path / "remote") as server:
        yield server
