"""Which web commands are handed the socket and which are proxied, and why."""

from __future__ import annotations

import pytest

from entrypoint.switching.doors import handoff, server_name


@pytest.mark.parametrize(
    ("command", "way", "why"),
    [
        ("gunicorn -b 0.0.0.0:$PORT app:app", "socket", "gunicorn takes it through LISTEN_FDS"),
        ("exec env A=1 /venv/bin/gunicorn app:app", "socket", "gunicorn takes it"),
        ("python3.12 -m gunicorn app:app", "socket", "gunicorn takes it"),
        ("gunicorn --bind fd://0 app:app", "socket", "the command takes fd 0"),
        ("uvicorn --fd 0 app:app", "socket", "the command takes fd 0"),
        ("uvicorn app:app --port $PORT", "proxy", "uvicorn with uvicorn drops connections"),
        ("gunicorn -k uvicorn.workers.UvicornWorker app:app", "proxy", "gunicorn with uvicorn"),
        ("hypercorn app:app --bind 0.0.0.0:$PORT", "proxy", "hypercorn has no door"),
        ("daphne -p $PORT app:application", "proxy", "daphne has no door"),
        ("granian --interface asgi app:app", "proxy", "granian has no door"),
        ("python app.py", "proxy", "python has no door"),
        ("cd src && gunicorn app:app", "proxy", "a shell line, not one command"),
        ("'unbalanced", "proxy", "the command has no door"),
    ],
)
def test_the_command_decides_how_the_socket_reaches_it(command: str, way: str, why: str) -> None:
    decided, reason = handoff(command)
    assert decided == way
    assert why in reason


def test_the_setting_overrides_the_command() -> None:
    assert handoff("python app.py", "socket") == ("socket", "LIVE_PULL_HANDOFF=socket")
    assert handoff("gunicorn app:app", "proxy") == ("proxy", "LIVE_PULL_HANDOFF=proxy")


def test_server_name_looks_past_what_runs_it() -> None:
    assert server_name("FOO=bar exec python -m uvicorn app:app") == "uvicorn"
    assert server_name("") is None
