"""What the agent tells a proxy slot (slots.py writes it, proxy.py reads it): apart from
the proxy, so the agent need not import aiohttp's client to start a slot."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass

# The agent's orders to a proxy slot besides SIGTERM, as supervisord names signals: stop
# accepting but keep the app (the previous release, ready while the new one bakes), and
# accept again (a rollback within the bake).
STAND_BY = "USR1"
RESUME = "USR2"
# The same, as the proxy hears them.
ORDERS = {
    signal.Signals["SIG" + STAND_BY]: "stand by",
    signal.Signals["SIG" + RESUME]: "resume",
}


def ignore_orders() -> None:
    """A proxy slot not listening for the orders ignores them: their default is to exit."""
    for sig in ORDERS:
        signal.signal(sig, signal.SIG_IGN)


@dataclass(frozen=True)
class ProxyPlan:
    """What the agent writes in a proxy slot's assignment (see slots.py)."""

    port: int  # the app's private port on 127.0.0.1
    proof_path: str
    any_but_5xx: bool  # the proof: GET proof_path answers anything but a 5xx, else 2xx
    proof_timeout: float
    drain_seconds: float  # for the requests in flight, after the proxy stops accepting
    app_stop_seconds: float  # then for the app, after its SIGTERM

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ProxyPlan:
        return cls(
            port=int(str(data["port"])),
            proof_path=str(data["proof_path"]),
            any_but_5xx=bool(data["any_but_5xx"]),
            proof_timeout=float(str(data["proof_timeout"])),
            drain_seconds=float(str(data["drain_seconds"])),
            app_stop_seconds=float(str(data["app_stop_seconds"])),
        )

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"
