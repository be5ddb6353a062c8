"""Run the Procfile `release` step (migrations and the like) before a revision goes live."""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from entrypoint.errors import RevisionError

log = logging.getLogger(__name__)

TAIL_LINES = 20


def run_release_step(
    command: str,
    cwd: Path,
    env: dict[str, str],
    *,
    timeout: float,
    stop: threading.Event,
) -> None:
    """Run `command` in a shell; raise RevisionError with its last lines if it fails.

    The step's output is logged line by line as it comes; the step is killed
    (whole process group) on timeout or when the agent is asked to stop.
    """
    log.info("running release step cwd=%s", cwd)
    process = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    reader = threading.Thread(target=_pump, args=(process, tail), daemon=True)
    reader.start()
    code = _wait(process, timeout, stop)
    reader.join(timeout=5)
    if code != 0:
        last = " | ".join(tail) or "no output"
        raise RevisionError(f"release step failed code={code}: {last}")


def _pump(process: subprocess.Popen[str], tail: collections.deque[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        tail.append(line)
        log.info("release: %s", line)


def _wait(process: subprocess.Popen[str], timeout: float, stop: threading.Event) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if stop.is_set() or time.monotonic() > deadline:
            reason = "agent stopping" if stop.is_set() else f"timed out after {timeout:g}s"
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise RevisionError(f"release step killed: {reason}")
