"""Tools of the fault suite: agents that clean up only what they started, a remote
whose faults are switched on and off, a shared agent per family, process markers.

Cleanup rule: a fixture signals only the agents it started and, after they are gone,
processes that carry its own tag in their environment (the agent's descendants, which
inherit it; double-forked ones included). It never reads a pid from a file.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import git
import pytest
import requests

from entrypoint.demo import free_port
from entrypoint.sample import APP, SampleRepo, app_files, create_sample_repo
from tests.conftest import AgentProcess, wait_until

TAG_VARIABLE = "FAULT_SUITE_TAG"  # not LIVE_PULL_*: the agent refuses unknown settings
# Small timeouts, through settings, so that every fault plays out in seconds.
FAST = {
    "LIVE_PULL_POLL_INTERVAL": "1",
    "LIVE_PULL_MAX_BACKOFF": "2",
    "LIVE_PULL_START_SECONDS": "1",
    "LIVE_PULL_START_RETRIES": "1",
    "LIVE_PULL_STOP_TIMEOUT": "2",
    "LIVE_PULL_START_TIMEOUT": "30",
    "LIVE_PULL_GIT_TIMEOUT": "20",
}
WAIT = 45.0


# -- processes ----------------------------------------------------------------------------


def marker() -> str:
    """A unique `sleep` argument: a process running `sleep <marker>` is ours."""
    return f"{random.randint(10**6, 10**7 - 1)}.{random.randint(1, 9)}"


def pids_with(text: str) -> list[int]:
    """Live (non-zombie) processes whose argv contains `text` as one argument."""
    wanted = text.encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in argv:
            found.append(int(proc.name))
    return found


def pids_tagged(tag: str) -> list[int]:
    wanted = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if wanted in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def wait_gone(text: str, timeout: float = 20.0) -> None:
    """Every process with `text` in its argv is gone (bounded wait)."""
    wait_until(
        lambda: not pids_with(text),
        timeout,
        lambda: f"no process left running `{text}`; still there: {_describe(pids_with(text))}",
    )


def _describe(pids: list[int]) -> str:
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            lines.append(f"{pid}: {argv.strip()}")
    return "; ".join(lines) or "none"


# -- agents -------------------------------------------------------------------------------


class Agent(AgentProcess):
    """The agent as a real process, with probes and facts the fault tests read."""

    combined: Path | None = None  # one file for stdout and stderr, as `> file 2>&1`

    def start(self) -> Agent:
        if self.combined is None:
            super().start()
            return self
        with open(self.combined, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "entrypoint", "run"],
                env=self.env,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )
        self.stdout_path = self.stderr_path = self.combined
        return self

    def code(self, path: str) -> int | None:
        try:
            return requests.get(self.status_url(path), timeout=5).status_code
        except requests.RequestException:
            return None

    def healthz(self) -> int | None:
        return self.code("/healthz")

    def readyz(self) -> int | None:
        return self.code("/readyz")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def failed(self) -> dict[str, str]:
        return dict(self.status().get("failed_revisions") or {})

    def checks(self) -> int:
        return int(self.status().get("checks") or 0)

    def serves(self, sha: str) -> bool:
        return f"revision {sha[:12]}" in (self.app() or "")

    def wait_failed(self, sha: str, timeout: float = WAIT) -> dict[str, Any]:
        """Wait until `sha` is recorded as failed; return the status then."""
        return dict(
            wait_until(
                lambda: sha in ((s := self.status()).get("failed_revisions") or {}) and s,
                timeout,
                lambda: f"{sha[:12]} recorded failed: {self.status()}\n{self.tail()}",
            )
        )

    def wait_error(
        self, timeout: float = WAIT, after: dict[str, Any] | None = None, **expected: Any
    ) -> dict[str, Any]:
        """Wait until /status shows a last_error (and the expected facts); with `after`
        (a status taken before the fault), an error other than the one shown then."""
        old = (after or {}).get("last_error"), (after or {}).get("last_error_at")

        def shown() -> dict[str, Any] | None:
            status = self.status()
            new = status.get("last_error"), status.get("last_error_at")
            ok = (
                status.get("last_error")
                and (after is None or new != old)
                and all(status.get(k) == v for k, v in expected.items())
            )
            return status if ok else None

        return dict(
            wait_until(shown, timeout, lambda: f"an error shown: {self.status()}\n{self.tail()}")
        )

    def tail(self, lines: int = 40) -> str:
        """The end of the agent's output (bounded: some apps write a lot)."""
        chunks = []
        for path in (self.stdout_path, self.stderr_path):
            with contextlib.suppress(OSError), open(path, "rb") as handle:
                handle.seek(max(0, path.stat().st_size - 20000))
                text = handle.read().decode(errors="replace")
                chunks.append("\n".join(text.splitlines()[-lines:]))
        return "--- agent output (tail) ---\n" + "\n---\n".join(chunks)

    def stderr_lines(self) -> list[str]:
        return self.stderr_path.read_text(errors="replace").splitlines()


