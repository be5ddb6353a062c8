"""Updates under load: failed requests and latency while N commits go live, and the
time from push to the first response from the new revision.

live-pull's start-first rollover (LIVE_PULL_LISTEN, gunicorn on the shared socket)
against the naive stop-then-start restart of the same app (gunicorn binding PORT
itself, live-pull without LIVE_PULL_LISTEN), in the same run.

    .venv/bin/python bench/rollover.py [--updates 10] [--threads 4]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entrypoint.demo import free_port
from entrypoint.sample import SampleRepo, create_sample_repo

WSGI = """\
import os
REVISION = os.environ.get("LIVE_PULL_REVISION", "unknown")[:12]
def app(environ, start_response):
    body = f"{MESSAGE} from revision {REVISION}\\n".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""
BIND = {
    "rollover": "--bind fd://0",
    "stop-then-start": "--bind 127.0.0.1:$PORT",
}


def files(mode: str, message: str) -> dict[str, str]:
    line = (
        f"web: {sys.executable} -m gunicorn {BIND[mode]} --workers 2 --graceful-timeout 5 app:app\n"
    )
    return {"app.py": f"MESSAGE = {message!r}\n" + WSGI, "Procfile": line}


class Load:
    def __init__(self, url: str, threads: int) -> None:
        self.url, self.threads = url, threads
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failed = 0
        self.seen: dict[str, float] = {}  # revision -> first time it answered
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
                else:
                    self.failed += 1


def run(mode: str, updates: int, threads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="live-pull-rollover-") as tmp:
        sample: SampleRepo = create_sample_repo(Path(tmp) / "remote")
        sample.commit(files(mode, "v0"), "v0")
        port, status_port = free_port(), free_port()
        env = {
            **os.environ,
            "REPO_URL": sample.url,
            "LIVE_PULL_HOME": f"{tmp}/home",
            "LIVE_PULL_POLL_INTERVAL": "0",
            "LIVE_PULL_STATUS_PORT": str(status_port),
            "LIVE_PULL_LOG_LEVEL": "WARNING",
            "PORT": str(port),
        }
        if mode == "rollover":
            env["LIVE_PULL_LISTEN"] = f"tcp://127.0.0.1:{port}"
        agent = subprocess.Popen(
            [sys.executable, "-m", "entrypoint", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        status = f"http://127.0.0.1:{status_port}/status"
        try:
            wait_state(status, None)
            load = Load(f"http://127.0.0.1:{port}/", threads)
            workers = [threading.Thread(target=load.worker) for _ in range(threads)]
            for worker in workers:
                worker.start()
            to_first_response = []
            for n in range(1, updates + 1):
                sha = sample.commit(files(mode, f"v{n}"), f"v{n}")
                pushed = time.monotonic()
                requests.post(f"http://127.0.0.1:{status_port}/sync", timeout=5)
                wait_state(status, sha)
                while sha[:12] not in load.seen and time.monotonic() - pushed < 60:
                    time.sleep(0.01)
                to_first_response.append(load.seen.get(sha[:12], time.monotonic()) - pushed)
            load.stop.set()
            for worker in workers:
                worker.join()
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
    latencies = sorted(load.latencies)
    return {
        "requests": len(latencies) + load.failed,
        "failed": load.failed,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        "first": statistics.median(to_first_response),
    }


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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    results = {mode: run(mode, args.updates, args.threads) for mode in BIND}
    print(
        f"\n{args.updates} updates under load ({args.threads} client threads), gunicorn 2 workers\n"
    )
    print("| mode | requests | failed | p50 | p99 | push to first new response (median) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode, r in results.items():
        print(
            f"| {mode} | {r['requests']:.0f} | {r['failed']:.0f} | {r['p50']:.1f} ms "
            f"| {r['p99']:.1f} ms | {r['first']:.2f} s |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
