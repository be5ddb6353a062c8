"""POST /webhook: verified pushes to the tracked ref trigger a check; nothing else does."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path

import git
import requests

from entrypoint.auth import Secret
from entrypoint.sample import SampleRepo, app_files
from entrypoint.webhook import MAX_BODY, Webhook
from tests.conftest import AgentProcess

Factory = Callable[..., AgentProcess]
SECRET = "hook-secret-123"


def test_github_published_test_vector() -> None:
    # From GitHub's "Validating webhook deliveries" documentation.
    calls: list[int] = []
    hook = Webhook(Secret("S", "It's a Secret to Everybody"), lambda: None, lambda: calls.append(1))
    signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    headers = {"X-Hub-Signature-256": signature, "X-GitHub-Event": "push"}
    assert hook.handle(headers, b"Hello, World!").code == 202
    assert calls == [1]
    wrong = {"X-Hub-Signature-256": signature.replace("757", "758"), "X-GitHub-Event": "push"}
    assert hook.handle(wrong, b"Hello, World!").code == 401
    assert calls == [1]


def github(body: bytes, secret: str = SECRET, event: str = "push") -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Event": event}


def push(ref: str = "refs/heads/main") -> bytes:
    return json.dumps({"ref": ref, "after": "0" * 40}).encode()


def post(agent: AgentProcess, body: bytes, headers: dict[str, str]) -> requests.Response:
    started = time.monotonic()
    response = requests.post(agent.status_url("/webhook"), data=body, headers=headers, timeout=5)
    assert time.monotonic() - started < 1.0  # replies at once; the work is in the background
    return response


def served_revision(agent: AgentProcess) -> str:
    return str(agent.status().get("revision"))


def test_webhook_triggers_checks_for_the_tracked_ref_only(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET + "\n")
    agent = agent_factory(
        sample.url, LIVE_PULL_POLL_INTERVAL="0", LIVE_PULL_WEBHOOK_SECRET_FILE=str(secret_file)
    )
    first = git.Repo(sample.work).head.commit.hexsha
    agent.wait_serving(first)
    agent.wait_status(state="running", ref="refs/heads/main")
    sha = sample.commit(app_files("pushed"), "pushed")

    refused = [
        (push(), {}),  # no signature
        (push(), github(push(), secret="wrong")),
        (push(), {"X-Gitlab-Token": "wrong", "X-Gitlab-Event": "Push Hook"}),
        (push(), {"Authorization": "Bearer wrong"}),
    ]
    for body, headers in refused:
        assert post(agent, body, headers).status_code == 401
    ignored = [
        (push("refs/heads/other"), github(push("refs/heads/other"))),
        (push(), github(push(), event="issues")),
    ]
    for body, headers in ignored:
        reply = post(agent, body, headers)
        assert reply.status_code == 200 and "ignored" in reply.json()
    time.sleep(3)
    assert served_revision(agent) == first  # nothing above caused a check

    assert post(agent, push(), github(push())).status_code == 202
    agent.wait_serving(sha, timeout=20)

    for headers_for in (
        lambda body: {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook"},
        lambda body: {
            "X-Gitea-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
            "X-Gitea-Event": "push",
        },
        lambda body: {"Authorization": f"Bearer {SECRET}"},
    ):
        sha = sample.commit(app_files(f"again {sha[:6]}"), "again")
        assert post(agent, push(), headers_for(push())).status_code == 202
        agent.wait_serving(sha, timeout=20)

    # A rotated secret takes effect at once.
    secret_file.write_text("rotated-secret\n")
    assert post(agent, push(), github(push())).status_code == 401
    assert post(agent, push(), github(push(), secret="rotated-secret")).status_code == 202


def test_oversized_and_rate_limited(sample: SampleRepo, agent_factory: Factory) -> None:
    agent = agent_factory(sample.url, LIVE_PULL_WEBHOOK_SECRET=SECRET)
    agent.wait_status(state="running")
    big = b"x" * (MAX_BODY + 1)
    assert post(agent, big, github(big)).status_code == 413
    codes = [post(agent, push(), {}).status_code for _ in range(40)]
    assert codes.count(401) >= 1 and codes[-1] == 429
    assert SECRET not in agent.output()


def test_webhook_off_without_a_secret(sample: SampleRepo, agent_factory: Factory) -> None:
    agent = agent_factory(sample.url)
    agent.wait_status(state="running")
    assert post(agent, push(), github(push())).status_code == 404
