"""Fleets end to end: agents with separate homes, one remote, one real PostgreSQL.

The app's release step writes a row into its own database (DATABASE_URL, which the
app keeps) and a line into a file per attempt, so the tests count both."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import requests

from entrypoint.processes import end_tagged, home_id
from entrypoint.sample import APP, SampleRepo
from tests.conftest import AgentProcess, wait_until
from tests.postgres import PASSWORD, PostgresServer, server_binaries

Factory = Callable[..., AgentProcess]
WEBHOOK_SECRET = "fleet-hook-secret"

RELEASE = """\
set -e
echo "$REPLICA_NAME" >> "$ATTEMPTS"
sleep {sleep}
{fail}
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 \\
  -c "INSERT INTO migrations (sha, replica) VALUES ('$LIVE_PULL_REVISION', '$REPLICA_NAME')"
"""


def files(message: str, *, sleep: float = 0.5, fail: bool = False) -> dict[str, str]:
    return {
        "app.py": APP.format(message=message),
        "release.sh": RELEASE.format(sleep=sleep, fail="exit 3" if fail else ""),
        "Procfile": "release: sh release.sh\nweb: python app.py\n",
    }


def database(postgres: PostgresServer, name: str) -> str:
    """A database of the test's own: the app's table, and the fleet's tables too."""
    postgres.query(f"DROP DATABASE IF EXISTS {name}")
    postgres.query(f"CREATE DATABASE {name}")
    url = postgres.url(name)
    with __import__("psycopg").connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE migrations (sha text, replica text)")
    return url


def migrations(url: str, sha: str) -> list[str]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT replica FROM migrations WHERE sha = %s", (sha,)).fetchall()
    return [str(row[0]) for row in rows]


def replicas(
    agent_factory: Factory, sample: SampleRepo, tmp_path: Path, url: str, names: str, **extra: str
) -> list[AgentProcess]:
    return [
        agent_factory(
            sample.url,
            home=tmp_path / f"home-{name}",
            LIVE_PULL_FLEET_URL=url,
            LIVE_PULL_FLEET_REPLICA=name,
            LIVE_PULL_LISTEN="off",  # stop-then-start: the fleet keeps the capacity
            LIVE_PULL_POLL_INTERVAL="600",  # pushes reach them through the store
            REPLICA_NAME=name,
            DATABASE_URL=url,
            ATTEMPTS=str(tmp_path / "attempts"),
            LIVE_PULL_WEBHOOK_SECRET=WEBHOOK_SECRET,
            **extra,
        )
        for name in names
    ]


def attempts(tmp_path: Path) -> list[str]:
    path = tmp_path / "attempts"
    return path.read_text().split() if path.exists() else []


def logged_at(agent: AgentProcess, message: str) -> list[datetime]:
    """When the agent logged `message`, from its log's timestamps."""
    return [
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
        for line in agent.output().splitlines()
        if message in line
    ]


def switching_intervals(agent: AgentProcess) -> list[tuple[datetime, datetime]]:
    """When the agent held a switching place, from its log's timestamps."""
    taken = logged_at(agent, "fleet switching place taken")
    given = logged_at(agent, "fleet switching place given back")
    assert len(taken) == len(given)
    return list(zip(taken, given, strict=True))


