"""A requirements file as the agent installs it: includes followed, the app's own
projects (`-e .`, `.`, `./lib`) taken out for the release's project layer.

What stays is written as one file for the shared dependency layer, with every path
it names made absolute (the installer runs elsewhere), so the environment that later
releases reuse never points into the release that happened to build it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from entrypoint.errors import InstallError
from entrypoint.files import OutsideRoot, read_inside, resolve_inside

INCLUDE = ("-r", "--requirement")
CONSTRAINT = ("-c", "--constraint")
EDITABLE = ("-e", "--editable")
FIND_LINKS = ("-f", "--find-links")
COMMENT = re.compile(r"(^|\s+)#.*$")
LOCAL = re.compile(r"^(\.|/|file:)")


@dataclass(frozen=True)
class LocalProject:
    path: Path
    editable: bool


@dataclass
class Requirements:
    files: list[Path] = field(default_factory=list)  # every file read: the digest's input
    lines: list[str] = field(default_factory=list)  # for the shared dependency layer
    projects: list[LocalProject] = field(default_factory=list)  # for the release's layer


def read(root: Path, top: Path) -> Requirements:
    """`top` and everything it includes, every file inside `root` (the release)."""
    found = Requirements()
    _read_file(root, top, found)
    return found


def _read_file(root: Path, candidate: Path, found: Requirements) -> None:
    path = _inside(root, candidate, "requirements include")
    if path in found.files:
        return
    found.files.append(path)
    for line in _logical_lines(read_inside(root, path)):
        _take(root, path.parent, line, found)


def _logical_lines(text: str) -> list[str]:
    """Lines with continuations joined and comments removed, as pip reads them."""
    joined = re.sub(r"\\\r?\n", " ", text)
    lines = (COMMENT.sub("", line).strip() for line in joined.splitlines())
    return [line for line in lines if line]


def _take(root: Path, here: Path, line: str, found: Requirements) -> None:
    option, _, rest = line.partition(" ")
    if "=" in option and option.startswith("--"):
        option, _, rest = line.partition("=")
    value = rest.strip()
    if option in INCLUDE:
        _read_file(root, here / value, found)
    elif option in CONSTRAINT:
        constraint = _inside(root, here / value, "constraints file")
        if constraint not in found.files:
            found.files.append(constraint)
        found.lines.append(f"-c {shlex.quote(str(constraint))}")
    elif option in EDITABLE and LOCAL.match(value):
        found.projects.append(_project(root, here, value, editable=True))
    elif option in FIND_LINKS and LOCAL.match(value) and not value.startswith("file:"):
        found.lines.append(f"{option} {shlex.quote(str(_inside(root, here / value, option)))}")
    elif LOCAL.match(line):
        _local(root, here, line, found)
    else:
        found.lines.append(line)


def _local(root: Path, here: Path, line: str, found: Requirements) -> None:
    """A path line: a project directory goes to the release's layer; an archive (a
    wheel in the repository) is a dependency like any other."""
    project = _project(root, here, line, editable=False)
    if project.path.is_dir():
        found.projects.append(project)
    else:
        found.lines.append(shlex.quote(str(project.path)))


def _project(root: Path, here: Path, value: str, *, editable: bool) -> LocalProject:
    """A path requirement: `.`, `./lib[extra]`, `file:./lib`. Extras are dropped (the
    project's dependencies come from its pyproject.toml into the shared layer)."""
    location = re.sub(r"\[.*\]$", "", value.split(" ")[0].removeprefix("file:"))
    return LocalProject(_inside(root, here / location, "local project"), editable)


def _inside(root: Path, path: Path, what: str) -> Path:
    try:
        real = resolve_inside(root, path)
    except OutsideRoot as exc:
        raise InstallError(f"{what} refused: {exc}") from exc
    if not real.exists():
        raise InstallError(f"{what} not found: {path.name}")
    return real
