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


def pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


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


def listening_pid(port: int) -> int:
    """The process listening on 127.0.0.1:`port` (found through /proc)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            inode = fields[9]
    assert inode is not None, f"nothing listens on port {port}"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == f"socket:[{inode}]":
                    return int(proc.name)
    raise AssertionError(f"no process holds the socket of port {port}")
