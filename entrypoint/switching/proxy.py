"""live-pull's own reverse proxy, for a web command that binds $PORT itself and has no
door for a socket: its slot runs this proxy on the shared socket (fd 0) and the app
as a child on a private port of 127.0.0.1.

The proxy accepts only once the app answers (so a revision that never comes up never
answers a request); on SIGTERM it stops accepting, lets the requests in flight finish
(within the drain time), and only then stops the app. Bodies stream both ways,
websockets are relayed, headers are forwarded as proxies do (X-Forwarded-For, -Proto,
-Host). Built on aiohttp (server and client): no parser of our own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from entrypoint.health import POLL_SECONDS, proves, stop_process_group
from entrypoint.plain_http import no_certificates
from entrypoint.switching.plan import ORDERS, ProxyPlan, ignore_orders

# aiohttp without the CA certificates it would read for nothing (see plain_http.py):
# the proxy speaks plain HTTP on 127.0.0.1.
with no_certificates():
    from aiohttp import (
        ClientResponse,
        ClientSession,
        ClientTimeout,
        ClientWebSocketResponse,
        DummyCookieJar,
        HttpVersion11,
        TCPConnector,
        WSMsgType,
    )
    from aiohttp.client_exceptions import (
        ClientError,
        ClientOSError,
        ServerDisconnectedError,
        WSServerHandshakeError,
    )

    # aiohttp's low-level server by its own modules: `aiohttp.web` (and its runners) would
    # load the whole application framework too, 30 ms of every slot's start.
    from aiohttp.web_request import BaseRequest
    from aiohttp.web_response import Response, StreamResponse
    from aiohttp.web_server import Server
    from aiohttp.web_ws import WebSocketResponse
    from multidict import CIMultiDict
    from yarl import URL

log = logging.getLogger("live-pull proxy")

WebSocket = WebSocketResponse | ClientWebSocketResponse

# Headers that describe one connection, not the message (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Answered by the proxy itself, not forwarded: the app would wait for a body that the
# proxy only sends once the client does (see _expect).
ANSWERED_HERE = frozenset({"expect"})
NOT_FORWARDED = HOP_BY_HOP | ANSWERED_HERE  # of a request's headers
CONNECT_SECONDS = 10.0
FIRST_PROOF_PAUSE = 0.01
PROOF_REQUEST_SECONDS = 2.0  # one request of the proof, as health.answer allows it
ACCEPTED_GRACE_SECONDS = 1.0
ACCEPT_TASK_ITERATIONS = 3  # loop iterations for accepted connections to attach
REPEATABLE = frozenset({"GET", "HEAD", "OPTIONS"})  # safe methods (RFC 9110 9.2.1)
BUFFERED_BODY = 64 * 1024  # an answer of known length up to this is read whole
GOING_AWAY = 1001  # the websocket close code of a server going down


def serve(app: subprocess.Popen[bytes], plan: ProxyPlan, standing_by: Callable[[], bool]) -> int:
    """Prove the app (started by behind.py) on its private port, then serve fd 0 (or
    stand by, as `standing_by` says the slot should) until SIGTERM. Returns the slot's
    exit code. The agent's orders (plan.py) are ignored, not fatal, when not listened to."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    problem = asyncio.run(_prove(app, plan))
    if problem is not None:
        log.error("the app did not come up on its private port: %s", problem)
        stop_process_group(app, plan.app_stop_seconds)
        return 1
    log.info("the app answers on 127.0.0.1:%d", plan.port)
    code = asyncio.run(_serve_until_stopped(app, plan, standing_by))
    ignore_orders()  # the loop's end gave them their default action back
    stop_process_group(app, plan.app_stop_seconds)
    log.info("the app stopped (%s)", _how_it_ended(app.returncode))
    return code


