"""Long work: a first install and a fetch that hang past the heartbeat window, set
up once and sampled in the background while the other fault scenarios run."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from pathlib import Path

from entrypoint.sample import app_files, create_sample_repo
from tests.conftest import wait_until
from tests.faults.agents import Agent, Launcher, head
from tests.faults.processes import marker, pids_with
from tests.faults.remote import FaultyRemote

# Well past any heartbeat window the agent may use while idle (60 s).
LONG_WORK_SECONDS = 75.0
HEARTBEAT_WINDOW = 60.0


class Watched:
    """An agent doing long work, its /healthz and /readyz sampled twice a second."""

    def __init__(self, agent: Agent, launcher: Launcher) -> None:
        self.agent = agent
        self.launcher = launcher
        self.since = 0.0
        self.samples: list[tuple[float, int | None, int | None]] = []

    def sample(self) -> None:
        if self.agent.alive():
            self.samples.append((time.monotonic(), self.agent.healthz(), self.agent.readyz()))

    def wait_long_work(self) -> list[tuple[float, int | None, int | None]]:
        """Wait until the work has lasted LONG_WORK_SECONDS; return its samples."""
        wait_until(
            lambda: time.monotonic() - self.since > LONG_WORK_SECONDS,
            LONG_WORK_SECONDS + 30,
            "the long work to outlast the heartbeat window",
        )
        samples = [s for s in list(self.samples) if s[0] >= self.since]
        times = [self.since] + [t for t, _, _ in samples]
        assert max(b - a for a, b in itertools.pairwise(times)) < 10, "sampling gap"
        assert times[-1] - self.since > HEARTBEAT_WINDOW + 5, "nothing sampled past the window"
        return samples


class SlowWorld:
    """Two agents at long work: a first install that sleeps until its gate goes, and a
    serving agent whose next fetch hangs (git timeout 120 s)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.error: str | None = None
        self.stack = contextlib.ExitStack()
        self.stop = threading.Event()
        self.install_launcher = Launcher(root / "install-logs")
        self.fetch_launcher = Launcher(root / "fetch-logs")
        self.install_gate = root / "slow-install"
        self.install_marker = marker()

    def ready(self) -> SlowWorld:
        assert self.error is None, f"the long work could not be set up:\n{self.error}"
        return self

    def start(self) -> None:
        try:
            self._start()
        except Exception:
            import traceback

            self.error = traceback.format_exc()

    def _start(self) -> None:
        root = self.root
        self.install_gate.write_text("")
        command = (
            f'if [ -e {self.install_gate} ]; then touch "$LIVE_PULL_ENV/started"; '
            f"sleep {self.install_marker}; fi; "
            'echo installed > "$LIVE_PULL_ENV/done"'
        )
        installed = create_sample_repo(root / "install-remote")
        self.install_sample = installed.commit({"package-lock.json": "v1"}, "install command")
        self.install = Watched(
            self.install_launcher.agent(
                installed.url,
                root / "install-home",
                LIVE_PULL_INSTALL_COMMAND=command,
                LIVE_PULL_LOCKFILE="package-lock.json",
            ),
            self.install_launcher,
        )
        self.remote = self.stack.enter_context(FaultyRemote(root / "fetch-remote"))
        fetched = create_sample_repo(root / "fetch-remote")
        self.sample_a = head(fetched)
        agent = self.fetch_launcher.agent(
            self.remote.url(fetched.remote.name),
            root / "fetch-home",
            LIVE_PULL_GIT_TIMEOUT="120",
        )
        self.fetch = Watched(agent, self.fetch_launcher)
        agent.wait_serving(self.sample_a)
        self.remote.set("hang_fetch")
        self.sample_b = fetched.commit(app_files("never fetched"), "hangs")
        wait_until(lambda: self.remote.count("fetch") >= 1, what="the fetch hanging")
        self.fetch.since = time.monotonic()
        wait_until(lambda: pids_with(self.install_marker), what="the install under way")
        self.install.since = time.monotonic()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.stop.wait(0.5):
            self.install.sample()
            self.fetch.sample()

    def close(self) -> None:
        self.stop.set()
        self.install_launcher.close()
        self.fetch_launcher.close()
        self.stack.close()