class Launcher:
    """Starts agents; at the end stops them and what they left (found by a tag)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex
        self.agents: list[Agent] = []

    def agent(
        self,
        url: str,
        home: Path,
        start: bool = True,
        combined: Path | None = None,
        **extra: str,
    ) -> Agent:
        env = {
            **os.environ,
            "REPO_URL": url,
            "LIVE_PULL_HOME": str(home),
            "LIVE_PULL_STATUS_PORT": str(free_port()),
            "PORT": str(free_port()),
            TAG_VARIABLE: self.tag,
            **FAST,
            **extra,
        }
        agent = Agent(home, env, self.logs)
        agent.combined = combined
        self.agents.append(agent)
        return agent.start() if start else agent

    def close(self) -> None:
        for agent in self.agents:
            process = agent.process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for agent in self.agents:
            process = agent.process
            if process is None:
                continue
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # What the agents left behind carries our tag: their children, orphans included.
        deadline = time.monotonic() + 10
        while (left := pids_tagged(self.tag)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launched = Launcher(tmp_path / "logs")
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def module_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    launched = Launcher(tmp_path_factory.mktemp("logs"))
    yield launched
    launched.close()


# -- repositories -------------------------------------------------------------------------


def head(sample: SampleRepo) -> str:
    return git.Repo(sample.work).head.commit.hexsha


def remote_sha(sample: SampleRepo, ref: str = "HEAD") -> str | None:
    try:
        return str(git.Repo(sample.remote).commit(ref).hexsha)
    except (ValueError, git.BadName, git.GitCommandError):
        return None


def app_with(prelude: str, message: str = "hello") -> str:
    """The sample app with `prelude` run just before it starts serving."""
    app = APP.format(message=message)
    serve = "ThreadingHTTPServer(("
    return app.replace(serve, prelude.rstrip("\n") + "\n" + serve, 1)


class Prober:
    """Asks the app every few tenths of a second in the background; counts failures."""

    def __init__(self, agent: Agent, sha: str) -> None:
        self.agent = agent
        self.sha = sha
        self.asked = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        url = f"http://127.0.0.1:{self.agent.port}/"
        while not self._stop.is_set():
            try:
                text = requests.get(url, timeout=5).text
                if f"revision {self.sha[:12]}" not in text:
                    self.failures.append(f"answered {text!r}")
            except requests.RequestException as exc:
                self.failures.append(type(exc).__name__)
            self.asked += 1
            self._stop.wait(0.3)

    def assert_served(self) -> None:
        assert self.asked > 0
        assert self.failures == [], f"the app stopped serving {self.sha[:12]}: {self.failures}"


class Sampler:
    """Samples /status and /readyz in the background, for facts that last seconds."""

    def __init__(self, agent: Agent, every: float = 0.1) -> None:
        self.agent = agent
        self.every = every
        self.samples: list[tuple[dict[str, Any], int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            status = self.agent.status()
            if status:
                self.samples.append((status, self.agent.readyz()))
            self._stop.wait(self.every)

    def seen(self, predicate: Callable[[dict[str, Any], int | None], Any]) -> bool:
        return any(predicate(status, ready) for status, ready in list(self.samples))


def listening_pid(port: int) -> int:
    """The process listening on 127.0.0.1:`port` (found through /proc)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            inode = fields[9]
    assert inode is not None, f"nothing listens on port {port}"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == f"socket:[{inode}]":
                    return int(proc.name)
    raise AssertionError(f"no process holds the socket of port {port}")