async def _prove(app: subprocess.Popen[bytes], plan: ProxyPlan) -> str | None:
    """None once the app proves itself on its private port, as health.wait_healthy
    proves it for the agent, but with the HTTP client the proxy has loaded anyway;
    else why not."""
    url = plan.url(plan.proof_path)
    deadline = time.monotonic() + plan.proof_timeout
    last, pause = "no answer", FIRST_PROOF_PAUSE
    async with ClientSession(timeout=ClientTimeout(total=PROOF_REQUEST_SECONDS)) as session:
        while time.monotonic() < deadline:
            if app.poll() is not None:
                return f"health check: the app exited before answering {url}"
            last = await _answer(session, url, plan.any_but_5xx) or ""
            if not last:
                return None
            await asyncio.sleep(pause)
            # Often at first, while a quick app comes up: every moment until the first
            # answer counts (a start with nothing serving yet); then as health.py does.
            pause = min(2 * pause, POLL_SECONDS)
    return f"health check failed: {url} gave {last} for {plan.proof_timeout:g}s"


async def _answer(session: ClientSession, url: str, any_but_5xx: bool) -> str | None:
    """None when the answer proves the app (see health.answer), else what it gave."""
    try:
        async with session.get(url, allow_redirects=not any_but_5xx) as response:
            status = response.status
    except (ClientError, TimeoutError) as exc:
        return type(exc).__name__
    return None if proves(status, any_but_5xx) else f"HTTP {status}"


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        return f"terminated by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


async def _serve_until_stopped(
    app: subprocess.Popen[bytes], plan: ProxyPlan, standing_by: Callable[[], bool]
) -> int:
    """Serve the shared socket until SIGTERM or the app's exit; standing by (from the
    "stand by" order to "resume"), accept nothing and keep the app running: the
    previous release, ready for a rollback while the new one bakes. A round's drain
    runs on while the next round serves (a resume need not wait for it)."""
    orders = Orders(asyncio.get_running_loop())
    # Read only now that the orders are heard: an order given before was written in
    # the slot's assignment first (slots.py), so none is lost.
    serving = not standing_by()
    drains: list[asyncio.Task[None]] = []
    try:
        while True:
            if serving:
                log.info("serving the shared socket")
                ended, drain = await _serve_the_socket(app, plan, orders)
                drains.append(drain)
            else:
                log.info("standing by: the app keeps running, the proxy accepts nothing")
                ended = await orders.first(app, "stop", "resume")
            if ended not in ("stand by", "resume"):
                return 1 if ended == "app exited" else 0
            serving = ended == "resume"
    finally:
        await asyncio.gather(*drains)


