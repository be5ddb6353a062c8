"""Updates under load, per server: failed requests and latency while N commits go live,
and the time from push to the first response from the new revision; then the proxy's
cost in steady state.

For each server, live-pull's default (start-first: gunicorn handed the socket, the
others behind live-pull's proxy) against the naive stop-then-start restart of the same
Procfile (LIVE_PULL_LISTEN=off), in the same run. The proxy's overhead: the same
gunicorn app handed the socket against proxied (LIVE_PULL_HANDOFF), no updates. And a
revision whose web dies within its bake: how soon the previous release answers again,
standing by (proxied) or started again (handed over).

    .venv/bin/python bench/rollover.py [--updates 20] [--threads 4] [--seconds 15]
        [--rollbacks 5] [--rounds 3] [--baseline REV] [--only updates|rollbacks|cost]

The proxy's cost is the median of `rounds` rounds, handed over and proxied in turn (the
machine's noise moves them alike); with `--baseline`, the proxy of that commit (run
from a temporary worktree) is measured in the same rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ROOT, worktree
from entrypoint.demo import free_port
from entrypoint.sample import APP, SampleRepo, create_sample_repo

WSGI = """\
import os
REVISION = os.environ.get("LIVE_PULL_REVISION", "unknown")[:12]
def app(environ, start_response):
    body = f"{MESSAGE} from revision {REVISION}\\n".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""
ASGI = """\
import os
REVISION = os.environ.get("LIVE_PULL_REVISION", "unknown")[:12]
async def app(scope, receive, send):
    body = f"{MESSAGE} from revision {REVISION}\\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""
PY = sys.executable
# The Procfiles as they are written for a server that binds $PORT: none changed.
SERVERS = {
    "gunicorn (sync)": (WSGI, f"{PY} -m gunicorn -b 127.0.0.1:$PORT --workers 2 app:app"),
    "gunicorn (uvicorn workers)": (
        ASGI,
        f"{PY} -m gunicorn -k uvicorn.workers.UvicornWorker -b 127.0.0.1:$PORT app:app",
    ),
    "uvicorn": (ASGI, f"{PY} -m uvicorn app:app --port $PORT"),
    "plain server (http.server)": (APP, f"{PY} app.py"),
}
SATURATING = 3  # client processes: with 2 cores, enough to keep the server busy
MODES = {"live-pull": {}, "stop-then-start": {"LIVE_PULL_LISTEN": "off"}}
# The previous release within a bake: proxied, it stands by (running); handed over, it is
# started again.
BAKE_ROLLBACKS = {
    "plain server (http.server)": "stands by (proxied)",
    "uvicorn": "stands by (proxied)",
    "gunicorn (sync)": "started again (handed over)",
}


def files(server: str, message: str) -> dict[str, str]:
    source, command = SERVERS[server]
    app = source.format(message=message) if source is APP else f"MESSAGE = {message!r}\n" + source
    return {"app.py": app, "Procfile": f"web: {command}\n"}


class Load:
    def __init__(self, url: str, threads: int) -> None:
        self.url, self.threads = url, threads
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failed = 0
        self.seen: dict[str, float] = {}  # revision -> first time it answered
        self.since: dict[str, float] = {}  # the same, since the last mark()
        self.lock = threading.Lock()

    def worker(self) -> None:
        deadline = time.monotonic() + 900
        while not self.stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                response = requests.get(self.url, timeout=10)
                ok = response.status_code == 200
                revision = response.text.strip().rsplit(" ", 1)[-1]
            except requests.RequestException:
                ok, revision = False, ""
            now = time.monotonic()
            with self.lock:
                if ok:
                    self.latencies.append(now - started)
                    self.seen.setdefault(revision, now)
                    self.since.setdefault(revision, now)
                else:
                    self.failed += 1

    def mark(self) -> None:
        with self.lock:
            self.since = {}

    def summary(self) -> dict[str, float]:
        latencies = sorted(self.latencies) or [0.0]
        return {
            "requests": len(self.latencies) + self.failed,
            "failed": self.failed,
            "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        }


@contextmanager
def agent_on(
    server: str, settings: dict[str, str], tree: Path = ROOT
) -> Iterator[tuple[SampleRepo, int, str]]:
    """An agent serving `server`'s first revision, running `tree`'s package; yields the
    remote, port and status URL."""
    with tempfile.TemporaryDirectory(prefix="live-pull-rollover-") as tmp:
        sample: SampleRepo = create_sample_repo(Path(tmp) / "remote")
        sample.commit(files(server, "v0"), "v0")
        port, status_port = free_port(), free_port()
        env = {
            **os.environ,
            "REPO_URL": sample.url,
            "LIVE_PULL_HOME": f"{tmp}/home",
            "LIVE_PULL_POLL_INTERVAL": "0",
            "LIVE_PULL_STATUS_PORT": str(status_port),
            "LIVE_PULL_LOG_LEVEL": "WARNING",
            "LIVE_PULL_LISTEN": f"tcp://127.0.0.1:{port}",
            "PORT": str(port),
            **settings,
        }
        agent = subprocess.Popen(
            [sys.executable, "-m", "entrypoint", "run"],
            cwd=tree,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        status = f"http://127.0.0.1:{status_port}"
        try:
            wait_state(f"{status}/status", None)
            yield sample, port, status
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)


@contextmanager
def loaded(port: int, threads: int) -> Iterator[Load]:
    load = Load(f"http://127.0.0.1:{port}/", threads)
    workers = [threading.Thread(target=load.worker) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield load
    finally:
        load.stop.set()
        for worker in workers:
            worker.join()


def updates_under_load(server: str, mode: str, updates: int, threads: int) -> dict[str, float]:
    with agent_on(server, MODES[mode]) as (sample, port, status), loaded(port, threads) as load:
        to_first_response = []
        for n in range(1, updates + 1):
            sha = sample.commit(files(server, f"v{n}"), f"v{n}")
            pushed = time.monotonic()
            requests.post(f"{status}/sync", timeout=5)
            wait_state(f"{status}/status", sha)
            while sha[:12] not in load.seen and time.monotonic() - pushed < 60:
                time.sleep(0.01)
            to_first_response.append(load.seen.get(sha[:12], time.monotonic()) - pushed)
    return {**load.summary(), "first": statistics.median(to_first_response)}


CRASH_WHEN_TOLD = """\
import os, signal, threading, time
def _crash_when_told(path={path!r}):
    while not os.path.exists(path):
        time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)  # the whole web: gunicorn's master and workers, or the app
