"""App faults: it crashes, exits, never binds, ignores SIGTERM, leaves children behind,
floods its output, crash-loops in steady state.

Pass criterion throughout: a revision that cannot serve is recorded failed and the
old one serves again; nothing the app started survives it; a crash loop is turned
into a rollback or an exit the platform sees.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from entrypoint.processes import alive
from entrypoint.sample import APP, create_sample_repo
from tests.conftest import wait_until
from tests.faults.agents import Agent, Family, Launcher, Prober, Sampler, app_with, head
from tests.faults.processes import app_pid, marker, pids_with, wait_gone


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory, module_launcher: Launcher) -> Family:
    return Family(
        tmp_path_factory.mktemp("app-family"),
        module_launcher,
        LIVE_PULL_HEALTHCHECK_PATH="/",
        LIVE_PULL_HEALTHCHECK_TIMEOUT="3",
        # Faults in steady state: one agent serves revision after revision here, and a
        # crash seconds after an update would otherwise be the bake's (test_rollover.py).
        LIVE_PULL_BAKE_SECONDS="0",
    )


@pytest.fixture
def agent(family: Family) -> Agent:
    return family.ready()


def _running(agent: Agent) -> str:
    return str(agent.status()["revision"])


def _refused_then_fixed(family: Family, agent: Agent, files: dict[str, str], *words: str) -> None:
    """The revision is recorded failed, the old one serves again, the next good one deploys."""
    running = _running(agent)
    bad = family.commit(files, "bad revision")
    status = agent.wait_failed(bad)
    assert status["error_kind"] == "rejected"
    reason = str(status["failed_revisions"][bad]).lower()
    assert any(word in reason for word in words), reason
    agent.wait_serving(running)
    agent.wait_status(revision=running, ready=True)
    assert agent.readyz() == 200
    assert agent.alive()
    fixed = family.good("fixed")
    agent.wait_serving(fixed)
    assert bad in agent.failed()


def test_app_crashes_at_start(family: Family, agent: Agent) -> None:
    files = {"Procfile": "web: python -c 'import sys; sys.exit(3)'\n"}
    _refused_then_fixed(family, agent, files, "fatal", "failed to start", "exited")


def test_app_exits_zero_at_once(family: Family, agent: Agent) -> None:
    files = {"Procfile": "web: python -c 'raise SystemExit(0)'\n"}
    _refused_then_fixed(family, agent, files, "fatal", "failed to start", "exited")


def test_app_never_binds_its_port(family: Family, agent: Agent) -> None:
    files = {"app.py": app_with("import time\ntime.sleep(3600)", "never binds")}
    _refused_then_fixed(family, agent, files, "health check")


def test_worker_crashes_at_start(family: Family, agent: Agent) -> None:
    procfile = "web: python app.py\nworker: python -c 'import sys; sys.exit(1)'\n"
    files = {"Procfile": procfile, "app.py": APP.format(message="with a bad worker")}
    _refused_then_fixed(family, agent, files, "worker")


def _refused_before_stopping(
    family: Family, agent: Agent, files: dict[str, str], word: str
) -> None:
    """Refused before anything is stopped: the old revision serves throughout."""
    running = _running(agent)
    with Prober(agent, running) as probe:
        bad = family.commit(files, "refused revision")
        status = agent.wait_failed(bad)
    probe.assert_served()
    assert status["error_kind"] == "rejected"
    assert word in str(status["failed_revisions"][bad]).lower()
    assert status["revision"] == running
    fixed = family.good("fixed")
    agent.wait_serving(fixed)


def test_procfile_without_web(family: Family, agent: Agent) -> None:
    files = {"Procfile": "worker: python -c 'import time; time.sleep(3600)'\n"}
    _refused_before_stopping(family, agent, files, "web")


def test_procfile_malformed(family: Family, agent: Agent) -> None:
    files = {"Procfile": "web python app.py\n"}
    _refused_before_stopping(family, agent, files, "procfile")


def test_web_command_starting_with_exec(family: Family, agent: Agent) -> None:
    files = {"Procfile": "web: exec python app.py\n", "app.py": APP.format(message="exec")}
    sha = family.commit(files, "exec in the Procfile")
    agent.wait_serving(sha)
    status = agent.wait_status(revision=sha, ready=True)
    assert sha not in status["failed_revisions"]
    fixed = family.good("plain again")
    agent.wait_serving(fixed)


def test_app_ignores_sigterm(family: Family, agent: Agent, tmp_path: Path) -> None:
    pidfile = tmp_path / "stubborn.pid"
    prelude = (
        "import signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
    )
    stubborn = family.commit({"app.py": app_with(prelude, "stubborn")}, "ignores SIGTERM")
    agent.wait_serving(stubborn)
    pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text()))
    newer = family.good("replaces the stubborn one")
    agent.wait_serving(newer)
    wait_until(lambda: not alive(pid), 20, "the stubborn app killed")


def _daemonizing_app(setsid_marker: str, double_fork_marker: str) -> str:
    prelude = f"""