class Orders:
    """What the agent says to the slot, by signal: "stop" (SIGTERM, SIGINT), and the
    ORDERS of plan.py: "stand by", "resume" (serve again)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.given = {name: asyncio.Event() for name in ("stop", "stand by", "resume")}
        # A request found the app unreachable: is it gone? Looked at at once, so that a
        # dead app's slot stops accepting before more requests get its 502.
        self.nudged = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.given["stop"].set)
        for sig, order in ORDERS.items():
            loop.add_signal_handler(sig, self._take, order)

    def _take(self, order: str) -> None:
        """Stand by and resume undo each other."""
        self.given["resume" if order == "stand by" else "stand by"].clear()
        self.given[order].set()

    async def first(self, app: subprocess.Popen[bytes], *wanted: str) -> str:
        """The first of the `wanted` orders given, or "app exited"."""
        while True:
            given = next((name for name in wanted if self.given[name].is_set()), None)
            if given is not None:
                return given
            code = app.poll()
            if code is not None:
                log.error("the app exited code=%d; the slot stops with it", code)
                return "app exited"
            self.nudged.clear()
            events = [*(self.given[name] for name in wanted), self.nudged]
            waits = [asyncio.create_task(event.wait()) for event in events]
            await asyncio.wait(waits, timeout=0.2, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()


async def _serve_the_socket(
    app: subprocess.Popen[bytes], plan: ProxyPlan, orders: Orders
) -> tuple[str, asyncio.Task[None]]:
    """Accept on the shared socket until an order or the app's exit (which it returns,
    with the drain that follows: requests in flight finish, idle connections close)."""
    forwarder = Forwarder(plan.port, unreachable=orders.nudged.set)
    forwarder.open()
    # aiohttp's low-level server: every request goes to the one handler, with no router
    # or middleware to pass through first. It is the protocol of asyncio's own server
    # on the socket, as aiohttp's ServerRunner and SockSite would make it. asyncio
    # listens on the socket again: with supervisord's backlog, which other slots share.
    handlers = Server(forwarder.handle, access_log=None)
    listener: socket.socket | None = None
    try:
        listener = socket.socket(fileno=os.dup(0))
        loop = asyncio.get_running_loop()
        server = await loop.create_server(handlers, sock=listener, backlog=socket.SOMAXCONN)
    except BaseException:
        if listener is not None:
            listener.close()
        await forwarder.close()
        raise
    ended = await orders.first(app, "stop", "stand by")
    await _stop_accepting(server, listener)
    return ended, asyncio.create_task(_drain(handlers, forwarder, plan))


async def _drain(handlers: Server, forwarder: Forwarder, plan: ProxyPlan) -> None:
    # Websockets cannot drain: they are closed (1001, going away) as the drain ends.
    asyncio.get_running_loop().call_later(
        max(0.0, plan.drain_seconds - 1), forwarder.going_away.set
    )
    try:
        # A connection accepted just now may not have sent its request yet: give it
        # the time to, before connections without a request in flight are closed.
        await asyncio.sleep(min(ACCEPTED_GRACE_SECONDS, plan.drain_seconds / 2))
        # As aiohttp's runners end: idle connections close, requests in flight finish.
        await asyncio.sleep(0)
        handlers.pre_shutdown()
        await handlers.shutdown(plan.drain_seconds)
    finally:
        await forwarder.close()


async def _stop_accepting(server: asyncio.Server, listener: socket.socket) -> None:
    """No more accepts; the socket stays open in supervisord for the other slot.

    asyncio accepts a burst of connections in one callback and wraps each in a task
    that runs a loop iteration later; a server closed in between drops those silently
    (Server._attach fails), resetting connections the kernel handed us. So reading the
    listener stops first, those tasks get their iteration, and then the server closes.
    """
    asyncio.get_running_loop().remove_reader(listener.fileno())
    for _ in range(ACCEPT_TASK_ITERATIONS):
        await asyncio.sleep(0)
    server.close()


class Forwarder:
    """Forwards each request to the app (a client session kept open for one round of
    serving, to the end of its drain)."""

    def __init__(self, port: int, unreachable: Callable[[], None]) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.unreachable = unreachable  # told when a request could not reach the app
        self.session: ClientSession | None = None
        self.going_away = asyncio.Event()  # set as the drain ends: websockets close

    def open(self) -> None:
        self.session = ClientSession(
            connector=TCPConnector(limit=0, force_close=False),
            auto_decompress=False,
            timeout=ClientTimeout(total=None, sock_connect=CONNECT_SECONDS),
            cookie_jar=DummyCookieJar(),  # never one visitor's cookies for the next
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def _target(self, request: BaseRequest) -> URL:
        """The app's URL for the request, its path and query exactly as the client sent
        them (no re-encoding: %2F stays %2F)."""
        return URL(self.base + request.raw_path, encoded=True)

    async def handle(self, request: BaseRequest) -> StreamResponse:
        refused = await _expect(request)
        if refused is not None:
            return refused
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        return await self._http(request)

    async def _http(self, request: BaseRequest) -> StreamResponse:
        try:
            upstream = await self._send(request)
        except ClientError as exc:
            log.warning("the app gave no answer: %s", type(exc).__name__)
            self.unreachable()
            return Response(status=502, text="502 Bad Gateway: the app gave no answer\n")
        async with upstream:
            headers = CIMultiDict(
                (name, value)
                for name, value in upstream.headers.items()
                if name.lower() not in HOP_BY_HOP
            )
            if _small(request, upstream):  # read whole, and sent in one write
                try:
                    body = await upstream.read()
                except ClientError as exc:
                    log.warning("the app's answer broke off: %s", type(exc).__name__)
                    return Response(status=502, text="502 Bad Gateway: the answer broke off\n")
                status, reason = upstream.status, upstream.reason
                return Response(status=status, reason=reason, headers=headers, body=body)
            response = StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=headers
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        return response

    async def _send(self, request: BaseRequest) -> ClientResponse:
        """The request to the app. A kept-alive connection the app closed as it was
        reused fails before any answer: a request without a body that is safe to
        repeat is sent once more, on a new connection."""
        assert self.session is not None
        repeatable = request.method in REPEATABLE and not request.body_exists
        for attempt in (1, 2):
            try:
                return await self.session.request(
                    request.method,
                    self._target(request),
                    headers=forwarded_headers(request),
                    data=request.content if request.body_exists else None,
                    allow_redirects=False,
                    compress=None,
                )
            except (ServerDisconnectedError, ClientOSError):
                if attempt == 2 or not repeatable:
                    raise
        raise AssertionError("unreachable")

    async def _websocket(self, request: BaseRequest) -> StreamResponse:
        assert self.session is not None
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        protocols = [name.strip() for name in offered.split(",") if name.strip()]
        headers = {
            name: value
            for name, value in forwarded_headers(request).items()
            if not name.lower().startswith("sec-websocket-")
        }
        try:
            upstream = await self.session.ws_connect(
                self._target(request),
                headers=headers,
                protocols=protocols,
                autoping=True,
            )
        except WSServerHandshakeError as exc:
            return Response(status=exc.status, text=f"{exc.status} {exc.message}\n")
        except ClientError as exc:
            log.warning("the app gave no websocket: %s", type(exc).__name__)
            return Response(status=502, text="502 Bad Gateway: the app gave no answer\n")
        async with upstream:
            chosen = [upstream.protocol] if upstream.protocol else []
            client = WebSocketResponse(protocols=chosen)
            await client.prepare(request)
            await _relay_both_ways(client, upstream, self.going_away)
        return client


async def _relay_both_ways(
    client: WebSocket, upstream: WebSocket, going_away: asyncio.Event
) -> None:
    """Messages both ways until either side closes, or the proxy goes away; then both
    sides are closed (1001 when the proxy goes away)."""
    tasks = [
        asyncio.create_task(_relay(client, upstream)),
        asyncio.create_task(_relay(upstream, client)),
        asyncio.create_task(going_away.wait()),
    ]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, ClientError):
            await task
    code = GOING_AWAY if going_away.is_set() else 1000
    for side in (client, upstream):
        with contextlib.suppress(ConnectionError, ClientError):
            await side.close(code=code)


async def _relay(source: WebSocket, target: WebSocket) -> None:
    async for message in source:
        if message.type == WSMsgType.TEXT:
            await target.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await target.send_bytes(message.data)
        else:  # CLOSE, CLOSING, CLOSED, ERROR
            break


async def _expect(request: BaseRequest) -> StreamResponse | None:
    """What aiohttp's Application does for `Expect`, and its low-level server does not:
    HTTP/1.1 `100-continue` is answered at once (the body then streams to the app as
    it comes), any other expectation gets a 417."""
    expect = request.headers.get("Expect")
    if not expect or request.version != HttpVersion11:
        return None
    if expect.lower() != "100-continue":
        return Response(status=417, text=f"417 Expectation Failed: {expect}\n")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer's own size starts after it, as aiohttp's
    return None


def _small(request: BaseRequest, upstream: ClientResponse) -> bool:
    """An answer with a body of a known length up to BUFFERED_BODY (most answers), not
    to a HEAD (whose Content-Length describes a body that is not sent)."""
    length = upstream.content_length
    return (
        length is not None
        and length <= BUFFERED_BODY
        and request.method != "HEAD"
        and upstream.status not in (204, 304)
    )


def forwarded_headers(request: BaseRequest) -> CIMultiDict[str]:
    """The request's end-to-end headers (Host kept), plus what a proxy adds."""
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value)
        for name, value in request.headers.items()
        if name.lower() not in NOT_FORWARDED
    )
    peer = request.remote or ""
    earlier = headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{earlier}, {peer}" if earlier else peer
    headers.setdefault("X-Forwarded-Proto", request.scheme)
    if request.host:
        headers.setdefault("X-Forwarded-Host", request.host)
    return headers