def test_three_replicas_release_once_converge_one_at_a_time_and_skip_a_refused_revision(
    sample: SampleRepo, agent_factory: Factory, postgres: PostgresServer, tmp_path: Path
) -> None:
    url = database(postgres, "fleet_three")
    first = sample.commit(files("v0"), "v0 with a release step")
    fleet = replicas(agent_factory, sample, tmp_path, url, "abc")
    for agent in fleet:
        agent.wait_serving(first)
    assert len(migrations(url, first)) == 1  # three starts at once, one release step
    assert len(attempts(tmp_path)) == 1

    # A webhook to one replica reaches all three within seconds; they switch one at a time.
    second = sample.commit(files("v1"), "v1")
    pushed, synced = datetime.now(), time.monotonic()
    body = json.dumps({"ref": "refs/heads/main", "after": second}).encode()
    signature = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": f"sha256={signature}", "X-GitHub-Event": "push"}
    answer = requests.post(fleet[0].status_url("/webhook"), data=body, headers=headers, timeout=5)
    assert answer.status_code == 202
    for agent in fleet:
        agent.wait_serving(second)
    converged = time.monotonic() - synced
    for agent in fleet:  # each has given its switching place back (after serving)
        agent.wait_status(state="running", revision=second)
    assert len(migrations(url, second)) == 1
    assert len(attempts(tmp_path)) == 2
    for agent in fleet[1:]:
        heard = logged_at(agent, "push heard from a peer")
        assert heard and 0 <= (heard[-1] - pushed).total_seconds() < 5.0, (pushed, heard)
    held = sorted(span for agent in fleet for span in switching_intervals(agent))
    assert len(held) == 3  # each replica switched once, holding a place
    for (_, given_back), (taken, _) in itertools.pairwise(held):
        assert given_back <= taken, f"two replicas switching at once: {held}"
    assert converged < 40  # polling alone (600 s) would not have moved them

    # A revision whose release step fails on one replica is skipped by all three.
    broken = sample.commit(files("v2", fail=True), "v2 whose migration fails")
    requests.post(fleet[1].status_url("/sync"), timeout=5).raise_for_status()
    for agent in fleet:
        wait_until(
            lambda agent=agent: broken in agent.status().get("failed_revisions", {}),
            30,
            lambda agent=agent: f"v2 refused: {agent.status()}\n{agent.output()[-3000:]}",
        )
        assert f"revision {second[:12]}" in (agent.app() or "")
    assert len(attempts(tmp_path)) == 3  # the failing step ran once in the fleet
    reasons = [agent.status()["failed_revisions"][broken] for agent in fleet]
    assert sum("release step failed" in reason for reason in reasons) == 3
    assert sum(reason.startswith("refused by replica") for reason in reasons) == 2

    view = wait_until(lambda: _converged_view(fleet[2], second), 10, "the fleet's view")
    assert sorted(replica["name"] for replica in view["replicas"]) == ["a", "b", "c"]
    scraped = requests.get(fleet[2].status_url("/metrics"), timeout=5).text
    assert f'live_pull_fleet_replicas{{revision="{second}"}} 3.0' in scraped
    assert "live_pull_fleet_store_up 1.0" in scraped
    shown = fleet[2].cli("status")
    assert f"fleet: {second[:12]} through postgresql, this is c" in shown
    # A replica's state as it last reported it (every 2 s): running, or a step of the
    # check that refused v2 (checking, fetching, releasing, ...) in a report not yet renewed.
    assert re.search(rf"^ +replica: a {second[:12]} [a-z][a-z ]*$", shown, re.M), shown

    # An init container (`live-pull prepare`) prepares what the fleet serves, too.
    prepared = run_prepare(sample, tmp_path, url, "e")
    assert prepared.returncode == 0, prepared.stderr
    assert f"prepared sha={second}" in prepared.stdout

    # A new replica (nothing on disk) starts what the fleet serves, not the refused head.
    (late,) = replicas(agent_factory, sample, tmp_path, url, "d")
    late.wait_serving(second)
    assert "starting the fleet's revision" in late.output()
    assert len(attempts(tmp_path)) == 3  # its release step was done by the fleet
    fleet.append(late)
    for agent in fleet:
        assert PASSWORD not in agent.output()
        assert PASSWORD not in str(agent.status())


def _converged_view(agent: AgentProcess, sha: str) -> dict[str, object] | None:
    view = agent.status().get("fleet") or {}
    revisions = {replica["revision"] for replica in view.get("replicas", [])}
    return view if view.get("converged") and revisions == {sha} else None


