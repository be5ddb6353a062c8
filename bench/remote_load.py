"""The load a fleet of replicas puts on the git remote, from a measured per-check cost.

A smart-HTTP git server on 127.0.0.1 (tests/git_http.py: `git http-backend` behind
http.server, in a process of its own) serves a sample repository of realistic size.
Each HTTP request is counted: bytes in (request line, headers, body) and out (status,
headers, body), and the CPU of the git processes that answered it (`git http-backend`
and what it runs: upload-pack, pack-objects).

Measured through the agent's own Repository, as the agent does it (default branch,
LIVE_PULL_DEPTH=1): a check that finds nothing new (resolve), and a check plus the
fetch after a push of a small commit; against the naive way in the same run, a cron
`git pull` in a full clone. Then the load of 1 to 1,000 replicas per push and per hour,
polling every 30 s (the default) without push fan-out, and every 300 s with it.

    .venv/bin/python bench/remote_load.py [--runs 10] [--commits 400] [--pushes-per-hour 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entrypoint.auth import AuthSettings, GitAuth
from entrypoint.config import Settings
from entrypoint.credentials import parse_repo_url
from entrypoint.repository import Repository
from entrypoint.sample import SampleRepo

REPLICAS = (1, 10, 100, 1000)
FAN_OUT_INTERVAL = 300.0
PULL_REFS = 500
# The naive git's setup: none of this machine's configuration, never a prompt.
CLEAN_GIT = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}
AUTHOR = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@live-pull.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@live-pull.invalid",
}
VOCABULARY = (
    "def return self import from class if else for in while with as try except raise "
    "None True False value items config request response user data path name index "
    "result error status count total cache session handler update render template "
    "query filter order limit offset payload token header body json text line field"
)
WORDS = VOCABULARY.split()


# -- the server (its own process) ----------------------------------------------------


def serve(root: Path) -> None:
    """Serve `root` over smart HTTP; on each line "take" on stdin, answer one line of
    JSON: the requests handled since the last take."""
    import tests.git_http as git_http

    git_http.all_argv = lambda: []  # the tests' argv snapshot: not wanted in a benchmark
    server = git_http.GitHttpServer(root)
    lock = threading.Lock()
    done: list[dict[str, Any]] = []
    in_flight = [0]

    class Reader:
        def __init__(self, raw: Any) -> None:
            self.raw, self.count, self.body = raw, 0, b""

        def readline(self, *args: Any) -> bytes:
            data: bytes = self.raw.readline(*args)
            self.count += len(data)
            return data

        def read(self, *args: Any) -> bytes:
            data: bytes = self.raw.read(*args)
            self.count += len(data)
            self.body = self.body or data[:4096]
            return data

        def __getattr__(self, name: str) -> Any:
            return getattr(self.raw, name)

    class Writer:
        def __init__(self, raw: Any) -> None:
            self.raw, self.count = raw, 0

        def write(self, data: bytes) -> Any:
            self.count += len(data)
            return self.raw.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.raw, name)

    base = server._server.RequestHandlerClass

    class Counting(base):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            super().setup()
            with lock:
                in_flight[0] += 1
            self.rfile = Reader(self.rfile)
            self.wfile = Writer(self.wfile)

        def handle(self) -> None:
            try:
                super().handle()
            finally:
                headers = getattr(self, "headers", None)
                encoding = headers.get("Content-Encoding", "") if headers else ""
                what = describe(
                    getattr(self, "command", ""),
                    getattr(self, "path", ""),
                    self.rfile.body,
                    encoding,
                )
                record = {
                    "what": what,
                    "in": self.rfile.count,
                    "out": self.wfile.count,
                }
                with lock:
                    done.append(record)
                    in_flight[0] -= 1

    server._server.RequestHandlerClass = Counting
    last = [children_cpu()]
    with server:
        print(server.base_url, flush=True)
        for line in sys.stdin:
            if line.strip() != "take":
                continue
            deadline = time.monotonic() + 10
            while in_flight[0] and time.monotonic() < deadline:
                time.sleep(0.001)
            with lock:
                taken = list(done)
                done.clear()
            # The CPU of every git process that ended since the last take, measured once
            # for the lot: per-request figures would count twice what overlapped.
            now = children_cpu()
            print(json.dumps({"requests": taken, "cpu": now - last[0]}), flush=True)
            last[0] = now


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def describe(method: str, path: str, body: bytes, encoding: str) -> str:
    """A request as one word: `refs` (the advertisement), or the protocol v2 command."""
    if method == "GET":
        return "refs" if "/info/refs" in path else f"GET {path}"
    if "gzip" in encoding:
        try:
            body = zlib.decompressobj(wbits=31).decompress(body)
        except zlib.error:
            return "POST (gzip)"
    # The first pkt-line: 4 hex digits of length, then "command=<name>" (v2).
    try:
        length = int(body[:4], 16)
    except ValueError:
        return "POST"
    first = body[4:length].decode(errors="replace").strip()
    return first.removeprefix("command=") if first.startswith("command=") else "upload-pack (v0)"


class Server:
    def __init__(self, root: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.base_url = self.process.stdout.readline().strip()

    def take(self) -> dict[str, Any]:
        """The requests since the last take, and the CPU their git processes used."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("take\n")
        self.process.stdin.flush()
        taken: dict[str, Any] = json.loads(self.process.stdout.readline())
        return taken

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


