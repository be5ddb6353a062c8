"""The status HTTP endpoint: /healthz, /readyz, /status, POST /sync, /webhook, /rollback,
/pause and /resume. What changes what runs (/rollback, /pause, /resume, /sync?now=1) is
accepted from localhost only.

The agent writes facts to a StatusBoard (entrypoint.board); this server only reads
it, and hands requests to the control loop through callbacks that queue them.

It is bounded, because anyone who can reach the port can try to knock it over: one
asyncio loop in one thread (aiohttp) instead of a thread per connection, a deadline
for a request to arrive and for its body, a cap on body size, and a cap on open
connections (over it, the oldest idle ones are closed, so /healthz keeps answering).
The agent's own calls (git, supervisord) keep file descriptors in reserve: the soft
open-file limit is raised to the hard one, and connections are capped well below it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import resource
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from entrypoint.board import StatusBoard, bounded
from entrypoint.errors import LivePullError
from entrypoint.plain_http import no_certificates
from entrypoint.webhook import MAX_BODY, Webhook

# aiohttp's low-level server by its own modules: `aiohttp.web` would load the whole
# application framework (1.4 MB and 20 ms of the agent's start).
with no_certificates():
    from aiohttp.web_protocol import RequestHandler
    from aiohttp.web_request import BaseRequest
    from aiohttp.web_response import Response
    from aiohttp.web_server import Server

log = logging.getLogger(__name__)

HEAD_SECONDS = 5.0  # a connection must send a whole request within this
BODY_SECONDS = 5.0  # and its body within this
KEEPALIVE_SECONDS = 5.0
MAX_CONNECTIONS = 4096
FD_RESERVE = 256  # descriptors the agent keeps for git, supervisord and the app
SWEEP_SECONDS = 0.5
YES = ("1", "true", "yes")


@dataclass(frozen=True)
class Controls:
    """What the operator's routes ask of the control loop (each queues a request)."""

    rollback: Callable[[str | None], str]  # wanted sha (None: previous) -> target
    pause: Callable[[str | None], None]  # reason
    resume: Callable[[], None]
    sync_now: Callable[[], None]  # a check that is not held by a pause or the windows


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        board: StatusBoard,
        on_sync: Callable[[], None],
        *,
        webhook: Webhook,
        controls: Controls,
    ) -> None:
        self._cap = max(64, min(MAX_CONNECTIONS, _raise_open_file_limit() - FD_RESERVE))
        self._routes = _Routes(board, on_sync, webhook, controls)
        self._socket = socket.create_server((host, port), backlog=1024, reuse_port=False)
        self._loop = asyncio.new_event_loop()
        self._stopped: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="status-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    def add_readers(
        self, history: Callable[[], list[dict[str, Any]]], metrics: Callable[[], bytes]
    ) -> None:
        """Serve GET /history (events, oldest first) and GET /metrics (Prometheus text)."""
        self._routes.add_readers(history, metrics)

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def stop(self) -> None:
        stopped = self._stopped
        if stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(stopped.set)
            self._thread.join(5)
        self._socket.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        guard = _ConnectionGuard(self._routes.handle, self._cap)
        server = guard.server
        listener = await self._loop.create_server(guard.protocol, sock=self._socket)
        sweeper = asyncio.create_task(guard.sweep_forever())
        self._started.set()
        try:
            await self._stopped.wait()
        finally:
            sweeper.cancel()
            listener.close()
            guard.close_all()
            with contextlib.suppress(Exception):
                await server.shutdown(1.0)


class _ConnectionGuard:
    """Tracks every connection; closes those that send no request in time, and the
    oldest idle ones when there are more than `cap`."""

    def __init__(self, handle: Callable[[BaseRequest], Awaitable[Response]], cap: int) -> None:
        self.handle = handle
        self.server = Server(self.tracked, keepalive_timeout=KEEPALIVE_SECONDS)
        self.cap = cap
        self.opened: dict[RequestHandler, float] = {}  # insertion order: oldest first
        self.busy: set[RequestHandler] = set()  # a request is being answered
        self.served: set[RequestHandler] = set()  # sent at least one whole request

    async def tracked(self, request: BaseRequest) -> Response:
        self.busy.add(request.protocol)
        try:
            return await self.handle(request)
        finally:
            self.busy.discard(request.protocol)
            self.served.add(request.protocol)

    def protocol(self) -> RequestHandler:
        handler = self.server()
        self.opened[handler] = time.monotonic()
        return handler

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self.sweep()

    def sweep(self) -> None:
        now = time.monotonic()
        for handler, since in list(self.opened.items()):
            transport = handler.transport
            if transport is None or transport.is_closing():
                del self.opened[handler]
                self.served.discard(handler)
            elif self._idle(handler) and handler not in self.served and now - since > HEAD_SECONDS:
                _close(handler)  # never sent a whole request: a slow or idle client
        over = len(self.opened) - self.cap
        for handler in [h for h in self.opened if self._idle(h)][: max(0, over)]:
            _close(handler)

    def _idle(self, handler: RequestHandler) -> bool:
        return handler not in self.busy

    def close_all(self) -> None:
        for handler in self.opened:
            _close(handler)


