"""LIVE_PULL_LOG_FORMAT=json end to end: one agent, a web and a worker that print, and
every line of the agent's output an object, the secret in none of them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from entrypoint.sample import APP, SampleRepo
from tests.conftest import AgentProcess, wait_until
from tests.git_http import GitHttpServer

Factory = Callable[..., AgentProcess]
USER = "deploy-bot"
TOKEN = "s3cr3t-t0ken-json-5678"
LONG = 200_000

# The web prints a line, bytes that are not UTF-8, a line longer than the limit, the
# token (which the repository may hold, but the log must not show), and a partial line.
LOUD_APP = APP.replace(
    "REVISION = ",
    "import sys\n"
    "print('hello from web', flush=True)\n"
    "sys.stderr.buffer.write(b'bad bytes \\xff\\xfe here\\n')\n"
    f"sys.stdout.write('L' * {LONG} + '\\n')\n"
    f"print('token={TOKEN}', flush=True)\n"
    "sys.stdout.write('waiting for requests'); sys.stdout.flush()\n"
    "REVISION = ",
)
WORKER = "import time\nprint('hello from worker', flush=True)\ntime.sleep(3600)\n"


def objects(raw: bytes) -> list[dict[str, Any]]:
    """Every line of the output as an object; fails on the first that is not."""
    found = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        try:
            found.append(dict(json.loads(line)))
        except ValueError as exc:
            raise AssertionError(f"line {number} is not JSON: {line[:200]!r}") from exc
    return found


def test_json_log_lines_of_agent_supervisord_and_app(
    sample: SampleRepo, agent_factory: Factory
) -> None:
    files = {
        "app.py": LOUD_APP.format(message="json"),
        "worker.py": WORKER,
        "Procfile": "web: python app.py\nworker: python worker.py\n",
    }
    sha = sample.commit(files, "a loud app")
    with GitHttpServer(sample.remote.parent, credentials=(USER, TOKEN)) as server:
        url = server.url(sample.remote.name, userinfo=f"{USER}:{TOKEN}")
        agent = agent_factory(url, LIVE_PULL_LOG_FORMAT="json")
        agent.wait_serving(sha)
        wait_until(lambda: b"waiting for requests" in _raw(agent), what=agent.output)
        code, _ = agent.stop()
    assert code == 0
    raw = _raw(agent)
    assert TOKEN.encode() not in raw and USER.encode() not in raw
    lines = objects(raw)
    _agent_lines_are_records(lines)
    app = {line["message"][:30]: line for line in lines if line["program"] in ("web", "worker")}
    assert app["hello from web"]["stream"] == "stdout"
    assert app["hello from web"]["process"] in ("web_0", "web_1")  # a slot of web
    assert app["hello from worker"]["program"] == "worker"
    assert app["bad bytes \\xff\\xfe here"]["stream"] == "stderr"
    assert app["token=***"]["program"] == "web"
    assert app["waiting for requests"]["stream"] == "stdout"  # written once it sat idle
    long = app["L" * 30]
    assert long["truncated"] is True and len(long["message"]) == 64 * 1024
    assert any(line["program"] == "supervisord" and "level" in line for line in lines)


def _agent_lines_are_records(lines: list[dict[str, Any]]) -> None:
    mine = [line for line in lines if line["program"] == "live-pull"]
    assert mine and all({"time", "level", "logger", "message"} <= set(line) for line in mine)
    live = [line for line in mine if line["message"].startswith("revision live")]
    assert live and len(live[0]["sha"]) == 12  # a fact of the message, as a field
    assert mine[-1]["message"] == "stopped"


def _raw(agent: AgentProcess) -> bytes:
    return agent.stdout_path.read_bytes() + agent.stderr_path.read_bytes()
