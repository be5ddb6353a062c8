"""Running one-off commands (release step, installers): streamed to the log, bounded,
killed as a whole process group on timeout or when the agent stops."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from entrypoint.errors import CommandFailed
from entrypoint.identity import AS_AGENT, Identity
from entrypoint.processes import ONEOFF, TAG_VARIABLE, die_with_parent, tag
from entrypoint.shell import shell_line

log = logging.getLogger(__name__)

TAIL_LINES = 20
QUIET_SECONDS = 10.0
END_WAIT = 5.0


def run_logged(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    stop: threading.Event,
    on_line: Callable[[str], None],
    on_quiet: Callable[[], None] | None = None,
    run_as: Identity = AS_AGENT,
) -> None:
    """Run argv, passing each output line to on_line; raise CommandFailed with the tail.

    `run_as`: code from the repository (installers, the release step) runs as the app
    user, wrapper included, so the wrapper can read its command's processes in /proc.

    on_quiet is called every QUIET_SECONDS the command runs, so a long download that
    prints nothing still shows in the log that work goes on.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "entrypoint.oneoff", *argv],  # see entrypoint/oneoff.py
        cwd=cwd,
        env=_tagged_uniquely(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent(signal.SIGTERM),  # the wrapper ends it with the agent
        text=True,
        errors="replace",
        **run_as.popen_kwargs(),
    )
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    reader = threading.Thread(target=_pump, args=(process, tail, on_line), daemon=True)
    reader.start()
    code = _wait(process, timeout, stop, tail, on_quiet)
    reader.join(timeout=5)
    if code != 0:
        raise CommandFailed(code, list(tail))


def _tagged_uniquely(env: dict[str, str]) -> dict[str, str]:
    """This command's own tag (`<home>:oneoff-<id>`), so its wrapper ends exactly it."""
    base = env.get(TAG_VARIABLE) or tag("untagged", ONEOFF)
    return {**env, TAG_VARIABLE: f"{base}-{uuid.uuid4().hex[:8]}"}


def run_release_step(
    command: str,
    cwd: Path,
    env: dict[str, str],
    *,
    timeout: float,
    stop: threading.Event,
    run_as: Identity = AS_AGENT,
) -> None:
    """The Procfile `release` step (migrations), run by the shell in the new release."""
    log.info("running release step cwd=%s", cwd)
    try:
        run_logged(
            ["/bin/sh", "-c", shell_line(command)],  # exec'd: the step gets the death signal
            cwd=cwd,
            env=env,
            timeout=timeout,
            stop=stop,
            on_line=lambda line: log.info("release: %s", line),
            run_as=run_as,
        )
    except CommandFailed as exc:
        raise exc.as_revision_error("release step") from exc


def _pump(
    process: subprocess.Popen[str],
    tail: collections.deque[str],
    on_line: Callable[[str], None],
) -> None:
    assert process.stdout is not None
    for raw in process.stdout:
        line = raw.rstrip()
        tail.append(line)
        on_line(line)


def _wait(
    process: subprocess.Popen[str],
    timeout: float,
    stop: threading.Event,
    tail: collections.deque[str],
    on_quiet: Callable[[], None] | None,
) -> int:
    deadline = time.monotonic() + timeout
    next_quiet = time.monotonic() + QUIET_SECONDS
    while True:
        try:
            return process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if on_quiet is not None and time.monotonic() >= next_quiet:
            on_quiet()
            next_quiet += QUIET_SECONDS
        if stop.is_set() or time.monotonic() > deadline:
            reason = "agent stopping" if stop.is_set() else f"timed out after {timeout:g}s"
            _end(process)
            tail.append(f"killed: {reason}")
            return -signal.SIGKILL


def _end(process: subprocess.Popen[str]) -> None:
    """SIGTERM the wrapper, which ends everything of the command; SIGKILL the group if
    the wrapper itself does not go."""
    with contextlib.suppress(OSError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=END_WAIT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
