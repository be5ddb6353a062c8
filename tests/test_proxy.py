"""live-pull's proxy, as a client of an app that binds $PORT sees it: headers forwarded
as proxies do, bodies streamed both ways, websockets relayed, and a websocket open on
the old revision closed only after its drain."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import requests

from entrypoint.sample import SampleRepo
from tests.conftest import AgentProcess

Factory = Callable[..., AgentProcess]

APP = '''\
"""An aiohttp app that binds $PORT: what it saw, echoes, a paced stream, a websocket."""
import asyncio, hashlib, json, os, pathlib
from aiohttp import web

REVISION = os.environ["LIVE_PULL_REVISION"][:12]
MARKER = pathlib.Path({marker!r})


async def index(request):
    return web.Response(text=f"aiohttp app from revision {{REVISION}}\\n")


async def seen(request):
    return web.json_response({{"headers": dict(request.headers), "path": request.path_qs}})


async def digest(request):
    sha, size = hashlib.sha256(), 0
    async for chunk in request.content.iter_any():
        sha.update(chunk)
        size += len(chunk)
    return web.json_response({{"sha256": sha.hexdigest(), "size": size}})


async def paced(request):
    """One chunk, then nothing until the test has seen it: a buffering proxy hangs."""
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"first chunk\\n")
    for _ in range(300):
        if MARKER.exists():
            break
        await asyncio.sleep(0.1)
    await response.write(b"second chunk\\n")
    await response.write_eof()
    return response


async def cookies(request):
    response = web.Response(text="two cookies\\n", content_type="text/plain", charset="utf-8")
    response.headers.add("Set-Cookie", "a=1")
    response.headers.add("Set-Cookie", "b=2")
    response.headers["X-App"] = "yes"
    return response


async def big(request):  # also answers HEAD: its length, and no body
    return web.Response(body=bytes(range(256)) * 4096)


async def nothing(request):
    return web.Response(status=204)


async def echo(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        await ws.send_str(f"{{REVISION}}: {{message.data}}")
    return ws


app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_get("/", index)
app.router.add_get("/seen", seen)
app.router.add_post("/digest", digest)
app.router.add_get("/paced", paced)
app.router.add_get("/ws", echo)
app.router.add_get("/cookies", cookies)
app.router.add_get("/big", big)
app.router.add_get("/nothing", nothing)
web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None)
'''


def app_files(tmp_path: Path) -> dict[str, str]:
    return {
        "app.py": APP.format(marker=str(tmp_path / "go-on")),
        "Procfile": f"web: {sys.executable} app.py\n",
    }


def expecting_continue(port: int, body: bytes) -> dict[str, object]:
    """POST /digest as curl sends a body: with `Expect: 100-continue`, and the body only
    once the 100 came."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        head = f"POST /digest HTTP/1.1\r\nHost: app\r\nContent-Length: {len(body)}\r\n"
        conn.sendall(head.encode() + b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += conn.recv(1024) or b"<closed>"
            assert not interim.endswith(b"<closed>"), interim
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        conn.sendall(body)
        answer = interim.split(b"\r\n\r\n", 1)[1]
        while chunk := conn.recv(65536):
            answer += chunk
    status, payload = answer.split(b"\r\n", 1)[0], answer.split(b"\r\n\r\n", 1)[1]
    assert status == b"HTTP/1.1 200 OK", answer
    return dict(json.loads(payload))


def test_the_proxy_forwards_as_proxies_do(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    first = sample.commit(app_files(tmp_path), "aiohttp app")
    agent = agent_factory(sample.url, LIVE_PULL_POLL_INTERVAL="0")
    agent.wait_serving(first)
    assert "proxied: python has no door for a socket" in agent.output()
    base = f"http://127.0.0.1:{agent.port}"

    seen = requests.get(
        f"{base}/seen?a=1&b=%2F",
        headers={"Host": "shop.example", "X-Forwarded-For": "203.0.113.9", "TE": "trailers"},
        timeout=10,
    ).json()
    headers = {name.lower(): value for name, value in seen["headers"].items()}
    assert seen["path"] == "/seen?a=1&b=%2F"
    assert headers["host"] == "shop.example"
    assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "shop.example"
    assert "te" not in headers  # hop-by-hop: the proxy's own connection's business

    body = os.urandom(8 * 1024 * 1024)
    answer = requests.post(f"{base}/digest", data=body, timeout=30).json()
    assert answer == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}

    def chunks() -> Iterator[bytes]:  # a body of unknown length: chunked on the way in
        for _ in range(16):
            yield b"x" * 65536

    answer = requests.post(f"{base}/digest", data=chunks(), timeout=30).json()
    assert answer == {"sha256": hashlib.sha256(b"x" * 65536 * 16).hexdigest(), "size": 1 << 20}

    answer = requests.get(f"{base}/cookies", timeout=10)
    assert answer.text == "two cookies\n"
    assert answer.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    assert answer.headers["X-App"] == "yes"
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    big = bytes(range(256)) * 4096
    assert requests.get(f"{base}/big", timeout=10).content == big
    head = requests.head(f"{base}/big", timeout=10)
    assert (head.status_code, head.headers["Content-Length"], head.content) == (200, "1048576", b"")
    nothing = requests.get(f"{base}/nothing", timeout=10)
    assert (nothing.status_code, nothing.content) == (204, b"")

    assert expecting_continue(agent.port, b"hello") == {
        "sha256": hashlib.sha256(b"hello").hexdigest(),
        "size": 5,
    }

    with requests.get(f"{base}/paced", stream=True, timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines) == b"first chunk"  # streamed: the app has not finished yet
        (tmp_path / "go-on").touch()
        assert next(lines) == b"second chunk"


def test_a_websocket_is_relayed_and_outlives_an_update_until_its_drain(
    sample: SampleRepo, agent_factory: Factory, tmp_path: Path
) -> None:
    first = sample.commit(app_files(tmp_path), "aiohttp app")
    agent = agent_factory(sample.url, LIVE_PULL_POLL_INTERVAL="0", LIVE_PULL_DRAIN_SECONDS="8")
    agent.wait_serving(first)
    url = f"http://127.0.0.1:{agent.port}/ws"

    async def talk() -> tuple[list[str], aiohttp.WSMessage]:
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            replies = []
            await ws.send_str("hello")
            replies.append((await ws.receive(timeout=10)).data)
            files = app_files(tmp_path) | {"version.txt": "2\n"}
            second = await asyncio.to_thread(sample.commit, files, "second")
            await asyncio.to_thread(requests.post, agent.status_url("/sync"), timeout=5)
            await asyncio.to_thread(agent.wait_serving, second)
            # The old revision drains: its websocket still answers meanwhile.
            await ws.send_str("still there")
            replies.append((await ws.receive(timeout=10)).data)
            closed = await ws.receive(timeout=30)  # closed as the drain ends
            return replies, closed

    replies, closed = asyncio.run(talk())
    assert replies == [f"{first[:12]}: hello", f"{first[:12]}: still there"]
    assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1001)  # going away
    status = agent.wait_status(state="running", updates=1)  # the drain is part of it
    assert not status.get("failed_revisions")
