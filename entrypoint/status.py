"""The status HTTP endpoint: /healthz, /readyz, /status, and POST /sync.

The agent writes facts to a StatusBoard; the HTTP threads only read it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from entrypoint.errors import LivePullError
from entrypoint.webhook import MAX_BODY, Webhook

log = logging.getLogger(__name__)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Snapshot:
    state: str = "starting"
    revision: str | None = None
    ref: str | None = None
    repo_url: str = ""
    ready: bool = False
    last_check: str | None = None
    last_error: str | None = None
    updates: int = 0
    deps_digest: str | None = None
    installs: int = 0
    last_install_seconds: float | None = None
    failed_revisions: dict[str, str] = field(default_factory=dict)
    started_at: str = field(default_factory=now_iso)


class StatusBoard:
    """Thread-safe facts about the agent, as /status shows them."""

    def __init__(self, repo_url: str, ref: str) -> None:
        self._lock = threading.Lock()
        self._snapshot = Snapshot(repo_url=repo_url, ref=ref)
        self._heartbeat = time.monotonic()

    def update(self, **facts: Any) -> None:
        with self._lock:
            for key, value in facts.items():
                if not hasattr(self._snapshot, key):
                    raise AttributeError(key)
                setattr(self._snapshot, key, value)

    def count_update(self) -> None:
        with self._lock:
            self._snapshot.updates += 1

    def beat(self) -> None:
        with self._lock:
            self._heartbeat = time.monotonic()

    def seconds_since_beat(self) -> float:
        with self._lock:
            return time.monotonic() - self._heartbeat

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self._snapshot)


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        board: StatusBoard,
        on_sync: Callable[[], None],
        *,
        stale_after: float,
        webhook: Webhook,
        on_rollback: Callable[[str | None], str],
    ) -> None:
        handler = _make_handler(board, on_sync, stale_after, webhook, on_rollback)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="status-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(
    board: StatusBoard,
    on_sync: Callable[[], None],
    stale_after: float,
    webhook: Webhook,
    on_rollback: Callable[[str | None], str],
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "live-pull"

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/healthz":
                alive = board.seconds_since_beat() < stale_after
                self._send(200 if alive else 503, {"alive": alive})
            elif path == "/readyz":
                ready = bool(board.snapshot()["ready"])
                self._send(200 if ready else 503, {"ready": ready})
            elif path == "/status":
                self._send(200, board.snapshot())
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            if path == "/sync":
                on_sync()
                self._send(202, {"sync": "requested"})
            elif path == "/webhook":
                self._webhook()
            elif path == "/rollback":
                self._rollback()
            else:
                self._send(404, {"error": "not found"})

        def _rollback(self) -> None:
            """Only from this machine or pod: it changes what runs."""
            if self.client_address[0] not in ("127.0.0.1", "::1"):
                self._send(403, {"error": "rollback is accepted from localhost only"})
                return
            query = parse_qs(urlsplit(self.path).query)
            wanted = query.get("sha", [None])[0]
            try:
                target = on_rollback(wanted)
            except LivePullError as exc:
                self._send(409, {"error": str(exc)})
                return
            self._send(202, {"rollback": "requested", "to": target})

        def _webhook(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self.close_connection = True
                self._send(413, {"error": f"body must be at most {MAX_BODY} bytes"})
                return
            body = self.rfile.read(length)
            reply = webhook.handle({k: v for k, v in self.headers.items()}, body)
            self._send(reply.code, dict(reply.body))

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body, indent=2).encode() + b"\n"
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("status request " + format, *args)

    return Handler