def _close(handler: RequestHandler) -> None:
    if handler.transport is not None:
        handler.transport.close()


class _Routes:
    def __init__(
        self,
        board: StatusBoard,
        on_sync: Callable[[], None],
        webhook: Webhook,
        controls: Controls,
    ) -> None:
        self.board = board
        self.on_sync = on_sync
        self.webhook = webhook
        self.controls = controls
        self.table: dict[tuple[str, str], Callable[[BaseRequest], Awaitable[Response]]]
        self.table = {
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
            ("GET", "/status"): self.status,
            ("POST", "/sync"): self.sync,
            ("POST", "/webhook"): self.webhook_delivery,
            ("POST", "/rollback"): self.rollback,
            ("POST", "/pause"): self.pause,
            ("POST", "/resume"): self.resume,
        }

    async def handle(self, request: BaseRequest) -> Response:
        route = self.table.get((request.method, request.path))
        return await route(request) if route else _json(404, {"error": "not found"})

    async def healthz(self, request: BaseRequest) -> Response:
        alive, why = self.board.alive()
        return _json(200 if alive else 503, {"alive": alive, "reason": why})

    async def readyz(self, request: BaseRequest) -> Response:
        ready = self.board.ready()
        return _json(200 if ready else 503, {"ready": ready})

    def add_readers(
        self, history: Callable[[], list[dict[str, Any]]], metrics: Callable[[], bytes]
    ) -> None:
        self.history, self.metrics = history, metrics
        self.table[("GET", "/history")] = self.history_list
        self.table[("GET", "/metrics")] = self.metrics_text

    async def history_list(self, request: BaseRequest) -> Response:
        text = json.dumps(self.history(), indent=2) + "\n"
        return Response(status=200, text=text, content_type="application/json")

    async def metrics_text(self, request: BaseRequest) -> Response:
        response = Response(status=200, body=self.metrics())
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    async def status(self, request: BaseRequest) -> Response:
        return _json(200, self.board.snapshot())

    async def sync(self, request: BaseRequest) -> Response:
        """`?now=1` goes ahead despite a pause or the update windows: localhost only."""
        if request.query.get("now", "").lower() not in YES:
            self.on_sync()
            return _json(202, {"sync": "requested"})
        if not from_this_machine(request.remote):
            return _refused("sync now")
        self.controls.sync_now()
        return _json(202, {"sync": "requested", "now": True})

    async def rollback(self, request: BaseRequest) -> Response:
        """Only from this machine or pod: it changes what runs."""
        if not from_this_machine(request.remote):
            return _refused("rollback")
        try:
            target = self.controls.rollback(request.query.get("sha"))
        except LivePullError as exc:
            return _json(409, {"error": str(exc)})
        return _json(202, {"rollback": "requested", "to": target})

    async def pause(self, request: BaseRequest) -> Response:
        """`?reason=...` is shown in /status and logged."""
        if not from_this_machine(request.remote):
            return _refused("pause")
        reason = bounded(request.query.get("reason") or None)  # one line, bounded
        self.controls.pause(reason)
        return _json(202, {"pause": "requested", "reason": reason})

    async def resume(self, request: BaseRequest) -> Response:
        if not from_this_machine(request.remote):
            return _refused("resume")
        self.controls.resume()
        return _json(202, {"resume": "requested"})

    async def webhook_delivery(self, request: BaseRequest) -> Response:
        length = request.content_length
        if length is None or length > MAX_BODY:
            return _json(413, {"error": f"body must be at most {MAX_BODY} bytes"}, close=True)
        try:
            body = await asyncio.wait_for(request.content.readexactly(length), BODY_SECONDS)
        except (TimeoutError, asyncio.IncompleteReadError):
            return _json(408, {"error": "the body did not arrive in time"}, close=True)
        reply = self.webhook.handle(dict(request.headers), body)
        return _json(reply.code, dict(reply.body))


def _refused(what: str) -> Response:
    return _json(403, {"error": f"{what} is accepted from localhost only"})


def _json(code: int, body: dict[str, Any], *, close: bool = False) -> Response:
    text = json.dumps(body, indent=2) + "\n"
    headers = {"Connection": "close"} if close else None
    return Response(status=code, text=text, content_type="application/json", headers=headers)


def _raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return int(soft if soft != resource.RLIM_INFINITY else MAX_CONNECTIONS + FD_RESERVE)


def from_this_machine(remote: str | None) -> bool:
    """127.0.0.1 or ::1, also as a dual-stack listener sees 127.0.0.1 (::ffff:127.0.0.1).
    Other loopback addresses are refused: the rule stays one that a test can prove."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address) in LOOPBACK


LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
