"""Following release tags (REPO_REF=semver:...): real repositories, one agent throughout."""

from __future__ import annotations

from collections.abc import Callable

import git

from entrypoint.sample import SampleRepo, app_files
from tests.conftest import AgentProcess, wait_until

Factory = Callable[..., AgentProcess]
RANGE = "semver:>=1.4,<2"


def tag(sample: SampleRepo, name: str, message: str, *, annotated: bool = False) -> str:
    """Commit the app saying `message`, tag the commit `name` (moving the tag if it is
    there already) and push the tag; return the commit's sha."""
    sha = sample.commit(app_files(message), message)
    repo = git.Repo(sample.work)
    repo.git.tag("-f", *(["-a", "-m", name] if annotated else []), name)
    repo.git.push("--force", "origin", f"refs/tags/{name}")
    return sha


def delete_tags(sample: SampleRepo, *names: str) -> None:
    git.Repo(sample.work).git.push("origin", *(f":refs/tags/{name}" for name in names))


def wait_checks(agent: AgentProcess, more: int = 2) -> dict[str, object]:
    """Wait until the agent has asked the remote `more` more times; return its status."""
    target = int(agent.status()["checks"]) + more

    def checked() -> dict[str, object] | None:
        status = agent.status()
        return status if status.get("checks", 0) >= target else None

    return dict(wait_until(checked, what=lambda: f"{more} more checks: {agent.status()}"))


def test_the_highest_tag_in_range_is_followed(sample: SampleRepo, agent_factory: Factory) -> None:
    tag(sample, "v1.4.0", "one four")
    v150 = tag(sample, "v1.5.0", "one five", annotated=True)
    tag(sample, "latest", "not a version")
    agent = agent_factory(sample.url, REPO_REF=RANGE)
    assert "one five" in agent.wait_serving(v150)
    status = agent.wait_status(ref=RANGE, tag="v1.5.0")
    assert status["revision"] == v150

    # Out of range, and a pre-release the range does not name: nothing moves.
    tag(sample, "v2.0.0", "two")
    tag(sample, "v1.7.0rc1", "candidate", annotated=True)
    status = wait_checks(agent)
    assert (status["revision"], status["tag"], status["last_error"]) == (v150, "v1.5.0", None)

    v160 = tag(sample, "v1.6.0", "one six", annotated=True)
    agent.wait_serving(v160)
    agent.wait_status(tag="v1.6.0", ref=RANGE)

    moved = tag(sample, "v1.6.0", "one six, moved", annotated=True)
    assert "one six, moved" in agent.wait_serving(moved)

    delete_tags(sample, "v1.6.0")
    assert "one five" in agent.wait_serving(v150)
    agent.wait_status(tag="v1.5.0")

    delete_tags(sample, "v1.4.0", "v1.5.0")
    status = agent.wait_status(error_kind="transient")
    assert status["last_error"].startswith(
        f"no tag matches REPO_REF={RANGE}: the remote's highest version tag is v2.0.0 (2 in all)"
    )
    assert (status["revision"], status["ready"]) == (v150, True)
    assert "one five" in (agent.app() or "")
    assert f"no tag matches REPO_REF={RANGE}" in agent.output()


def test_no_tag_in_range_at_first_start_exits_4(sample: SampleRepo, agent_factory: Factory) -> None:
    tag(sample, "v1.0.0", "too old")
    agent = agent_factory(sample.url, REPO_REF=RANGE, LIVE_PULL_START_TIMEOUT="2")
    assert agent.wait_exit() == 4
    last = agent.stderr_path.read_text().strip().splitlines()[-1]
    assert last.startswith("live-pull: could not start: ")
    assert (
        f"no tag matches REPO_REF={RANGE}: the remote's highest version tag is v1.0.0 (1 in all)"
        in last
    )
