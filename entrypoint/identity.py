"""Two identities: the agent (git, secrets, supervisord's socket) and the app user that
code from the repository runs as (the app's programs, its release step, installers
and the build backends they run).

The agent must be root to switch (the image starts it as root with a handful of
capabilities; see the README). Where the platform forces one non-root uid, nothing
can switch: everything runs as that uid and the agent says so once at start.

Ownership follows who may write: a release the app runs (or prepares) and its
scratch directory belong to the app user; an environment belongs to it while it is
built and to the agent once it is in place, so a running app can never change what
later releases reuse; a release that stops running is taken back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrypoint.files import remove_path

log = logging.getLogger(__name__)

# What the app could reach when it runs as the agent's own uid (said once at start).
SINGLE_UID_REACH = (
    "the credentials and secrets under LIVE_PULL_HOME, the agent's environment in /proc,"
    " the supervisord password, every *_FILE secret, the environments and other releases"
)


@dataclass(frozen=True)
class AppUser:
    uid: int
    gid: int
    name: str


@dataclass(frozen=True)
class Identity:
    """Who code from the repository runs as; `app` None: as the agent itself."""

    app: AppUser | None = None

    @property
    def separated(self) -> bool:
        return self.app is not None

    def popen_kwargs(self) -> dict[str, Any]:
        """subprocess.Popen arguments that start a child as the app user."""
        if self.app is None:
            return {}
        return {"user": self.app.uid, "group": self.app.gid, "extra_groups": []}

    def supervisor_user(self) -> str | None:
        """supervisord's `user=` for the app's programs (it wants a passwd entry)."""
        return None if self.app is None else self.app.name

    def hand_over(self, path: Path) -> None:
        """Give a tree to the app user (it may write there)."""
        if self.app is not None:
            _chown_tree(path, self.app.uid, self.app.gid, read_only=False)

    def take_back(self, path: Path) -> None:
        """Give a tree to the agent and strip group and other write bits: the app user
        keeps reading it and can no longer change it."""
        if self.app is not None:
            _chown_tree(path, os.geteuid(), os.getegid(), read_only=True)

    def private_dir(self, path: Path) -> Path:
        """A directory only the agent can enter (the local repository)."""
        path.mkdir(parents=True, exist_ok=True)
        if self.app is not None:
            path.chmod(0o700)
        return path

    def can_read(self, path: Path) -> bool:
        """Whether the app user could read `path` (a secret mounted 0644, as Kubernetes
        mounts Secrets by default, is readable by every uid)."""
        if self.app is None:
            return True
        try:
            info = path.stat()
        except OSError:
            return False
        bit = self._class_bit(info, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
        return bool(info.st_mode & bit) and self.blocked_on_the_way(path.parent) is None

    def claim_home(
        self, home: Path, app_owned: Collection[str], running: Path | None = None
    ) -> None:
        """At start: everything in the home is the agent's but what the app may write
        (`app_owned`: shared data, scratch, the installers' cache; the release a quick
        start runs, `running`). A home written by an earlier single-uid agent, or by an
        older image whose one user is the app user now, is taken back here; the release
        to run is handed over again when prepared."""
        if self.app is None:
            return
        os.chown(home, os.geteuid(), os.getegid())
        home.chmod(0o755)
        kept = {home / name for name in app_owned} | ({running} if running else set())
        self._take_back_all_but(home, kept)

    def _take_back_all_but(self, directory: Path, kept: set[Path]) -> None:
        """What is in `directory`, but `kept` (the way to them: those directories alone)."""
        for child in directory.iterdir():
            if child in kept:
                continue
            if any(child in path.parents for path in kept):
                _chown_one(str(child), os.geteuid(), os.getegid(), read_only=True)
                self._take_back_all_but(child, kept)
            else:
                self.take_back(child)

    def _class_bit(self, info: os.stat_result, user: int, group: int, other: int) -> int:
        assert self.app is not None
        if info.st_uid == self.app.uid:
            return user
        return group if info.st_gid == self.app.gid else other

    def blocked_on_the_way(self, path: Path) -> Path | None:
        """The first directory from / to `path` the app user may not pass through (it
        must reach its releases, environments and scratch under LIVE_PULL_HOME)."""
        if self.app is None:
            return None
        for directory in [*reversed(path.parents), path]:
            info = directory.stat()
            if not info.st_mode & self._class_bit(info, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
                return directory
        return None


AS_AGENT = Identity()


def resolve(setting: str | None, euid: int | None = None) -> Identity:
    """The identity for LIVE_PULL_APP_USER (a name, or uid[:gid] with a passwd entry).

    Raises ValueError for a user that does not exist or is root. Without the power to
    switch (not root), the app runs as the agent's uid: see notice()."""
    if setting is None or not setting.strip():
        return Identity()
    app = lookup(setting.strip())
    euid = os.geteuid() if euid is None else euid
    if euid != 0 or app.uid == euid:
        return Identity()
    return Identity(app)


