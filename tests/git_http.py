"""A smart-HTTP git server on 127.0.0.1: `git http-backend` behind http.server.

Optionally demands HTTP basic auth, as a private repository host would. While each
request is in flight, the git client that sent it is alive: the server snapshots
every process's argv then (`argv_seen`), so a secret scan looks at git's argv while
git runs, not after it has exited.
"""

from __future__ import annotations

import base64
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def all_argv() -> list[str]:
    """The command line of every process on the machine, one string each."""
    lines = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return lines


class GitHttpServer:
    def __init__(self, root: Path, credentials: tuple[str, str] | None = None) -> None:
        self.root = root
        self.credentials = credentials
        self.requests: list[str] = []
        self.authorizations: list[str] = []  # every Authorization header received
        self.argv_seen: list[str] = []  # git processes' argv, taken during requests
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, repo_name: str, userinfo: str = "") -> str:
        host = self.base_url.removeprefix("http://")
        return f"http://{userinfo + '@' if userinfo else ''}{host}/{repo_name}"

    def git_client_argv(self) -> list[str]:
        """argv seen while git clients talked to us; fails if no client was ever seen,
        so a scan of it for secrets cannot pass vacuously."""
        clients = [line for line in self.argv_seen if "remote-http" in line]
        assert clients, f"no git client process seen during requests: {self.argv_seen[:5]}"
        return self.argv_seen

    def __enter__(self) -> GitHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._cgi()

            def do_POST(self) -> None:
                self._cgi()

            def _cgi(self) -> None:
                server.requests.append(self.path)
                server.argv_seen.extend(line for line in all_argv() if "git" in line)
                if not self._authorized():
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                env = {
                    "GIT_PROJECT_ROOT": str(server.root),
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
                self._relay(result.stdout)

            def _authorized(self) -> bool:
                if "Authorization" in self.headers:
                    server.authorizations.append(self.headers["Authorization"])
                if server.credentials is None:
                    return True
                expected = base64.b64encode(":".join(server.credentials).encode()).decode()
                return self.headers.get("Authorization") == f"Basic {expected}"

            def _relay(self, output: bytes) -> None:
                head, _, payload = output.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
