"""One agent per LIVE_PULL_HOME: an exclusive lock on `LIVE_PULL_HOME/lock`, taken before
anything else is touched and held for the agent's whole life.

flock belongs to the open file, which is not inherited (Python opens files
close-on-exec, and subprocesses close other fds), so supervisord and the app never
hold it: the lock goes the moment the agent dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from entrypoint.errors import AnotherAgent

LOCK_NAME = "lock"
DEFAULT_HOME = "/var/lib/live-pull"  # LIVE_PULL_HOME's default (config.py, quickstart.py)


class HomeLock:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise AnotherAgent naming its holder; touches nothing else."""
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise AnotherAgent(
                f"another live-pull agent (pid {holder or 'unknown'}) owns "
                f"LIVE_PULL_HOME={self.home}; only one agent may run per home"
            ) from None
        # Only the holder writes the pid, so a second agent never blanks it; written
        # before the old tail is cut, so a reader never finds the file empty.
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)
        os.ftruncate(fd, len(pid))
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
