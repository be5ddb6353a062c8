"""The project layer: the app's own project installed for one release only.

The dependency layer (venvs/<digest>) is shared by every release with the same lock;
the app's project (a package with a build system, a workspace member, `-e .`) is not:
installed there it would point at whichever release built the environment. Each
release gets layers/<sha>, an environment on the same interpreter that sees the
dependency layer's packages and holds only the project, installed editable from the
release itself: console scripts, entry points, `src/` layouts and package metadata
work, and always run the release's own code. A code-only update costs this layer,
never a dependency install.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from entrypoint import pyprojects
from entrypoint.depspec import DependencySpec
from entrypoint.errors import InstallError
from entrypoint.files import TMP_PREFIX, remove_aside, retarget_scripts, swap_in, write_atomic
from entrypoint.identity import Identity
from entrypoint.installers import Installer

log = logging.getLogger(__name__)

MARKER = ".live-pull-layer"
LINK_FILE = "_live_pull_dependencies.pth"


class Builder(Protocol):
    """How an environment is built (environments.Environments): where, and each
    installer command run in it."""

    def building(self, staging: Path) -> AbstractContextManager[None]: ...

    def run(self, argv: list[str], cwd: Path, env: Path) -> None: ...


class ProjectLayers:
    def __init__(self, root: Path, installer: Installer, run_as: Identity) -> None:
        self.root = root
        self.installer = installer
        self.run_as = run_as

    def ensure(
        self, spec: DependencySpec, env: Path, key: str, extra: list[str], builder: Builder
    ) -> Path:
        """layers/<key> for this release over the environment `env`, built if missing."""
        final = self.root / key
        expected = _marker_text(spec, env)
        if _reads(final / MARKER) == expected and (final / "bin" / "python").exists():
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        with builder.building(staging):
            builder.run(self.installer.create_layer(staging, env), spec.app_path, staging)
            _link_dependencies(staging, env)
            builder.run(self._install_argv(spec, env, staging, extra), spec.lock_dir, staging)
            self.run_as.take_back(staging)
            retarget_scripts(staging, final)
            write_atomic(staging / MARKER, expected)
            swap_in(staging, final)
        log.info(
            "project installed for the release sha=%s projects=%d seconds=%.2f",
            key[:12],
            len(spec.projects),
            time.monotonic() - started,
        )
        return final

    def _install_argv(
        self, spec: DependencySpec, env: Path, layer: Path, extra: list[str]
    ) -> list[str]:
        """Each project from the release, editable where it asked to be (or is the app);
        its dependencies are the shared layer's, unless they are dynamic (setup.py)."""
        argv = self.installer.pip_install(env, into=layer)
        if all(_static(project.path) for project in spec.projects):
            argv.append("--no-deps")
        for project in spec.projects:
            argv += ["-e", str(project.path)] if project.editable else [str(project.path)]
        return [*argv, *extra]

    def collect(self, keep: set[str]) -> None:
        """Remove the layers of releases no longer kept, and interrupted builds."""
        for child in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if child.name not in keep:
                with contextlib.suppress(OSError):
                    remove_aside(child)


def _link_dependencies(layer: Path, env: Path) -> None:
    """The layer sees the dependency layer's packages (their .pth files processed too)
    after its own."""
    lines = "".join(
        f"import site; site.addsitedir({str(site)!r})\n"
        for site in sorted(env.glob("lib/python*/site-packages"))
    )
    for site in layer.glob("lib/python*/site-packages"):
        write_atomic(site / LINK_FILE, lines)


def _static(project: Path) -> bool:
    """Whether the project's dependencies are declared (and so in the shared layer)."""
    try:
        loaded = pyprojects.load(project, project)
    except InstallError:
        return False
    return loaded is None or loaded.dependencies is not None


def _marker_text(spec: DependencySpec, env: Path) -> str:
    projects = "".join(f"{p.path} editable={p.editable}\n" for p in spec.projects)
    return f"env={env}\n{projects}"


def _reads(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
