"""Measure what live-pull saves, side by side in one run, and print a table.

1. Start to first response with an unchanged lockfile: live-pull restarting with
   its volume (environment on disk) against the naive entrypoint that clones and
   runs `pip install -r requirements.txt` on every start.
2. An update that changes the lockfile, push to first response from the new
   revision: live-pull with uv against live-pull with pip.

Offline: the app's requirements are wheels built locally (a chain of small
packages), so the figures compare the tools, not the network.

    .venv/bin/python bench/bench.py [--runs 3] [--packages 40]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entrypoint.demo import fetch_text, free_port
from entrypoint.sample import APP, SampleRepo, create_sample_repo
from tests.wheels import build_wheel

TIMEOUT = 300.0
ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def worktree(commit: str, root: Path) -> Iterator[Path]:
    """A temporary worktree of `commit` under `root`: another tree's package runs from
    there (as the current directory), with this venv."""
    path = root / f"baseline-{commit}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(path),
                    commit], check=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                       check=False)  # fmt: skip


def build_wheelhouse(root: Path, count: int) -> Path:
    house = root / "wheels"
    for n in range(count):
        build_wheel(house, f"benchpkg{n}", "1.0")
        build_wheel(house, f"benchpkg{n}", "2.0")
    return house


def requirements(count: int, version: str) -> str:
    return "".join(f"benchpkg{n}=={version}\n" for n in range(count))


def app_files(count: int, version: str, greeting: str) -> dict[str, str]:
    app = APP.format(message=greeting).replace("import os\n", "import os\nimport benchpkg0\n", 1)
    return {
        "app.py": app,
        "Procfile": "web: python app.py\n",
        "requirements.txt": requirements(count, version),
    }


def wait_for(url: str, text: str, poll: float = 0.05) -> float:
    """When `url` first answers with `text` (within `poll` seconds of it, if it refused)."""
    started = time.monotonic()
    while time.monotonic() - started < TIMEOUT:
        answer = fetch_text(url)
        if answer and text in answer:
            return time.monotonic()
        time.sleep(poll)
    raise RuntimeError(f"no answer containing {text!r} from {url}")


def start_agent(
    sample: SampleRepo,
    home: Path,
    port: int,
    installer: str,
    house: Path,
    extra: dict[str, str] | None = None,
    cwd: Path | None = None,
    python: str = sys.executable,
) -> subprocess.Popen[bytes]:
    """`extra`: more of the agent's environment; `cwd`: where it runs (bench/start.py runs
    another tree's package from there, with `python`)."""
    env = {
        **os.environ,
        "REPO_URL": sample.url,
        "LIVE_PULL_HOME": str(home),
        "LIVE_PULL_POLL_INTERVAL": "0.5",
        "LIVE_PULL_STATUS_PORT": str(free_port()),
        "LIVE_PULL_INSTALLER": installer,
        "LIVE_PULL_INSTALL_ARGS": f"--no-index --find-links {house}",
        "LIVE_PULL_LOG_LEVEL": "WARNING",
        "PORT": str(port),
        **(extra or {}),
    }
    return subprocess.Popen(
        [python, "-m", "entrypoint", "run"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def live_pull_restart(sample: SampleRepo, root: Path, house: Path) -> Callable[[], float]:
    """A container's restart: the same environment each time (a quick start)."""
    home = root / "home-restart"
    port, status_port = free_port(), free_port()
    same = {"LIVE_PULL_STATUS_PORT": str(status_port)}
    warm = start_agent(sample, home, port, "pip", house, same)  # installs; not timed
    wait_for(f"http://127.0.0.1:{port}/", "from revision")
    wait_for(f"http://127.0.0.1:{status_port}/readyz", "true")
    stop(warm)

    def once() -> float:
        started = time.monotonic()
        agent = start_agent(sample, home, port, "pip", house, same)
        try:
            answered = wait_for(f"http://127.0.0.1:{port}/", "from revision") - started
            wait_for(f"http://127.0.0.1:{status_port}/readyz", "true")  # an orderly stop
            return answered
        finally:
            stop(agent)

    return once


def naive_entrypoint(sample: SampleRepo, root: Path, house: Path) -> Callable[[], float]:
    """What live-pull replaces: clone, venv, pip install -r on every start, then run."""
    script = (
        "set -e\n"
        'rm -rf "$WORK" && git clone -q --depth 1 "$REPO_URL" "$WORK" && cd "$WORK"\n'
        "python3 -m venv .venv\n"
        ".venv/bin/pip install -q --disable-pip-version-check"
        ' --no-index --find-links "$WHEELS" -r requirements.txt\n'
        "exec .venv/bin/python app.py\n"
    )
    port = free_port()

    def once() -> float:
        env = {
            **os.environ,
            "REPO_URL": sample.url,
            "WORK": str(root / "naive"),
            "WHEELS": str(house),
            "PORT": str(port),
        }
        started = time.monotonic()
        process = subprocess.Popen(["/bin/sh", "-c", script], env=env, start_new_session=True)
        try:
            return wait_for(f"http://127.0.0.1:{port}/", "from revision") - started
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)

    return once


def lockfile_update(
    sample: SampleRepo, root: Path, house: Path, installer: str, count: int
) -> Callable[[], float]:
    home = root / f"home-update-{installer}"
    port = free_port()
    agent = start_agent(sample, home, port, installer, house)
    wait_for(f"http://127.0.0.1:{port}/", "from revision")
    state = {"version": "1.0", "n": 0}

    def once() -> float:
        state["version"] = "2.0" if state["version"] == "1.0" else "1.0"
        state["n"] += 1
        greeting = f"{installer} update {state['n']}"
        # A new pin set each time, so each update really installs.
        files = app_files(count, state["version"], greeting)
        files["requirements.txt"] += f"# run {installer} {state['n']}\n"
        started = time.monotonic()
        sample.commit(files, greeting)
        return wait_for(f"http://127.0.0.1:{port}/", greeting) - started

    once.agent = agent  # type: ignore[attr-defined]
    return once


def measure(fn: Callable[[], float], runs: int) -> list[float]:
    return [fn() for _ in range(runs)]


def row(label: str, values: list[float], baseline: list[float] | None = None) -> str:
    median = statistics.median(values)
    ratio = f"{statistics.median(baseline) / median:5.1f}x" if baseline else "      "
    return (
        f"| {label:<62} | {median:7.2f} s | {min(values):7.2f} s | {max(values):7.2f} s | {ratio} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--packages", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="live-pull-bench-") as tmp:
        root = Path(tmp)
        house = build_wheelhouse(root, args.packages)
        sample = create_sample_repo(root / "remote")
        sample.commit(app_files(args.packages, "1.0", "bench"), "bench app")

        naive = measure(naive_entrypoint(sample, root, house), args.runs)
        restart = measure(live_pull_restart(sample, root, house), args.runs)
        updates = {}
        for installer in ("uv", "pip"):
            update = lockfile_update(sample, root, house, installer, args.packages)
            try:
                updates[installer] = measure(update, args.runs)
            finally:
                stop(update.agent)  # type: ignore[attr-defined]

    print(
        f"\n{args.packages} locally built wheels in requirements.txt,"
        f" {args.runs} runs each, median/min/max\n"
    )
    print(f"| {'what':<62} | {'median':>9} | {'min':>9} | {'max':>9} | {'gain':>6} |")
    print(f"|{'-' * 64}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 8}|")
    print(row("start to first response: naive clone + pip install each start", naive))
    print(row("start to first response: live-pull restart, lockfile unchanged", restart, naive))
    print(row("lockfile change, push to new revision serving: live-pull + pip", updates["pip"]))
    print(
        row(
            "lockfile change, push to new revision serving: live-pull + uv",
            updates["uv"],
            updates["pip"],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
