"""The installers: uv where available, pip as the fallback.

Each knows how to make an empty environment and how to install a requirements
file into it; what they install is decided by environments.py.
"""

from __future__ import annotations

import ensurepip
import importlib.metadata
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from entrypoint.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Installer:
    name: str  # "uv" or "pip"
    version: str
    uv_path: str | None = None

    @property
    def identity(self) -> str:
        return f"{self.name}-{self.version}"

    def create_env(self, target: Path, python: str = sys.executable) -> list[str]:
        if self.uv_path is not None:
            return [self.uv_path, "venv", "--quiet", "--python", python, str(target)]
        return [python, "-m", "venv", str(target)]

    def create_layer(self, target: Path, env: Path) -> list[str]:
        """An environment on env's interpreter, with no packages (env's are added)."""
        python = str(env / "bin" / "python")
        if self.uv_path is not None:
            return [self.uv_path, "venv", "--quiet", "--python", python, str(target)]
        return [python, "-m", "venv", "--without-pip", str(target)]

    def pip_install(self, env: Path, into: Path | None = None) -> list[str]:
        """The start of a `pip install` into `into` (env by default), run with env's
        installer; arguments follow."""
        python = str(env / "bin" / "python")
        target = str((into or env) / "bin" / "python")
        if self.uv_path is not None:
            return [self.uv_path, "pip", "install", "--python", target]
        elsewhere = ["--python", target] if into is not None else []
        quiet = ["--disable-pip-version-check", "--no-input"]
        return [python, "-m", "pip", *elsewhere, "install", *quiet]

    def cache_env(self, cache_root: Path) -> dict[str, str]:
        """One cache under LIVE_PULL_HOME, shared by every environment."""
        if self.uv_path is not None:
            return {"UV_CACHE_DIR": str(cache_root / "uv")}
        return {"PIP_CACHE_DIR": str(cache_root / "pip")}


def pick_installer(preference: str) -> Installer:
    """uv if it can be found (unless pip is asked for), else pip. A uv on PATH wins."""
    if preference != "pip":
        found = _uv_on_path() or _packaged_uv()
        if found is not None:
            path, version = found
            return Installer("uv", version, path)
        if preference == "uv":
            raise ConfigError("LIVE_PULL_INSTALLER: uv was asked for but is not installed")
    # pip comes into each environment from ensurepip: its version is the one bundled.
    return Installer("pip", ensurepip.version())


def _packaged_uv() -> tuple[str, str] | None:
    """The binary shipped by the uv package, versioned by its metadata (no process run)."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin()), importlib.metadata.version("uv")
    except (ImportError, FileNotFoundError, importlib.metadata.PackageNotFoundError):
        return None


def _uv_on_path() -> tuple[str, str] | None:
    path = shutil.which("uv")
    if path is None:
        return None
    result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    return path, result.stdout.strip().removeprefix("uv ").split(" ")[0] or "unknown"
