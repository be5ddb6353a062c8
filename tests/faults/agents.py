"""The agent as a real process, the launcher that cleans up only what it started, and
a shared agent per family of scenarios.

Cleanup rule: a launcher signals only the agents it started and, after they are gone,
processes that carry its own tag in their environment (the agents' descendants, which
inherit it; double-forked ones included). It never reads a pid from a file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import git
import requests

from entrypoint.demo import free_port
from entrypoint.sample import APP, SampleRepo, app_files, create_sample_repo
from tests.conftest import AgentProcess, wait_until
from tests.faults.processes import TAG_VARIABLE, pids_tagged

# Small timeouts, through settings, so that every fault plays out in seconds.
FAST = {
    "LIVE_PULL_POLL_INTERVAL": "1",
    "LIVE_PULL_MAX_BACKOFF": "2",
    "LIVE_PULL_START_SECONDS": "1",
    "LIVE_PULL_START_RETRIES": "1",
    "LIVE_PULL_STOP_TIMEOUT": "2",
    "LIVE_PULL_START_TIMEOUT": "30",
    "LIVE_PULL_GIT_TIMEOUT": "20",
}
WAIT = 45.0


# -- agents -------------------------------------------------------------------------------


class Agent(AgentProcess):
    """The agent as a real process, with probes and facts the fault tests read."""

    combined: Path | None = None  # one file for stdout and stderr, as `> file 2>&1`

    def start(self) -> Agent:
        if self.combined is None:
            super().start()
            return self
        with open(self.combined, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "entrypoint", "run"],
                env=self.env,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )
        self.stdout_path = self.stderr_path = self.combined
        return self

    def code(self, path: str) -> int | None:
        try:
            return requests.get(self.status_url(path), timeout=5).status_code
        except requests.RequestException:
            return None

    def healthz(self) -> int | None:
        return self.code("/healthz")

    def readyz(self) -> int | None:
        return self.code("/readyz")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def failed(self) -> dict[str, str]:
        return dict(self.status().get("failed_revisions") or {})

    def checks(self) -> int:
        return int(self.status().get("checks") or 0)

    def serves(self, sha: str) -> bool:
        return f"revision {sha[:12]}" in (self.app() or "")

    def wait_failed(self, sha: str, timeout: float = WAIT) -> dict[str, Any]:
        """Wait until `sha` is recorded as failed; return the status then."""
        return dict(
            wait_until(
                lambda: sha in ((s := self.status()).get("failed_revisions") or {}) and s,
                timeout,
                lambda: f"{sha[:12]} recorded failed: {self.status()}\n{self.tail()}",
            )
        )

    def wait_error(
        self, timeout: float = WAIT, after: dict[str, Any] | None = None, **expected: Any
    ) -> dict[str, Any]:
        """Wait until /status shows a last_error (and the expected facts); with `after`
        (a status taken before the fault), an error other than the one shown then."""
        old = (after or {}).get("last_error"), (after or {}).get("last_error_at")

        def shown() -> dict[str, Any] | None:
            status = self.status()
            new = status.get("last_error"), status.get("last_error_at")
            ok = (
                status.get("last_error")
                and (after is None or new != old)
                and all(status.get(k) == v for k, v in expected.items())
            )
            return status if ok else None

        return dict(
            wait_until(shown, timeout, lambda: f"an error shown: {self.status()}\n{self.tail()}")
        )

    def tail(self, lines: int = 40) -> str:
        """The end of the agent's output (bounded: some apps write a lot)."""
        chunks = []
        for path in (self.stdout_path, self.stderr_path):
            with contextlib.suppress(OSError), open(path, "rb") as handle:
                handle.seek(max(0, path.stat().st_size - 20000))
                text = handle.read().decode(errors="replace")
                chunks.append("\n".join(text.splitlines()[-lines:]))
        return "--- agent output (tail) ---\n" + "\n---\n".join(chunks)

    def stderr_lines(self) -> list[str]:
        return self.stderr_path.read_text(errors="replace").splitlines()


