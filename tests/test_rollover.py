"""Zero-downtime updates on a socket supervisord holds (LIVE_PULL_LISTEN): under load,
updates and broken revisions alike fail no request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from entrypoint.processes import alive
from entrypoint.sample import APP, SampleRepo
from tests.conftest import AgentProcess, wait_until

Factory = Callable[..., AgentProcess]

FD_APP = '''\
"""Serves on the socket it is handed as fd 0; drains in-flight requests on SIGTERM."""
import os, signal, socket, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MESSAGE = {message!r}
REVISION = os.environ.get("LIVE_PULL_REVISION", "unknown")[:12]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(0.01)
        if self.path == "/healthz" and MESSAGE == "sick":
            self.send_error(500)
            return
        body = f"{{MESSAGE}} from revision {{REVISION}}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=0)
server.daemon_threads = False
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever()
server.server_close()
'''


def fd_files(message: str, procfile: str = "web: python app.py\n") -> dict[str, str]:
    return {"app.py": FD_APP.format(message=message), "Procfile": procfile}


class Load:
    """Client threads on 127.0.0.1, bounded in count and time, counting every outcome."""

    def __init__(self, url: str, threads: int = 4, limit: float = 300.0) -> None:
        self.url = url
        self.threads = threads
        self.deadline = time.monotonic() + limit
        self.stop = threading.Event()
        self.ok: Counter[str] = Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                response = requests.get(self.url, timeout=10)
                outcome = response.text.strip() if response.status_code == 200 else None
                error = None if outcome else f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                outcome, error = None, f"{time.time():.3f} {type(exc).__name__}: {exc}"[:300]
            with self.lock:
                if outcome:
                    self.ok[outcome.rsplit(" ", 1)[-1]] += 1
                else:
                    self.failures.append(str(error))


@contextmanager
def load(url: str) -> Iterator[Load]:
    generator = Load(url)
    workers = [threading.Thread(target=generator.run) for _ in range(generator.threads)]
    for worker in workers:
        worker.start()
    try:
        yield generator
    finally:
        generator.stop.set()
        for worker in workers:
            worker.join(timeout=30)


def start(sample: SampleRepo, agent_factory: Factory, **extra: str) -> tuple[AgentProcess, str]:
    first = sample.commit(fd_files("v0"), "fd app")
    probe = agent_factory(sample.url, start=False)
    port = probe.port
    settings = {
        "LIVE_PULL_POLL_INTERVAL": "0",
        "LIVE_PULL_LISTEN": f"tcp://127.0.0.1:{port}",
        "LIVE_PULL_HANDOFF": "socket",  # FD_APP serves fd 0 itself
        "PORT": str(port),
        "LIVE_PULL_DRAIN_SECONDS": "5",
    }
    agent = agent_factory(sample.url, **(settings | extra))
    agent.wait_serving(first)
    agent.wait_status(state="running", revision=first)
    return agent, first


def update(agent: AgentProcess, sample: SampleRepo, files: dict[str, str], message: str) -> str:
    sha = sample.commit(files, message)
    requests.post(agent.status_url("/sync"), timeout=5)
    return sha


def started_again(agent: AgentProcess, sample: SampleRepo, agent_factory: Factory) -> AgentProcess:
    """Another agent on `agent`'s home with its settings, as a pod's restart starts."""
    kept = {k: v for k, v in agent.env.items() if k.startswith("LIVE_PULL_") or k == "PORT"}
    return agent_factory(sample.url, home=agent.home, **kept)


def went_live(agent: AgentProcess, sha: str) -> None:
    """Wait until the agent has logged `sha` live: a lasting sign, where /status names it
    only until the crash that follows is handled."""
    wait_until(lambda: f"revision live sha={sha[:12]}" in agent.output(), 60, f"{sha[:12]} live")


def test_ten_updates_under_load_fail_no_request(sample: SampleRepo, agent_factory: Factory) -> None:
    # bench/rollover.py runs 20 per server; the suite's time is shared with the rest.
    agent, first = start(sample, agent_factory)
    shas = [first]
    with load(f"http://127.0.0.1:{agent.port}/") as generator:
        for n in range(1, 11):
            shas.append(update(agent, sample, fd_files(f"v{n}"), f"v{n}"))
            agent.wait_status(state="running", revision=shas[-1], timeout=60)
        time.sleep(1)
    assert generator.failures == []
    assert set(generator.ok) <= {sha[:12] for sha in shas}
    assert sum(generator.ok.values()) > 100
    assert agent.status()["updates"] == 10


def test_broken_revisions_fail_no_request_and_old_keeps_serving(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    agent, first = start(
        sample,
        agent_factory,
        LIVE_PULL_START_RETRIES="1",
        LIVE_PULL_HEALTHCHECK_PATH="/healthz",
        LIVE_PULL_HEALTHCHECK_TIMEOUT="3",
    )
    broken = {
        "health check 500": fd_files("sick"),
        "syntax error": fd_files("x") | {"app.py": "def broken(:\n"},
        "exits at start": fd_files("x", "web: python -c 'raise SystemExit(1)'\n"),
        "failing release step": fd_files("x", "release: exit 9\nweb: python app.py\n"),
    }
    with load(f"http://127.0.0.1:{agent.port}/") as generator:
        for what, files in broken.items():
            sha = update(agent, sample, files, what)
            wait_until(
                lambda sha=sha: sha in (agent.status().get("failed_revisions") or {}),
                60,
                lambda what=what: f"{what} recorded as failed: {agent.status()}",
            )
            assert agent.status()["revision"] == first
    assert generator.failures == []
    assert set(generator.ok) == {first[:12]}
    reasons = " ".join((agent.status().get("failed_revisions") or {}).values())
    assert "health check failed" in reasons and "release step failed" in reasons


def test_a_revision_whose_worker_fails_never_answers_a_request(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    """Its workers are proven before its web joins the shared socket."""
    agent, first = start(sample, agent_factory, LIVE_PULL_START_RETRIES="1")
    procfile = "web: python app.py\nworker: python -c 'raise SystemExit(3)'\n"
    with load(f"http://127.0.0.1:{agent.port}/") as generator:
        sha = update(agent, sample, fd_files("bad worker", procfile), "a worker that fails")
        wait_until(
            lambda: sha in (agent.status().get("failed_revisions") or {}),
            60,
            lambda: f"recorded as failed: {agent.status()}",
        )
        time.sleep(1)
    assert generator.failures == []
    assert set(generator.ok) == {first[:12]}  # not one answer from the refused revision
    assert agent.status()["revision"] == first


def test_worker_alongside_web_is_restarted_on_the_new_revision(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    beat = tmp_path / "worker"
    worker = (
        "import os, pathlib, time\n"
        f"pathlib.Path({str(beat)!r}).write_text(os.environ['LIVE_PULL_REVISION'])\n"
        "time.sleep(3600)\n"
    )
    agent, _ = start(sample, agent_factory)
    files = fd_files("with worker", "web: python app.py\nworker: python worker.py\n")
    sha = update(agent, sample, files | {"worker.py": worker}, "worker")
    agent.wait_status(state="running", revision=sha, timeout=60)
    wait_until(lambda: beat.exists() and beat.read_text() == sha, 30, "worker on the new revision")
    newer = update(
        agent, sample, fd_files("again", "web: python app.py\nworker: python worker.py\n"), "again"
    )
    agent.wait_status(state="running", revision=newer, timeout=60)
    wait_until(lambda: beat.read_text() == newer, 30, "worker restarted on the newer revision")


def test_rollback_command_under_load(sample: SampleRepo, agent_factory: Factory) -> None:
    agent, first = start(sample, agent_factory)
    second = update(agent, sample, fd_files("second"), "second")
    agent.wait_status(state="running", revision=second, timeout=60)
    env = {**agent.env, "LIVE_PULL_STATUS_PORT": str(agent.status_port)}
    with load(f"http://127.0.0.1:{agent.port}/") as generator:
        result = subprocess.run(
            [sys.executable, "-m", "entrypoint", "rollback"],
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
        )
        time.sleep(1)
    assert result.returncode == 0, result.stderr
    assert f"serving {first[:12]}" in result.stdout
    assert generator.failures == []
    status = agent.status()
    assert status["revision"] == first
    assert "rolled back by operator" in status["failed_revisions"][second]
    time.sleep(2)  # polling must not bring the rolled-back revision back
    requests.post(agent.status_url("/sync"), timeout=5)
    time.sleep(2)
    assert agent.status()["revision"] == first
    unknown = subprocess.run(
        [sys.executable, "-m", "entrypoint", "rollback", "deadbeef"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 1
    assert "deadbeef is not one retained release" in unknown.stderr


def test_crash_in_steady_state_rolls_back_when_asked(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    agent, first = start(
        sample,
        agent_factory,
        LIVE_PULL_ROLLBACK_ON_CRASH="true",
        LIVE_PULL_START_RETRIES="1",
        LIVE_PULL_BAKE_SECONDS="0",  # steady state from the start
    )
    # Its first run is the probe instance; its second (the slot) serves for 3 s, then
    # dies; every restart dies at once, so supervisord gives up.
    starts = tmp_path / "starts"
    crashing = FD_APP.format(message="later crash").replace(
        "server.serve_forever()",
        f"starts = {str(starts)!r}\n"
        "before = open(starts).read().count('.') if os.path.exists(starts) else 0\n"
        "open(starts, 'a').write('.')\n"
        "if before >= 2: os._exit(1)\n"
        "if before == 1: threading.Timer(3, lambda: os._exit(1)).start()\n"
        "server.serve_forever()",
    )
    second = update(agent, sample, {"app.py": crashing}, "crashes after 3s")
    went_live(agent, second)
    agent.wait_status(state="running", revision=first, timeout=90)
    assert "crashed in steady state" in agent.status()["failed_revisions"][second]
    assert agent.process is not None and agent.process.poll() is None


def crashing_after(seconds: float, what: str = "os._exit(1)") -> str:
    """FD_APP, doing `what` `seconds` after it starts serving."""
    return FD_APP.format(message=f"then {what}").replace(
        "server.serve_forever()",
        f"threading.Timer({seconds}, lambda: {what}).start()\nserver.serve_forever()",
    )


def test_a_revision_that_crashes_within_its_bake_time_is_rolled_back(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    """Without LIVE_PULL_ROLLBACK_ON_CRASH: within LIVE_PULL_BAKE_SECONDS of going live,
    the previous release goes back live at once."""
    agent, first = start(sample, agent_factory, LIVE_PULL_BAKE_SECONDS="60")
    second = update(agent, sample, {"app.py": crashing_after(3)}, "crashes after 3s")
    went_live(agent, second)
    agent.wait_status(state="running", revision=first, timeout=60)
    reason = agent.status()["failed_revisions"][second]
    assert "failed within the bake time: program web exited" in reason
    assert agent.process is not None and agent.process.poll() is None
    assert agent.app() is not None and first[:12] in agent.app()


FALLING_AGAIN = """\
MARKER = {marker!r}
if os.path.exists(MARKER):  # started again: takes connections and drops them, then exits
    listener = socket.socket(fileno=0)
    listener.settimeout(0.05)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        try:
            listener.accept()[0].close()
        except socket.timeout:
            pass
    os._exit(1)


