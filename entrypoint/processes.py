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
from collections.abc import Callable, Collection
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


def find_tagged(
    home: str, names: Collection[str] | None = None, *, spare_ours: bool = False
) -> list[int]:
    """Pids whose environment carries this home's tag (for these names only, if given).

    Never this process; with `spare_ours`, none of its descendants either: at start-up
    they are this agent's own, while a dead agent's have all been reparented.
    """
    ours = _descendants(os.getpid()) if spare_ours else {os.getpid()}
    return _still_tagged([pid for pid in _pids() if pid not in ours], home, names)


def end_tagged(
    home: str,
    names: Collection[str] | None,
    deadline: float,
    *,
    spare_ours: bool = False,
    termed: Collection[int] = (),
) -> int:
    """SIGTERM what carries the tag (but `termed`, which already had it), SIGKILL what is
    left at `deadline`; return the count."""
    pids = find_tagged(home, names, spare_ours=spare_ours)
    _signal_all([pid for pid in pids if pid not in termed], signal.SIGTERM)
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(POLL)
        left = [pid for pid in left if alive(pid)]
    left = _still_tagged(left, home, names)  # a pid freed and taken meanwhile is spared
    if left:
        _signal_all(left, signal.SIGKILL)
        shown = ",".join(sorted(names)) if names is not None else "*"
        log.warning("killed processes that outlived their stop names=%s count=%d", shown, len(left))
    return len(pids)


def terminate_escapees(home: str, names: Collection[str] | None, groups: set[int]) -> list[int]:
    """SIGTERM the tagged processes outside `groups` (the process groups supervisord is
    about to stop), so they get the same grace as their program; return them."""
    pids = [pid for pid in find_tagged(home, names) if _pgid(pid) not in groups]
    _signal_all(pids, signal.SIGTERM)
    return pids


def end_leftovers(home: str, deadline: float) -> int:
    """At start-up, with the home's lock held: end every process of this home that a
    dead agent left (its apps, what they spawned, its one-off commands' children)."""
    count = end_tagged(home, None, deadline, spare_ours=True)
    if count:
        log.warning("ended processes a previous agent left count=%d", count)
    return count


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
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before prctl: the kernel won't tell
            os.kill(os.getpid(), sig)

    return set_death_signal


def alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; its parent will reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _still_tagged(pids: list[int], home: str, names: Collection[str] | None) -> list[int]:
    prefix = f"{TAG_VARIABLE}={home}:".encode()
    wanted = None if names is None else {prefix + name.encode() for name in names}
    return [pid for pid in pids if _tagged(pid, prefix, wanted)]


def _tagged(pid: int, prefix: bytes, wanted: set[bytes] | None) -> bool:
    """Processes we may not read (another user's) are skipped: we did not start them."""
    try:
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    if wanted is None:
        return any(variable.startswith(prefix) for variable in variables)
    return any(variable in wanted for variable in variables)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _descendants(root: int) -> set[int]:
    """`root` and every process below it, from each process's parent in /proc."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
