"""A port nobody holds, for a listener that binds it a moment later.

The kernel's own choice (bind to port 0) comes from the ephemeral range, which every
outgoing connection draws from too: in the second between choosing a port and the
listener binding it, a connection (the app's own, a probe's) can take it, and the bind
then fails. So ports are chosen below that range, where connections never land.
"""

from __future__ import annotations

import collections
import random
import socket
from pathlib import Path

LOWEST = 20000
# Ports a process picks for another to bind later (the demo's, a test's agent's) come from
# [LOWEST, PRIVATE_LOWEST), its own children's (an app behind the proxy) from there to the
# ephemeral range: a port one has picked and not bound yet (an agent's PORT is bound only
# once its first revision is ready) is never the other's pick.
PRIVATE_LOWEST = 26000
public_range = (LOWEST, PRIVATE_LOWEST)  # a test run gives each of its workers a share
ATTEMPTS = 64
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Two ports chosen before either is bound must differ: the last ones handed out here.
_handed: collections.deque[int] = collections.deque(maxlen=512)


def unused_port(host: str = "127.0.0.1", *, private: bool = False) -> int:
    """A port of `host` below the ephemeral range that can be bound now (the kernel's
    choice if none is found); `private`: for a child of this process (see above)."""
    lowest, end = (PRIVATE_LOWEST, _ephemeral_low()) if private else public_range
    for _ in range(ATTEMPTS if end - 1 > lowest else 0):
        port = random.randint(lowest, end - 1)
        if port not in _handed and _bindable(host, port):
            _handed.append(port)
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
