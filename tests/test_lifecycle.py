"""Start, stop, crash and recovery: the agent as a restart policy sees it."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import git
import pytest
import requests

from entrypoint.demo import free_port
from entrypoint.processes import alive
from entrypoint.sample import APP, SampleRepo, app_files
from tests.conftest import AgentProcess, wait_until

Factory = Callable[..., AgentProcess]
CRASH = {"Procfile": "web: python -c 'import sys; sys.exit(3)'\n"}


def head(sample: SampleRepo) -> str:
    return git.Repo(sample.work).head.commit.hexsha


def test_sigterm_stops_app_and_exits_zero_quickly(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    agent = agent_factory(sample.url)
    agent.wait_serving(head(sample))
    app_pid = _app_pid(agent)
    code, elapsed = agent.stop(signal.SIGTERM)
    assert code == 0
    assert elapsed < 10
    assert not alive(app_pid)
    assert agent.app() is None
    assert "stopped" in agent.output()


def test_sigint_also_stops_cleanly(sample: SampleRepo, agent_factory: Factory) -> None:
    agent = agent_factory(sample.url)
    agent.wait_serving(head(sample))
    code, elapsed = agent.stop(signal.SIGINT)
    assert (code, elapsed < 10) == (0, True)


@pytest.mark.parametrize(
    "procfile", ["web: python stubborn.py\n", "web: echo compound; python stubborn.py\n"]
)
def test_stubborn_app_and_its_children_are_killed_within_bound(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path, procfile: str
) -> None:
    pids = tmp_path / "pids"
    stubborn = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer\n"
        "port = int(os.environ['PORT'])\n"
        "ThreadingHTTPServer(('127.0.0.1', port), SimpleHTTPRequestHandler).serve_forever()\n"
    )
    sha = sample.commit({"stubborn.py": stubborn, "Procfile": procfile}, "x")
    agent = agent_factory(sample.url, LIVE_PULL_STOP_TIMEOUT="2")
    agent.wait_status(state="running", revision=sha)
    app_pid, child_pid = map(int, wait_until(lambda: pids.exists() and pids.read_text()).split())
    code, elapsed = agent.stop()
    assert code == 0
    assert elapsed < 10
    wait_until(lambda: not alive(app_pid) and not alive(child_pid), 5, "group killed")


def test_crash_looping_app_exits_non_zero(sample: SampleRepo, agent_factory: Factory) -> None:
    sample.commit(CRASH, "crash")
    agent = agent_factory(sample.url, LIVE_PULL_START_RETRIES="1")
    code = agent.wait_exit()
    assert code == 3
    assert "the app cannot stay up: " in agent.output()
    assert "FATAL" in agent.output()


def test_app_crashing_later_exits_non_zero(sample: SampleRepo, agent_factory: Factory) -> None:
    agent = agent_factory(sample.url, LIVE_PULL_START_RETRIES="1")
    agent.wait_serving(head(sample))
    # The running app is replaced, on disk, by one that cannot start: the next
    # restart by supervisord fails until FATAL, and the agent must notice.
    app = agent.home / "current" / "app.py"
    app.write_text("raise SystemExit(1)\n")
    os.kill(_app_pid(agent), signal.SIGKILL)
    assert agent.wait_exit() == 3


def test_remote_down_at_start_without_release_gives_up(agent_factory: Factory) -> None:
    url = f"http://127.0.0.1:{free_port()}/nothing.git"
    agent = agent_factory(url, LIVE_PULL_START_TIMEOUT="8")  # time to look at it meanwhile
    status = agent.wait_status(state="waiting for remote")
    assert status["last_error"]
    assert requests.get(agent.status_url("/healthz"), timeout=5).status_code == 200
    assert requests.get(agent.status_url("/readyz"), timeout=5).status_code == 503
    assert agent.wait_exit() == 4
    lines = [line for line in agent.output().splitlines() if "could not start" in line]
    assert len(lines) == 1
    assert "no revision fetched within 8s" in lines[0]


def test_remote_down_at_start_with_release_serves_it_at_once(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    first = head(sample)
    agent = agent_factory(sample.url)
    agent.wait_serving(first)
    assert agent.stop()[0] == 0
    hidden = sample.remote.with_name("moved-away.git")
    sample.remote.rename(hidden)
    again = agent_factory(sample.url, home=agent.home)
    again.wait_serving(first, timeout=15)
    again.wait_status(ready=True)
    wait_until(lambda: again.status().get("last_error"), what="the failing check reported")
    hidden.rename(sample.remote)
    newer = sample.commit(app_files("back online"), "newer")
    again.wait_serving(newer)


def test_leftovers_of_builds_cut_off_are_swept_at_the_next_start(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    """An agent killed while it installed leaves its half-built environment: swept at
    the next start, not only after the next successful update (a pod killed in every
    install would fill its volume)."""
    sha = head(sample)
    agent = agent_factory(sample.url)
    agent.wait_serving(sha)
    assert agent.stop()[0] == 0
    leftovers = [
        agent.home / d / f".tmp-{'f' * 40}-0123abcd" for d in ("releases", "venvs", "layers")
    ]
    for leftover in leftovers:
        (leftover / "lib").mkdir(parents=True)
    staged_link = agent.home / ".tmp-current-0123abcd"  # a kill inside `activate`
    staged_link.symlink_to(Path("releases") / sha)
    leftovers.append(staged_link)
    kept = agent.home / "venvs" / "unused-but-not-a-leftover"
    kept.mkdir()

    again = agent_factory(sample.url, home=agent.home)
    again.wait_serving(sha)

    def swept() -> bool:
        return not any(path.exists() or path.is_symlink() for path in leftovers)

    wait_until(swept, 30, "the leftovers swept")
    assert kept.is_dir()  # the sweep takes .tmp- names only; collections do the rest


# Start-first on the shared socket (the default), and stop-then-start.
MODES = pytest.mark.parametrize("mode", [{}, {"LIVE_PULL_LISTEN": "off"}], ids=["default", "off"])


@MODES
def test_failed_revision_keeps_the_old_one_serving(
    sample: SampleRepo, agent_factory: Factory, mode: dict[str, str]
) -> None:
    good = head(sample)
    agent = agent_factory(sample.url, LIVE_PULL_START_RETRIES="1", **mode)
    agent.wait_serving(good)
    bad = sample.commit(CRASH, "crash")
    wait_until(lambda: bad in (agent.status().get("failed_revisions") or {}))
    status = agent.wait_status(state="running", revision=good, ready=True)
    assert "failed to start" in status["last_error"]
    assert f"revision {good[:12]}" in (agent.app() or "")
    assert os.readlink(agent.home / "current") == f"releases/{good}"
    fixed = sample.commit(app_files("fixed"), "fixed")
    agent.wait_serving(fixed)
    assert agent.process is not None and agent.process.poll() is None


def test_release_step_runs_before_start_and_failure_keeps_old(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    procfile = "release: python -c \"open('migrated', 'w').write('yes')\"\nweb: python app.py\n"
    sha = sample.commit({"Procfile": procfile}, "with a release step")
    agent = agent_factory(sample.url)
    agent.wait_serving(sha)
    assert (agent.home / "releases" / sha / "migrated").read_text() == "yes"
    failing = "release: echo migration exploded; exit 7\nweb: python app.py\n"
    bad = sample.commit({"Procfile": failing, "app.py": APP.format(message="never")}, "bad")
    status = wait_until(
        lambda: bad in (agent.status().get("failed_revisions") or {}) and agent.status()
    )
    assert "release step failed code=7" in status["last_error"]
    assert "migration exploded" not in status["last_error"]  # output: the log only
    assert "release: migration exploded" in agent.output()
    assert f"revision {sha[:12]}" in (agent.app() or "")


def test_missing_web_entry_is_refused(sample: SampleRepo, agent_factory: Factory) -> None:
    good = head(sample)
    agent = agent_factory(sample.url)
    agent.wait_serving(good)
    sample.commit({"Procfile": "# nothing to run\n"}, "empty procfile")
    status = wait_until(lambda: (s := agent.status()).get("last_error") and s)
    assert "nothing to run" in status["last_error"]
    assert f"revision {good[:12]}" in (agent.app() or "")


def test_command_override(sample: SampleRepo, agent_factory: Factory) -> None:
    command = "echo override $LIVE_PULL_REVISION; exec python app.py"
    agent = agent_factory(sample.url, LIVE_PULL_COMMAND=command)
    agent.wait_serving(head(sample))
    wait_until(lambda: f"override {head(sample)}" in agent.output())


def _corrupt_objects(repo: Path) -> None:
    shutil.rmtree(repo / "objects")
    (repo / "objects").mkdir()


def _stale_locks(repo: Path) -> None:
    for name in ("shallow.lock", "index.lock", "config.lock", "refs/live-pull/fetched.lock"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("")


def _not_a_repository(repo: Path) -> None:
    shutil.rmtree(repo)
    repo.mkdir()
    (repo / "junk").write_text("not git")


def _garbage_config(repo: Path) -> None:
    (repo / "config").write_text("[core\n\x00garbage")


def _a_file(repo: Path) -> None:
    shutil.rmtree(repo)
    repo.write_text("not a directory")


def test_corrupted_repository_recovers_at_start(sample: SampleRepo, agent_factory: Factory) -> None:
    """Each damage is done to the home an agent serving a revision left at a clean stop;
    the agent that recovers from one damage leaves the home for the next."""
    agent = agent_factory(sample.url)
    agent.wait_serving(head(sample))
    assert agent.stop()[0] == 0
    for damage in (_corrupt_objects, _stale_locks, _not_a_repository, _garbage_config, _a_file):
        damage(agent.home / "repo")
        newer = sample.commit(app_files(f"after {damage.__name__}"), damage.__name__)
        agent = agent_factory(sample.url, home=agent.home)
        agent.wait_serving(newer)
        assert agent.stop()[0] == 0, damage.__name__


def test_corrupted_repository_recovers_while_running(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    agent = agent_factory(sample.url)
    agent.wait_serving(head(sample))
    agent.wait_status(state="running")
    _garbage_config(agent.home / "repo")
    newer = sample.commit(app_files("after damage"), "after damage")
    agent.wait_serving(newer)
    assert "damaged, rebuilding" in agent.output()


def _app_pid(agent: AgentProcess) -> int:
    """The pid of the sample app (`python app.py`, in a release of the agent's home).
    Not the process holding the public port's socket: supervisord, the holder and the
    proxy all hold it."""
    releases = (agent.home / "releases").resolve()

    def find() -> int | None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                cwd = Path(os.readlink(proc / "cwd"))
            except OSError:
                continue
            if b"app.py" in argv and cwd.is_relative_to(releases):
                return int(proc.name)
        return None

    return int(wait_until(find, 10, "the app's process"))


def test_status_endpoints_and_cli(sample: SampleRepo, agent_factory: Factory) -> None:
    agent = agent_factory(sample.url)
    sha = head(sample)
    agent.wait_serving(sha)
    agent.wait_status(state="running")
    assert requests.get(agent.status_url("/healthz"), timeout=5).status_code == 200
    assert requests.get(agent.status_url("/readyz"), timeout=5).status_code == 200
    status = agent.status()
    for key in ("revision", "ref", "repo_url", "state", "last_check", "last_error", "updates"):
        assert key in status
    shown = agent.cli("status")
    assert f"revision: {sha}" in shown
    assert "state: running" in shown


@MODES
def test_health_check_failure_restores_the_old_revision(
    sample: SampleRepo, agent_factory: Factory, mode: dict[str, str]
) -> None:
    good = head(sample)
    agent = agent_factory(
        sample.url,
        LIVE_PULL_HEALTHCHECK_PATH="/healthz",
        LIVE_PULL_HEALTHCHECK_TIMEOUT="3",
        **mode,
    )
    agent.wait_serving(good)
    sick = APP.format(message="sick").replace("send_response(200)", "send_response(500)")
    bad = sample.commit({"app.py": sick}, "answers 500")
    reason = wait_until(lambda: (agent.status().get("failed_revisions") or {}).get(bad))
    assert "health check failed" in reason and "HTTP 500" in reason
    agent.wait_serving(good)
    agent.wait_status(state="running", revision=good, ready=True)


def test_release_command_setting_replaces_the_procfile_entry(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    sha = sample.commit({"Procfile": "release: exit 1\nweb: python app.py\n"}, "release entry")
    agent = agent_factory(sample.url, LIVE_PULL_RELEASE_COMMAND="echo migrated > from-setting")
    agent.wait_serving(sha)
    assert (agent.home / "releases" / sha / "from-setting").read_text() == "migrated\n"
