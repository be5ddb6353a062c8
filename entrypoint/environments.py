"""One environment per dependency digest: venvs/<digest>, built once, reused by every
release (and restart) whose spec has the same digest.

An environment is built under a temporary name, a completion marker is written
last, and only then is it renamed into place: a directory venvs/<digest> with
its marker is complete, even after a kill mid-install.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from entrypoint.commands import run_logged
from entrypoint.depspec import DependencySpec, SpecKind, detect, digest
from entrypoint.errors import CommandFailed, InstallError
from entrypoint.installers import Installer
from entrypoint.lockfiles import (
    Pin,
    pipfile_pins,
    poetry_pins,
    project_dependencies,
    requirement_lines,
    uv_pins,
)

log = logging.getLogger(__name__)

MARKER = ".live-pull-complete"
TMP_PREFIX = ".tmp-"
PINNED = "live-pull-requirements.txt"


@dataclass(frozen=True)
class InstallOptions:
    lockfile: str | None
    command: str | None
    extra_args: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class Environment:
    digest: str
    path: Path

    def variables(self, base_path: str) -> dict[str, str]:
        """What a process needs to run in this environment."""
        return {
            "LIVE_PULL_ENV": str(self.path),
            "VIRTUAL_ENV": str(self.path),
            "PATH": f"{self.path / 'bin'}:{base_path}",
        }


class Environments:
    def __init__(
        self,
        root: Path,
        cache: Path,
        installer: Installer,
        options: InstallOptions,
        stop: threading.Event,
    ) -> None:
        self.root = root
        self.cache = cache
        self.installer = installer
        self.options = options
        self.stop = stop
        self.installs = 0
        self.last_install_seconds: float | None = None

    def ensure(self, app_path: Path) -> Environment | None:
        """The environment for the app at app_path, installed only if missing."""
        spec = detect(app_path, self.options.lockfile, self.options.command)
        if spec is None:
            return None
        options = [*self.options.extra_args, self.options.command or ""]
        name = digest(spec, self.installer.identity, options)
        environment = Environment(name, self.root / name)
        if (environment.path / MARKER).is_file():
            log.info("environment reused digest=%s", environment.digest)
            return environment
        self._build(spec, environment)
        return environment

    def collect(self, keep: set[str]) -> None:
        """Remove environments no retained release uses, and interrupted builds."""
        for child in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if child.name not in keep:
                log.info("removing unused environment name=%s", child.name)
                shutil.rmtree(child, ignore_errors=True)

    # -- building ----------------------------------------------------------------------

    def _build(self, spec: DependencySpec, environment: Environment) -> None:
        final = environment.path
        staging = self.root / f"{TMP_PREFIX}{environment.digest}-{uuid.uuid4().hex[:8]}"
        self.root.mkdir(parents=True, exist_ok=True)
        if final.exists():  # no marker: an older, incomplete build
            shutil.rmtree(final)
        started = time.monotonic()
        log.info(
            "installing dependencies spec=%s installer=%s digest=%s",
            spec.kind.value,
            self.installer.identity,
            environment.digest,
        )
        try:
            self._run(self.installer.create_env(staging), spec, staging, started)
            self._run(self._install_argv(spec, staging), spec, staging, started)
            _retarget(staging, final)
            (staging / MARKER).write_text(environment.digest + "\n")
            os.rename(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        self.installs += 1
        self.last_install_seconds = round(time.monotonic() - started, 2)
        log.info(
            "dependencies installed digest=%s seconds=%.1f",
            environment.digest,
            self.last_install_seconds,
        )

    def _install_argv(self, spec: DependencySpec, env: Path) -> list[str]:
        extra = list(self.options.extra_args)
        if spec.kind is SpecKind.COMMAND:
            return ["/bin/sh", "-c", self.options.command or ""]
        if spec.kind is SpecKind.UV_LOCK and self.installer.uv_path is not None:
            # Exact sync from the lock; the app's own code runs from the release.
            uv = self.installer.uv_path
            return [uv, "sync", "--frozen", "--no-install-project", "--no-dev", *extra]
        if spec.kind is SpecKind.REQUIREMENTS:
            return [*self.installer.pip_install(env), "-r", str(spec.main_file), *extra]
        pinned = env / PINNED
        if spec.kind is SpecKind.PYPROJECT:
            pinned.write_text("".join(f"{dep}\n" for dep in project_dependencies(spec.main_file)))
            return [*self.installer.pip_install(env), "-r", str(pinned), *extra]
        pins = _pins(spec)
        pinned.write_text(requirement_lines(pins))
        exact = [
            "--no-deps",
            *(["--require-hashes"] if pins and all(p.hashes for p in pins) else []),
        ]
        return [*self.installer.pip_install(env), *exact, "-r", str(pinned), *extra]

    def _run(self, argv: list[str], spec: DependencySpec, env: Path, started: float) -> None:
        progress = _Progress(started)
        try:
            run_logged(
                argv,
                cwd=spec.app_path,
                env=self._environment(env),
                timeout=self.options.timeout,
                stop=self.stop,
                on_line=progress.line,
                on_quiet=progress.still_running,
            )
        except CommandFailed as exc:
            raise InstallError(f"install failed ({self.installer.name}) {exc}") from exc
        except OSError as exc:
            raise InstallError(f"installer could not run: {exc}") from exc

    def _environment(self, env: Path) -> dict[str, str]:
        variables = {
            **os.environ,
            **self.installer.cache_env(self.cache),
            "UV_PROJECT_ENVIRONMENT": str(env),
            "UV_PYTHON_DOWNLOADS": "never",  # build on this interpreter, never fetch another
            "PIP_NO_INPUT": "1",
        }
        variables.update(Environment("", env).variables(os.environ.get("PATH", os.defpath)))
        return variables


def _pins(spec: DependencySpec) -> list[Pin]:
    if spec.kind is SpecKind.PIPFILE_LOCK:
        return pipfile_pins(spec.main_file)
    pyproject = spec.app_path / "pyproject.toml"
    if spec.kind is SpecKind.POETRY_LOCK:
        return poetry_pins(spec.main_file, pyproject)
    return uv_pins(spec.main_file, pyproject)  # uv.lock with pip: honoured without uv


def _retarget(staging: Path, final: Path) -> None:
    """Scripts and activate files name the environment's path: point them at the final one."""
    old, new = str(staging).encode(), str(final).encode()
    bin_dir = staging / "bin"
    for path in bin_dir.iterdir() if bin_dir.is_dir() else []:
        if path.is_symlink() or not path.is_file():
            continue
        content = path.read_bytes()
        if old in content:
            path.write_bytes(content.replace(old, new))


class _Progress:
    """Log installer output as it comes, with elapsed time and packages done."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.packages = 0

    def line(self, text: str) -> None:
        stripped = text.strip()
        if stripped.startswith(("Collecting ", "+ ")):
            self.packages += 1
        log.info("install: %s (elapsed=%.1fs packages=%d)", stripped, self.elapsed, self.packages)

    def still_running(self) -> None:
        log.info("install running elapsed=%.0fs packages=%d", self.elapsed, self.packages)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started
