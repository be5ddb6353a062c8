"""A remote whose faults are switched on and off: smart HTTP on 127.0.0.1 behind a TCP
front that can refuse, black-hole or reset; and a file:// remote moved away."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from entrypoint.sample import SampleRepo

FRONT_MODES = ("up", "refused", "blackhole", "reset")
BACKEND_MODES = ("ok", "http500", "hang_fetch", "hold")


class FaultyRemote:
    """Smart HTTP on 127.0.0.1 (git http-backend), with faults switched at will.

    A TCP front owns the port: `up` relays to the HTTP backend, `refused` leaves the
    port bound but not listening (connections are refused, the port stays ours),
    `blackhole` accepts and never answers, `reset` accepts and resets. The backend
    answers `http500`, hangs every fetch (`hang_fetch`: refs are still advertised),
    or holds every request until the mode changes (`hold`).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mode = "up"
        self.requests: list[str] = []  # one kind per request: info, ls-refs, fetch, ...
        self.held = 0  # requests waiting in `hold` right now
        self._changed = threading.Condition()
        self._closing = False
        self._backend = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._backend.daemon_threads = True
        self._backend_port = int(self._backend.server_address[1])
        # The port is held by a bound socket that never listens; listeners share it.
        self._reserve = socket.socket()
        self._reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._reserve.bind(("127.0.0.1", 0))
        self.port = int(self._reserve.getsockname()[1])
        self._listener: socket.socket | None = None
        self._blackholed: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> FaultyRemote:
        self._spawn(self._backend.serve_forever)
        self._listen()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        self.set("up")
        self._unlisten()
        self._backend.shutdown()
        self._backend.server_close()
        self._reserve.close()

    def set(self, mode: str) -> None:
        assert mode in FRONT_MODES + BACKEND_MODES, mode
        with self._changed:
            previous, self.mode = self.mode, mode
            self._changed.notify_all()
        if mode == "refused":
            self._unlisten()
        elif previous == "refused":
            self._listen()
        if previous == "blackhole" and mode != "blackhole":
            for conn in self._blackholed:
                with contextlib.suppress(OSError):
                    conn.close()
            self._blackholed.clear()

    def count(self, kind: str) -> int:
        return sum(1 for seen in list(self.requests) if seen == kind)

    # -- the front ------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._spawn(lambda: self._accept(listener))

    def _unlisten(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            mode = self.mode
            if mode == "blackhole":
                self._blackholed.append(conn)  # accepted, never read, never answered
            elif mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                conn.close()
            else:
                self._spawn(lambda c=conn: self._relay(c))

    def _relay(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self._backend_port), timeout=10)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        self._spawn(lambda: _pipe(upstream, conn))
        _pipe(conn, upstream)

    def _spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()

    # -- the backend ----------------------------------------------------------------

    def _wait_while(self, mode: str) -> None:
        with self._changed:
            while self.mode == mode and not self._closing:
                self._changed.wait(0.5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        remote = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve(b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._serve(self.rfile.read(length) if length else b"")

            def _serve(self, body: bytes) -> None:
                kind = _kind(self.command, body)
                remote.requests.append(kind)
                mode = remote.mode
                if mode == "http500":
                    self._answer(500, b"internal error\n")
                    return
                if mode == "hang_fetch" and kind == "fetch":
                    remote._wait_while("hang_fetch")
                    self.close_connection = True
                    return  # never answered
                if mode == "hold":
                    with remote._changed:
                        remote.held += 1
                    try:
                        remote._wait_while("hold")
                    finally:
                        with remote._changed:
                            remote.held -= 1
                self._backend(body)

            def _backend(self, body: bytes) -> None:
                path, _, query = self.path.partition("?")
                env = {
                    "PATH": os.environ.get("PATH", os.defpath),
                    "GIT_PROJECT_ROOT": str(remote.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "REQUEST_METHOD": self.command,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "REMOTE_USER": "tester",
                    "REMOTE_ADDR": "127.0.0.1",
                }
                result = subprocess.run(
                    ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60
                )
                head, _, payload = result.stdout.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode(errors="replace").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self._answer(status, payload, headers)

            def _answer(
                self, status: int, payload: bytes, headers: list[tuple[str, str]] | None = None
            ) -> None:
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    for name, value in headers or [("Content-Type", "text/plain")]:
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def _kind(method: str, body: bytes) -> str:
    if method == "GET":
        return "info"
    if b"command=fetch" in body or b"want " in body:
        return "fetch"
    if b"command=ls-refs" in body:
        return "ls-refs"
    return "other"


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def remote_away(sample: SampleRepo) -> Iterator[None]:
    """The file:// remote gone (its directory moved away), back at the end."""
    aside = sample.remote.with_name(sample.remote.name + ".away")
    sample.remote.rename(aside)
    try:
        yield
    finally:
        aside.rename(sample.remote)
