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

from entrypoint.errors import InstallError
from entrypoint.files import OutsideRoot, read_inside, resolve_inside

INCLUDE = re.compile(r"^\s*(?:-r|-c|--requirement|--constraint)(?:\s+|=)(?P<path>\S+)")


class SpecKind(StrEnum):
    UV_LOCK = "uv.lock"
    POETRY_LOCK = "poetry.lock"
    PIPFILE_LOCK = "Pipfile.lock"
    REQUIREMENTS = "requirements.txt"
    PYPROJECT = "pyproject.toml"
    COMMAND = "command"  # LIVE_PULL_INSTALL_COMMAND


@dataclass(frozen=True)
class DependencySpec:
    kind: SpecKind
    app_path: Path
    files: tuple[Path, ...]  # every file whose contents decide the environment

    @property
    def main_file(self) -> Path:
        return self.files[0]


def detect(
    app_path: Path, lockfile: str | None, command: str | None, root: Path | None = None
) -> DependencySpec | None:
    """The app's dependency spec, in the documented order; None: no environment.

    Every file read, named or included, must resolve inside `root` (the release; the
    app's directory by default): a revision with one that leads out is refused."""
    inside = _Inside(root or app_path)
    if command is not None:
        named = [app_path / name.strip() for name in (lockfile or "").split(",") if name.strip()]
        return DependencySpec(SpecKind.COMMAND, app_path, tuple(p for p in named if inside(p)))
    if lockfile is not None:
        return _named(app_path, lockfile, inside)
    pyproject = app_path / "pyproject.toml"
    for lock, kind in (("uv.lock", SpecKind.UV_LOCK), ("poetry.lock", SpecKind.POETRY_LOCK)):
        if inside(app_path / lock) and inside(pyproject):
            return DependencySpec(kind, app_path, (app_path / lock, pyproject))
    if inside(app_path / "Pipfile.lock"):
        return DependencySpec(SpecKind.PIPFILE_LOCK, app_path, (app_path / "Pipfile.lock",))
    if inside(app_path / "requirements.txt"):
        return _requirements(app_path, app_path / "requirements.txt", inside)
    if inside(pyproject):
        return DependencySpec(SpecKind.PYPROJECT, app_path, (pyproject,))
    return None


class _Inside:
    """Is this dependency file there? One that leads outside `root` refuses the revision."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, path: Path) -> bool:
        if not os.path.lexists(path):
            return False
        try:
            return resolve_inside(self.root, path).is_file()
        except OutsideRoot as exc:
            raise InstallError(f"dependency file refused: {exc}") from exc


def _named(app_path: Path, lockfile: str, inside: _Inside) -> DependencySpec:
    path = app_path / lockfile
    if not inside(path):
        raise InstallError(f"LIVE_PULL_LOCKFILE {lockfile!r} is not in the revision")
    name = path.name
    pyproject = path.parent / "pyproject.toml"
    if name in ("uv.lock", "poetry.lock"):
        kind = SpecKind.UV_LOCK if name == "uv.lock" else SpecKind.POETRY_LOCK
        existing = [pyproject] if inside(pyproject) else []
        return DependencySpec(kind, path.parent, (path, *existing))
    if name == "Pipfile.lock":
        return DependencySpec(SpecKind.PIPFILE_LOCK, path.parent, (path,))
    if name == "pyproject.toml":
        return DependencySpec(SpecKind.PYPROJECT, path.parent, (path,))
    return _requirements(app_path, path, inside)  # any other name: a requirements file


def _requirements(app_path: Path, top: Path, inside: _Inside) -> DependencySpec:
    """A requirements file and everything it includes with -r / -c, recursively (the
    installer is handed the checked, resolved path)."""
    seen: list[Path] = []
    pending = [top]
    while pending:
        candidate = pending.pop(0)
        if not inside(candidate):
            raise InstallError(f"requirements include not found: {candidate.name}")
        path = candidate.resolve()
        if path in seen:
            continue
        seen.append(path)
        for line in read_inside(inside.root, path).splitlines():
            match = INCLUDE.match(line)
            if match:
                pending.append(path.parent / match["path"])
    return DependencySpec(SpecKind.REQUIREMENTS, app_path, tuple(seen))


def digest(spec: DependencySpec, installer: str, options: list[str]) -> str:
    """Name of the environment for this spec, interpreter, platform and installer."""
    sha = hashlib.sha256()
    parts = [
        "live-pull-env-1",
        spec.kind.value,
        sys.implementation.name,
        platform.python_version(),
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
