"""Restart to first response and memory at idle: this tree against a baseline commit,
side by side in one run (their restarts taken in turn), and print a table.

A restart reuses the volume (release and environment on disk, lockfile unchanged):
the time is from `live-pull run` to the first answer of the app on PORT. Each restart
has the environment of the one before, as a container's restart has: the quick start
(entrypoint/quickstart.py) serves then. The rows "environment changed" change one
variable at each restart, so the agent's own start serves. Memory is
the resident set of live-pull's own processes once the app serves and the agent is
idle: the agent, supervisord, the proxy in front of the app (when there is one) and the
holder of the shared socket.
The app itself is not counted.

    .venv/bin/python bench/start.py [--runs 7] [--baseline 37d48a0]

The baseline runs from a temporary worktree of that commit, with this venv's packages.
Both trees run as the image runs live-pull (see image_like_python).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

import bench
from bench import app_files, build_wheelhouse, stop, wait_for, worktree
from entrypoint.demo import free_port
from entrypoint.sample import SampleRepo, create_sample_repo
from entrypoint.supervisor_config import HOLD

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = 10
IDLE_SECONDS = 3.0  # after the first answer, for the agent to settle before RSS is read
POLL_SECONDS = 0.005  # a web that binds its port itself refuses until then


MODES = {"default": {}, "LISTEN=off": {"LIVE_PULL_LISTEN": "off"}, "environment changed": {}}


def start_agent(tree: Path, sample: SampleRepo, home: Path, port: int, house: Path,
                python: Path, extra: dict[str, str]) -> subprocess.Popen[bytes]:  # fmt: skip
    """bench.py's agent, running `tree`'s own package."""
    extra = {"PYTHONPATH": str(tree), **extra}
    return bench.start_agent(sample, home, port, "pip", house, extra, tree, str(python))


def image_like_python(root: Path) -> Path:
    """An interpreter that runs live-pull as the image does: with the agent's packages
    (this venv's), and without the import hook of the venv's editable install, which
    the image's plain install does not have (it imports pathlib, re and more as each
    interpreter starts: 10 ms of each of the three in a restart's path)."""
    venv = root / "image-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    )
    # A path line: this venv's packages, without processing the .pth files there.
    (Path(purelib.strip()) / "agent-packages.pth").write_text(sysconfig.get_paths()["purelib"])
    return python


def compile_bytecode(python: Path, tree: Path) -> None:
    """The tree's bytecode, as the image compiles it at build (an interpreter told not to
    write bytecode, as on some machines, would compile every module at every start)."""
    subprocess.run([python, "-m", "compileall", "-q", str(tree / "entrypoint")], check=True)


def wait_ready(status_port: int) -> None:
    """The agent is up (not only the app): its stop is then the orderly one."""
    url = f"http://127.0.0.1:{status_port}/readyz"
    deadline = time.monotonic() + bench.TIMEOUT
    while requests_status(url) != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the agent was not ready at {url}")
        time.sleep(0.05)


def requests_status(url: str) -> int:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return 0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def own_memory(agent: int) -> dict[str, float]:
    """RSS of the agent, supervisord, the proxy slots (not the app) and the holder of the
    shared socket (a shell and its sleep)."""
    found = {"agent": rss_mb(agent), "supervisord": 0.0, "proxy": 0.0, "holder": 0.0}
    for child in children(agent):
        if "supervisord" not in cmdline(child):
            continue
        found["supervisord"] += rss_mb(child)
        for slot in children(child):
            if HOLD in cmdline(slot):  # the holder's shell line names the launcher too
                found["holder"] += rss_mb(slot) + sum(map(rss_mb, children(slot)))
            elif "launch" in cmdline(slot) and children(slot):  # a proxy, its app below
                found["proxy"] += rss_mb(slot)
    return found


class Restarts:
    """One tree's restarts in one mode, on its own home and ports."""

    def __init__(self, tree: Path, sample: SampleRepo, home: Path, house: Path,
                 python: Path, mode: str) -> None:  # fmt: skip
        self.mode = mode
        self.port, self.status_port = free_port(), free_port()
        self.extra = {**MODES[mode], "LIVE_PULL_STATUS_PORT": str(self.status_port)}
        self.agent_in = (tree, sample, home, house, python)
        self.times: list[float] = []
        self.memory: dict[str, float] = {}

    def start(self) -> subprocess.Popen[bytes]:
        tree, sample, home, house, python = self.agent_in
        return start_agent(tree, sample, home, self.port, house, python, self.extra)

    def warm(self) -> None:
        """The first start installs; not timed."""
        agent = self.start()
        try:
            self.answered()
            wait_ready(self.status_port)
        finally:
            stop(agent)

    def once(self, run: int, *, last: bool) -> None:
        if self.mode == "environment changed":
            self.extra["BENCH_RESTART"] = str(run)
        started = time.monotonic()
        agent = self.start()
        try:
            self.times.append(self.answered() - started)
            wait_ready(self.status_port)
            if last:
                time.sleep(IDLE_SECONDS)
                self.memory = own_memory(agent.pid)
        finally:
            stop(agent)

    def answered(self) -> float:
        return wait_for(f"http://127.0.0.1:{self.port}/", "from revision", POLL_SECONDS)


def in_turn(trees: dict[str, Path], mode: str, number: int, sample: SampleRepo, root: Path,
            house: Path, python: Path, runs: int) -> dict[tuple[str, str], Restarts]:  # fmt: skip
    """Each tree's restarts in `mode`, taken in turn (the machine's load drifts: a tree
    measured after the other would be measured on another machine)."""
    restarts = {}
    for name, tree in trees.items():
        home = root / f"home-{tree.name}-{number}"
        restarts[name, mode] = Restarts(tree, sample, home, house, python, mode)
    for each in restarts.values():
        each.warm()
    for run in range(runs):  # A B, B A, ...: neither tree always goes first
        order = list(restarts.values())
        for each in order if run % 2 == 0 else reversed(order):
            each.once(run, last=run == runs - 1)
    return restarts


def row(label: str, restarts: Restarts) -> str:
    times, memory = restarts.times, restarts.memory
    total = sum(memory.values())
    kinds = ("agent", "supervisord", "proxy", "holder")
    parts = " | ".join(f"{memory.get(k, 0.0):5.1f} MB" for k in kinds)
    return (
        f"| {label:<34} | {statistics.median(times):6.2f} s | {min(times):6.2f} s"
        f" | {parts} | {total:5.1f} MB |"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline", default="c208c8d", help="the commit to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="live-pull-start-") as tmp:
        root = Path(tmp)
        house = build_wheelhouse(root, PACKAGES)
        sample = create_sample_repo(root / "remote")
        sample.commit(app_files(PACKAGES, "1.0", "bench"), "bench app")
        python = image_like_python(root)
        with worktree(args.baseline, root) as base:
            trees = {f"baseline {args.baseline}": base, "this tree": ROOT}
            for tree in trees.values():
                compile_bytecode(python, tree)
            found = {}
            for number, mode in enumerate(MODES):
                found.update(in_turn(trees, mode, number, sample, root, house, python, args.runs))
            rows = [row(f"{name}, {mode}", found[name, mode]) for name in trees for mode in MODES]
    print(f"\nrestart to first response (lockfile unchanged), {args.runs} runs; RSS at idle\n")
    print("| what | median | min | agent | supervisord | proxy | holder | live-pull in all |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
