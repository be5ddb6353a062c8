"""Which dependency spec an app has, and the digest that names its environment.

Same digest, same environment, no install: the digest covers the spec files'
contents (requirements includes followed), the Python, the platform, the
installer and its version, and any install options.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from entrypoint import lockfiles, pyprojects, requirements
from entrypoint.errors import InstallError
from entrypoint.files import OutsideRoot, resolve_inside
from entrypoint.lockfiles import MAIN_ONLY, Selection
from entrypoint.pyprojects import PYPROJECT
from entrypoint.requirements import LocalProject


class SpecKind(StrEnum):
    UV_LOCK = "uv.lock"
    POETRY_LOCK = "poetry.lock"
    PDM_LOCK = "pdm.lock"
    PYLOCK = "pylock.toml"
    PIPFILE_LOCK = "Pipfile.lock"
    REQUIREMENTS = "requirements.txt"
    PYPROJECT = "pyproject.toml"
    COMMAND = "command"  # LIVE_PULL_INSTALL_COMMAND


# Locks that go with the pyproject.toml beside them, in the order they are looked for.
LOCKS = {
    "uv.lock": SpecKind.UV_LOCK,
    "poetry.lock": SpecKind.POETRY_LOCK,
    "pdm.lock": SpecKind.PDM_LOCK,
}
PYLOCK = re.compile(r"pylock(\.[^/]+)?\.toml")


@dataclass(frozen=True)
class DependencySpec:
    kind: SpecKind
    app_path: Path
    files: tuple[Path, ...]  # every file whose contents decide the environment
    root: Path | None = None  # where the lock is (a workspace's root); app_path if None
    member: str | None = None  # the app's project in a workspace lock
    projects: tuple[LocalProject, ...] = ()  # installed per release, on top
    locked: bool = True  # False: a pyproject.toml installed without any lock

    @property
    def main_file(self) -> Path:
        return self.files[0]

    @property
    def lock_dir(self) -> Path:
        return self.root or self.app_path


def detect(
    app_path: Path,
    lockfile: str | None,
    command: str | None,
    root: Path | None = None,
    selection: Selection = MAIN_ONLY,
) -> DependencySpec | None:
    """The app's dependency spec, in the documented order; None: no environment.

    Every file read, named or included, must resolve inside `root` (the release; the
    app's directory by default): a revision with one that leads out is refused."""
    inside = _Inside(root or app_path, selection)
    if command is not None:
        named = [app_path / name.strip() for name in (lockfile or "").split(",") if name.strip()]
        return DependencySpec(SpecKind.COMMAND, app_path, tuple(p for p in named if inside(p)))
    if lockfile is not None:
        return _named(app_path, Path(os.path.normpath(app_path / lockfile)), inside)
    for lock in LOCKS:
        if inside(app_path / lock) and inside(app_path / PYPROJECT):
            return _locked_project(app_path, app_path / lock, inside)
    if inside(app_path / "pylock.toml"):
        return _pylock(app_path, app_path / "pylock.toml", inside)
    if inside(app_path / "Pipfile.lock"):
        return _pipfile(app_path / "Pipfile.lock", inside)
    if inside(app_path / "requirements.txt"):
        return _requirements(app_path, app_path / "requirements.txt", inside)
    if inside(app_path / PYPROJECT):
        workspace_lock = _workspace_lock(app_path, inside)
        if workspace_lock is not None:
            return _locked_project(app_path, workspace_lock, inside)
        return _unlocked_project(app_path, inside)
    return None


class _Inside:
    """Is this dependency file there? One that leads outside `root` refuses the revision."""

    def __init__(self, root: Path, selection: Selection) -> None:
        self.root = root
        self.selection = selection  # groups and extras: which local projects are needed

    def __call__(self, path: Path) -> bool:
        if not os.path.lexists(path):
            return False
        try:
            return resolve_inside(self.root, path).is_file()
        except OutsideRoot as exc:
            raise InstallError(f"dependency file refused: {exc}") from exc


def _named(app_path: Path, path: Path, inside: _Inside) -> DependencySpec:
    shown = os.path.relpath(path, app_path)
    if not inside(path):
        raise InstallError(f"LIVE_PULL_LOCKFILE {shown!r} is not in the revision")
    if path.name in LOCKS:
        return _locked_project(app_path, path, inside)
    if PYLOCK.fullmatch(path.name):
        return _pylock(app_path, path, inside)
    if path.name == "Pipfile.lock":
        return _pipfile(path, inside)
    if path.name == PYPROJECT:
        return _unlocked_project(path.parent, inside)
    return _requirements(app_path, path, inside)  # any other name: a requirements file


def _workspace_lock(app_path: Path, inside: _Inside) -> Path | None:
    """The nearest uv.lock between the app's directory and the repository's root whose
    workspace has the app as a member."""
    top = inside.root.resolve()
    directory = app_path.resolve().parent
    while directory == top or top in directory.parents:
        if inside(directory / "uv.lock") and inside(directory / PYPROJECT):
            data = pyprojects.read_toml(inside.root, directory / PYPROJECT)
            if pyprojects.workspace_covers(directory, data, app_path.resolve()):
                return directory / "uv.lock"
        if directory == top:
            break
        directory = directory.parent
    return None


def _locked_project(app_path: Path, lock: Path, inside: _Inside) -> DependencySpec:
    """uv.lock or poetry.lock with the pyproject.toml it locks; a uv.lock above the
    app is its workspace's, installed for the app's project only."""
    kind = LOCKS[lock.name]
    lock_dir = lock.parent
    project = pyprojects.load(inside.root, app_path) if inside(app_path / PYPROJECT) else None
    member = None
    files = [lock, *([lock_dir / PYPROJECT] if inside(lock_dir / PYPROJECT) else [])]
    if lock_dir.resolve() != app_path.resolve():
        if kind is not SpecKind.UV_LOCK or project is None or project.name is None:
            raise InstallError(f"{lock.name} above the app needs a uv workspace member here")
        member = project.name
        files.append(app_path / PYPROJECT)
    if kind is SpecKind.UV_LOCK:
        own = _uv_projects(lock, member or (project.name if project else None), inside)
    else:
        own = (LocalProject(app_path.resolve(), True),) if project and project.is_package else ()
    return DependencySpec(kind, app_path, tuple(files), lock_dir, member, own)


def _uv_projects(lock: Path, name: str | None, inside: _Inside) -> tuple[LocalProject, ...]:
    """What uv.lock itself says is local and installed: the app's project unless it
    is virtual, and the workspace members and path dependencies it needs."""
    return _local(lock, lockfiles.uv_local_projects(lock, name, inside.selection), inside)


def _pylock(app_path: Path, lock: Path, inside: _Inside) -> DependencySpec:
    """A PEP 751 lock: resolved already; its `directory` packages are local."""
    projects = _local(lock, lockfiles.pylock_local_projects(lock, inside.selection), inside)
    return DependencySpec(SpecKind.PYLOCK, app_path, (lock,), lock.parent, projects=projects)


def _pipfile(lock: Path, inside: _Inside) -> DependencySpec:
    projects = _local(lock, lockfiles.pipfile_local_projects(lock), inside)
    return DependencySpec(SpecKind.PIPFILE_LOCK, lock.parent, (lock,), projects=projects)


def _local(lock: Path, found: list[tuple[str, bool]], inside: _Inside) -> tuple[LocalProject, ...]:
    """Local packages a lock names, by path relative to it: inside the release only."""
    projects = []
    for relative, editable in found:
        try:
            path = resolve_inside(inside.root, lock.parent / relative)
        except OutsideRoot as exc:
            raise InstallError(f"{lock.name} local package refused: {exc}") from exc
        projects.append(LocalProject(path, editable))
    return tuple(projects)


def _unlocked_project(app_path: Path, inside: _Inside) -> DependencySpec:
    """A pyproject.toml and no lock anywhere: installed, and said to be unlocked when it
    has dependencies to lock (one for tools only has none)."""
    project = pyprojects.load(inside.root, app_path)
    package = project is not None and project.is_package
    own = (LocalProject(app_path.resolve(), True),) if package else ()
    needs = project is not None and (
        bool(project.dependencies) or (package and project.dependencies is None)
    )
    return DependencySpec(
        SpecKind.PYPROJECT, app_path, (app_path / PYPROJECT,), projects=own, locked=not needs
    )


def _requirements(app_path: Path, top: Path, inside: _Inside) -> DependencySpec:
    """A requirements file and everything it includes with -r / -c, recursively; local
    projects in it (`-e .`) are installed per release, their pyproject.toml counted."""
    try:
        found = requirements.read(inside.root, top)
    except OutsideRoot as exc:
        raise InstallError(f"dependency file refused: {exc}") from exc
    extra = [p.path / PYPROJECT for p in found.projects if inside(p.path / PYPROJECT)]
    files = tuple(dict.fromkeys([*found.files, *extra]))
    return DependencySpec(SpecKind.REQUIREMENTS, app_path, files, projects=tuple(found.projects))


def digest(spec: DependencySpec, installer: str, options: list[str], python: str) -> str:
    """Name of the environment for this spec, interpreter (`python`: its version),
    platform and installer."""
    sha = hashlib.sha256()
    parts = [
        "live-pull-env-1",
        spec.kind.value,
        *([f"member={spec.member}"] if spec.member else []),
        sys.implementation.name,
        python,
        platform.machine(),
        sys.platform,
        installer,
        *options,
    ]
    for part in parts:
        sha.update(part.encode() + b"\0")
    for path in spec.files:
        sha.update(os.path.relpath(path, spec.app_path.resolve()).encode() + b"\0")
        sha.update(path.read_bytes() + b"\0")
    return sha.hexdigest()[:32]
