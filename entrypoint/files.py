"""Writing files safely: atomically (temporary file, fsync, rename), private when asked."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

TMP_PREFIX = ".tmp-"  # interrupted builds and trees set aside: never complete


def write_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Replace `path` with `text`; readers see the old file or the new one, never half.

    The mode is set when the file is created, so a private file is never readable
    by others, not even for an instant. On any failure (read-only, disk full, `path`
    a directory) the OSError propagates and the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # left by a writer killed mid-write
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync_directory(path.parent)


class OutsideRoot(ValueError):
    """A path in a release leads outside it (a symlink in the commit, or `..`)."""


def resolve_inside(root: Path, path: Path) -> Path:
    """`path` (under `root`) with every link followed; raise OutsideRoot when the result
    is not inside `root`. Repository content is data: a link in a commit never makes
    live-pull read, move or replace anything outside its release."""
    real_root, real = root.resolve(), path.resolve()
    if real != real_root and real_root not in real.parents:
        shown = os.path.relpath(path, root)
        raise OutsideRoot(f"{shown} leads outside the release")
    return real


def read_inside(root: Path, path: Path) -> str:
    """The text of a file inside `root`, opened without following a link swapped in
    after the check."""
    real = resolve_inside(root, path)
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def write_private(path: Path, text: str) -> None:
    write_atomic(path, text, mode=0o600)


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable; best effort (not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_path(path: Path) -> None:
    """Remove whatever is at `path`: a file, a symlink (not its target) or a tree."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def sweep_leftovers(root: Path) -> None:
    """Remove what `root` holds under a `.tmp-` name: builds and removals cut off midway
    (best effort: what cannot go now goes at a later sweep or collection)."""
    for child in root.iterdir() if root.is_dir() else []:
        if child.name.startswith(TMP_PREFIX):
            with contextlib.suppress(OSError):
                remove_path(child)


def remove_aside(path: Path) -> None:
    """Remove a release, an environment or a layer so that no part of it is ever left
    under its own name, where it would pass for complete: set aside first (what each
    collection removes: a kill midway leaves only that), then removed. An OSError
    propagates, as remove_path's."""
    aside = set_aside(path)
    if aside is not None:
        remove_path(aside)


def swap_in(staging: Path, final: Path) -> None:
    """Rename a finished build into place.

    What is at `final` (damaged or unfinished: the running revision may still use what
    works of it) is set aside only now, so the path is missing for the time of two
    renames; processes that hold its files open keep them, and every later lookup finds
    the complete build. If the second rename fails the old one is put back. The old copy
    is then removed (if it cannot be, a `.tmp-` leftover that a sweep removes later).
    """
    old = set_aside(final)
    try:
        os.rename(staging, final)
    except OSError:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        with contextlib.suppress(OSError):
            remove_path(old)


def set_aside(path: Path) -> Path | None:
    """Rename `path` to a `.tmp-` name beside it (one already is: as it is); its new
    path, or None if there was nothing."""
    if path.name.startswith(TMP_PREFIX):
        return path if path.exists() or path.is_symlink() else None
    aside = path.with_name(f"{TMP_PREFIX}gone-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        path.rename(aside)
    except FileNotFoundError:
        return None
    return aside


def retarget_scripts(staging: Path, final: Path) -> None:
    """Scripts and activate files of an environment built at `staging` name its path:
    point them at `final`, where it is renamed to (links are left alone)."""
    old, new = str(staging).encode(), str(final).encode()
    bin_dir = staging / "bin"
    for path in bin_dir.iterdir() if bin_dir.is_dir() else []:
        if path.is_symlink() or not path.is_file():
            continue
        content = path.read_bytes()
        if old in content:
            path.write_bytes(content.replace(old, new))