# -- a shared agent per family ----------------------------------------------------------


class Family:
    """One agent shared by a family's scenarios, which are sequential by nature.

    `ready()` is each scenario's precondition: the agent alive and serving the
    remote's newest good commit. If a scenario before left it otherwise (it failed),
    a fresh agent on a fresh home takes over, so one failure does not cascade.
    """

    def __init__(
        self,
        root: Path,
        launcher: Launcher,
        *,
        url: Callable[[SampleRepo], str] = lambda sample: sample.url,
        good: Callable[[str], dict[str, str]] = app_files,
        make_home: Callable[[Path], Path] = lambda path: path,
        **env: str,
    ) -> None:
        self.root = root
        self.launcher = launcher
        self.sample = create_sample_repo(root / "remote")
        self.url = url(self.sample)
        self.good_files = good
        self.make_home = make_home
        self.env = env
        self.generation = 0
        self.counter = 0
        self.agent: Agent | None = None
        self.on_restart: list[Callable[[Family], None]] = []
        self.notes: dict[str, Any] = {}  # what a family's scenarios check across faults

    @property
    def home(self) -> Path:
        assert self.agent is not None
        return self.agent.home

    def good(self, label: str = "good") -> str:
        """Push a new good commit; return its sha."""
        self.counter += 1
        return self.sample.commit(self.good_files(f"{label} {self.counter}"), label)

    def commit(self, files: dict[str, str], label: str) -> str:
        self.counter += 1
        return self.sample.commit(files, f"{label} {self.counter}")

    def ready(self) -> Agent:
        agent = self.agent
        if agent is not None and agent.alive() and self._settled(agent):
            return agent
        return self.restart()

    def restart(self) -> Agent:
        """A fresh agent on a fresh home, serving a new good commit."""
        if self.agent is not None and self.agent.alive():
            self.agent.stop(timeout=30)
        self.generation += 1
        home = self.make_home(self.root / f"home-{self.generation}")
        self._reset_work_clone()
        sha = self.good("fresh start")
        self.agent = self.launcher.agent(self.url, home, **self.env)
        self.agent.wait_serving(sha, timeout=90)
        self.agent.wait_status(revision=sha, ready=True)
        for hook in self.on_restart:
            hook(self)
        return self.agent

    def stop(self) -> None:
        """Stop the shared agent cleanly (SIGTERM, exit 0), keeping its home."""
        assert self.agent is not None
        code, _ = self.agent.stop(timeout=30)
        assert code == 0, self.agent.tail()

    def launch(self, **env: str) -> Agent:
        """A new agent on the same home (after stop, or after the old one was killed)."""
        assert self.agent is not None
        self.agent = self.launcher.agent(self.url, self.agent.home, **{**self.env, **env})
        return self.agent

    def _reset_work_clone(self) -> None:
        """Put `main` back as the default branch the work clone pushes."""
        repo = git.Repo(self.sample.work)
        with contextlib.suppress(git.GitCommandError):
            repo.git.checkout("main")
        git.Repo(self.sample.remote).git.symbolic_ref("HEAD", "refs/heads/main")

    def _settled(self, agent: Agent, timeout: float = 30.0) -> bool:
        """Serving the remote's head (a new good commit if the head failed)."""
        sha = remote_sha(self.sample)
        if sha is None or sha in agent.failed():
            sha = self.good("settle")
        try:
            wait_until(
                lambda: (
                    (s := agent.status()).get("revision") == sha
                    and s.get("ready")
                    and agent.serves(sha)
                ),
                timeout,
            )
        except AssertionError:
            return False
        return True


