"""POST /webhook: verified pushes to the tracked ref trigger a check; nothing else does."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import git
import pytest
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
    if response.status_code == 202:  # replies at once; the check is in the background
        assert time.monotonic() - started < 1.0
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


def test_oversized_and_bad_floods_never_block_a_good_delivery(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    agent = agent_factory(sample.url, LIVE_PULL_WEBHOOK_SECRET=SECRET)
    agent.wait_status(state="running")
    big = b"x" * (MAX_BODY + 1)
    assert post(agent, big, github(big)).status_code == 413
    codes = {post(agent, push(), {}).status_code for _ in range(200)}
    assert codes == {401}
    assert post(agent, push(), github(push())).status_code == 202  # never 429
    assert SECRET not in agent.output()


def test_webhook_off_without_a_secret(sample: SampleRepo, agent_factory: Factory) -> None:
    agent = agent_factory(sample.url)
    agent.wait_status(state="running")
    assert post(agent, push(), github(push())).status_code == 404


# Header values no sender should send: non-ASCII (UTF-8 and latin-1), control-free.
ODD_VALUES = ["\u00e9" * 71, "sha256=\u00e9" + "0" * 63, "\u20ac", "\udc80", "\u00ff\u00fe"]
# One header per branch of _verified, each filled with an odd value.
BRANCHES = [
    "X-Hub-Signature-256",
    "X-Gitea-Signature",
    "X-Forgejo-Signature",
    "X-Gitlab-Token",
    "Authorization",
]


def odd(header: str, value: str) -> dict[str, str]:
    return {header: f"Bearer {value}" if header == "Authorization" else value}


@pytest.mark.parametrize("header", BRANCHES)
@pytest.mark.parametrize("value", ODD_VALUES, ids=range(len(ODD_VALUES)))
def test_any_header_value_is_a_plain_401(header: str, value: str) -> None:
    calls: list[int] = []
    hook = Webhook(Secret("S", SECRET), lambda: None, lambda: calls.append(1))
    reply = hook.handle({**odd(header, value), "X-GitHub-Event": "push"}, push())
    assert (reply.code, reply.body) == (401, {"error": "bad or missing signature"})
    assert calls == []


def test_header_names_in_any_case() -> None:
    # HTTP/2 proxies (Envoy, most load balancers) pass header names in lowercase.
    calls: list[int] = []
    hook = Webhook(Secret("S", SECRET), lambda: None, lambda: calls.append(1))
    for headers in (github(push()), {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook"}):
        lower = {name.lower(): value for name, value in headers.items()}
        assert hook.handle(lower, push()).code == 202
    issues = {name.lower(): value for name, value in github(push(), event="issues").items()}
    assert hook.handle(issues, push()).code == 200
    assert calls == [1, 1]


def test_non_ascii_token_as_http_server_decodes_it() -> None:
    # http.server decodes header bytes as latin-1: the UTF-8 bytes of the secret arrive so.
    secret = "cl\u00e9-secr\u00e8te"
    calls: list[int] = []
    hook = Webhook(Secret("S", secret), lambda: None, lambda: calls.append(1))
    on_the_wire = secret.encode().decode("latin-1")
    assert hook.handle({"X-Gitlab-Token": on_the_wire}, push()).code == 202
    assert hook.handle({"Authorization": f"Bearer {on_the_wire}"}, push()).code == 202
    assert hook.handle({"X-Gitlab-Token": on_the_wire[:-1]}, push()).code == 401
    assert calls == [1, 1]


def raw_post(port: int, header: bytes, body: bytes) -> tuple[int, dict[str, str]]:
    """POST /webhook over a plain socket, so a header can hold any bytes."""
    request = (
        b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + header
        + b"\r\nX-GitHub-Event: push\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head, "no reply at all"
    return int(head.split()[1]), json.loads(payload)


def test_non_ascii_signature_headers_over_http(sample: SampleRepo, agent_factory: Factory) -> None:
    agent = agent_factory(sample.url, LIVE_PULL_WEBHOOK_SECRET=SECRET, LIVE_PULL_POLL_INTERVAL="0")
    agent.wait_status(state="running")
    odd_bytes = [b"\xc3\xa9" * 32, b"sha256=\xc3\xa9" + b"0" * 62, b"\xe9\xff\x80"]
    for name in BRANCHES:
        for value in odd_bytes:
            prefix = b"Bearer " if name == "Authorization" else b""
            header = name.encode() + b": " + prefix + value
            reply = raw_post(agent.status_port, header, push())
            assert reply == (401, {"error": "bad or missing signature"}), header
    good = github(push())["X-Hub-Signature-256"].encode()
    assert raw_post(agent.status_port, b"X-Hub-Signature-256: " + good, push())[0] == 202
    assert "Traceback" not in agent.output()