def end_when_told():
    while not os.path.exists(MARKER):
        time.sleep(0.05)
    server.shutdown()


threading.Thread(target=end_when_told, daemon=True).start()
server.serve_forever()
server.server_close()  # its requests answered: nothing accepted is left unanswered
if os.path.exists(MARKER):
    os._exit(1)
"""


def falling_again(marker: Path) -> str:
    """FD_APP that ends cleanly once `marker` exists, and that, started again while it
    does, takes connections on the shared socket and drops them before it exits (as a
    gunicorn whose workers die at import does)."""
    return FD_APP.format(message="falls again").replace(
        "server.serve_forever()\nserver.server_close()\n",
        FALLING_AGAIN.format(marker=str(marker)),
        1,
    )


def test_a_web_that_falls_within_its_bake_is_held_back_and_drops_no_request(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    """Handed the socket, a web that exits within its bake is held back when supervisord
    starts it again (it would take connections and drop them): its slot stops, the
    requests wait in the socket's queue, and the previous release answers them."""
    agent, first = start(sample, agent_factory, LIVE_PULL_BAKE_SECONDS="120")
    marker = tmp_path / "fall"
    second = update(agent, sample, {"app.py": falling_again(marker)}, "falls again")
    agent.wait_status(state="running", revision=second, timeout=60)
    with load(f"http://127.0.0.1:{agent.port}/") as generator:
        wait_until(lambda: generator.ok[second[:12]] > 0, 30, "the load reaching it")
        marker.touch()
        agent.wait_status(state="running", revision=first, timeout=60)
        wait_until(lambda: generator.ok[first[:12]] > 0, 30, "the previous answering")
    assert generator.failures == []
    assert "the serving web fell, its slot stops first" in agent.output()
    assert (
        "failed within the bake time: program web exited"
        in (agent.status()["failed_revisions"][second])
    )


