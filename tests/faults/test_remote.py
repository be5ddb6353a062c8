"""Remote faults: the remote refuses, hangs, errors, loses refs, rewrites history, floods.

Pass criterion throughout: the app keeps serving the revision it runs, /status says
what is wrong, and once the fault is gone the agent deploys by itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import git
import pytest
import requests

from entrypoint.sample import SampleRepo, app_files, create_sample_repo
from tests.conftest import wait_until
from tests.faults.agents import Agent, Family, Launcher, Prober
from tests.faults.processes import app_pid
from tests.faults.remote import FaultyRemote

GIT_TIMEOUT = "3"
HANGS = ("blackhole", "hang_fetch")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyRemote]:
    root = tmp_path_factory.mktemp("remote-family")
    with FaultyRemote(root / "remote") as remote:
        yield remote


@pytest.fixture(scope="module")
def family(faulty: FaultyRemote, module_launcher: Launcher) -> Family:
    # REPO_REF unset: the agent follows the remote's default branch.
    return Family(
        faulty.root.parent,
        module_launcher,
        url=lambda sample: faulty.url(sample.remote.name),
        LIVE_PULL_GIT_TIMEOUT=GIT_TIMEOUT,
    )


@pytest.fixture
def agent(family: Family, faulty: FaultyRemote) -> Iterator[Agent]:
    faulty.set("up")
    yield family.ready()
    faulty.set("up")


def _fault_then_recover(
    family: Family, faulty: FaultyRemote, agent: Agent, mode: str, *words: str
) -> dict[str, object]:
    """Switch the fault on, check the app serves and the error shows, switch it off,
    check the commit pushed meanwhile goes live by itself."""
    before = agent.status()
    running = str(before["revision"])
    with Prober(agent, running) as probe:
        faulty.set(mode)
        pending = family.good(f"pushed while {mode}")
        status = agent.wait_error(after=before, error_kind="transient")
        if mode not in HANGS:  # the loop goes on checking, backing off
            wait_until(lambda: agent.checks() >= int(status.get("checks") or 0) + 1)
        assert agent.healthz() == 200
        assert agent.readyz() == 200
        assert agent.status()["revision"] == running
    probe.assert_served()
    message = str(status["last_error"]).lower()
    assert any(word in message for word in words), status["last_error"]
    assert pending not in agent.failed()
    faulty.set("up")
    agent.wait_serving(pending)
    agent.wait_status(revision=pending, ready=True, last_error=None)
    return status


def test_remote_unreachable_while_running(
    family: Family, faulty: FaultyRemote, agent: Agent
) -> None:
    _fault_then_recover(family, faulty, agent, "refused", "connect", "refused")


def test_remote_accepts_and_never_answers(
    family: Family, faulty: FaultyRemote, agent: Agent
) -> None:
    _fault_then_recover(
        family, faulty, agent, "blackhole", "timed out", "timeout", "did not complete"
    )


def test_remote_answers_http_500(family: Family, faulty: FaultyRemote, agent: Agent) -> None:
    _fault_then_recover(family, faulty, agent, "http500", "500")


def test_remote_resets_connections(family: Family, faulty: FaultyRemote, agent: Agent) -> None:
    # The reset lands as soon as the connection is accepted: depending on whether curl
    # has checked its connect yet, git says "reset", "recv failure", "empty reply" or
    # "couldn't connect" (SO_ERROR already set when the connect is checked).
    words = ("reset", "recv failure", "empty reply", "couldn't connect")
    _fault_then_recover(family, faulty, agent, "reset", *words)


def test_fetch_hangs_after_refs_are_advertised(
    family: Family, faulty: FaultyRemote, agent: Agent
) -> None:
    # The cheap check sees the new commit; fetching it hangs until the git timeout.
    # A transient fault says nothing about the revision: it is not recorded failed.
    status = _fault_then_recover(
        family, faulty, agent, "hang_fetch", "timed out", "timeout", "did not complete"
    )
    assert faulty.count("fetch") >= 1, "the fault was never reached"
    assert status["ready"] is True


def test_ref_deleted_on_the_remote(family: Family, agent: Agent) -> None:
    before = agent.status()
    running = str(before["revision"])
    bare = git.Repo(family.sample.remote)
    with Prober(agent, running) as probe:
        bare.git.update_ref("-d", "refs/heads/main")
        status = agent.wait_error(after=before)
        assert agent.readyz() == 200
        assert agent.healthz() == 200
    probe.assert_served()
    assert status["revision"] == running
    recreated = family.good("branch pushed again")
    agent.wait_serving(recreated)
    agent.wait_status(revision=recreated, last_error=None)


def test_branch_force_pushed_to_an_older_commit(family: Family, agent: Agent) -> None:
    older = str(agent.status()["revision"])
    newer = family.good("newer")
    agent.wait_serving(newer)
    git.Repo(family.sample.work).git.push("--force", "origin", f"{older}:refs/heads/main")
    agent.wait_serving(older)  # the remote is the truth
    status = agent.wait_status(revision=older, ready=True)
    assert older not in status["failed_revisions"]


def test_branch_force_pushed_to_an_unrelated_history(
    family: Family, agent: Agent, tmp_path: Path
) -> None:
    other = SampleRepo(family.sample.remote, tmp_path / "unrelated")
    repo = git.Repo.init(other.work, initial_branch="main")
    repo.create_remote("origin", family.sample.remote.as_uri())
    orphan = other.commit(app_files("an unrelated history"), "orphan root")
    agent.wait_serving(orphan)
    agent.wait_status(revision=orphan, ready=True)


def test_default_branch_of_the_remote_changes(family: Family, agent: Agent) -> None:
    on_other = family.sample.commit(app_files("on the new default"), "other", branch="other")
    bare = git.Repo(family.sample.remote)
    try:
        bare.git.symbolic_ref("HEAD", "refs/heads/other")
        agent.wait_serving(on_other)
        assert agent.wait_status(revision=on_other)["ref"] == "refs/heads/other"
    finally:
        bare.git.symbolic_ref("HEAD", "refs/heads/main")
    back = family.good("main again")
    agent.wait_serving(back)


def test_remote_path_replaced_by_a_non_repository(family: Family, agent: Agent) -> None:
    before = agent.status()
    running = str(before["revision"])
    remote = family.sample.remote
    aside = remote.with_name("aside.git")
    with Prober(agent, running) as probe:
        remote.rename(aside)
        try:
            remote.mkdir()
            (remote / "index.html").write_text("<html>not a repository</html>\n")
            agent.wait_error(after=before)
            assert agent.readyz() == 200
        finally:
            shutil.rmtree(remote)
            aside.rename(remote)
    probe.assert_served()
    fixed = family.good("repository back")
    agent.wait_serving(fixed)
    agent.wait_status(revision=fixed, last_error=None)


def test_remote_repository_gone(family: Family, agent: Agent) -> None:
    before = agent.status()
    running = str(before["revision"])
    remote = family.sample.remote
    aside = remote.with_name("gone.git")
    with Prober(agent, running) as probe:
        remote.rename(aside)
        try:
            status = agent.wait_error(after=before, error_kind="transient")
            assert agent.healthz() == 200
        finally:
            aside.rename(remote)
    probe.assert_served()
    assert status["revision"] == running
    back = family.good("repository back")
    agent.wait_serving(back)


# -- agents of their own -------------------------------------------------------------------


def test_remote_unreachable_at_start_with_nothing_on_disk(
    launcher: Launcher, tmp_path: Path
) -> None:
    with FaultyRemote(tmp_path / "nothing") as remote:
        remote.set("refused")
        agent = launcher.agent(
            remote.url("app.git"), tmp_path / "home", LIVE_PULL_START_TIMEOUT="3"
        )
        assert agent.wait_exit() == 4
    lines = agent.stderr_lines()
    final = [line for line in lines if line.startswith("live-pull: ")]
    assert len(final) == 1, lines[-5:]
    assert final[0] == lines[-1]
    assert "could not start" in final[0]
    assert "3s" in final[0]
    assert "connect" in final[0].lower()


def test_empty_repository_at_start_then_first_push(launcher: Launcher, tmp_path: Path) -> None:
    bare = tmp_path / "empty.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    agent = launcher.agent(bare.as_uri(), tmp_path / "home", LIVE_PULL_START_TIMEOUT="60")
    status = agent.wait_status(state="waiting for remote")
    assert status["last_error"]
    assert agent.readyz() == 503
    assert agent.healthz() == 200
    work = tmp_path / "work"
    repo = git.Repo.init(work, initial_branch="main")
    repo.create_remote("origin", bare.as_uri())
    first = SampleRepo(bare, work).commit(app_files("first push"), "first")
    agent.wait_serving(first)
    agent.wait_status(revision=first, ready=True, last_error=None)


def test_tag_moved(launcher: Launcher, tmp_path: Path) -> None:
    sample = create_sample_repo(tmp_path / "remote", message="tagged")
    work = git.Repo(sample.work)
    first = work.head.commit.hexsha
    work.git.tag("-a", "v1", "-m", "v1", first)
    work.git.push("origin", "refs/tags/v1")
    agent = launcher.agent(sample.url, tmp_path / "home", REPO_REF="v1")
    agent.wait_serving(first)
    moved_to = sample.commit(app_files("the tag moved here"), "second")
    work.git.tag("-f", "-a", "v1", "-m", "v1 moved", moved_to)
    work.git.push("--force", "origin", "refs/tags/v1")
    agent.wait_serving(moved_to)
    # A branch commit the tag does not point at is not deployed.
    checks = agent.checks()
    untagged = sample.commit(app_files("untagged"), "third")
    wait_until(lambda: agent.checks() >= checks + 2, what="two more checks")
    assert agent.serves(moved_to)
    assert untagged not in str(agent.status().get("revision"))


# -- storms -------------------------------------------------------------------------------


SECRET = "storm-secret"


@pytest.fixture(scope="module")
def storm(
    tmp_path_factory: pytest.TempPathFactory, module_launcher: Launcher
) -> Iterator[tuple[Agent, FaultyRemote, SampleRepo]]:
    """An agent that checks only when asked (no polling), behind a remote that can hold."""
    root = tmp_path_factory.mktemp("storm")
    sample = create_sample_repo(root / "remote", message="storm")
    with FaultyRemote(root / "remote") as remote:
        agent = module_launcher.agent(
            remote.url(sample.remote.name),
            root / "home",
            LIVE_PULL_POLL_INTERVAL="0",
            LIVE_PULL_GIT_TIMEOUT="60",
            LIVE_PULL_WEBHOOK_SECRET=SECRET,
        )
        agent.wait_serving(git.Repo(sample.work).head.commit.hexsha)
        yield agent, remote, sample
        remote.set("up")


def _held_check(agent: Agent, remote: FaultyRemote) -> int:
    """Hold the remote, ask for one check, wait until it is stuck there; return the
    number of checks before it."""
    before = _quiet_checks(agent, 0)  # nothing in flight
    remote.set("hold")
    assert requests.post(agent.status_url("/sync"), timeout=10).status_code == 202
    wait_until(lambda: remote.held >= 1, what="a check held at the remote")
    return before


def _quiet_checks(agent: Agent, before: int, at_least: int = 0) -> int:
    """Checks done since `before`, once there are `at_least` and the count has stopped
    moving (bounded): a held check that is let go may take seconds to be counted."""
    seen: list[int] = []

    def settled() -> bool:
        seen.append(agent.checks())
        quiet = len(seen) >= 10 and len(set(seen[-10:])) == 1
        return quiet and seen[-1] - before >= at_least

    wait_until(settled, 60, lambda: f"{at_least}+ checks, then none: {seen[-5:]} - {before}")
    return seen[-1] - before


def test_a_thousand_syncs_cost_one_more_check(
    storm: tuple[Agent, FaultyRemote, SampleRepo],
) -> None:
    agent, remote, sample = storm
    before = _held_check(agent, remote)
    infos = remote.count("info")
    with requests.Session() as session:
        answers = {
            session.post(agent.status_url("/sync"), timeout=10).status_code for _ in range(1000)
        }
    assert answers == {202}
    remote.set("up")
    done = _quiet_checks(agent, before, at_least=1)
    assert 1 <= done <= 2, f"{done} checks for 1001 sync requests"
    assert remote.count("info") - infos <= 6
    # Still follows the remote afterwards.
    newer = sample.commit(app_files("after the storm"), "after storm")
    requests.post(agent.status_url("/sync"), timeout=10)
    agent.wait_serving(newer)


def _delivery(secret: str, ref: str = "refs/heads/main") -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"ref": ref, "after": "0" * 40}).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": f"sha256={signature}",
    }
    return body, headers


def test_webhook_storm(storm: tuple[Agent, FaultyRemote, SampleRepo]) -> None:
    agent, remote, sample = storm
    before = _held_check(agent, remote)
    good_body, good_headers = _delivery(SECRET)
    bad_body, bad_headers = _delivery("not-the-secret")
    valid: set[int] = set()
    forged: set[int] = set()
    with requests.Session() as session:
        for _ in range(150):
            url = agent.status_url("/webhook")
            valid.add(
                session.post(url, data=good_body, headers=good_headers, timeout=10).status_code
            )
            forged.add(
                session.post(url, data=bad_body, headers=bad_headers, timeout=10).status_code
            )
    assert valid <= {202, 429}, valid
    assert forged <= {401, 429}, forged
    assert agent.healthz() == 200
    remote.set("up")
    done = _quiet_checks(agent, before, at_least=1)
    assert 1 <= done <= 2, f"{done} checks for a storm of 300 deliveries"
    newer = sample.commit(app_files("after the webhook storm"), "after webhooks")
    requests.post(agent.status_url("/sync"), timeout=10)
    agent.wait_serving(newer)
    assert agent.readyz() == 200


def _argv_holding(secret: str) -> list[str]:
    """Every process whose argv contains `secret`, read now (not after git exited)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if secret.encode() in argv:
                found.append(argv.replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_credentials_never_in_argv_while_git_runs(launcher: Launcher, tmp_path: Path) -> None:
    token = f"tok{uuid.uuid4().hex}"
    sample = create_sample_repo(tmp_path / "remote", message="private")
    with FaultyRemote(tmp_path / "remote") as remote:
        url = remote.url(sample.remote.name).replace("http://", f"http://deploy:{token}@")
        agent = launcher.agent(url, tmp_path / "home")
        agent.wait_serving(git.Repo(sample.work).head.commit.hexsha)
        # The check and the fetch, each caught while git waits on the remote.
        remote.set("hold")
        wait_until(lambda: remote.held >= 1, what="a check held at the remote")
        assert _argv_holding(token) == []
        newer = sample.commit(app_files("private, newer"), "newer")
        remote.set("hang_fetch")
        wait_until(lambda: remote.count("fetch") >= 1, what="a fetch hanging at the remote")
        assert _argv_holding(token) == []
        remote.set("up")
        agent.wait_serving(newer)
    assert token not in json.dumps(agent.status())
    assert token not in agent.output()
    app_environment = Path(f"/proc/{app_pid(newer)}/environ").read_bytes()
    assert token.encode() not in app_environment
