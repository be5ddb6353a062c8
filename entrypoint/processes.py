"""Every process live-pull starts for a home carries a tag, so none outlives its turn.

A program that calls setsid or double-forks leaves its process group, and
supervisord's stopasgroup/killasgroup no longer reach it. Its environment still
holds the tag it inherited (`LIVE_PULL_PROCESS=<home id>:<name>`), so the agent finds
it in /proc and ends it when its program stops, when the agent stops, and when a
later agent starts on the same home after this one was killed. The home id keeps
agents on other homes (many, in the tests) out of each other's way. One-off
commands (installers, the release step, git) inherit `<home id>:oneoff` from the
agent and also die with it (parent-death signal).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

TAG_VARIABLE = "LIVE_PULL_PROCESS"
ONEOFF = "oneoff"
POLL = 0.1
PR_SET_PDEATHSIG = 1


def home_id(home: Path) -> str:
    return hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]


def tag(home: str, name: str) -> str:
    return f"{home}:{name}"


def find_tagged(home: str, name: str | None = None) -> list[int]:
    """Pids whose environment carries this home's tag (for `name` only, if given)."""
    wanted = f"{TAG_VARIABLE}={tag(home, name)}" if name else f"{TAG_VARIABLE}={home}:"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for variable in (entry / "environ").read_bytes().split(b"\0"):
                text = variable.decode(errors="replace")
                if text == wanted or (name is None and text.startswith(wanted)):
                    found.append(int(entry.name))
                    break
    return found


def end_tagged(home: str, name: str | None, deadline: float) -> int:
    """SIGTERM what carries the tag, SIGKILL what is left at `deadline`; return the count."""
    pids = find_tagged(home, name)
    _signal_all(pids, signal.SIGTERM)
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(POLL)
        left = [pid for pid in left if alive(pid)]
    if left:
        _signal_all(left, signal.SIGKILL)
        log.warning("killed leftover processes name=%s count=%d", name or "*", len(left))
    return len(pids)


def tag_children(home: str) -> None:
    """Every process the agent starts from now on inherits the one-off tag (programs
    get their own from supervisord's configuration)."""
    os.environ[TAG_VARIABLE] = tag(home, ONEOFF)


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to send `sig` to the child when the thread that
    started it exits (PR_SET_PDEATHSIG: the forking *thread*, so call it from a thread
    that lives as long as the agent)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, sig)

    return set_death_signal


def alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; its parent will reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
