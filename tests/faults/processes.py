"""Processes the fault tests look for: by a marker in their argv, by the tag the
agents' environment passes down, or by the port they listen on."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

from tests.conftest import wait_until

TAG_VARIABLE = "FAULT_SUITE_TAG"  # not LIVE_PULL_*: the agent refuses unknown settings


def marker() -> str:
    """A unique `sleep` argument: a process running `sleep <marker>` is ours."""
    return f"{random.randint(10**6, 10**7 - 1)}.{random.randint(1, 9)}"


def pids_with(text: str) -> list[int]:
    """Live (non-zombie) processes whose argv contains `text` as one argument."""
    wanted = text.encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in argv:
            found.append(int(proc.name))
    return found


def pids_tagged(tag: str) -> list[int]:
    wanted = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if wanted in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def wait_gone(text: str, timeout: float = 20.0) -> None:
    """Every process with `text` in its argv is gone (bounded wait)."""
    wait_until(
        lambda: not pids_with(text),
        timeout,
        lambda: f"no process left running `{text}`; still there: {_describe(pids_with(text))}",
    )


def _describe(pids: list[int]) -> str:
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            lines.append(f"{pid}: {argv.strip()}")
    return "; ".join(lines) or "none"


def app_pid(revision: str, program: bytes = b"app.py") -> int:
    """The app's own process for `revision`: it runs `program` with the revision in its
    environment (behind live-pull's proxy, or bound to PORT with LIVE_PULL_LISTEN=off)."""
    wanted = f"LIVE_PULL_REVISION={revision}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if program in argv and wanted in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
    assert len(found) == 1, f"one process of the app for {revision}: {_describe(found)}"
    return found[0]