threading.Thread(target=_crash_when_told, daemon=True).start()
"""


def crashing_files(server: str, message: str, marker: Path) -> dict[str, str]:
    """`server`'s revision whose web dies (SIGKILL) once `marker` exists."""
    revision = files(server, message)
    return {**revision, "app.py": CRASH_WHEN_TOLD.format(path=str(marker)) + revision["app.py"]}


def bake_rollback(server: str, runs: int, threads: int) -> dict[str, float]:
    """Revisions whose web dies within their bake, under load: from the crash to the
    previous release's first answer, and the requests that failed (medians of `runs`)."""
    times, failures = [], []
    with (
        agent_on(server, {"LIVE_PULL_BAKE_SECONDS": "300"}) as (sample, port, status),
        loaded(port, threads) as load,
        tempfile.TemporaryDirectory() as markers,
    ):
        previous = requests.get(f"{status}/status", timeout=5).json()["revision"]
        for n in range(runs):
            marker = Path(markers) / f"crash-{n}"
            sha = sample.commit(crashing_files(server, f"crashing {n}", marker), f"crash {n}")
            requests.post(f"{status}/sync", timeout=5)
            wait_state(f"{status}/status", sha)
            failed_before = load.failed
            load.mark()
            crashed = time.monotonic()
            marker.touch()
            wait_state(f"{status}/status", previous)
            while previous[:12] not in load.since and time.monotonic() - crashed < 60:
                time.sleep(0.01)
            times.append(load.since.get(previous[:12], time.monotonic()) - crashed)
            time.sleep(1)
            failures.append(load.failed - failed_before)
    return {"back": statistics.median(times), "failed": statistics.median(failures)}


def steady(handoff: str, tree: Path, seconds: float, threads: int) -> dict[str, float]:
    """Requests per second and latency with no update, gunicorn handed over or proxied."""
    settings = {"LIVE_PULL_HANDOFF": handoff}
    with (
        agent_on("gunicorn (sync)", settings, tree) as (_, port, _),
        loaded(port, threads) as load,
    ):
        time.sleep(seconds)
    summary = load.summary()
    return {**summary, "rate": summary["requests"] / seconds}


def raw_requests(port: int, seconds: float, answers: multiprocessing.Queue[int]) -> None:
    """One process asking GET / on a new connection each time, as fast as it can, over a
    bare socket: far cheaper than `requests`, so the server is what runs out first."""
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answered, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(request)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        answered += answer.startswith(b"HTTP/1.1 200")
    answers.put(answered)