FALLING_ONCE = """\
MARKER = {marker!r}


def fall_when_told():
    if os.path.exists(MARKER):
        return  # started again: it stays up
    while not os.path.exists(MARKER):
        time.sleep(0.05)
    os._exit(1)


threading.Thread(target=fall_when_told, daemon=True).start()
server.serve_forever()
server.server_close()
"""


def test_a_web_that_falls_while_the_old_one_drains_fails_its_bake(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    """The watchdog cannot look while the old slot drains: a new web that exits then, and
    is up again (a new process) by its first look, still fails its bake."""
    agent, _ = start(
        sample, agent_factory, LIVE_PULL_BAKE_SECONDS="60", LIVE_PULL_DRAIN_SECONDS="12"
    )
    slow = FD_APP.format(message="drains slowly").replace(
        "threading.Thread(target=server.shutdown)", "threading.Timer(8, server.shutdown)"
    )
    slowly = update(agent, sample, {"app.py": slow}, "drains for 8s")
    agent.wait_status(state="running", revision=slowly, timeout=60)
    marker = tmp_path / "fall"
    falling = FD_APP.format(message="falls once").replace(
        "server.serve_forever()\nserver.server_close()\n", FALLING_ONCE.format(marker=str(marker))
    )
    once = update(agent, sample, {"app.py": falling}, "falls once")
    wait_until(lambda: agent.output().count("draining web slot=") == 2, 60, "the drain")
    marker.touch()
    agent.wait_status(state="running", revision=slowly, timeout=60)
    reason = agent.status()["failed_revisions"][once]
    assert "failed within the bake time: program web exited" in reason


def test_a_revision_whose_health_fails_within_its_bake_time_is_rolled_back(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    agent, first = start(
        sample, agent_factory, LIVE_PULL_HEALTHCHECK_PATH="/healthz", LIVE_PULL_BAKE_SECONDS="60"
    )
    sickening = crashing_after(3, "globals().update(MESSAGE='sick')")
    second = update(agent, sample, {"app.py": sickening}, "sick after 3s")
    went_live(agent, second)
    with load(f"http://127.0.0.1:{agent.port}/") as generator:
        agent.wait_status(state="running", revision=first, timeout=60)
    assert generator.failures == []  # sick, not down: every request is answered
    reason = agent.status()["failed_revisions"][second]
    assert "failed within the bake time: its health path gave HTTP 500" in reason


def test_an_agent_killed_while_a_rollback_drains_does_not_take_the_failed_revision_again(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    """The revision a rollback leaves is recorded failed as the previous one serves again,
    not after it has drained: killed meanwhile (it ignores SIGTERM), the next agent serves
    the previous one and does not fetch and start the failed one again."""
    agent, first = start(
        sample,
        agent_factory,
        LIVE_PULL_HEALTHCHECK_PATH="/healthz",
        LIVE_PULL_BAKE_SECONDS="60",
        LIVE_PULL_STOP_TIMEOUT="6",
    )
    sick = crashing_after(3, "globals().update(MESSAGE='sick')").replace(
        "server.serve_forever()",
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nserver.serve_forever()",
    )
    second = update(agent, sample, {"app.py": sick}, "sick after 3s, deaf to SIGTERM")
    went_live(agent, second)
    agent.wait_status(state="draining", revision=first, timeout=60)  # the rollback's drain
    agent.kill()

    again = started_again(agent, sample, agent_factory)
    again.wait_serving(first)
    requests.post(again.status_url("/sync"), timeout=5)  # LIVE_PULL_POLL_INTERVAL=0
    wait_until(lambda: (again.status().get("checks") or 0) >= 1, 30, "a check of the remote")
    again.wait_status(state="running")
    assert second in again.status()["failed_revisions"]
    assert f"starting revision sha={second[:12]}" not in again.output()


def test_an_agent_killed_within_a_bake_bakes_the_revision_again_at_its_next_start(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    """Probation is kept in state.json: an agent killed within the bake (a node drained
    right after a push) does not leave the revision good; it bakes again at the next
    start, fails, and the previous release serves again."""
    agent, first = start(
        sample, agent_factory, LIVE_PULL_HEALTHCHECK_PATH="/healthz", LIVE_PULL_BAKE_SECONDS="60"
    )
    sickening = crashing_after(12, "globals().update(MESSAGE='sick')")
    second = update(agent, sample, {"app.py": sickening}, "sick 12s after each start")
    went_live(agent, second)
    agent.kill()
    assert f"revision failed within the bake time sha={second[:12]}" not in agent.output()

    again = started_again(agent, sample, agent_factory)
    again.wait_serving(first, timeout=90)
    out = again.output()
    assert f"the revision was on probation, it bakes again sha={second[:12]}" in out
    reason = again.status()["failed_revisions"][second]
    assert "failed within the bake time: its health path gave HTTP 500" in reason


def test_a_revision_past_its_bake_time_is_left_to_supervisord(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    agent, first = start(sample, agent_factory, LIVE_PULL_BAKE_SECONDS="1")
    second = update(agent, sample, {"app.py": crashing_after(4)}, "crashes after 4s")
    agent.wait_status(state="running", revision=second, timeout=60)
    assert "revision baked" in wait_until(
        lambda: "revision baked sha=" in agent.output() and agent.output(), 30, "baked"
    )
    wait_until(lambda: (agent.status().get("restarts") or {}).get("web", 0) >= 1, 30, "restart")
    assert agent.status()["revision"] == second  # restarted by supervisord, not rolled back
    state = agent.home / "state.json"  # baked: a restart does not bake it again
    wait_until(lambda: json.loads(state.read_text())["baking"] is None, 30, "the bake over")
    assert first not in str(agent.status().get("rollback"))


WSGI_APP = """\
import os

REVISION = os.environ.get("LIVE_PULL_REVISION", "unknown")[:12]


def app(environ, start_response):
    body = f"{MESSAGE} from revision {REVISION}\\n".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""

ASGI_APP = """\
import os

REVISION = os.environ.get("LIVE_PULL_REVISION", "unknown")[:12]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{MESSAGE} from revision {REVISION}\\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""

SERVERS = {
    # The Procfile lines the README documents, with this test run's Python in front.
    "gunicorn": (
        WSGI_APP,
        "web: {python} -m gunicorn --bind fd://0 --workers 2 --graceful-timeout 5 app:app\n",
    ),
    "uvicorn": (ASGI_APP, "web: {python} -m uvicorn --fd 0 app:app\n"),
    # As Procfiles have them, binding $PORT: the socket reaches them through LISTEN_FDS
    # (gunicorn) and UVICORN_FD (uvicorn), with no change to the command.
    "gunicorn-unchanged": (
        WSGI_APP,
        "web: {python} -m gunicorn --workers 2 --graceful-timeout 5 -b 127.0.0.1:$PORT app:app\n",
    ),
    # Behind live-pull's proxy: uvicorn (alone, or as gunicorn's workers) drops the
    # connections it accepted as it stops, and a plain server binds $PORT with no door.
    "uvicorn-unchanged": (ASGI_APP, "web: {python} -m uvicorn app:app --port $PORT\n"),
    "gunicorn-uvicorn-workers": (
        ASGI_APP,
        "web: {python} -m gunicorn -k uvicorn.workers.UvicornWorker -b 127.0.0.1:$PORT app:app\n",
    ),
    "plain-port": (APP, "web: {python} app.py\n"),  # the sample app
}
PROXIED = {"uvicorn-unchanged", "gunicorn-uvicorn-workers", "plain-port"}


@pytest.mark.parametrize("server", list(SERVERS))
def test_real_servers_roll_over_without_a_failed_request(
    server: str, sample: SampleRepo, agent_factory: Factory
) -> None:
    source, procfile = SERVERS[server]

    def files(message: str) -> dict[str, str]:
        return {
            "app.py": source.format(message=message)
            if source is APP
            else f"MESSAGE = {message!r}\n" + source,
            "Procfile": procfile.format(python=sys.executable),
        }

    first = sample.commit(files("v0"), server)
    port = agent_factory(sample.url, start=False).port
    # Nothing but PORT: live-pull owns it, and proves each new web (GET / answers
    # anything but a 5xx) before it joins; socket servers are probed on a private
    # socket handed through the same doors.
    agent = agent_factory(sample.url, LIVE_PULL_POLL_INTERVAL="0", PORT=str(port))
    agent.wait_serving(first)
    way = "proxied" if server in PROXIED else "handed the shared socket"
    assert f"web is served start-first on tcp://0.0.0.0:{port}, {way}" in agent.output()
    shas = [first]
    with load(f"http://127.0.0.1:{port}/") as generator:
        for n in range(1, 4):
            shas.append(update(agent, sample, files(f"v{n}"), f"v{n}"))
            agent.wait_status(state="running", revision=shas[-1], timeout=60)
        time.sleep(1)
    served = sum(generator.ok.values())
    if server == "uvicorn":
        # Told to take fd 0, uvicorn is handed the socket; its shutdown closes the
        # connections it accepted whose request has not arrived yet (server.py,
        # Server.shutdown): a few can fail. Measured and documented in the README
        # (the reason uvicorn goes behind the proxy unless told); bounded here.
        assert len(generator.failures) <= max(3, served // 200), generator.failures
    else:
        assert generator.failures == []
    assert set(generator.ok) <= {sha[:12] for sha in shas}
    assert shas[-1][:12] in generator.ok


PID_APP = '''\
"""Binds $PORT (so it is proxied); answers with its revision and its pid. It exits once
the file CRASH exists, starts slowly (SLOW seconds) while the file SLOW_WHEN does, and
answers /hold only once the file HOLD exists (HOLD + ".arrived" says it is held)."""
import os, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MESSAGE = {message!r}
CRASH = {crash!r}
SLOW, SLOW_WHEN = 10, {slow_when!r}
HOLD = {hold!r}
REVISION = os.environ.get("LIVE_PULL_REVISION", "unknown")[:12]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/hold":
            open(HOLD + ".arrived", "w").close()
            while not os.path.exists(HOLD):
                time.sleep(0.1)
        body = f"{{MESSAGE}} pid {{os.getpid()}} from revision {{REVISION}}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def crash_when_told():
    while not (CRASH and os.path.exists(CRASH)):
        time.sleep(0.1)
    os._exit(1)


if SLOW_WHEN and os.path.exists(SLOW_WHEN):
    time.sleep(SLOW)
threading.Thread(target=crash_when_told, daemon=True).start()
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def pid_files(
    message: str, crash: Path | None = None, slow_when: Path | None = None, hold: Path | None = None
) -> dict[str, str]:
    """PID_APP as a revision's files; `crash`, `slow_when`, `hold`: see PID_APP."""
    app = PID_APP.format(
        message=message,
        crash=None if crash is None else str(crash),
        slow_when=None if slow_when is None else str(slow_when),
        hold=None if hold is None else str(hold),
    )
    return {"app.py": app, "Procfile": f"web: {sys.executable} app.py\n"}


def answer_of(agent: AgentProcess) -> tuple[str, int] | None:
    """(revision, pid) of the app process that answers on the public port, if one does."""
    answer = agent.app()
    if not answer or " pid " not in answer:
        return None
    return answer.split()[-1], int(answer.split(" pid ")[1].split()[0])


def answering_pid(agent: AgentProcess) -> int:
    return int(wait_until(lambda: answer_of(agent), 30, "an answer on the public port")[1])


def start_proxied(
    sample: SampleRepo, agent_factory: Factory, files: dict[str, str], **settings: str
) -> tuple[AgentProcess, str, int]:
    first = sample.commit(files, "binds $PORT, proxied")
    port = agent_factory(sample.url, start=False).port
    agent = agent_factory(sample.url, LIVE_PULL_POLL_INTERVAL="0", PORT=str(port), **settings)
    agent.wait_serving(first)
    agent.wait_status(state="running", revision=first)
    return agent, first, answering_pid(agent)


def switch_to(agent: AgentProcess, sample: SampleRepo, files: dict[str, str], message: str) -> str:
    """Push, sync, and wait until the new revision answers on the public port."""
    sha = update(agent, sample, files, message)
    agent.wait_status(state="running", revision=sha, timeout=60)
    wait_until(lambda: (answer_of(agent) or ("", 0))[0] == sha[:12], 30, f"{message} answering")
    return sha


def test_the_previous_proxied_release_stands_by_and_serves_again_within_the_bake(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    """Proxied, the release an update replaced keeps running (accepting nothing) while the
    new one bakes: a rollback within the bake is the same process serving again, not a
    new start; a later update lets go of it first."""
    agent, first, first_pid = start_proxied(
        sample, agent_factory, pid_files("v0"), LIVE_PULL_BAKE_SECONDS="120"
    )
    crash = tmp_path / "crash"
    second = switch_to(agent, sample, pid_files("v1", crash=crash), "crashes when told")
    assert alive(first_pid)  # standing by, and answering nothing on the public port
    assert agent.status()["standing_by"] == first
    assert {answer_of(agent) for _ in range(20)} == {(second[:12], answering_pid(agent))}
    crash.touch()
    agent.wait_status(state="running", revision=first, timeout=60)
    assert (
        "failed within the bake time: program web exited"
        in (agent.status()["failed_revisions"][second])
    )
    assert answering_pid(agent) == first_pid  # the very process that stood by
    output = agent.output()
    assert f"the previous release stands by sha={first[:12]}" in output
    assert f"the release standing by serves again sha={first[:12]}" in output
    assert "live-pull proxy: standing by: the app keeps running" in output

    third = switch_to(agent, sample, pid_files("v3"), "v3")
    third_pid = answering_pid(agent)
    switch_to(agent, sample, pid_files("v4"), "v4")  # within v3's bake: v0 stopped first
    wait_until(lambda: not alive(first_pid), 30, "the first release's app gone")
    assert alive(third_pid)  # v3 stands by for v4 now
    assert f"the release standing by stops sha={first[:12]}" in agent.output()
    assert third[:12] in agent.output()


def test_a_standby_restarted_by_supervisord_still_serves_again_when_asked(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    """The standby's app dies; supervisord restarts the slot, standing by still, and its
    app is slow to come up: the rollback's order to serve again, given meanwhile, is
    not lost (the slot's assignment says it)."""
    slow = tmp_path / "slow"
    agent, first, first_pid = start_proxied(
        sample, agent_factory, pid_files("v0", slow_when=slow), LIVE_PULL_BAKE_SECONDS="120"
    )
    crash = tmp_path / "crash"
    second = switch_to(agent, sample, pid_files("v1", crash=crash), "crashes when told")
    slow.touch()  # the first release's next start takes 10 s
    os.kill(first_pid, signal.SIGKILL)
    time.sleep(3)  # its slot restarts (RUNNING after 1 s) and waits for its slow app
    crash.touch()
    agent.wait_status(state="running", revision=first, timeout=90)
    assert "failed within the bake time" in agent.status()["failed_revisions"][second]
    revision, pid = wait_until(lambda: answer_of(agent), 60, "the first release answering")
    assert (revision, pid != first_pid) == (first[:12], True)
    time.sleep(2)
    assert answer_of(agent) == (revision, pid)  # still serving: not standing by for ever


def test_the_previous_proxied_release_stops_once_the_new_one_baked(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    agent, first, first_pid = start_proxied(
        sample, agent_factory, pid_files("v0"), LIVE_PULL_BAKE_SECONDS="8"
    )
    with load(f"http://127.0.0.1:{agent.port}/") as generator:
        second = switch_to(agent, sample, pid_files("v1"), "v1")
        time.sleep(1)  # what was in flight at the switch has been answered
        answered_by_first = generator.ok[first[:12]]
        assert alive(first_pid)
        wait_until(lambda: not alive(first_pid), 60, "the previous app stopped after the bake")
    assert generator.failures == []
    assert generator.ok[first[:12]] == answered_by_first  # standing by, it answered none
    agent.wait_status(standing_by=None)
    assert generator.ok[second[:12]] > 0
    output = agent.output()
    baked = output.index(f"revision baked sha={second[:12]}")
    assert output.index(f"the release standing by stops sha={first[:12]}") > baked


def test_a_rollback_within_the_bake_does_not_wait_for_the_standbys_drain(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    """A request still in flight on the standby (its drain goes on) holds nothing up: the
    rolled-back release answers new requests while that one is still being answered."""
    hold, crash = tmp_path / "hold", tmp_path / "crash"
    agent, first, _ = start_proxied(
        sample,
        agent_factory,
        pid_files("v0", hold=hold),
        LIVE_PULL_BAKE_SECONDS="120",
        LIVE_PULL_DRAIN_SECONDS="120",
    )
    held: list[str] = []
    holder = threading.Thread(
        target=lambda: held.append(
            requests.get(f"http://127.0.0.1:{agent.port}/hold", timeout=180).text
        )
    )
    holder.start()
    try:
        wait_until(lambda: Path(f"{hold}.arrived").exists(), 30, "the held request at the app")
        second = switch_to(agent, sample, pid_files("v1", crash=crash), "crashes when told")
        crash.touch()
        agent.wait_status(state="running", revision=first, timeout=60)
        assert (answer_of(agent) or ("",))[0] == first[:12]
        assert holder.is_alive() and held == []  # the standby's drain still goes on
    finally:
        hold.touch()
        holder.join(timeout=60)
    assert held and first[:12] in held[0]
    assert second in agent.status()["failed_revisions"]
