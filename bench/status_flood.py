"""The status port under a flood of idle connections and slow bodies: /healthz latency
and the server's memory, live-pull's bounded server against the naive one (the stdlib's
thread-per-connection server, which live-pull used before), in the same run.

Each server runs in a process of its own, so its RSS is its own.

    .venv/bin/python bench/status_flood.py [--idle 2000] [--slow 300]
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entrypoint.auth import Secret
from entrypoint.board import StatusBoard
from entrypoint.demo import free_port
from entrypoint.status import StatusServer
from entrypoint.webhook import MAX_BODY, Webhook


def serve_naive(port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"alive": true}\n'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def serve_live_pull(port: int) -> None:
    board = StatusBoard("file:///srv/app.git", "main")
    webhook = Webhook(Secret("S", "secret"), lambda: None, lambda: None)
    server = StatusServer(
        "127.0.0.1", port, board, lambda: None, webhook=webhook, on_rollback=lambda s: ""
    )
    server.start()
    while True:
        time.sleep(3600)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def healthz_ms(port: int, count: int = 20) -> tuple[float, int]:
    times, failed = [], 0
    for _ in range(count):
        started = time.monotonic()
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).raise_for_status()
            times.append((time.monotonic() - started) * 1000)
        except requests.RequestException:
            failed += 1
    return (statistics.median(times) if times else float("nan")), failed


def flood(port: int, idle: int, slow: int) -> list[socket.socket]:
    opened = []
    head = f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY}\r\n\r\n".encode()
    refused = 0
    for index in range(idle + slow):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=3)
        except OSError:
            refused += 1
            if refused > 50:  # the server no longer takes connections
                break
            continue
        if index >= idle:
            sock.sendall(head + b"x" * 1024)
        opened.append(sock)
    return opened


def measure(kind: str, idle: int, slow: int) -> list[str]:
    port = free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)])
    try:
        time.sleep(1.5)
        quiet_ms, _ = healthz_ms(port)
        before = rss_mb(child.pid)
        opened = flood(port, idle, slow)
        loaded_ms, failed = healthz_ms(port)
        after = rss_mb(child.pid)
        for sock in opened:
            sock.close()
        return [
            kind,
            f"{len(opened)}",
            f"{quiet_ms:.1f} ms",
            f"{loaded_ms:.1f} ms",
            f"{failed}/20",
            f"{after - before:+.0f} MB",
        ]
    finally:
        child.kill()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--slow", type=int, default=300)
    parser.add_argument("--serve", choices=("naive", "live-pull"))
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.serve:
        (serve_naive if args.serve == "naive" else serve_live_pull)(args.port)
        return
    rows = [measure(kind, args.idle, args.slow) for kind in ("naive", "live-pull")]
    print("| server | connections held | /healthz quiet | /healthz flooded | failed | RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