def test_a_replica_killed_mid_release_leaves_the_step_to_another(
    sample: SampleRepo, agent_factory: Factory, postgres: PostgresServer, tmp_path: Path
) -> None:
    url = database(postgres, "fleet_killed")
    plain = {"app.py": APP.format(message="v0"), "Procfile": "web: python app.py\n"}
    first = sample.commit(plain, "v0 without a release step")
    fleet = replicas(agent_factory, sample, tmp_path, url, "ab")
    for agent in fleet:
        agent.wait_serving(first)

    second = sample.commit(files("v1", sleep=6), "v1 with a slow migration")
    requests.post(fleet[0].status_url("/sync"), timeout=5).raise_for_status()
    holder_name = wait_until(lambda: attempts(tmp_path), 30, "a replica running the step")[0]
    holder = fleet["ab".index(holder_name)]
    survivor = fleet[1 - "ab".index(holder_name)]
    holder.stop(signal.SIGKILL)
    end_tagged(home_id(holder.home), None, time.monotonic() + 10)  # the pod is gone

    survivor.wait_serving(second, timeout=60)
    assert attempts(tmp_path) == [holder_name, survivor.env["REPLICA_NAME"]]
    assert migrations(url, second) == [survivor.env["REPLICA_NAME"]]


def test_a_store_that_goes_down_keeps_the_serving_revision_and_is_recovered_from(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    if server_binaries() is None:
        pytest.skip(
            "no PostgreSQL server (Debian's postgresql) on this machine: fleet tests skipped"
        )
    with PostgresServer() as own:
        url = database(own, "fleet_down")
        first = sample.commit(files("v0"), "v0")
        (agent,) = replicas(agent_factory, sample, tmp_path, url, "a")
        agent.wait_serving(first)
        wait_until(lambda: (agent.status().get("fleet") or {}).get("replicas"), 15, "a report")

        own.stop()
        second = sample.commit(files("v1"), "v1, whose release step needs the store")
        requests.post(agent.status_url("/sync"), timeout=5).raise_for_status()
        status = agent.wait_status(error_kind="transient", timeout=30)
        assert "fleet store" in status["last_error"]
        assert PASSWORD not in status["last_error"]
        assert status["revision"] == first
        assert f"revision {first[:12]}" in (agent.app() or "")
        wait_until(lambda: (agent.status().get("fleet") or {}).get("error"), 15, "fleet.error")
        scraped = requests.get(agent.status_url("/metrics"), timeout=5).text
        assert "live_pull_fleet_store_up 0.0" in scraped

        own.start()  # retried with the backoff: no sync needed
        agent.wait_serving(second, timeout=60)
        assert migrations(url, second) == ["a"]
        wait_until(lambda: (agent.status().get("fleet") or {}).get("error") is None, 15, "ok")
        assert "fleet store reachable again" in agent.output()
        assert PASSWORD not in agent.output()


def prepare_env(sample: SampleRepo, tmp_path: Path, url: str, name: str) -> dict[str, str]:
    """`live-pull prepare` of replica `name`, as its init container runs it."""
    return {
        **os.environ,
        "REPO_URL": sample.url,
        "LIVE_PULL_HOME": str(tmp_path / f"home-{name}"),
        "LIVE_PULL_FLEET_URL": url,
        "LIVE_PULL_FLEET_REPLICA": name,
        "REPLICA_NAME": name,
        "DATABASE_URL": url,
        "ATTEMPTS": str(tmp_path / "attempts"),
    }


def run_prepare(
    sample: SampleRepo, tmp_path: Path, url: str, name: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entrypoint", "prepare"],
        env=prepare_env(sample, tmp_path, url, name),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_prepare_in_init_containers_runs_the_release_step_once(
    sample: SampleRepo, postgres: PostgresServer, tmp_path: Path
) -> None:
    """`live-pull prepare` of three replicas at once (init containers): one release step."""
    url = database(postgres, "fleet_prepare")
    sha = sample.commit(files("v0", sleep=1), "v0 with a release step")
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "entrypoint", "prepare"],
            env=prepare_env(sample, tmp_path, url, name),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in "abc"
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    assert len(attempts(tmp_path)) == 1
    assert len(migrations(url, sha)) == 1
    assert sum("release step skipped" in err and "done by" in err for _, err in outputs) == 2
