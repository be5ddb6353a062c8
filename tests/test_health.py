"""health.answer, the one request-and-judge of the agent's health checks (the proof
before a web joins, the bake's probe), against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from entrypoint.health import answer

ANSWERS = {"/ok": 200, "/moved": 302, "/missing": 404, "/broken": 500, "/sant%C3%A9": 200}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = ANSWERS.get(self.path, 200)
        self.send_response(status)
        if status == 302:
            self.send_header("Location", self.server.moved_to)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def base() -> Iterator[tuple[str, http.server.HTTPServer]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.moved_to = "/ok"  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def test_a_health_path_must_answer_2xx_and_its_redirects_are_followed(
    base: tuple[str, http.server.HTTPServer],
) -> None:
    url, server = base
    assert answer(f"{url}/ok") is None
    assert answer(f"{url}/moved") is None
    assert answer(f"{url}/missing") == "HTTP 404"
    assert answer(f"{url}/broken") == "HTTP 500"
    server.moved_to = "/broken"  # type: ignore[attr-defined]
    assert answer(f"{url}/moved") == "HTTP 500"


def test_without_a_health_path_anything_but_a_5xx_proves_and_redirects_are_answers(
    base: tuple[str, http.server.HTTPServer],
) -> None:
    url, server = base
    server.moved_to = "/broken"  # type: ignore[attr-defined]
    assert answer(f"{url}/moved", any_but_5xx=True) is None
    assert answer(f"{url}/missing", any_but_5xx=True) is None
    assert answer(f"{url}/broken", any_but_5xx=True) == "HTTP 500"


def test_no_answer_says_why() -> None:
    with socket.socket() as silent, socket.socket() as closed:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts (the kernel does), never answers
        closed.bind(("127.0.0.1", 0))  # bound, not listening: refused, and no one else's
        assert answer(f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout=0.2) == "TimeoutError"
        assert answer(f"http://127.0.0.1:{closed.getsockname()[1]}/") == "ConnectionRefusedError"


def test_a_proxy_of_the_environment_is_never_asked(
    base: tuple[str, http.server.HTTPServer],
) -> None:
    """The app is on this machine: an agent started with HTTP_PROXY (for its remote)
    still asks the app itself."""
    url, _ = base
    proxy = "http://127.0.0.1:9"  # the discard port: nothing answers there
    env = {**os.environ, "http_proxy": proxy, "HTTP_PROXY": proxy, "NO_PROXY": ""}
    asked = "from entrypoint.health import answer; import sys; print(answer(sys.argv[1]))"
    result = subprocess.run(
        [sys.executable, "-c", asked, f"{url}/ok"], env=env, capture_output=True, text=True
    )
    assert result.stdout.strip() == "None", result.stdout + result.stderr


def test_a_health_path_is_sent_percent_encoded(base: tuple[str, http.server.HTTPServer]) -> None:
    url, _ = base
    assert answer(f"{url}/santé") is None
    assert answer(f"{url}/sant%C3%A9") is None  # encoded already: as it is


def test_a_redirect_away_from_http_is_no_answer(base: tuple[str, http.server.HTTPServer]) -> None:
    """The app chooses where it redirects; the agent, root, follows HTTP only."""
    url, server = base
    for elsewhere in ("ftp://127.0.0.1/x", "file:///etc/hostname"):
        server.moved_to = elsewhere  # type: ignore[attr-defined]
        assert answer(f"{url}/moved") in {"URLError", "HTTP 302"}  # never followed
