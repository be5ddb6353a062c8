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
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path

log = logging.getLogger(__name__)

TAG_VARIABLE = "LIVE_PULL_PROCESS"
# The tag of an app behind live-pull's proxy: its slot's, with this after it.
BEHIND_PROXY = ".app"
ONEOFF = "oneoff"
POLL = 0.1
PR_SET_PDEATHSIG = 1
TAG_READ_TIMEOUT = 10.0


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
    about to stop), so they get the same grace as their program; return them. An app
    behind live-pull's proxy is left to the proxy, which stops it after its drain."""
    pids = [pid for pid in find_tagged(home, names) if _pgid(pid) not in groups]
    tags = _tags(pids)
    pids = [pid for pid in pids if not tags.get(pid, b"").endswith(BEHIND_PROXY.encode())]
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
    tags = _tags(pids)
    return [pid for pid in pids if _matches(tags.get(pid), prefix, wanted)]


def _matches(tag_line: bytes | None, prefix: bytes, wanted: set[bytes] | None) -> bool:
    if tag_line is None:
        return False
    return tag_line.startswith(prefix) if wanted is None else tag_line in wanted


def _tags(pids: list[int]) -> dict[int, bytes]:
    """Each pid's `LIVE_PULL_PROCESS=...` line. Processes we may not read are skipped
    (another user's: we did not start them), except the app user's, when the agent
    lacks the right to read them (no CAP_SYS_PTRACE): those are read as that user."""
    found: dict[int, bytes] = {}
    denied: list[int] = []
    for pid in pids:
        try:
            found[pid] = _tag_line(Path(f"/proc/{pid}/environ").read_bytes())
        except PermissionError:
            denied.append(pid)
        except OSError:
            continue
    if denied and _app_user is not None:
        found.update(_tags_as(_app_user, [pid for pid in denied if _owner(pid) == _app_user[0]]))
    return {pid: line for pid, line in found.items() if line}


def _tag_line(environ: bytes) -> bytes:
    marker = f"{TAG_VARIABLE}=".encode()
    return next((item for item in environ.split(b"\0") if item.startswith(marker)), b"")


# -- the app user's processes, read as the app user ----------------------------------

_app_user: tuple[int, int] | None = None


def read_app_processes_as(uid: int, gid: int) -> None:
    """The agent and the app run as different users: tags of processes owned by
    `uid` are read by a helper running as that uid (see _tags)."""
    global _app_user
    _app_user = (uid, gid)


def _tags_as(user: tuple[int, int], pids: list[int]) -> dict[int, bytes]:
    """Ask `python -m entrypoint.processes PID...` running as `user`. What it says is
    trusted only for processes that user owns (the caller filtered them)."""
    if not pids:
        return {}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "entrypoint.processes", *map(str, pids)],
            user=user[0],
            group=user[1],
            extra_groups=[],
            env={"PATH": os.defpath},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TAG_READ_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not read the app user's processes error=%s", exc)
        return {}
    found: dict[int, bytes] = {}
    for line in result.stdout.splitlines():
        pid, _, tag_line = line.partition(b" ")
        if pid.isdigit() and int(pid) in pids:
            found[int(pid)] = tag_line
    return found


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _print_tags(pids: list[str]) -> None:
    """The helper's side: `PID LIVE_PULL_PROCESS=...` for each readable, tagged pid."""
    for pid in filter(str.isdigit, pids):
        with contextlib.suppress(OSError):
            line = _tag_line(Path(f"/proc/{pid}/environ").read_bytes())
            if line:
                sys.stdout.buffer.write(pid.encode() + b" " + line + b"\n")


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


if __name__ == "__main__":
    _print_tags(sys.argv[1:])
