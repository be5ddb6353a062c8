"""Health checks of a new revision (LIVE_PULL_HEALTHCHECK_PATH).

Behind a shared socket a request could reach the old process instead of the new
one, so the check runs before the new revision joins: a probe instance of its web
command is started on a private socket of its own (handed over as the slot will
get it), asked for the path, and stopped again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import quote

from entrypoint.errors import AppFailed
from entrypoint.identity import AS_AGENT, Identity
from entrypoint.shell import socket_handoff_line

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
# A health path is sent percent-encoded (`/santé` as `/sant%C3%A9`), as requests sent it;
# what is already encoded, and the characters that delimit a URL, stay as they are.
URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


def wait_healthy(
    url: str,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    *,
    any_but_5xx: bool = False,
) -> None:
    """Poll url until it answers 2xx (or, with `any_but_5xx`, anything but a 5xx: the
    proof when no health path is configured); raise AppFailed on timeout or if the app
    dies."""
    deadline = time.monotonic() + timeout
    last: str | None = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise AppFailed(f"health check: the app exited before answering {url}")
        last = answer(url, any_but_5xx=any_but_5xx)
        if last is None:
            return
        time.sleep(POLL_SECONDS)
    raise AppFailed(f"health check failed: {url} gave {last} for {timeout:g}s")


def answer(url: str, *, any_but_5xx: bool = False, timeout: float = 2.0) -> str | None:
    """None when `url` proves the app (2xx; with `any_but_5xx`, anything but a 5xx,
    redirects not followed), else what it gave.

    The standard library's client: the app is on this machine, and requests, once
    imported for this, would stay in the agent's memory (7 MB of it at idle)."""
    opener = _NOT_FOLLOWING if any_but_5xx else _FOLLOWING
    try:
        with opener.open(quote(url, safe=URL_SAFE), timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:  # an answer all the same
        status = exc.code
    except (OSError, HTTPException, ValueError) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", None)  # URLError's: the error beneath
        return type(reason if isinstance(reason, BaseException) else exc).__name__
    return None if proves(status, any_but_5xx) else f"HTTP {status}"


class _Unfollowed(urllib.request.HTTPRedirectHandler):
    """A redirect is the answer itself (an HTTPError with its 3xx code)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(redirects: urllib.request.HTTPRedirectHandler) -> urllib.request.OpenerDirector:
    """HTTP(S) only: a redirect elsewhere is never followed (urllib refuses file:, and
    ftp: is an unknown URL type here). Never through an HTTP_PROXY of the environment:
    the app is on this machine."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler({}),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        redirects,
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


_FOLLOWING = _opener(urllib.request.HTTPRedirectHandler())
_NOT_FOLLOWING = _opener(_Unfollowed())


def proves(status: int, any_but_5xx: bool) -> bool:
    return status < 500 if any_but_5xx else 200 <= status < 300


def probe_before_joining(
    cwd: Path,
    env: dict[str, str],
    command: str,
    path: str,
    timeout: float,
    run_as: Identity = AS_AGENT,
    *,
    any_but_5xx: bool = False,
    streams: Mapping[str, int] | None = None,
) -> None:
    """Run the web command on a private socket (as the app user), check `path`, stop it.
    `streams`: its stdout and stderr (see relay.py; None: the agent's)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = listener.getsockname()[1]
    process = subprocess.Popen(
        ["/bin/sh", "-c", socket_handoff_line(command)],
        cwd=cwd,
        env={**os.environ, **env},
        stdin=listener.fileno(),
        stdout=(streams or {}).get("stdout"),
        stderr=(streams or {}).get("stderr"),
        start_new_session=True,
        **run_as.popen_kwargs(),
    )
    listener.close()
    log.info("health check of the new revision on a private socket path=%s", path)
    try:
        url = f"http://127.0.0.1:{port}{path}"
        wait_healthy(url, timeout, lambda: process.poll() is None, any_but_5xx=any_but_5xx)
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM to the process's own group (it was started in a session of its own),
    SIGKILL after `timeout`."""
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
