"""One environment per dependency digest: venvs/<digest>, built once, reused by every
release (and restart) whose spec has the same digest.

An environment is built under a temporary name, a completion marker is written
last, and only then is it renamed into place: a directory venvs/<digest> with
its marker is complete, even after a kill mid-install.

The marker is also a manifest: the interpreter and every top-level entry of
site-packages at build time. Before reuse each is checked to still exist (stat
calls only); an environment missing any is rebuilt, not trusted.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from entrypoint import interpreters, pyprojects, requirements
from entrypoint.commands import run_logged
from entrypoint.depspec import DependencySpec, SpecKind, detect, digest
from entrypoint.errors import CommandFailed, InstallError
from entrypoint.files import TMP_PREFIX, remove_aside, retarget_scripts, swap_in, write_atomic
from entrypoint.identity import AS_AGENT, Identity
from entrypoint.installers import Installer
from entrypoint.interpreters import IMAGE, Interpreter
from entrypoint.layers import ProjectLayers
from entrypoint.lockfiles import (
    Pin,
    Selection,
    pdm_pins,
    pipfile_pins,
    poetry_pins,
    project_requirements,
    pylock_pins,
    requirement_lines,
    uv_lock_problem,
    uv_pins,
)
from entrypoint.pyprojects import PYPROJECT
from entrypoint.shell import shell_line

log = logging.getLogger(__name__)

MARKER = ".live-pull-complete"
PINNED = "live-pull-requirements.txt"
SITE_PACKAGES = "lib/python*/site-packages"


@dataclass(frozen=True)
class InstallOptions:
    lockfile: str | None
    command: str | None
    extra_args: tuple[str, ...]
    timeout: float
    groups: tuple[str, ...] = ()  # dependency groups to install beside the main ones
    extras: tuple[str, ...] = ()  # the app's own extras


@dataclass(frozen=True)
class Environment:
    digest: str
    path: Path  # the dependency layer, shared by every release with this digest
    layer: Path | None = None  # the release's own project, on top (layers.py)
    locked: bool = True  # False: installed from a pyproject.toml without a lock

    def variables(self, base_path: str) -> dict[str, str]:
        """What a process needs to run in this environment (the layer first)."""
        bins = [*([self.layer / "bin"] if self.layer else []), self.path / "bin"]
        return {
            "LIVE_PULL_ENV": str(self.path),
            "VIRTUAL_ENV": str(self.layer or self.path),
            "PATH": ":".join([*(str(path) for path in bins), base_path]),
        }


class Environments:
    def __init__(
        self,
        root: Path,
        cache: Path,
        installer: Installer,
        options: InstallOptions,
        stop: threading.Event,
        run_as: Identity = AS_AGENT,
    ) -> None:
        self.root = root
        self.run_as = run_as
        self.cache = cache
        self.installer = installer
        self.options = options
        self.stop = stop
        self.installs = 0
        self.last_install_seconds: float | None = None
        self.pythons = root.parent / "pythons"  # uv-managed interpreters an app asked for
        self.layers = ProjectLayers(root.parent / "layers", installer, run_as)

    def ensure(self, app_path: Path, release: Path | None = None) -> Environment | None:
        """The environment for the app at app_path, installed if missing or damaged,
        with the release's project layer on top; every dependency file must resolve
        inside `release` (named by its sha)."""
        release = release or app_path
        spec = self._detect(app_path, release)
        if spec is None:
            return None
        interpreter = self._interpreter(spec, release, obtain=True)
        environment = self._environment_for(spec, interpreter)
        if not _intact(environment):
            self._build(spec, environment, interpreter)
        if (self.options.groups or self.options.extras) and spec.kind in (
            SpecKind.REQUIREMENTS,
            SpecKind.COMMAND,
        ):
            log.warning("LIVE_PULL_INSTALL_GROUPS/_EXTRAS do not apply to %s", spec.kind.value)
        if not spec.locked:
            log.warning(
                "dependencies are not locked: %s installed from its ranges (add a lock)",
                os.path.relpath(spec.main_file, release),
            )
        layer = None
        if spec.projects and spec.kind is not SpecKind.COMMAND:
            layer = self.layers.ensure(
                spec, environment.path, release.name, list(self.options.extra_args), self
            )
        return replace(environment, layer=layer, locked=spec.locked)

    def digest_for(self, app_path: Path, release: Path | None = None) -> str | None:
        """The digest ensure() would use for the app at app_path (reads its lockfiles,
        installs nothing); None if it has no dependency spec or it cannot be read."""
        release = release or app_path
        try:
            spec = self._detect(app_path, release)
            interpreter = None if spec is None else self._interpreter(spec, release, False)
        except (InstallError, OSError):
            return None
        if spec is None or interpreter is None:
            return None
        return self._environment_for(spec, interpreter).digest

    @property
    def selection(self) -> Selection:
        return Selection(self.options.groups, self.options.extras)

    def _detect(self, app_path: Path, release: Path) -> DependencySpec | None:
        options = self.options
        return detect(app_path, options.lockfile, options.command, release, self.selection)

    def _interpreter(self, spec: DependencySpec, release: Path, obtain: bool) -> Interpreter:
        """The image's Python where it will do; else uv's (installed only if `obtain`)."""
        if spec.kind is SpecKind.COMMAND:
            return IMAGE
        want = interpreters.wanted(spec, release)
        uv, timeout = self.installer.uv_path, self.options.timeout
        return interpreters.choose(want, uv, self.pythons, timeout, install=obtain)

    def _environment_for(self, spec: DependencySpec, interpreter: Interpreter) -> Environment:
        options = [*self.options.extra_args, self.options.command or ""]
        options += [f"group={group}" for group in self.options.groups]
        options += [f"extra={extra}" for extra in self.options.extras]
        name = digest(spec, self.installer.identity, options, interpreter.version)
        return Environment(name, self.root / name)

    def collect_layers(self, keep: set[str]) -> None:
        """Project layers of releases no longer kept."""
        self.layers.collect(keep)

    def collect(self, keep: set[str]) -> None:
        """Remove environments no retained release uses, and interrupted builds."""
        for child in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if child.name not in keep:
                log.info("removing unused environment name=%s", child.name)
                with contextlib.suppress(OSError):
                    remove_aside(child)

    # -- building ----------------------------------------------------------------------

    def _build(
        self, spec: DependencySpec, environment: Environment, interpreter: Interpreter
    ) -> None:
        final = environment.path
        staging = self.root / f"{TMP_PREFIX}{environment.digest}-{uuid.uuid4().hex[:8]}"
        self.root.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        log.info(
            "installing dependencies spec=%s installer=%s digest=%s",
            spec.kind.value,
            self.installer.identity,
            environment.digest,
        )
        _refuse_stale_lock(spec)
        with self.building(staging):
            create = self.installer.create_env(staging, interpreter.path)
            self._run(create, spec.lock_dir, staging, started)
            self._run(
                self._install_argv(spec, staging, interpreter), spec.lock_dir, staging, started
            )
            # From here on the app user can no longer change what later releases reuse.
            self.run_as.take_back(staging)
            retarget_scripts(staging, final)
            _write_manifest(staging, environment.digest)
            swap_in(staging, final)
        self.installs += 1
        self.last_install_seconds = round(time.monotonic() - started, 2)
        log.info(
            "dependencies installed digest=%s seconds=%.1f",
            environment.digest,
            self.last_install_seconds,
        )

    @contextlib.contextmanager
    def building(self, staging: Path) -> Iterator[None]:
        """An environment built at `staging` (new): the installer runs as the app user
        and may write the build, its HOME (beside the build) and the cache. Whatever
        is still at `staging` afterwards (a failed build) is removed, with the HOME."""
        staging.mkdir(mode=0o755)
        _home_of(staging).mkdir(mode=0o700)
        try:
            for path in (staging, _home_of(staging)):
                self.run_as.hand_over(path)
            for cache in self.installer.cache_env(self.cache).values():
                Path(cache).mkdir(parents=True, exist_ok=True)
                self.run_as.hand_over(Path(cache))
            yield
        finally:
            for leftover in (staging, _home_of(staging)):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)

    def _install_argv(self, spec: DependencySpec, env: Path, interpreter: Interpreter) -> list[str]:
        extra = list(self.options.extra_args)
        if spec.kind is SpecKind.COMMAND:
            return ["/bin/sh", "-c", shell_line(self.options.command or "")]
        if spec.kind is SpecKind.UV_LOCK and self.installer.uv_path is not None:
            # Exact sync from the lock (checked against pyproject.toml before); local
            # projects go to each release's own layer.
            member = ["--package", spec.member] if spec.member else []
            member += [arg for group in self.options.groups for arg in ("--group", group)]
            member += [arg for extra in self.options.extras for arg in ("--extra", extra)]
            sync = ["sync", "--frozen", "--no-install-local", "--no-default-groups", *member]
            return [self.installer.uv_path, *sync, "--python", interpreter.path, *extra]
        pinned = env / PINNED
        if spec.kind is SpecKind.REQUIREMENTS and not spec.projects:
            return [*self.installer.pip_install(env), "-r", str(spec.main_file), *extra]
        if spec.kind in (SpecKind.REQUIREMENTS, SpecKind.PYPROJECT):
            # Atomic: never through a link the app user may have put in its build.
            lines = _shared_lines(spec, self.selection)
            write_atomic(pinned, "".join(f"{line}\n" for line in lines))
            return [*self.installer.pip_install(env), "-r", str(pinned), *extra]
        pins = _pins(spec, self.selection)
        write_atomic(pinned, requirement_lines(pins))
        exact = [
            "--no-deps",
            *(["--require-hashes"] if pins and all(p.hashes for p in pins) else []),
        ]
        return [*self.installer.pip_install(env), *exact, "-r", str(pinned), *extra]

    def run(self, argv: list[str], cwd: Path, env: Path) -> None:
        """One installer command for the environment being built at `env`."""
        self._run(argv, cwd, env, time.monotonic())

    def _run(self, argv: list[str], cwd: Path, env: Path, started: float) -> None:
        progress = _Progress(started)
        try:
            run_logged(
                argv,
                cwd=cwd,
                env=self._environment(env),
                timeout=self.options.timeout,
                stop=self.stop,
                on_line=progress.line,
                on_quiet=progress.still_running,
                run_as=self.run_as,
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
            "HOME": str(_home_of(env)),
            "TMPDIR": str(_home_of(env)),
        }
        variables.update(Environment("", env).variables(os.environ.get("PATH", os.defpath)))
        return variables


# -- the manifest: what a later start checks before reuse ------------------------------


class _Manifest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    digest: str
    entries: list[str]  # paths relative to the environment that existed when it was built


def _intact(environment: Environment) -> bool:
    """Whether the environment is complete and nothing it was built with has gone.

    An old-style marker (the digest alone) is checked against the dist-info RECORDs
    instead, and upgraded to a manifest if that passes: an upgrade of live-pull does
    not reinstall every environment (which could need an index that is down).
    """
    path = environment.path
    try:
        text = (path / MARKER).read_text()
    except OSError:
        return False  # never finished (or not ours): built again
    try:
        entries, upgrade = _Manifest.model_validate_json(text).entries, False
    except ValidationError:
        entries, upgrade = _recorded(path), True
    missing = [entry for entry in entries if not os.path.exists(path / entry)]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        log.warning(
            "environment damaged, rebuilding digest=%s missing=%s%s",
            environment.digest,
            ",".join(missing[:3]),
            more,
        )
        return False
    if upgrade:
        with contextlib.suppress(OSError):  # if it cannot be written, checked this way again
            _write_manifest(path, environment.digest)
    log.info("environment reused digest=%s checked=%d", environment.digest, len(entries))
    return True


def _write_manifest(env: Path, name: str) -> None:
    manifest = _Manifest(digest=name, entries=_inventory(env))
    write_atomic(env / MARKER, manifest.model_dump_json(indent=1) + "\n")


def _inventory(env: Path) -> list[str]:
    """The interpreter, pyvenv.cfg, and every top-level entry of site-packages."""
    found = [name for name in ("bin/python", "pyvenv.cfg") if os.path.exists(env / name)]
    for site in sorted(env.glob(SITE_PACKAGES)):
        prefix = site.relative_to(env)
        found += [
            str(prefix / child.name)
            for child in sorted(site.iterdir())
            if child.name != "__pycache__"
        ]
    return found


def _recorded(env: Path) -> list[str]:
    """For an old-style marker: the interpreter, and each installed distribution's
    dist-info and the top-level entries its RECORD lists."""
    found = {"bin/python"}
    for record in env.glob(f"{SITE_PACKAGES}/*.dist-info/RECORD"):
        dist_info = record.parent
        found.add(str(dist_info.relative_to(env)))
        site = dist_info.parent.relative_to(env)
        with open(record, newline="", encoding="utf-8", errors="replace") as rows:
            tops = {row[0].split("/")[0] for row in csv.reader(rows) if row}
        found.update(str(site / top) for top in tops if top not in ("", "..", "__pycache__"))
    return sorted(found)


def _home_of(staging: Path) -> Path:
    """The installer's HOME and TMPDIR; its name starts like an interrupted build's,
    so garbage collection removes it if the agent dies mid-install."""
    return staging.with_name(f"{staging.name}-home")


def _pins(spec: DependencySpec, selection: Selection) -> list[Pin]:
    if spec.kind is SpecKind.PIPFILE_LOCK:
        return pipfile_pins(spec.main_file, selection)
    if spec.kind is SpecKind.PYLOCK:
        return pylock_pins(spec.main_file, selection)
    pyproject = spec.app_path / PYPROJECT
    if spec.kind is SpecKind.POETRY_LOCK:
        return poetry_pins(spec.main_file, pyproject, selection)
    if spec.kind is SpecKind.PDM_LOCK:
        return pdm_pins(spec.main_file, pyproject, selection)
    # uv.lock with pip: honoured without uv, for the app's project (a workspace member)
    project = pyprojects.load(spec.app_path, spec.app_path)
    name = spec.member or (project.name if project else None)
    return uv_pins(spec.main_file, name, selection)


def _refuse_stale_lock(spec: DependencySpec) -> None:
    """A uv.lock out of date with the app's pyproject.toml refuses the revision."""
    if spec.kind is not SpecKind.UV_LOCK:
        return
    project = pyprojects.load(spec.app_path, spec.app_path)
    if project is None or project.dependencies is None:
        return
    name = spec.member or project.name
    problem = uv_lock_problem(spec.main_file, name, project.dependencies)
    if problem is not None:
        raise InstallError(problem)


def _shared_lines(spec: DependencySpec, selection: Selection) -> list[str]:
    """What goes into the shared layer from a requirements file with local projects in
    it, or a pyproject.toml alone: everything but the projects, and their declared
    dependencies (the project layer installs them with --no-deps)."""
    if spec.kind is SpecKind.PYPROJECT:
        data = pyprojects.load(spec.app_path, spec.app_path)
        return project_requirements(data.data if data else {}, selection)
    lines = requirements.read(spec.app_path, spec.main_file).lines
    for local in spec.projects:
        project = pyprojects.load(local.path, local.path)
        lines += list(project.dependencies or ()) if project else []
    return lines


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
