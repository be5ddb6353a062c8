"""What a pyproject.toml says about the app: its name, whether it is a package to
install, what it depends on, which Python it asks for, and which workspace it is in.

Read as data (inside the release, never through a link out of it); nothing of the
project runs here.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrypoint.errors import InstallError
from entrypoint.files import OutsideRoot, read_inside

PYPROJECT = "pyproject.toml"


@dataclass(frozen=True)
class Project:
    directory: Path
    name: str | None
    is_package: bool  # installed per release (console scripts, metadata, src/ layouts)
    dependencies: tuple[str, ...] | None  # None: dynamic (setup.py decides)
    requires_python: str | None
    data: dict[str, Any]


def read_toml(root: Path, path: Path) -> dict[str, Any]:
    """A TOML file of the release, parsed; InstallError naming it when it is not TOML."""
    try:
        return tomllib.loads(read_inside(root, path))
    except OutsideRoot as exc:
        raise InstallError(f"dependency file refused: {exc}") from exc
    except (OSError, UnicodeError, tomllib.TOMLDecodeError) as exc:
        raise InstallError(f"cannot read {path.name}: {exc}") from exc


def load(root: Path, directory: Path) -> Project | None:
    """The project in `directory`, or None when it has no pyproject.toml (a setup.py
    alone still makes it a package, with dynamic dependencies)."""
    path = directory / PYPROJECT
    if not path.is_file():
        if (directory / "setup.py").is_file():
            return Project(directory, None, True, None, None, {})
        return None
    data = read_toml(root, path)
    project = data.get("project", {})
    return Project(
        directory,
        _name(data),
        _is_package(data, directory),
        _dependencies(data),
        str(project["requires-python"]) if project.get("requires-python") else None,
        data,
    )


def _name(data: dict[str, Any]) -> str | None:
    name = data.get("project", {}).get("name") or data.get("tool", {}).get("poetry", {}).get("name")
    return str(name) if name else None


def _dependencies(data: dict[str, Any]) -> tuple[str, ...] | None:
    """The [project] dependencies; () for a poetry project (its lock has them); None
    where a build backend decides them (dynamic, or a setup.py with no [project])."""
    project = data.get("project")
    if isinstance(project, dict):
        if "dependencies" in project.get("dynamic", ()):
            return None
        return tuple(str(dep) for dep in project.get("dependencies", ()))
    return () if "poetry" in data.get("tool", {}) else None


def _is_package(data: dict[str, Any], directory: Path) -> bool:
    """As each tool decides: uv's `package`, poetry's `package-mode`, pdm's
    `distribution`; otherwise a build system (or a setup.py) makes a package."""
    tool = data.get("tool", {})
    for table, key in (("uv", "package"), ("poetry", "package-mode"), ("pdm", "distribution")):
        value = tool.get(table, {}).get(key)
        if isinstance(value, bool):
            return value
    if "build-system" in data or (directory / "setup.py").is_file():
        return True
    return "poetry" in tool and "packages" in tool["poetry"]


def workspace_covers(workspace: Path, data: dict[str, Any], member: Path) -> bool:
    """Whether the uv workspace rooted at `workspace` has `member` as a member."""
    if member == workspace:
        return True
    table = data.get("tool", {}).get("uv", {}).get("workspace")
    if not isinstance(table, dict):
        return False
    relative = os.path.relpath(member, workspace)
    members = [str(glob) for glob in table.get("members", ())]
    excluded = [str(glob) for glob in table.get("exclude", ())]
    matches = any(fnmatch.fnmatchcase(relative, os.path.normpath(g)) for g in members)
    return matches and not any(fnmatch.fnmatchcase(relative, os.path.normpath(g)) for g in excluded)