def saturated(handoff: str, tree: Path, seconds: float, processes: int) -> float:
    """Requests per second that gunicorn, handed over or proxied, answers at most."""
    with agent_on("gunicorn (sync)", {"LIVE_PULL_HANDOFF": handoff}, tree) as (_, port, _):
        answers: multiprocessing.Queue[int] = multiprocessing.Queue()
        clients = [
            multiprocessing.Process(target=raw_requests, args=(port, seconds, answers))
            for _ in range(processes)
        ]
        for client in clients:
            client.start()
        total = sum(answers.get(timeout=seconds + 60) for _ in clients)
        for client in clients:
            client.join()
    return total / seconds


def wait_state(url: str, sha: str | None) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            status = requests.get(url, timeout=2).json()
            if status.get("state") == "running" and (sha is None or status.get("revision") == sha):
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"agent never reached {sha}")


def print_updates(updates: int, threads: int) -> None:
    print(f"\n{updates} updates under load ({threads} client threads)\n")
    print("| server | mode | requests | failed | p50 | p99 | push to first new response |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for server in SERVERS:
        for mode in MODES:
            r = updates_under_load(server, mode, updates, threads)
            print(
                f"| {server} | {mode} | {r['requests']:.0f} | {r['failed']:.0f} "
                f"| {r['p50']:.1f} ms | {r['p99']:.1f} ms | {r['first']:.2f} s |",
                flush=True,
            )


def print_rollbacks(runs: int, threads: int) -> None:
    print(f"\nA revision whose web dies within its bake, under load ({runs} times, medians)\n")
    print("| server | previous release | crash to previous answering | failed requests |")
    print("| --- | --- | --- | --- |")
    for server, how in BAKE_ROLLBACKS.items():
        r = bake_rollback(server, runs, threads)
        print(f"| {server} | {how} | {r['back']:.2f} s | {r['failed']:.0f} |", flush=True)


def ways(base: Path | None, baseline: str | None) -> dict[str, tuple[str, Path]]:
    """The rows of the proxy's cost: how gunicorn gets the socket, and which tree runs."""
    rows = {"handed the socket": ("socket", ROOT), "behind live-pull's proxy": ("proxy", ROOT)}
    if base is not None:
        rows[f"behind the proxy of {baseline}"] = ("proxy", base)
    return rows


def print_cost(seconds: float, threads: int, rounds: int, baseline: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="live-pull-cost-") as tmp:
        trees = worktree(baseline, Path(tmp)) if baseline else contextlib.nullcontext(None)
        with trees as base:
            print_cost_of(ways(base, baseline), seconds, threads, rounds)


def median_of(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def print_cost_of(rows: dict[str, tuple[str, Path]], seconds: float, threads: int,
                  rounds: int) -> None:  # fmt: skip
    print(f"\nThe proxy's cost: gunicorn, no updates, {seconds:g} s each, median of {rounds}\n")
    print("| web | requests/s | p50 | p99 |")
    print("| --- | --- | --- | --- |")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, (way, tree) in rows.items():
            runs[name].append(steady(way, tree, seconds, threads))
    medians = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()
    }
    for name, r in medians.items():
        print(f"| {name} | {r['rate']:.0f} | {r['p50']:.2f} ms | {r['p99']:.2f} ms |")
    direct = medians.pop("handed the socket")
    for name, r in medians.items():
        print(
            f"\n{name} against handed over: {100 * (r['rate'] / direct['rate'] - 1):+.1f} % "
            f"requests/s, {r['p50'] - direct['p50']:+.2f} ms median"
        )
    print(f"\nAt most: {SATURATING} processes of bare-socket clients, {seconds:g} s each\n")
    print("| web | requests/s |")
    print("| --- | --- |")
    most: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, (way, tree) in rows.items():
            most[name].append(saturated(way, tree, seconds, SATURATING))
    rates = {name: statistics.median(values) for name, values in most.items()}
    for name, rate in rates.items():
        print(f"| {name} | {rate:.0f} |")
    direct_rate = rates.pop("handed the socket")
    for name, rate in rates.items():
        print(f"\n{name} against handed over: {100 * (rate / direct_rate - 1):+.1f} %")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rollbacks", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="a commit whose proxy to compare")
    parser.add_argument("--only", choices=["updates", "rollbacks", "cost"], default=None)
    args = parser.parse_args()
    if args.only in (None, "updates"):
        print_updates(args.updates, args.threads)
    if args.only in (None, "rollbacks"):
        print_rollbacks(args.rollbacks, args.threads)
    if args.only in (None, "cost"):
        print_cost(args.seconds, args.threads, args.rounds, args.baseline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
