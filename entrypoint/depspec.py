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


def detect(app_path: Path, lockfile: str | None, command: str | None) -> DependencySpec | None:
    """The app's dependency spec, in the documented order; None: no environment."""
    if command is not None:
        named = [app_path / name.strip() for name in (lockfile or "").split(",") if name.strip()]
        return DependencySpec(SpecKind.COMMAND, app_path, tuple(_existing(named)))
    if lockfile is not None:
        return _named(app_path, lockfile)
    pyproject = app_path / "pyproject.toml"
    for lock, kind in (("uv.lock", SpecKind.UV_LOCK), ("poetry.lock", SpecKind.POETRY_LOCK)):
        if (app_path / lock).is_file() and pyproject.is_file():
            return DependencySpec(kind, app_path, (app_path / lock, pyproject))
    if (app_path / "Pipfile.lock").is_file():
        return DependencySpec(SpecKind.PIPFILE_LOCK, app_path, (app_path / "Pipfile.lock",))
    if (app_path / "requirements.txt").is_file():
        return _requirements(app_path, app_path / "requirements.txt")
    if pyproject.is_file():
        return DependencySpec(SpecKind.PYPROJECT, app_path, (pyproject,))
    return None


def _named(app_path: Path, lockfile: str) -> DependencySpec:
    path = app_path / lockfile
    if not path.is_file():
        raise InstallError(f"LIVE_PULL_LOCKFILE {lockfile!r} is not in the revision")
    name = path.name
    pyproject = path.parent / "pyproject.toml"
    if name in ("uv.lock", "poetry.lock"):
        kind = SpecKind.UV_LOCK if name == "uv.lock" else SpecKind.POETRY_LOCK
        return DependencySpec(kind, path.parent, (path, *_existing([pyproject])))
    if name == "Pipfile.lock":
        return DependencySpec(SpecKind.PIPFILE_LOCK, path.parent, (path,))
    if name == "pyproject.toml":
        return DependencySpec(SpecKind.PYPROJECT, path.parent, (path,))
    return _requirements(app_path, path)  # any other name is read as a requirements file


def _requirements(app_path: Path, root: Path) -> DependencySpec:
    """A requirements file and everything it includes with -r / -c, recursively."""
    seen: list[Path] = []
    pending = [root]
    while pending:
        path = pending.pop(0).resolve()
        if path in seen:
            continue
        if not path.is_file():
            raise InstallError(f"requirements include not found: {path.name}")
        seen.append(path)
        for line in path.read_text().splitlines():
            match = INCLUDE.match(line)
            if match:
                pending.append(path.parent / match["path"])
    return DependencySpec(SpecKind.REQUIREMENTS, app_path, tuple(seen))


def _existing(paths: list[Path]) -> list[Path]:
    return [path for path in paths if path.is_file()]


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