class Launcher:
    """Starts agents; at the end stops them and what they left (found by a tag)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex
        self.agents: list[Agent] = []

    def agent(
        self,
        url: str,
        home: Path,
        *,
        start: bool = True,
        combined: Path | None = None,
        **extra: str,
    ) -> Agent:
        env = {
            **os.environ,
            "REPO_URL": url,
            "LIVE_PULL_HOME": str(home),
            "LIVE_PULL_STATUS_PORT": str(free_port()),
            "PORT": str(free_port()),
            TAG_VARIABLE: self.tag,
            **FAST,
            **extra,
        }
        agent = Agent(home, env, self.logs)
        agent.combined = combined
        self.agents.append(agent)
        return agent.start() if start else agent

    def close(self) -> None:
        for agent in self.agents:
            process = agent.process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for agent in self.agents:
            process = agent.process
            if process is None:
                continue
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # What the agents left behind carries our tag: their children, orphans included.
        deadline = time.monotonic() + 10
        while (left := pids_tagged(self.tag)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)


# -- repositories -------------------------------------------------------------------------


def head(sample: SampleRepo) -> str:
    return git.Repo(sample.work).head.commit.hexsha


def remote_sha(sample: SampleRepo, ref: str = "HEAD") -> str | None:
    try:
        return str(git.Repo(sample.remote).commit(ref).hexsha)
    except (ValueError, git.BadName, git.GitCommandError):
        return None


def app_with(prelude: str, message: str = "hello") -> str:
    """The sample app with `prelude` run just before it starts serving."""
    app = APP.format(message=message)
    serve = "ThreadingHTTPServer(("
    return app.replace(serve, prelude.rstrip("\n") + "\n" + serve, 1)


class Prober:
    """Asks the app every few tenths of a second in the background; counts failures."""

    def __init__(self, agent: Agent, sha: str) -> None:
        self.agent = agent
        self.sha = sha
        self.asked = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        url = f"http://127.0.0.1:{self.agent.port}/"
        while not self._stop.is_set():
            try:
                text = requests.get(url, timeout=5).text
                if f"revision {self.sha[:12]}" not in text:
                    self.failures.append(f"answered {text!r}")
            except requests.RequestException as exc:
                self.failures.append(type(exc).__name__)
            self.asked += 1
            self._stop.wait(0.3)

    def assert_served(self) -> None:
        assert self.asked > 0
        assert self.failures == [], f"the app stopped serving {self.sha[:12]}: {self.failures}"


class Sampler:
    """Samples /status and /readyz in the background, for facts that last seconds."""

    def __init__(self, agent: Agent, every: float = 0.1) -> None:
        self.agent = agent
        self.every = every
        self.samples: list[tuple[dict[str, Any], int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            status = self.agent.status()
            if status:
                self.samples.append((status, self.agent.readyz()))
            self._stop.wait(self.every)

    def seen(self, predicate: Callable[[dict[str, Any], int | None], Any]) -> bool:
        return any(predicate(status, ready) for status, ready in list(self.samples))


# -- a shared agent per family ----------------------------------------------------------


class Family:
    """One agent shared by a family's scenarios, which are sequential by nature.

    `ready()` is each scenario's precondition: the agent alive and serving the
    remote's newest good commit. If a scenario before left it otherwise (it failed),
    a fresh agent on a fresh home takes over, so one failure does not cascade.
    """

    def __init__(
        self,
        root: Path,
        launcher: Launcher,
        *,
        url: Callable[[SampleRepo], str] = lambda sample: sample.url,
        good: Callable[[str], dict[str, str]] = app_files,
        make_home: Callable[[Path], Path] = lambda path: path,
        **env: str,
    ) -> None:
        self.root = root
        self.launcher = launcher
        self.sample = create_sample_repo(root / "remote")
        self.url = url(self.sample)
        self.good_files = good
        self.make_home = make_home
        self.env = env
        self.generation = 0
        self.counter = 0
        self.agent: Agent | None = None
        self.on_restart: list[Callable[[Family], None]] = []
        self.notes: dict[str, Any] = {}  # what a family's scenarios check across faults

    @property
    def home(self) -> Path:
        assert self.agent is not None
        return self.agent.home

    def good(self, label: str = "good") -> str:
        """Push a new good commit; return its sha."""
        self.counter += 1
        return self.sample.commit(self.good_files(f"{label} {self.counter}"), label)

    def commit(self, files: dict[str, str], label: str) -> str:
        self.counter += 1
        return self.sample.commit(files, f"{label} {self.counter}")

    def ready(self) -> Agent:
        agent = self.agent
        if agent is not None and agent.alive() and self._settled(agent):
            return agent
        return self.restart()

    def restart(self) -> Agent:
        """A fresh agent on a fresh home, serving a new good commit."""
        if self.agent is not None and self.agent.alive():
            self.agent.stop(timeout=30)
        self.generation += 1
        home = self.make_home(self.root / f"home-{self.generation}")
        self._reset_work_clone()
        sha = self.good("fresh start")
        self.agent = self.launcher.agent(self.url, home, **self.env)
        self.agent.wait_serving(sha, timeout=90)
        self.agent.wait_status(revision=sha, ready=True, state="running")
        for hook in self.on_restart:
            hook(self)
        return self.agent

    def stop(self) -> None:
        """Stop the shared agent cleanly (SIGTERM, exit 0), keeping its home."""
        assert self.agent is not None
        code, _ = self.agent.stop(timeout=30)
        assert code == 0, self.agent.tail()

    def launch(self, **env: str) -> Agent:
        """A new agent on the same home (after stop, or after the old one was killed)."""
        assert self.agent is not None
        self.agent = self.launcher.agent(self.url, self.agent.home, **{**self.env, **env})
        return self.agent

    def _reset_work_clone(self) -> None:
        """Put `main` back as the default branch the work clone pushes."""
        repo = git.Repo(self.sample.work)
        with contextlib.suppress(git.GitCommandError):
            repo.git.checkout("main")
        git.Repo(self.sample.remote).git.symbolic_ref("HEAD", "refs/heads/main")

    def _settled(self, agent: Agent, timeout: float = 30.0) -> bool:
        """Serving the remote's head (a new good commit if the head failed)."""
        sha = remote_sha(self.sample)
        if sha is None or sha in agent.failed():
            sha = self.good("settle")
        try:
            wait_until(
                lambda: (
                    (s := agent.status()).get("revision") == sha
                    and s.get("ready")
                    and s.get("state") == "running"  # the update recorded, not only live
                    and agent.serves(sha)
                ),
                timeout,
            )
        except AssertionError:
            return False
        return True
