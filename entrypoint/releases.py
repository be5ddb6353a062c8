"""Release directories: one checked-out revision each, `current` pointing at one.

A release is built under a temporary name and renamed into place, so a release
directory that exists is complete. Data never lives in a release: shared paths
are kept once under `shared/` and linked into every release.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from entrypoint.errors import RevisionError, is_local_fault
from entrypoint.files import TMP_PREFIX, OutsideRoot, remove_aside, remove_path

log = logging.getLogger(__name__)


class Releases:
    def __init__(
        self,
        home: Path,
        app_dir: str,
        shared_paths: tuple[str, ...],
        max_bytes: int | None = None,
    ) -> None:
        self.max_bytes = max_bytes  # LIVE_PULL_MAX_REVISION_MB
        self.root = home / "releases"
        self.current_link = home / "current"
        self.shared_root = home / "shared"
        self.app_dir = app_dir
        self.shared_paths = shared_paths

    def path(self, sha: str) -> Path:
        return self.root / sha

    def app_path(self, sha: str) -> Path:
        return self.path(sha) / self.app_dir if self.app_dir else self.path(sha)

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_dir()

    def prepare(self, sha: str, export: Callable[[Path], None]) -> Path:
        """Return releases/<sha>, exporting the revision into it if it is not there yet."""
        final = self.path(sha)
        if final.is_dir():
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f"{TMP_PREFIX}{sha}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            export(staging)
            self._refuse_oversized(staging)
            self._link_shared_or_refuse(staging)
            os.rename(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return final

    def _refuse_oversized(self, staging: Path) -> None:
        if self.max_bytes is None:
            return
        size = tree_size(staging, self.max_bytes)
        if size > self.max_bytes:
            limit = self.max_bytes // MB
            raise RevisionError(
                f"revision larger than LIVE_PULL_MAX_REVISION_MB={limit} (over {size // MB} MB)"
            )

    def _link_shared_or_refuse(self, release: Path) -> None:
        """A revision whose tree cannot take the shared paths (a file where a shared
        path's directory should be, a link where a shared path or one of its parents
        should be) is refused; a full or read-only disk is not its fault."""
        if not self.shared_paths:
            return
        app_root = release / self.app_dir if self.app_dir else release
        try:
            for entry in self.shared_paths:
                _no_links_on_the_way(release, app_root / entry.rstrip("/"))
            self._link_shared(app_root)
        except OutsideRoot as exc:
            raise RevisionError(f"shared paths refused: {exc}") from exc
        except OSError as exc:
            if is_local_fault(exc):
                raise
            raise RevisionError(f"shared paths cannot be linked into the release: {exc}") from exc

    def _link_shared(self, app_root: Path) -> None:
        for entry in self.shared_paths:
            relative = entry.rstrip("/")
            in_release = app_root / relative
            kept = self.shared_root / relative
            if not kept.exists() and not kept.is_symlink():
                _seed(kept, in_release, is_dir=entry.endswith("/"))
            remove_path(in_release)
            in_release.parent.mkdir(parents=True, exist_ok=True)
            in_release.symlink_to(kept)

    def current(self) -> str | None:
        """The sha `current` points at, if it points at a release that exists."""
        try:
            target = os.readlink(self.current_link)
        except OSError:
            return None
        sha = Path(target).name
        return sha if self.exists(sha) else None

    def activate(self, sha: str) -> None:
        """Point `current` at releases/<sha> atomically (symlink, then rename over)."""
        # A .tmp- name: a kill before the rename leaves it for the next start's sweep.
        staging = self.current_link.with_name(f"{TMP_PREFIX}current-{uuid.uuid4().hex[:8]}")
        staging.symlink_to(Path("releases") / sha)
        os.replace(staging, self.current_link)

    def collect(self, keep: Iterable[str]) -> list[str]:
        """Delete every release not in `keep` (and leftovers of interrupted builds)."""
        keep_set = set(keep)
        current = self.current()
        if current is not None:
            keep_set.add(current)
        removed = []
        for child in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if child.name in keep_set:
                continue
            with contextlib.suppress(OSError):
                remove_aside(child)
            if not child.name.startswith(TMP_PREFIX):
                removed.append(child.name)
        if removed:
            log.info("removed old releases count=%d", len(removed))
        return removed


def _seed(kept: Path, in_release: Path, *, is_dir: bool) -> None:
    """First use of a shared path: start from what the revision ships, if anything."""
    kept.parent.mkdir(parents=True, exist_ok=True)
    if in_release.exists() and not in_release.is_symlink():
        shutil.move(in_release, kept)
    elif is_dir:
        kept.mkdir(parents=True, exist_ok=True)


MB = 1024 * 1024


def tree_size(root: Path, stop_above: int) -> int:
    """Bytes under `root` (links not followed), counted until past `stop_above`."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
            if total > stop_above:
                return total
    return total


def _no_links_on_the_way(release: Path, path: Path) -> None:
    """A shared path, and every directory from the release down to it, must not be a
    link in the commit: linking or seeding through one would act outside the release
    (or on shared/ itself)."""
    current = release
    for part in path.relative_to(release).parts:
        current = current / part
        if current.is_symlink():
            shown = current.relative_to(release)
            raise OutsideRoot(f"{shown} is a symbolic link in the commit")