import subprocess
subprocess.Popen(
    ["sleep", {setsid_marker!r}],
    start_new_session=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
child = os.fork()
if child == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", {double_fork_marker!r}])
    os._exit(0)
os.waitpid(child, 0)
"""
    return app_with(prelude, "daemonizes")


def test_app_children_do_not_survive_an_update(family: Family, agent: Agent) -> None:
    setsid, double = marker(), marker()
    sha = family.commit({"app.py": _daemonizing_app(setsid, double)}, "daemonizing app")
    agent.wait_serving(sha)
    wait_until(lambda: pids_with(setsid) and pids_with(double), what="the app's daemons")
    newer = family.good("after the daemons")
    agent.wait_serving(newer)
    wait_gone(setsid)
    wait_gone(double)


def test_app_children_do_not_survive_the_agent(launcher: Launcher, tmp_path: Path) -> None:
    setsid, double = marker(), marker()
    sample = create_sample_repo(tmp_path / "remote")
    sha = sample.commit({"app.py": _daemonizing_app(setsid, double)}, "daemonizing app")
    agent = launcher.agent(sample.url, tmp_path / "home")
    agent.wait_serving(sha)
    wait_until(lambda: pids_with(setsid) and pids_with(double), what="the app's daemons")
    code, _ = agent.stop()
    assert code == 0
    wait_gone(setsid)
    wait_gone(double)


def test_app_writes_huge_output(family: Family, agent: Agent) -> None:
    prelude = """
import sys, threading, time
sys.stdout.write("x" * 20_000_000)  # one 20 MB line
sys.stdout.write("\\n")
sys.stdout.flush()
def chatter():
    while True:
        sys.stdout.write(("chatter " * 1000 + "\\n") * 50)
        sys.stdout.flush()
        time.sleep(0.5)
threading.Thread(target=chatter, daemon=True).start()
"""
    loud = family.commit({"app.py": app_with(prelude, "loud")}, "huge output")
    agent.wait_serving(loud, timeout=60)
    agent.wait_status(revision=loud, ready=True)
    assert agent.healthz() == 200
    newer = family.good("quiet again")
    agent.wait_serving(newer)
    assert agent.healthz() == 200


def test_app_killed_once_is_restarted(family: Family, agent: Agent) -> None:
    running = _running(agent)
    # The watchdog looks once a second: let it see the running process first.
    checks = agent.checks()
    wait_until(lambda: agent.checks() >= checks + 2, what="two more checks")
    before = int((agent.status().get("restarts") or {}).get("web", 0))
    os.kill(app_pid(running), signal.SIGKILL)
    status = wait_until(
        lambda: int(((s := agent.status()).get("restarts") or {}).get("web", 0)) > before and s,
        what="the restart counted",
    )
    assert status["revision"] == running
    agent.wait_serving(running)
    agent.wait_status(revision=running, ready=True, app_down=None)
    assert agent.alive()
    assert running not in agent.failed()


# -- crash loops in steady state ---------------------------------------------------------

CRASH_LATER = "import threading\nthreading.Timer(3.0, lambda: os._exit(1)).start()"


def test_crash_loop_without_rollback_exits_3(launcher: Launcher, tmp_path: Path) -> None:
    sample = create_sample_repo(tmp_path / "remote")
    agent = launcher.agent(sample.url, tmp_path / "home", LIVE_PULL_BAKE_SECONDS="0")
    agent.wait_serving(head(sample))
    looping = sample.commit({"app.py": app_with(CRASH_LATER, "crashes every 3s")}, "loop")
    with Sampler(agent) as sampler:
        agent.wait_serving(looping)
        code = agent.wait_exit(timeout=90)
    assert code == 3
    assert sampler.seen(lambda s, _: (s.get("restarts") or {}).get("web", 0) >= 2)
    final = [line for line in agent.stderr_lines() if line.startswith("live-pull: ")]
    assert len(final) == 1
    assert "web" in final[0]


def test_crash_loop_with_rollback_goes_back(launcher: Launcher, tmp_path: Path) -> None:
    sample = create_sample_repo(tmp_path / "remote")
    # The good revision takes two seconds to answer: the rollback is seen under way.
    good = sample.commit({"app.py": app_with("import time\ntime.sleep(2)", "slow start")}, "ok")
    agent = launcher.agent(
        sample.url,
        tmp_path / "home",
        LIVE_PULL_ROLLBACK_ON_CRASH="true",
        LIVE_PULL_BAKE_SECONDS="0",  # steady state: the crash loop rules, not the bake
        LIVE_PULL_HEALTHCHECK_PATH="/",
        LIVE_PULL_HEALTHCHECK_TIMEOUT="20",
    )
    agent.wait_serving(good)
    looping = sample.commit({"app.py": app_with(CRASH_LATER, "crashes every 3s")}, "loop")
    with Sampler(agent) as sampler:
        agent.wait_serving(looping)
        status = wait_until(
            lambda: ((s := agent.status()).get("rollback") or {}).get("status") == "done" and s,
            90,
            lambda: f"rollback done: {agent.status()}\n{agent.tail()}",
        )
        agent.wait_serving(good)
    assert status["rollback"]["to"] == good
    assert looping in status["failed_revisions"]
    assert sampler.seen(
        lambda s, _: (
            (s.get("app_down") or {}).get("program") == "web"
            and (s.get("app_down") or {}).get("restarts", 0) >= 3
        )
    )
    assert sampler.seen(lambda s, ready: s.get("app_down") and ready == 503)
    agent.wait_status(revision=good, ready=True, app_down=None)
    checks = agent.checks()
    wait_until(lambda: agent.checks() >= checks + 2, what="two more checks")
    assert agent.serves(good)  # the crashing revision is not brought back by polling
    assert agent.alive()
