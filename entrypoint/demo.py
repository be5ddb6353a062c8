"""`live-pull demo`: a sample app repository, the agent serving it, a commit going live."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from entrypoint.ports import unused_port
from entrypoint.sample import SampleRepo, app_files, create_sample_repo

WAIT_SECONDS = 60.0
STATUS_KEYS = ("state", "revision", "ref", "updates", "last_error")


def free_port() -> int:
    return unused_port()


def fetch_text(url: str) -> str | None:
    try:
        return requests.get(url, timeout=2).text.strip()
    except requests.RequestException:
        return None


def wait_for_text(url: str, contains: str, timeout: float = WAIT_SECONDS) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = fetch_text(url)
        if text is not None and contains in text:
            return text
        time.sleep(0.3)
    return None


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run_demo(port: int | None) -> int:
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="live-pull-demo-") as tmp:
        root = Path(tmp)
        sample = create_sample_repo(root, message="hello")
        say(f"sample app repository: {sample.url}")
        status_port = free_port()
        agent = _start_agent(sample.url, root / "home", port, status_port)
        try:
            code = _show_update(sample, agent, f"http://127.0.0.1:{port}/")
            if code == 0:
                _show_status(f"http://127.0.0.1:{status_port}/status")
            return code
        finally:
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(timeout=30)
            say(f"agent stopped on SIGTERM, exit code {code}")


def _start_agent(url: str, home: Path, port: int, status_port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REPO_URL": url,
        "LIVE_PULL_HOME": str(home),
        "LIVE_PULL_POLL_INTERVAL": "2",
        "LIVE_PULL_STATUS_PORT": str(status_port),
        "PORT": str(port),
    }
    say(f"starting: live-pull run (app on port {port}, polling every 2s)")
    return subprocess.Popen([sys.executable, "-m", "entrypoint", "run"], env=env)


def _show_update(sample: SampleRepo, agent: subprocess.Popen[bytes], url: str) -> int:
    first = wait_for_text(url, "hello from revision")
    if first is None:
        say(f"the app did not answer at {url}")
        return 1
    say(f"the app answers: {first}")
    sha = sample.commit(app_files("hello again"), "change the greeting")
    say(f"pushed commit {sha[:12]}; waiting for it to go live (no restart of the agent)")
    started = time.monotonic()
    second = wait_for_text(url, f"hello again from revision {sha[:12]}")
    if second is None or agent.poll() is not None:
        say("the new commit did not go live")
        return 1
    say(f"live after {time.monotonic() - started:.1f}s: {second}")
    return 0


def _show_status(url: str) -> None:
    """Wait for the agent to call the update done, then show what /status says."""
    deadline = time.monotonic() + WAIT_SECONDS
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException, ValueError):
            status = requests.get(url, timeout=2).json()
            if status.get("state") == "running" and status.get("updates") == 1:
                break
        time.sleep(0.3)
    say(f"{url}: " + ", ".join(f"{key}={status.get(key)}" for key in STATUS_KEYS))
