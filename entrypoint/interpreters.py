"""The Python an app's environment is built on: the image's own where it satisfies
what the app asks for (`.python-version`, `requires-python`), else one managed by uv
under LIVE_PULL_HOME/pythons, obtained once and reused.

When neither can be had the revision is refused with one line naming what was
asked for and what is available; the running revision keeps serving.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from entrypoint import pyprojects
from entrypoint.depspec import DependencySpec
from entrypoint.errors import InstallError
from entrypoint.files import OutsideRoot, read_inside

log = logging.getLogger(__name__)

PYTHON_VERSION_FILE = ".python-version"
PLAIN_VERSION = re.compile(r"^(?:cpython-?|python)?(\d+(?:\.\d+){0,2})$")


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: str


@dataclass(frozen=True)
class Wanted:
    pinned: str | None  # the first line of .python-version
    requires: str | None  # requires-python

    def describe(self) -> str:
        said = [f"{PYTHON_VERSION_FILE} {self.pinned}"] if self.pinned else []
        said += [f"requires-python {self.requires}"] if self.requires else []
        return ", ".join(said)

    def accepts(self, version: str) -> bool:
        return _matches_pin(self.pinned, version) and _in_range(self.requires, version)

    @property
    def request(self) -> str:
        """What uv is asked for: the pinned version, else the range."""
        return self.pinned or self.requires or ""


IMAGE = Interpreter(sys.executable, platform.python_version())


def wanted(spec: DependencySpec, release: Path) -> Wanted:
    """What the app asks for: its own directory first, then its lock's (a workspace)."""
    pinned = requires = None
    for directory in dict.fromkeys([spec.app_path, spec.lock_dir]):
        pin_file = directory / PYTHON_VERSION_FILE
        if pinned is None and pin_file.is_file():
            pinned = _first_line(_read(release, pin_file))
        project = pyprojects.load(release, directory)
        if requires is None and project is not None:
            requires = project.requires_python
    return Wanted(pinned, requires)


def choose(
    want: Wanted, uv: str | None, pythons: Path, timeout: float, install: bool = True
) -> Interpreter:
    """The image's Python if it will do, else a uv-managed one (found, or installed
    when `install`)."""
    if want.accepts(IMAGE.version):
        return IMAGE
    if uv is None:
        raise _unavailable(want, "no uv to obtain another")
    found = _uv_python(uv, ["find", want.request], pythons, timeout)
    if found is None and not install:
        raise _unavailable(want, "none obtained yet")
    if found is None:
        log.info("obtaining python wanted=%s into=%s", want.describe(), pythons)
        _uv_python(uv, ["install", want.request], pythons, timeout, must=want)
        found = _uv_python(uv, ["find", want.request], pythons, timeout)
    if found is None:
        raise _unavailable(want, "uv installed none that fits")
    version = _version_of(found, timeout)
    if not want.accepts(version):
        raise _unavailable(want, f"uv found {version}")
    return Interpreter(found, version)


def _uv_python(
    uv: str, args: list[str], pythons: Path, timeout: float, must: Wanted | None = None
) -> str | None:
    """`uv python ...` limited to the interpreters under `pythons`; stdout, or None."""
    environment = {**os.environ, "UV_PYTHON_INSTALL_DIR": str(pythons)}
    environment.pop("VIRTUAL_ENV", None)  # only what is under `pythons` counts
    argv = [uv, "python", *args, "--managed-python", "--no-config"]
    if args[0] == "find":
        argv.append("--no-project")  # the request is ours; no .python-version from the cwd
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
            cwd="/",
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"uv python {args[0]} could not run: {exc}") from exc
    if done.returncode == 0:
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if must is not None:
        reason = (done.stderr.strip().splitlines() or ["no output"])[0][:160]
        raise _unavailable(must, f"uv could not install it: {reason}")
    return None


def _version_of(python: str, timeout: float) -> str:
    done = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def _unavailable(want: Wanted, why: str) -> InstallError:
    return InstallError(
        f"python: the app asks for {want.describe()}; available: {IMAGE.version} "
        f"(the image's); {why}"
    )


def _read(release: Path, path: Path) -> str:
    try:
        return read_inside(release, path)
    except OutsideRoot as exc:
        raise InstallError(f"{PYTHON_VERSION_FILE} refused: {exc}") from exc
    except (OSError, UnicodeError) as exc:
        raise InstallError(f"cannot read {PYTHON_VERSION_FILE}: {exc}") from exc


def _first_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith("#")), None)


def _matches_pin(pinned: str | None, version: str) -> bool:
    """`.python-version` 3.12 accepts any 3.12.x; one uv alone understands (pypy@3.10,
    3.13t) is never the image's."""
    if pinned is None:
        return True
    match = PLAIN_VERSION.match(pinned)
    if match is None:
        return False
    wanted_parts = match[1].split(".")
    return version.split(".")[: len(wanted_parts)] == wanted_parts


def _in_range(requires: str | None, version: str) -> bool:
    if requires is None:
        return True
    try:
        return SpecifierSet(requires).contains(version, prereleases=True)
    except InvalidSpecifier as exc:
        raise InstallError(f"requires-python {requires!r} is not a version range") from exc