def lookup(setting: str) -> AppUser:
    """The passwd entry for a name or uid[:gid]; root is refused."""
    name, _, group = setting.partition(":")
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"no such user {name!r}") from None
    if entry.pw_uid == 0:
        raise ValueError("must not be root: the app would hold the agent's rights")
    if group and not group.isdigit():
        raise ValueError(f"group must be a number, got {group!r}")
    gid = int(group) if group else entry.pw_gid
    return AppUser(entry.pw_uid, gid, entry.pw_name)


def notice(setting: str | None, identity: Identity) -> str | None:
    """The one line the agent logs at start when code from the repository runs as the
    agent's own uid, naming what that code can therefore reach; None when separated."""
    if identity.separated:
        return None
    uid = os.geteuid()
    if setting and setting.strip():
        why = f"LIVE_PULL_APP_USER={setting.strip()} is set but the agent runs as uid {uid}"
        why += " and cannot switch users (start the container as root to separate)"
    else:
        why = f"LIVE_PULL_APP_USER is not set, the app runs as the agent (uid {uid})"
    return f"privilege separation is off: {why}; the app can read {SINGLE_UID_REACH}"


def _chown_tree(root: Path, uid: int, gid: int, *, read_only: bool) -> None:
    """lchown every entry (links themselves, never what they point to)."""
    if not os.path.lexists(root):
        return
    _chown_one(str(root), uid, gid, read_only)
    if root.is_symlink() or not root.is_dir():
        return
    for directory, subdirs, files in os.walk(root, followlinks=False):
        for name in [*subdirs, *files]:
            _chown_one(os.path.join(directory, name), uid, gid, read_only)


def _chown_one(path: str, uid: int, gid: int, read_only: bool) -> None:
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(path)
        if (info.st_uid, info.st_gid) != (uid, gid):
            os.lchown(path, uid, gid)
        if read_only and not stat.S_ISLNK(info.st_mode):
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o6022:  # no write for others, no set-id bits the app put there
                os.chmod(path, mode & ~0o6022)


class ScratchDirs:
    """Where the app may write besides its release: one directory per release, its
    HOME and TMPDIR. Never the state volume's root, and gone with the release, so
    what a bad revision leaves in `~` (a user site-packages .pth, a .gitconfig) does
    not outlive it."""

    def __init__(self, root: Path, run_as: Identity) -> None:
        self.root = root
        self.run_as = run_as

    def variables(self, sha: str) -> dict[str, str]:
        """HOME and TMPDIR for the release's processes, the directory made on demand."""
        path = self.root / sha
        if not path.is_dir():
            path.mkdir(parents=True, mode=0o700)
            self.run_as.hand_over(path)
        return {"HOME": str(path), "TMPDIR": str(path)}

    def collect(self, keep: set[str]) -> None:
        for child in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if child.name not in keep:
                remove_path(child)