# -- the sample repository -------------------------------------------------------------


def source_file(rng: random.Random, lines: int) -> list[str]:
    return [
        "    " * rng.randint(0, 3) + " ".join(rng.choices(WORDS, k=rng.randint(3, 12))) + "\n"
        for _ in range(lines)
    ]


def blob(content: bytes) -> bytes:
    return b"data %d\n" % len(content) + content + b"\n"


def history(files: int, commits: int, branches: int, tags: int, seed: int = 14) -> bytes:
    """A fast-import stream: `files` source files and two binary assets, then `commits`
    commits that each change a few lines of one to three files; branches and annotated
    tags on older commits."""
    rng = random.Random(seed)
    tree = {
        f"src/pkg{n % 12}/module{n}.py": source_file(rng, rng.randint(40, 400))
        for n in range(files)
    }
    out = [b"reset refs/heads/main\n"]
    when = 1_700_000_000
    for mark in range(1, commits + 1):
        when += rng.randint(600, 36_000)
        if mark == 1:
            changed = list(tree)
        else:
            changed = rng.sample(list(tree), rng.randint(1, 3))
            for name in changed:
                lines = tree[name]
                for _ in range(rng.randint(1, 8)):
                    lines[rng.randrange(len(lines))] = source_file(rng, 1)[0]
                if rng.random() < 0.3:
                    lines.extend(source_file(rng, rng.randint(1, 20)))
        message = f"change {mark}: " + " ".join(rng.choices(WORDS, k=6)) + "\n"
        out.append(b"commit refs/heads/main\nmark :%d\n" % mark)
        out.append(b"committer bench <bench@live-pull.invalid> %d +0000\n" % when)
        out.append(blob(message.encode()))
        for name in changed:
            out.append(f"M 100644 inline {name}\n".encode() + blob("".join(tree[name]).encode()))
        if mark == 1:
            for name, size in (("static/logo.png", 300_000), ("static/font.woff2", 900_000)):
                out.append(f"M 100644 inline {name}\n".encode() + blob(rng.randbytes(size)))
            out.append(b"M 100644 inline Procfile\n" + blob(b"web: python app.py\n"))
    for n in range(branches):
        out.append(b"reset refs/heads/feature-%d\nfrom :%d\n\n" % (n, rng.randint(1, commits)))
    for n in range(tags):
        mark = max(1, commits * (n + 1) // (tags + 1))
        out.append(b"tag v1.%d.0\nfrom :%d\n" % (n, mark))
        out.append(b"tagger bench <bench@live-pull.invalid> %d +0000\n" % when)
        out.append(blob(b"release v1.%d.0\n" % n))
    return b"".join(out)


def git(*args: str, cwd: Path | None = None, data: bytes | None = None) -> str:
    env = {**os.environ, **CLEAN_GIT, **AUTHOR}
    result = subprocess.run(["git", *args], cwd=cwd, env=env, input=data, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed: {result.stderr.decode().strip()}")
    return result.stdout.decode()


def make_sample(root: Path, commits: int) -> tuple[SampleRepo, dict[str, Any]]:
    """The remote (bare, packed with bitmaps, as a host keeps it) and a working clone
    that pushes to it over the file system, so pushes are not counted as requests."""
    remote, work = root / "app.git", root / "app"
    git("init", "-q", "--bare", "--initial-branch=main", str(remote))
    git("fast-import", "--quiet", cwd=remote, data=history(300, commits, 20, 50))
    git("repack", "-a", "-d", "-b", "-q", cwd=remote)
    git("pack-refs", "--all", cwd=remote)
    git("clone", "-q", str(remote), str(work))
    size = sum(p.stat().st_size for p in (remote / "objects" / "pack").glob("*.pack"))
    files = len(git("ls-tree", "-r", "--name-only", "main", cwd=remote).splitlines())
    refs = len(git("for-each-ref", cwd=remote).splitlines())
    return SampleRepo(remote, work), {
        "commits": commits,
        "files": files,
        "pack": size,
        "refs": refs,
    }


# -- the measurements ------------------------------------------------------------------


@dataclass
class Cost:
    """One operation's cost on the remote (and the client's wall time)."""

    requests: int
    sent: int  # bytes to the server
    received: int  # bytes from the server
    cpu: float  # the git processes' CPU on the server
    wall: float  # the client's
    records: list[dict[str, Any]]  # each request's (of one run, for a median)

    @classmethod
    def of(cls, taken: dict[str, Any], wall: float) -> Cost:
        records = taken["requests"]
        return cls(
            len(records),
            sum(r["in"] for r in records),
            sum(r["out"] for r in records),
            taken["cpu"],
            wall,
            records,
        )


def median(costs: list[Cost]) -> Cost:
    def mid(field: str) -> Any:
        values = sorted(getattr(c, field) for c in costs)
        middle = statistics.median(values)
        return round(middle) if isinstance(values[0], int) else middle

    return Cost(
        mid("requests"), mid("sent"), mid("received"), mid("cpu"), mid("wall"), costs[-1].records
    )


def timed(server: Server, action: Any) -> Cost:
    server.take()  # nothing else counted
    started = time.monotonic()
    action()
    wall = time.monotonic() - started
    return Cost.of(server.take(), wall)


def push(sample: SampleRepo, n: int) -> str:
    """A small commit: a few lines of one file."""
    return sample.commit(
        {"src/settings.py": f"RELEASE = {n}\nFEATURE_FLAGS = ['x{n}']\n"}, f"bump {n}"
    )


def measure(server: Server, sample: SampleRepo, root: Path, runs: int) -> dict[str, list[Cost]]:
    url = f"{server.base_url}/{sample.remote.name}"
    home = root / "agent"
    home.mkdir()
    repo = Repository(
        home / "repo",
        parse_repo_url(url),
        depth=Settings.model_fields["depth"].default,
        timeout=60,
        auth=GitAuth(AuthSettings(), home),
    )
    naive = root / "naive"
    env = {**os.environ, **CLEAN_GIT, "HOME": str(root)}

    def pull() -> None:
        subprocess.run(["git", "pull", "--ff-only", "-q"], cwd=naive, env=env, check=True)

    def agent_first() -> None:
        repo.open()
        repo.fetch(repo.resolve(None))

    def clone() -> None:
        subprocess.run(["git", "clone", "-q", url, str(naive)], env=env, check=True)

    results: dict[str, list[Cost]] = {
        "first": [timed(server, agent_first)],
        "clone": [timed(server, clone)],
        "check": [],
        "update": [],
        "pull": [],
        "pull-update": [],
    }
    seen = {"sha": ""}

    def check_and_fetch() -> None:
        remote = repo.resolve(None)
        seen["sha"] = repo.fetch(remote)

    for n in range(runs):
        results["check"].append(timed(server, lambda: repo.resolve(None)))
        results["pull"].append(timed(server, pull))
        sha = push(sample, n)
        results["update"].append(timed(server, check_and_fetch))
        assert seen["sha"] == sha, "the agent did not fetch the pushed commit"
        results["pull-update"].append(timed(server, pull))
        assert git("rev-parse", "HEAD", cwd=naive).strip() == sha
    # A host that shows pull requests as refs (refs/pull/<n>/head): more refs, same branch.
    commits = git("rev-list", "main", cwd=sample.remote).split()
    lines = "".join(
        f"create refs/pull/{n}/head {commits[n % len(commits)]}\n" for n in range(PULL_REFS)
    )
    git("update-ref", "--stdin", cwd=sample.remote, data=lines.encode())
    results["check-prs"] = [timed(server, lambda: repo.resolve(None)) for _ in range(runs)]
    results["pull-prs"] = [timed(server, pull) for _ in range(runs)]
    return results


# -- the tables ------------------------------------------------------------------------


def size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def count(n: float) -> str:
    return f"{n:,.0f}"


def rate(per_second: float) -> str:
    return f"{per_second:,.1f}" if per_second >= 1 else f"{per_second:.2f}"


def cpu(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:,.1f} s"


def per_operation(rows: list[tuple[str, Cost]]) -> None:
    print(
        "| operation | requests | bytes to remote | bytes from remote | server CPU | client wall |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for label, c in rows:
        print(
            f"| {label} | {c.requests} | {size(c.sent)} | {size(c.received)} | "
            f"{cpu(c.cpu)} | {c.wall * 1000:.0f} ms |"
        )


def fleet(check: Cost, update: Cost, pushes: float, default_interval: float) -> None:
    """Per push: each replica does one check plus fetch. Per hour: each replica's timed
    checks, plus the pushes; without fan-out a push is found by a timed check (its fetch
    is the extra), with fan-out the store wakes every replica for one more check."""
    fetch = Cost(
        update.requests - check.requests,
        update.sent - check.sent,
        update.received - check.received,
        update.cpu - check.cpu,
        0,
        [],
    )
    scenarios = (
        (f"poll {default_interval:.0f} s, no fan-out", default_interval, fetch),
        (f"poll {FAN_OUT_INTERVAL:.0f} s + fan-out", FAN_OUT_INTERVAL, update),
    )
    print(
        "| replicas | mode | requests/push | bytes/push | requests/h | req/s | bytes/h | "
        "server CPU/h |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for replicas in REPLICAS:
        for label, interval, extra in scenarios:
            checks = 3600 / interval
            requests_h = replicas * (checks * check.requests + pushes * extra.requests)
            bytes_h = replicas * (
                checks * (check.sent + check.received) + pushes * (extra.sent + extra.received)
            )
            cpu_h = replicas * (checks * check.cpu + pushes * extra.cpu)
            print(
                f"| {count(replicas)} | {label} | {count(replicas * update.requests)} | "
                f"{size(replicas * (update.sent + update.received))} | {count(requests_h)} | "
                f"{rate(requests_h / 3600)} | {size(bytes_h)} | {cpu(cpu_h)} |"
            )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--commits", type=int, default=400)
    parser.add_argument("--pushes-per-hour", type=float, default=10)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve))
        return 0
    default_interval = Settings.model_fields["poll_interval"].default
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="live-pull-remote-load-") as tmp:
        root = Path(tmp)
        sample, facts = make_sample(root / "remote", args.commits)
        server = Server(root / "remote")
        try:
            results = measure(server, sample, root, args.runs)
        finally:
            server.close()
    m = {name: median(costs) for name, costs in results.items()}
    git_version = git("--version").strip()
    print(
        f"Sample repository: {facts['commits']} commits, {facts['files']} files, "
        f"{facts['refs']} refs (20 branches, 50 annotated tags), pack {size(facts['pack'])}; "
        f"{git_version} on both ends, smart HTTP, protocol v2; medians of {args.runs}."
    )
    print()
    per_operation(
        [
            ("live-pull check, nothing new (`Repository.resolve`)", m["check"]),
            ("live-pull check + fetch after a push (depth 1)", m["update"]),
            ("naive `git pull` in a clone, nothing new", m["pull"]),
            ("naive `git pull` after a push", m["pull-update"]),
            ("first start: live-pull resolve + fetch (depth 1)", m["first"]),
            ("first start: naive `git clone`", m["clone"]),
            (f"live-pull check, nothing new, {PULL_REFS} more refs (refs/pull/*)", m["check-prs"]),
            (f"naive `git pull`, nothing new, {PULL_REFS} more refs (refs/pull/*)", m["pull-prs"]),
        ]
    )
    print()
    for label, key in (
        ("live-pull check", "check"),
        ("live-pull check + fetch", "update"),
        ("naive git pull", "pull"),
        ("naive git pull after a push", "pull-update"),
    ):
        steps = ", ".join(f"{r['what']} {size(r['in'])}/{size(r['out'])}" for r in m[key].records)
        print(f"- {label}: {steps} (to/from the remote)")
    print()
    print(
        f"Fleet, live-pull: {args.pushes_per_hour:g} pushes an hour; every replica fetches "
        f"each push; bytes = to + from the remote (HTTP, no TLS); without fan-out a push is "
        f"found by the next poll (deploy latency up to {default_interval:.0f} s), with fan-out "
        f"one webhook wakes every replica for one more check + fetch (latency: seconds)."
    )
    print()
    fleet(m["check"], m["update"], args.pushes_per_hour, default_interval)
    print()
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
