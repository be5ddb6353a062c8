"""Filesystem faults: a read-only bind mount, a small tmpfs, a disk kept full."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def run_quiet(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` read-only for everyone (root included): a read-only bind mount over it."""
    done = run_quiet("mount", "--bind", str(path), str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        remount = run_quiet("mount", "-o", "remount,bind,ro", str(path))
        assert remount.returncode == 0, remount.stderr
        yield
    finally:
        wait_until(lambda: run_quiet("umount", str(path)).returncode == 0, 30, f"umount {path}")


class Mounts:
    """tmpfs mounts made for a test, unmounted at the end (lazily if still busy)."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def tmpfs(self, path: Path, size: str = "64m") -> Path:
        """`path` as a small tmpfs where that is possible, else a plain directory."""
        path.mkdir(parents=True, exist_ok=True)
        if can_mount():
            done = run_quiet("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
            if done.returncode == 0:
                self.points.append(path)
        return path

    def close(self) -> None:
        for path in reversed(self.points):
            deadline = time.monotonic() + 10
            while run_quiet("umount", str(path)).returncode != 0:
                if time.monotonic() > deadline:
                    run_quiet("umount", "-l", str(path))
                    break
                time.sleep(0.2)
        self.points.clear()


@contextlib.contextmanager
def disk_full(home: Path) -> Iterator[None]:
    """The filesystem of `home` (a tmpfs) full, and kept full.

    Every file already there is hard-linked aside first, so what the agent deletes
    frees nothing; a thread takes back at once whatever space still turns up.
    """
    pins = home / ".pins"
    pins.mkdir()
    number = 0
    for directory, _, names in os.walk(home):
        if Path(directory) == pins:
            continue
        for name in names:
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                number += 1
                with contextlib.suppress(OSError):
                    os.link(path, pins / str(number))
    stop = threading.Event()
    fillers = [home / ".filler-big", home / ".filler-top"]
    big = os.open(fillers[0], os.O_WRONLY | os.O_CREAT, 0o600)
    top = os.open(fillers[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def fill(fd: int, chunk: int) -> None:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(fd, b"\0" * chunk)

    fill(big, 1 << 20)
    fill(top, 4096)

    def keep_full() -> None:
        while not stop.wait(0.01):
            fill(top, 4096)

    thread = threading.Thread(target=keep_full, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        os.close(big)
        os.close(top)
        for path in fillers:
            path.unlink(missing_ok=True)
        shutil.rmtree(pins, ignore_errors=True)
