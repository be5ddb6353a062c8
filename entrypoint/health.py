"""Health checks of a new revision (LIVE_PULL_HEALTHCHECK_PATH).

Behind a shared socket a request could reach the old process instead of the new
one, so the check runs before the new revision joins: a probe instance of its web
command is started on a private socket of its own (handed over as the slot will
get it), asked for the path, and stopped again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import requests

from entrypoint.errors import AppFailed
from entrypoint.identity import AS_AGENT, Identity
from entrypoint.shell import socket_handoff_line

log = logging.getLogger(__name__)


def wait_healthy(url: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll url until it answers 2xx; raise AppFailed on timeout or if the app dies."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise AppFailed(f"health check: the app exited before answering {url}")
        try:
            response = requests.get(url, timeout=2)
            if 200 <= response.status_code < 300:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise AppFailed(f"health check failed: {url} gave {last} for {timeout:g}s")


def probe_before_joining(
    cwd: Path,
    env: dict[str, str],
    command: str,
    path: str,
    timeout: float,
    run_as: Identity = AS_AGENT,
) -> None:
    """Run the web command on a private socket (as the app user), check `path`, stop it."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = listener.getsockname()[1]
    process = subprocess.Popen(
        ["/bin/sh", "-c", socket_handoff_line(command)],
        cwd=cwd,
        env={**os.environ, **env},
        stdin=listener.fileno(),
        start_new_session=True,
        **run_as.popen_kwargs(),
    )
    listener.close()
    log.info("health check of the new revision on a private socket path=%s", path)
    try:
        wait_healthy(f"http://127.0.0.1:{port}{path}", timeout, lambda: process.poll() is None)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
