"""live-pull's own dependencies are locked, and the image installs exactly the lock."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
UV = Path(sys.executable).parent / "uv"


def test_the_image_export_is_the_lock() -> None:
    """docker/requirements.lock is what `scripts/lock` exports from uv.lock, to the byte
    (no network: `--frozen` reads the lock alone)."""
    exported = subprocess.run(
        [
            UV,
            "export",
            "--frozen",
            "--no-dev",
            "--extra",
            "uv",
            "--no-emit-project",
            "--no-header",
            "--format",
            "requirements-txt",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert exported == (ROOT / "docker" / "requirements.lock").read_text()


def test_every_dependency_is_locked_and_hash_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {canonicalize_name(package["name"]) for package in lock["package"]}
    wanted = [*project["dependencies"], *project["optional-dependencies"]["uv"]]
    assert {canonicalize_name(Requirement(item).name) for item in wanted} <= locked
    for line in (ROOT / "docker" / "requirements.lock").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            assert "==" in line, line
    dockerfile = (ROOT / "Dockerfile.live-pull").read_text()
    assert "--require-hashes --no-deps -r /src/docker/requirements.lock" in dockerfile
