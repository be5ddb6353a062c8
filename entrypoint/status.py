"""The status HTTP endpoint: /healthz, /readyz, /status, POST /sync, /webhook, /rollback.

The agent writes facts to a StatusBoard (entrypoint.board); the HTTP threads only
read it, and hand requests to the control loop through callbacks that queue them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from entrypoint.board import StatusBoard
from entrypoint.errors import LivePullError
from entrypoint.webhook import MAX_BODY, Webhook

log = logging.getLogger(__name__)


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        board: StatusBoard,
        on_sync: Callable[[], None],
        *,
        webhook: Webhook,
        on_rollback: Callable[[str | None], str],
    ) -> None:
        handler = _make_handler(board, on_sync, webhook, on_rollback)
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
    webhook: Webhook,
    on_rollback: Callable[[str | None], str],
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "live-pull"

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/healthz":
                alive, why = board.alive()
                self._send(200 if alive else 503, {"alive": alive, "reason": why})
            elif path == "/readyz":
                ready = board.ready()
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
