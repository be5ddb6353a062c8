"""What a code-only update of an app that is a package costs, and print a table.

The app is a small `src/` layout project with a console script and 40 locally built
dependencies. Per new release:

- live-pull: the dependency layer is on disk already (same lock); only the release's
  project layer is built (layers/<sha>), with uv and with pip;
- naive: a fresh virtual environment and `pip install .` (dependencies and project),
  the way an entrypoint that installs the app on each deploy does it;
- in place: `uv pip install --reinstall-package webapp .` into the one environment the
  running app uses (fast, but it changes what is running: not side by side).

    .venv/bin/python bench/project_layer.py [--runs 5] [--packages 40]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entrypoint.environments import Environments, InstallOptions
from entrypoint.installers import pick_installer
from tests import projects
from tests.wheels import build_wheel


def make_project(root: Path, count: int, house: Path) -> Path:
    """A release of the project: requirements pin the wheels, `-e .` is the project."""
    pins = "".join(f"benchpkg{n}==1.0\n" for n in range(count))
    files = {
        **projects.package("bench"),
        "pyproject.toml": projects.pep621(["tinypkg"]),
        "requirements.txt": f"{pins}-e .\n",
    }
    build_wheel(house, "tinypkg", "1.0")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def live_pull(base: Path, installer: str, house: Path, count: int) -> Callable[[], float]:
    options = InstallOptions(None, None, ("--no-index", "--find-links", str(house)), 600)
    home = base / f"home-{installer}"
    envs = Environments(
        home / "venvs", home / "cache", pick_installer(installer), options, threading.Event()
    )
    releases = base / f"releases-{installer}"
    envs.ensure(make_project(releases / "r0", count, house))  # the dependency layer, once
    number = [0]

    def one() -> float:
        number[0] += 1
        release = make_project(releases / f"r{number[0]}", count, house)
        started = time.monotonic()
        envs.ensure(release)
        elapsed = time.monotonic() - started
        assert envs.installs == 1, "a code-only update installed dependencies"
        return elapsed

    return one


def naive(base: Path, house: Path, count: int) -> Callable[[], float]:
    number = [0]

    def one() -> float:
        number[0] += 1
        release = make_project(base / f"naive-{number[0]}", count, house)
        started = time.monotonic()
        env = release / ".venv"
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index"]
        subprocess.run(
            [*pip, "--find-links", str(house), "-r", "requirements.txt"], cwd=release, check=True
        )
        return time.monotonic() - started

    return one


def in_place(base: Path, house: Path, count: int) -> Callable[[], float]:
    uv = pick_installer("uv").uv_path
    assert uv is not None
    env = base / "in-place-env"
    subprocess.run([uv, "venv", "-q", str(env)], check=True)
    release = make_project(base / "in-place", count, house)
    find = ["--no-index", "--find-links", str(house)]
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(env / "bin" / "python"),
            *find,
            "-r",
            "requirements.txt",
        ],
        cwd=release,
        check=True,
    )

    def one() -> float:
        started = time.monotonic()
        install = [uv, "pip", "install", "-q", "--python", str(env / "bin" / "python"), *find]
        subprocess.run([*install, "--reinstall-package", "webapp", "."], cwd=release, check=True)
        return time.monotonic() - started

    return one


def measure(fn: Callable[[], float], runs: int) -> list[float]:
    return [fn() for _ in range(runs)]


def row(label: str, values: list[float]) -> str:
    median, low, high = statistics.median(values), min(values), max(values)
    return f"| {label:<66} | {median:>7.2f} s | {low:>7.2f} s | {high:>7.2f} s |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--packages", type=int, default=40)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="live-pull-bench-layer-"))
    try:
        house = base / "wheels"
        for n in range(args.packages):
            build_wheel(house, f"benchpkg{n}", "1.0")
        results = {
            "code-only update: live-pull project layer, uv": live_pull(
                base, "uv", house, args.packages
            ),
            "code-only update: live-pull project layer, pip": live_pull(
                base, "pip", house, args.packages
            ),
            "code-only update: naive new venv + pip install (deps and project)": naive(
                base, house, args.packages
            ),
            "code-only update: in place, uv pip install --reinstall-package": in_place(
                base, house, args.packages
            ),
        }
        print(f"{args.runs} runs, {args.packages} dependencies, a src/ layout project\n")
        print(f"| {'what':<66} | {'median':>9} | {'min':>9} | {'max':>9} |")
        print(f"|{'-' * 68}|{'-' * 11}|{'-' * 11}|{'-' * 11}|")
        for label, fn in results.items():
            print(row(label, measure(fn, args.runs)))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
