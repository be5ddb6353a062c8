"""Agent faults: signals at bad moments, long work under liveness probes, failed
rollbacks, hostile webhook bytes, a remote owned by someone else, output in a file.

Pass criterion throughout: the agent stops cleanly and completely whenever asked,
comes back serving what it served, says the truth on /healthz while it works, and
answers every request with a plain status.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.sample import SampleRepo, app_files, create_sample_repo
from tests.conftest import wait_until
from tests.faults.agents import Agent, Launcher, app_with, head
from tests.faults.longwork import SlowWorld
from tests.faults.processes import marker, pids_tagged, pids_with, wait_gone
from tests.faults.remote import remote_away


@pytest.mark.long_work
def test_healthz_200_through_a_long_first_install(slow_world: SlowWorld) -> None:
    slow = slow_world.ready()
    samples = slow.install.wait_long_work()
    assert {health for _, health, _ in samples} == {200}
    assert {ready for _, _, ready in samples} == {503}  # nothing serves yet
    assert pids_with(slow.install_marker), "the install ended early"


@pytest.mark.long_work
def test_healthz_200_through_a_hanging_fetch(slow_world: SlowWorld) -> None:
    slow = slow_world.ready()
    samples = slow.fetch.wait_long_work()
    assert {health for _, health, _ in samples} == {200}
    assert {ready for _, _, ready in samples} == {200}  # the old revision serves
    assert slow.fetch.agent.serves(slow.sample_a)


@pytest.mark.long_work
def test_sigterm_during_an_install(slow_world: SlowWorld) -> None:
    slow = slow_world.ready()
    agent = slow.install.agent
    venvs = agent.home / "venvs"
    wait_until(lambda: pids_with(slow.install_marker), what="the install under way")
    code, _ = agent.stop(signal.SIGTERM, timeout=30)
    assert code == 0
    wait_gone(slow.install_marker)
    wait_until(lambda: not pids_tagged(slow.install.launcher.tag), 20, "all it started gone")
    assert [p for p in venvs.iterdir() if not p.name.startswith(".tmp-")] == []
    slow.install_gate.unlink()
    again = slow.install.launcher.agent(
        agent.env["REPO_URL"], agent.home, **_settings(agent, "INSTALL_COMMAND", "LOCKFILE")
    )
    again.wait_serving(slow.install_sample)
    status = again.wait_status(revision=slow.install_sample, ready=True)
    assert (venvs / str(status["deps_digest"]) / "done").read_text() == "installed\n"


@pytest.mark.long_work
def test_sigterm_during_a_hanging_fetch(slow_world: SlowWorld) -> None:
    slow = slow_world.ready()
    agent = slow.fetch.agent
    assert agent.alive()
    code, _ = agent.stop(signal.SIGTERM, timeout=30)
    assert code == 0
    # git and its helpers, supervisord and the app: everything it started is gone.
    wait_until(lambda: not pids_tagged(slow.fetch.launcher.tag), 20, "all it started gone")


def _settings(agent: Agent, *names: str) -> dict[str, str]:
    return {f"LIVE_PULL_{name}": agent.env[f"LIVE_PULL_{name}"] for name in names}


# -- kill and restart -------------------------------------------------------------------


def _supervisords(home: Path) -> list[int]:
    return pids_with(str(home / "run" / "supervisord.conf"))


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_sigkill_then_restart(launcher: Launcher, tmp_path: Path) -> None:
    sample = create_sample_repo(tmp_path / "remote")
    first = head(sample)
    home = tmp_path / "home"
    agent = launcher.agent(sample.url, home)
    agent.wait_serving(first)
    assert len(_supervisords(home)) == 1
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait_exit()
    wait_until(lambda: not _supervisords(home), 20, "supervisord gone with its agent")
    wait_until(lambda: not _listening(agent.port), 20, "the app gone with its agent")
    with remote_away(sample):  # serving at once needs nothing from the remote
        again = launcher.agent(sample.url, home)
        again.wait_serving(first)
        again.wait_status(revision=first, ready=True)
        assert len(_supervisords(home)) == 1
    newer = sample.commit(app_files("after the kill"), "newer")
    again.wait_serving(newer)  # supervisord answers on its socket: programs switch
    assert len(_supervisords(home)) == 1


# -- an agent that checks only when asked --------------------------------------------------

SECRET = "agent-secret"


@pytest.fixture(scope="module")
def quiet(
    tmp_path_factory: pytest.TempPathFactory, module_launcher: Launcher
) -> tuple[Agent, SampleRepo, Path]:
    root = tmp_path_factory.mktemp("quiet")
    sample = create_sample_repo(root / "remote")
    agent = module_launcher.agent(
        sample.url,
        root / "home",
        LIVE_PULL_POLL_INTERVAL="0",
        LIVE_PULL_WEBHOOK_SECRET=SECRET,
        # No bake: a release replaced here stops at once rather than standing by (a
        # rollback to a standby serves it again without starting it).
        LIVE_PULL_BAKE_SECONDS="0",
    )
    agent.wait_serving(head(sample))
    return agent, sample, root


def test_sighup_triggers_a_check(quiet: tuple[Agent, SampleRepo, Path]) -> None:
    agent, sample, _ = quiet
    checks = agent.checks()
    newer = sample.commit(app_files("after SIGHUP"), "hup")
    os.kill(agent.pid, signal.SIGHUP)
    agent.wait_serving(newer)
    assert agent.checks() > checks


def _cli(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIVE_PULL_STATUS_PORT": str(agent.status_port)}
    return subprocess.run(
        [sys.executable, "-m", "entrypoint", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,  # below the CLI's own 120 s wait: a failed rollback must end sooner
    )


def test_rollback_with_no_earlier_release(launcher: Launcher, tmp_path: Path) -> None:
    sample = create_sample_repo(tmp_path / "remote")
    agent = launcher.agent(sample.url, tmp_path / "home")
    only = head(sample)
    agent.wait_serving(only)
    done = _cli(agent, "rollback")
    assert done.returncode != 0
    assert "no earlier release" in done.stderr
    assert agent.serves(only)
    assert agent.readyz() == 200


def test_rollback_to_a_release_that_fails_to_start(quiet: tuple[Agent, SampleRepo, Path]) -> None:
    agent, sample, _ = quiet
    target = str(agent.status()["revision"])
    newer = sample.commit(app_files("rolled back from"), "newer")
    assert _cli(agent, "sync").returncode == 0
    agent.wait_serving(newer)
    # The retained release is broken on disk since it served.
    (agent.home / "releases" / target / "app.py").write_text("raise SystemExit(1)\n")
    done = _cli(agent, "rollback")
    assert done.returncode != 0
    assert target[:12] in done.stderr
    status = agent.wait_status(revision=newer, ready=True)
    rollback = status["rollback"] or {}
    assert rollback.get("to") == target
    assert rollback.get("status") == "failed"
    assert rollback.get("error")
    agent.wait_serving(newer)
    assert agent.readyz() == 200


def _raw_webhook(port: int, signature: bytes) -> bytes:
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    request = (
        b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nX-GitHub-Event: push\r\n"
        b"X-Hub-Signature-256: " + signature + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_webhook_signature_with_non_ascii_bytes(quiet: tuple[Agent, SampleRepo, Path]) -> None:
    agent, _, _ = quiet
    for signature in (b"sha256=\xc3\xa9\xff\xfe" + b"0" * 56, "sha256=ü".encode()):

        def answered(sig: bytes = signature) -> bytes | None:
            answer = _raw_webhook(agent.status_port, sig)
            return None if b" 429 " in answer.split(b"\r\n")[0] else answer

        answer = wait_until(answered, 90, "an answer other than 429 (rate limit)")
        assert answer.split(b"\r\n")[0].split(b" ")[1] == b"401", answer[:200]
    assert agent.healthz() == 200
    assert agent.alive()


# -- the remote owned by someone else; the output in a file ---------------------------------

FOREIGN_UID = 12345


def _chown_tree(path: Path, uid: int) -> None:
    for directory, dirs, names in os.walk(path):
        os.chown(directory, uid, uid)
        for name in dirs + names:
            os.lchown(os.path.join(directory, name), uid, uid)


def test_file_remote_owned_by_another_uid(launcher: Launcher, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the repository to another uid")
    sample = create_sample_repo(tmp_path / "remote")
    _chown_tree(sample.remote, FOREIGN_UID)  # as a bind mount from the host would be
    agent = launcher.agent(sample.url, tmp_path / "home")
    agent.wait_serving(head(sample))
    _chown_tree(sample.remote, os.geteuid())  # the developer pushes as its owner would
    newer = sample.commit(app_files("pushed to a foreign repository"), "foreign")
    _chown_tree(sample.remote, FOREIGN_UID)
    agent.wait_serving(newer)
    assert newer not in agent.failed()


def test_output_redirected_to_a_regular_file(launcher: Launcher, tmp_path: Path) -> None:
    line = f"APP-LINE {marker()}"
    sample = create_sample_repo(tmp_path / "remote")
    first = sample.commit({"app.py": app_with(f"print({line!r}, flush=True)", "a")}, "a")
    output = tmp_path / "agent.log"
    agent = launcher.agent(sample.url, tmp_path / "home", combined=output)
    agent.wait_serving(first)
    second = sample.commit({"app.py": app_with(f"print({line!r}, flush=True)", "b")}, "b")
    agent.wait_serving(second)
    agent.wait_status(state="running", revision=second)  # recorded: 'revision live'
    code, _ = agent.stop()
    assert code == 0
    text = output.read_text(errors="replace")
    lines = text.splitlines()
    assert "\0" not in text
    assert any("live-pull starting" in x for x in lines[:2]), lines[:2]
    assert lines.count(line) == 2, [x for x in lines if "APP-LINE" in x]
    for sha in (first, second):
        assert any(x.endswith(f"revision live sha={sha[:12]}") for x in lines), sha
    assert lines[-1].endswith("stopped")