# -- a remote with switchable faults ---------------------------------------------------------

FRONT_MODES = ("up", "refused", "blackhole", "reset")
BACKEND_MODES = ("ok", "http500", "hang_fetch", "hold")


class FaultyRemote:
    """Smart HTTP on 127.0.0.1 (git http-backend), with faults switched at will.

    A TCP front owns the port: `up` relays to the HTTP backend, `refused` leaves the
    port bound but not listening (connections are refused, the port stays ours),
    `blackhole` accepts and never answers, `reset` accepts and resets. The backend
    answers `http500`, hangs every fetch (`hang_fetch`: refs are still advertised),
    or holds every request until the mode changes (`hold`).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mode = "up"
        self.requests: list[str] = []  # one kind per request: info, ls-refs, fetch, ...
        self.held = 0  # requests waiting in `hold` right now
        self._changed = threading.Condition()
        self._closing = False
        self._backend = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._backend.daemon_threads = True
        self._backend_port = int(self._backend.server_address[1])
        # The port is held by a bound socket that never listens; listeners share it.
        self._reserve = socket.socket()
        self._reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._reserve.bind(("127.0.0.1", 0))
        self.port = int(self._reserve.getsockname()[1])
        self._listener: socket.socket | None = None
        self._blackholed: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> FaultyRemote:
        self._spawn(self._backend.serve_forever)
        self._listen()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        self.set("up")
        self._unlisten()
        self._backend.shutdown()
        self._backend.server_close()
        self._reserve.close()

    def set(self, mode: str) -> None:
        assert mode in FRONT_MODES + BACKEND_MODES, mode
        with self._changed:
            previous, self.mode = self.mode, mode
            self._changed.notify_all()
        if mode == "refused":
            self._unlisten()
        elif previous == "refused":
            self._listen()
        if previous == "blackhole" and mode != "blackhole":
            for conn in self._blackholed:
                with contextlib.suppress(OSError):
                    conn.close()
            self._blackholed.clear()

    def count(self, kind: str) -> int:
        return sum(1 for seen in list(self.requests) if seen == kind)

    # -- the front ------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._spawn(lambda: self._accept(listener))

    def _unlisten(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            mode = self.mode
            if mode == "blackhole":
                self._blackholed.append(conn)  # accepted, never read, never answered
            elif mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                conn.close()
            else:
                self._spawn(lambda c=conn: self._relay(c))

    def _relay(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self._backend_port), timeout=10)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        self._spawn(lambda: _pipe(upstream, conn))
        _pipe(conn, upstream)

    def _spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()

    # -- the backend ----------------------------------------------------------------

    def _wait_while(self, mode: str) -> None:
        with self._changed:
            while self.mode == mode and not self._closing:
                self._changed.wait(0.5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        remote = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve(b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._serve(self.rfile.read(length) if length else b"")

            def _serve(self, body: bytes) -> None:
                kind = _kind(self.command, body)
                remote.requests.append(kind)
                mode = remote.mode
                if mode == "http500":
                    self._answer(500, b"internal error\n")
                    return
                if mode == "hang_fetch" and kind == "fetch":
                    remote._wait_while("hang_fetch")
                    self.close_connection = True
                    return  # never answered
                if mode == "hold":
                    with remote._changed:
                        remote.held += 1
                    try:
                        remote._wait_while("hold")
                    finally:
                        with remote._changed:
                            remote.held -= 1
                self._backend(body)

            def _backend(self, body: bytes) -> None:
                path, _, query = self.path.partition("?")
                env = {
                    "PATH": os.environ.get("PATH", os.defpath),
                    "GIT_PROJECT_ROOT": str(remote.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "REQUEST_METHOD": self.command,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "REMOTE_USER": "tester",
                    "REMOTE_ADDR": "127.0.0.1",
                }
                result = subprocess.run(
                    ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60
                )
                head, _, payload = result.stdout.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode(errors="replace").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self._answer(status, payload, headers)

            def _answer(
                self, status: int, payload: bytes, headers: list[tuple[str, str]] | None = None
            ) -> None:
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    for name, value in headers or [("Content-Type", "text/plain")]:
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def _kind(method: str, body: bytes) -> str:
    if method == "GET":
        return "info"
    if b"command=fetch" in body or b"want " in body:
        return "fetch"
    if b"command=ls-refs" in body:
        return "ls-refs"
    return "other"


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


# -- filesystem faults -----------------------------------------------------------------------


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def run_quiet(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` read-only for everyone (root included): a read-only bind mount over it."""
    done = run_quiet("mount", "--bind", str(path), str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        remount = run_quiet("mount", "-o", "remount,bind,ro", str(path))
        assert remount.returncode == 0, remount.stderr
        yield
    finally:
        wait_until(lambda: run_quiet("umount", str(path)).returncode == 0, 30, f"umount {path}")


class Mounts:
    """tmpfs mounts made for a test, unmounted at the end (lazily if still busy)."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def tmpfs(self, path: Path, size: str = "64m") -> Path:
        """`path` as a small tmpfs where that is possible, else a plain directory."""
        path.mkdir(parents=True, exist_ok=True)
        if can_mount():
            done = run_quiet("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
            if done.returncode == 0:
                self.points.append(path)
        return path

    def close(self) -> None:
        for path in reversed(self.points):
            deadline = time.monotonic() + 10
            while run_quiet("umount", str(path)).returncode != 0:
                if time.monotonic() > deadline:
                    run_quiet("umount", "-l", str(path))
                    break
                time.sleep(0.2)
        self.points.clear()


@contextlib.contextmanager
def remote_away(sample: SampleRepo) -> Iterator[None]:
    """The file:// remote gone (its directory moved away), back at the end."""
    aside = sample.remote.with_name(sample.remote.name + ".away")
    sample.remote.rename(aside)
    try:
        yield
    finally:
        aside.rename(sample.remote)


@contextlib.contextmanager
def disk_full(home: Path) -> Iterator[None]:
    """The filesystem of `home` (a tmpfs) full, and kept full.

    Every file already there is hard-linked aside first, so what the agent deletes
    frees nothing; a thread takes back at once whatever space still turns up.
    """
    pins = home / ".pins"
    pins.mkdir()
    number = 0
    for directory, _, names in os.walk(home):
        if Path(directory) == pins:
            continue
        for name in names:
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                number += 1
                with contextlib.suppress(OSError):
                    os.link(path, pins / str(number))
    stop = threading.Event()
    fillers = [home / ".filler-big", home / ".filler-top"]
    big = os.open(fillers[0], os.O_WRONLY | os.O_CREAT, 0o600)
    top = os.open(fillers[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def fill(fd: int, chunk: int) -> None:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(fd, b"\0" * chunk)

    fill(big, 1 << 20)
    fill(top, 4096)

    def keep_full() -> None:
        while not stop.wait(0.01):
            fill(top, 4096)

    thread = threading.Thread(target=keep_full, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        os.close(big)
        os.close(top)
        for path in fillers:
            path.unlink(missing_ok=True)
        shutil.rmtree(pins, ignore_errors=True)


# -- long work: a first install and a fetch that hang past the heartbeat window -------------

# Well past any heartbeat window the agent may use while idle (60 s).
LONG_WORK_SECONDS = 75.0
HEARTBEAT_WINDOW = 60.0
HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "long_work: checks work that runs in the background for over a minute"
    )


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """The long-work scenarios go last among the fault tests: their work starts with
    the first fault test and runs in the background while the others run."""
    slow = [item for item in items if _is_fault(item) and item.get_closest_marker("long_work")]
    if not slow:
        return
    rest = [item for item in items if item not in slow]
    last = max((i for i, item in enumerate(rest) if _is_fault(item)), default=len(rest) - 1)
    items[:] = rest[: last + 1] + slow + rest[last + 1 :]


def _is_fault(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).parents


class Watched:
    """An agent doing long work, its /healthz and /readyz sampled twice a second."""

    def __init__(self, agent: Agent, launcher: Launcher) -> None:
        self.agent = agent
        self.launcher = launcher
        self.since = 0.0
        self.samples: list[tuple[float, int | None, int | None]] = []

    def sample(self) -> None:
        if self.agent.alive():
            self.samples.append((time.monotonic(), self.agent.healthz(), self.agent.readyz()))

    def wait_long_work(self) -> list[tuple[float, int | None, int | None]]:
        """Wait until the work has lasted LONG_WORK_SECONDS; return its samples."""
        wait_until(
            lambda: time.monotonic() - self.since > LONG_WORK_SECONDS,
            LONG_WORK_SECONDS + 30,
            "the long work to outlast the heartbeat window",
        )
        samples = [s for s in list(self.samples) if s[0] >= self.since]
        times = [self.since] + [t for t, _, _ in samples]
        assert max(b - a for a, b in itertools.pairwise(times)) < 10, "sampling gap"
        assert times[-1] - self.since > HEARTBEAT_WINDOW + 5, "nothing sampled past the window"
        return samples


class SlowWorld:
    """Two agents at long work: a first install that sleeps until its gate goes, and a
    serving agent whose next fetch hangs (git timeout 120 s)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.error: str | None = None
        self.stack = contextlib.ExitStack()
        self.stop = threading.Event()
        self.install_launcher = Launcher(root / "install-logs")
        self.fetch_launcher = Launcher(root / "fetch-logs")
        self.install_gate = root / "slow-install"
        self.install_marker = marker()

    def ready(self) -> SlowWorld:
        assert self.error is None, f"the long work could not be set up:\n{self.error}"
        return self

    def start(self) -> None:
        try:
            self._start()
        except Exception:
            import traceback

            self.error = traceback.format_exc()

    def _start(self) -> None:
        root = self.root
        self.install_gate.write_text("")
        command = (
            f'if [ -e {self.install_gate} ]; then touch "$LIVE_PULL_ENV/started"; '
            f"sleep {self.install_marker}; fi; "
            'echo installed > "$LIVE_PULL_ENV/done"'
        )
        installed = create_sample_repo(root / "install-remote")
        self.install_sample = installed.commit({"package-lock.json": "v1"}, "install command")
        self.install = Watched(
            self.install_launcher.agent(
                installed.url,
                root / "install-home",
                LIVE_PULL_INSTALL_COMMAND=command,
                LIVE_PULL_LOCKFILE="package-lock.json",
            ),
            self.install_launcher,
        )
        self.remote = self.stack.enter_context(FaultyRemote(root / "fetch-remote"))
        fetched = create_sample_repo(root / "fetch-remote")
        self.sample_a = head(fetched)
        agent = self.fetch_launcher.agent(
            self.remote.url(fetched.remote.name),
            root / "fetch-home",
            LIVE_PULL_GIT_TIMEOUT="120",
        )
        self.fetch = Watched(agent, self.fetch_launcher)
        agent.wait_serving(self.sample_a)
        self.remote.set("hang_fetch")
        self.sample_b = fetched.commit(app_files("never fetched"), "hangs")
        wait_until(lambda: self.remote.count("fetch") >= 1, what="the fetch hanging")
        self.fetch.since = time.monotonic()
        wait_until(lambda: pids_with(self.install_marker), what="the install under way")
        self.install.since = time.monotonic()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.stop.wait(0.5):
            self.install.sample()
            self.fetch.sample()

    def close(self) -> None:
        self.stop.set()
        self.install_launcher.close()
        self.fetch_launcher.close()
        self.stack.close()


@pytest.fixture(scope="session")
def slow_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowWorld]:
    world = SlowWorld(tmp_path_factory.mktemp("slow"))
    world.start()
    yield world
    world.close()


@pytest.fixture(autouse=True)
def _long_work_in_background(request: pytest.FixtureRequest) -> None:
    """The first fault test starts the long work that the last ones check."""
    if any(item.get_closest_marker("long_work") for item in request.session.items):
        request.getfixturevalue("slow_world")
